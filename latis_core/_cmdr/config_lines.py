"""Where keys are in a TOML text: the line of each table and key (the TOML parser gives none).

`_Locator(text).line(path)` answers for a key path (`("units", "box", "dial")`,
an array's entries by index), so that config errors can name their line.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import tomli

#: A key path from the top of a file: table and key names, array indexes.
_Keys = tuple[str | int, ...]

_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY}(?:[ \t]*\.[ \t]*{_KEY})*"
_HEADER = re.compile(rf"[ \t]*(\[\[?)[ \t]*({_DOTTED})[ \t]*\]")
_ASSIGN = re.compile(rf"[ \t]*({_DOTTED})[ \t]*=")
#: A value that ends on its line and holds no table: nothing to follow.
_SIMPLE_VALUE = re.compile(
    r"""[ \t]*(?:"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[A-Za-z0-9_.:+-]+)[ \t]*(?:#.*)?"""
)
_BARE_DOTTED = re.compile(r"[A-Za-z0-9_-]+(?:[ \t]*\.[ \t]*[A-Za-z0-9_-]+)*")


@functools.lru_cache(maxsize=4096)
def _split_key(dotted: str) -> tuple[str, ...]:
    """`units."a.b" . c` → ("units", "a.b", "c"), by TOML's own rules."""
    if _BARE_DOTTED.fullmatch(dotted):
        # The common case, without a TOML parse per line (config is O(units) lines).
        return tuple(part.strip(" \t") for part in dotted.split("."))
    try:
        node: Any = tomli.loads(f"{dotted} = 0")
    except tomli.TOMLDecodeError:
        return ()
    keys: list[str] = []
    while isinstance(node, dict):
        ((key, node),) = node.items()
        keys.append(key)
    return tuple(keys)


class _ValueScan:
    """Follows a value over its lines (arrays, multi-line strings) until it ends.

    Notes the line of each inline table in an array (`accept = [ {…}, {…} ]`).
    """

    def __init__(self, path: _Keys, note: Callable[[_Keys, int], None]) -> None:
        self.path = path
        self.note = note
        self.depth = 0
        self.array: bool | None = None
        self.quote: str | None = None
        self.index = 0

    def feed(self, text: str, number: int) -> bool:
        """Read one line of the value; True once the value has ended."""
        i = 0
        while i < len(text):
            if self.quote:
                if text.startswith(self.quote, i):
                    i += len(self.quote)
                    self.quote = None
                elif self.quote[0] == '"' and text[i] == "\\":
                    i += 2
                else:
                    i += 1
                continue
            char = text[i]
            if char == "#":
                break
            if self.array is None and not char.isspace():
                self.array = char == "["
            if char in "\"'":
                self.quote = char * 3 if text.startswith(char * 3, i) else char
                i += len(self.quote)
                continue
            if char in "[{":
                if char == "{" and self.array and self.depth == 1:
                    self.note(self.path + (self.index,), number)
                    self.index += 1
                self.depth += 1
            elif char in "]}":
                self.depth -= 1
            i += 1
        return self.depth == 0 and self.quote is None


class _Locator:
    """The line of each table and key in a TOML text (the TOML parser gives none).

    Knows `[table]` and `[[array]]` headers, `key = ` lines (dotted keys too),
    and inline tables in arrays; a key it cannot place gets the line of the
    nearest enclosing table or key that it can (an inline table's line, say).
    Only used on text that parsed.
    """

    def __init__(self, text: str) -> None:
        self._exact: dict[_Keys, int] = {}
        self._implied: dict[_Keys, int] = {}
        table: _Keys = ()
        arrays: dict[_Keys, int] = {}  # each [[array]] (indexed path) → its last index
        scan: _ValueScan | None = None
        for number, line in enumerate(text.splitlines(), 1):
            if scan is not None:
                if scan.feed(line, number):
                    scan = None
                continue
            header = _HEADER.match(line)
            if header:
                keys = _split_key(header[2])
                if not keys:
                    continue
                path: _Keys = ()
                for i, key in enumerate(keys):
                    path += (key,)
                    if path in arrays and not (header[1] == "[[" and i == len(keys) - 1):
                        path += (arrays[path],)
                if header[1] == "[[":
                    arrays[path] = arrays.get(path, -1) + 1
                    path += (arrays[path],)
                table = path
                self._note(path, number)
                continue
            assign = _ASSIGN.match(line)
            if assign and _split_key(assign[1]):
                path = table + _split_key(assign[1])
                self._note(path, number)
                rest = line[assign.end() :]
                if _SIMPLE_VALUE.fullmatch(rest):
                    continue  # the common case: a one-line scalar
                scan = _ValueScan(path, self._note)
                if scan.feed(rest, number):
                    scan = None

    def _note(self, path: _Keys, number: int) -> None:
        self._exact.setdefault(path, number)
        for i in range(1, len(path)):
            self._implied.setdefault(path[:i], number)

    def line(self, path: _Keys) -> int | None:
        """The line of `path`, or of the nearest enclosing table or key that has one."""
        for n in range(len(path), 0, -1):
            found = self._exact.get(path[:n]) or self._implied.get(path[:n])
            if found:
                return found
        return None
