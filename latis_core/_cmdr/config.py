"""Config: the units latis knows, from a TOML file (see docs/config.md).

One file is read, the first found of: an explicit path (`--config`),
`LATIS_CONFIG`, `./latis.toml` searched upward from the current directory,
the user config file (`paths().config_file`). Files are not merged. Without
any there is one built-in unit, `local`; a file keeps it unless it defines a
unit of that name.

    [units.box]
    agent = "echo"
    agent_options = { delay = "0.1" }
    [units.box.provisioner]
    type = "container"
    image = "localhost/latis-unit:1"
    [units.box.dial]
    type = "local"

Plugin tables (`provisioner`, `dial`, each `accept` entry) name their plugin
with `type`; the other keys are the plugin's options, structured by a strict
copy of the codec's converter into the plugin's attrs class (a provisioner's
`Options`, a transport's `DIALER` or `LISTENER`). Unknown keys are errors here,
unlike on the wire. Every error is a `ConfigError` whose message names the
file, the line, the unit and the key, and says what was expected.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import tomllib
import types
import typing
from collections import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from latis_core._plugins import registry as _registry
from latis_core._wire.codec import converter as _wire_converter
from latis_core._errors import LatisError
from latis_core._os.paths import paths

__all__ = [
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DaemonConfig",
    "PluginConfig",
    "UnitConfig",
    "add_unit",
    "add_unit_text",
    "default_config",
    "find_config",
    "init_text",
    "load_config",
    "parse_config",
]

#: What a unit's name may be.
_UNIT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_UNIT_KEYS = ("agent", "agent_options", "agent_command", "provisioner", "dial", "accept")
_TOP_KEYS = ("daemon", "units")
_NO_FILE = "<config>"


# -- the model ---------------------------------------------------------------------------


@attrs.frozen
class PluginConfig:
    """A plugin table: a provisioner, a dialer or a listener.

    Attributes:
        type: the plugin's name (`process`, `local`, …).
        options: the plugin's options, structured (its `Options`, `DIALER` or
            `LISTENER` class).
        table: the table as written, without `type`.
        line: where the table starts in the file, or None (built in or implied).
        token_file: (dial) the file holding the token a unit that listens asks
            cmdr to prove (`latis-unit --token-file`).
    """

    type: str
    options: object
    table: dict[str, Any] = attrs.Factory(dict)
    line: int | None = None
    token_file: str | None = None


@attrs.frozen
class UnitConfig:
    """One unit: its agent, how it is run, how it is reached.

    Attributes:
        name: the unit's name (`[a-z0-9][a-z0-9_.-]*`).
        agent: the agent the unit runs.
        agent_options: the agent's options (`latis-unit -o KEY=VALUE`).
        provisioner: what creates and runs the unit, or None (it already runs).
        dial: how cmdr connects to the unit, or None.
        accept: listeners where the unit connects to cmdr.
        line: where the unit's table starts, or None (built in).
        agent_command: the agent's own command line, for adapters that run
            one (`latis-unit --agent acp -- gemini --experimental-acp`).
    """

    name: str
    agent: str = "echo"
    agent_options: dict[str, str] = attrs.Factory(dict)
    provisioner: PluginConfig | None = None
    dial: PluginConfig | None = None
    accept: tuple[PluginConfig, ...] = ()
    line: int | None = None
    agent_command: tuple[str, ...] = ()


@attrs.frozen
class DaemonConfig:
    """The `[daemon]` table.

    Attributes:
        socket: the daemon's unix socket, or None for `paths().socket`.
        state: the SQLite database, or None for `paths().state_file`.
        handshake_timeout: seconds a new connection gets to finish `hello`.
        dial_in_timeout: seconds `up` waits for a unit that dials in, once
            its provisioner started it.
    """

    socket: str | None = None
    state: str | None = None
    handshake_timeout: float = 10.0
    dial_in_timeout: float = 60.0


@attrs.frozen
class Config:
    """A whole config: its units (the built-in `local` among them) and the daemon's table.

    Attributes:
        units: by name; the built-in `local` first unless the file defines it.
        daemon: the `[daemon]` table.
        source: the file it came from, or None for the built-in default.
    """

    units: dict[str, UnitConfig]
    daemon: DaemonConfig = attrs.Factory(DaemonConfig)
    source: Path | None = None

    def unit(self, name: str) -> UnitConfig:
        """The unit called `name`.

        Raises:
            LookupError: no such unit (the message lists the units there are).
        """
        try:
            return self.units[name]
        except KeyError:
            where = f" in {self.source}" if self.source else ""
            raise LookupError(
                f"no unit {name!r}{where} (units: {', '.join(self.units) or 'none'})"
            ) from None


@attrs.frozen
class ConfigProblem:
    """One thing wrong in a config file, and where.

    Attributes:
        file: the file (`<config>` for text without one).
        line: the line, or None when unknown.
        unit: the unit's name, or None outside `[units]`.
        key: the key's path inside the unit (`provisioner.image`), or from the
            top of the file outside units (`daemon.socket`); None for a whole unit.
        message: what is wrong and what was expected.
    """

    file: str
    line: int | None
    unit: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        unit = f"unit {self.unit!r}: " if self.unit is not None else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}: {unit}{key}{self.message}"


class ConfigError(LatisError):
    """The config could not be found, read or understood.

    The message has one line per problem. `problems` holds them, for programs
    (empty when the file itself could not be found or read).
    """

    def __init__(self, message: str, problems: Sequence[ConfigProblem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)

    @classmethod
    def of(cls, problems: Sequence[ConfigProblem]) -> ConfigError:
        """The error for `problems` (one line each, in file order)."""
        ordered = sorted(problems, key=lambda p: p.line or 0)
        return cls("\n".join(map(str, ordered)), ordered)


# -- the strict converter ----------------------------------------------------------------

_KINDS: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "a table",
}


def _kind(value: object) -> str:
    """What TOML calls `value`'s kind."""
    if type(value) is float:
        return "a float"  # beside "expected an integer", "a number" would confuse
    return _KINDS.get(type(value), "a date or time")


class _Wrong(TypeError):
    """A value of the wrong kind (or not among the allowed ones)."""

    def __init__(self, expected: str, value: object, found: str | None = None) -> None:
        super().__init__(f"expected {expected}, got {found or _kind(value)}")


def _expected(t: Any) -> str:
    """How to say what a value of type `t` must be."""
    if t in _KINDS:
        return _KINDS[t]
    origin = typing.get_origin(t) or t
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if isinstance(origin, type):
        if issubclass(origin, enum.Enum):
            return "one of " + ", ".join(repr(m.value) for m in origin)
        if issubclass(origin, Mapping) or attrs.has(origin):
            return "a table"
        if issubclass(origin, list | tuple | set | frozenset | Sequence):
            return "an array"
        if issubclass(origin, os.PathLike):
            return "a string"
    return getattr(t, "__name__", str(t))


def _enum(t: type[enum.Enum], value: object) -> enum.Enum:
    try:
        return t(value)
    except ValueError:
        raise _Wrong(_expected(t), value, repr(value)) from None


def _scalar(cls: type) -> Callable[[Any, Any], Any]:
    expected = _KINDS[cls]

    def hook(value: Any, t: Any) -> Any:
        if type(value) is not cls:
            raise _Wrong(expected, value)
        if t is not cls and isinstance(t, type) and issubclass(t, enum.Enum):
            return _enum(t, value)  # a str or int enum lands here (its MRO has str, int)
        return value

    return hook


def _float(value: Any, _: Any) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    raise _Wrong("a number", value)


def _path(value: Any, _: Any) -> Path:
    if type(value) is not str:
        raise _Wrong("a string", value)
    return Path(value)


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


#: What a sequence type is built as, from the list TOML gives.
_BUILD: dict[Any, Callable[[list[Any]], Any]] = {
    list: list,
    tuple: tuple,
    set: set,
    frozenset: frozenset,
    abc.Sequence: tuple,
    abc.MutableSequence: list,
    abc.Set: frozenset,
    abc.MutableSet: set,
}


def _is_sequence(t: Any) -> bool:
    origin = typing.get_origin(t) or t
    if origin is tuple:
        args = typing.get_args(t)
        return not args or (len(args) == 2 and args[1] is Ellipsis)  # homogeneous only
    return origin in _BUILD


def _is_mapping(t: Any) -> bool:
    return (typing.get_origin(t) or t) in (dict, abc.Mapping, abc.MutableMapping)


def _is_literal(t: Any) -> bool:
    return typing.get_origin(t) is Literal


def _is_enum(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, enum.Enum)


def _note(exc: Exception, index: int | str, t: Any) -> Exception:
    exc.add_note(IterableValidationNote(f"at {index!r}", index, t))
    return exc


def _make_strict() -> cattrs.Converter:
    conv = _wire_converter.copy(forbid_extra_keys=True, detailed_validation=True)
    for cls in (str, int, bool):
        conv.register_structure_hook(cls, _scalar(cls))
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(Path, _path)

    def sequence(t: Any) -> Callable[[Any, Any], Any]:
        args = typing.get_args(t)
        item_type = args[0] if args else Any
        origin = typing.get_origin(t) or t
        build: Callable[[list[Any]], Any] = _BUILD.get(origin, tuple)
        expected = "an array" + (" of strings" if item_type is str else "")

        def hook(value: Any, _: Any) -> Any:
            if type(value) is not list:
                raise _Wrong(expected, value)
            item = conv.get_structure_hook(item_type)
            out, errors = [], []
            for index, element in enumerate(value):
                try:
                    out.append(item(element, item_type))
                except Exception as exc:
                    errors.append(_note(exc, index, item_type))
            if errors:
                raise IterableValidationError(f"While structuring {t!r}", errors, t)
            return build(out)

        return hook

    def mapping(t: Any) -> Callable[[Any, Any], Any]:
        args = typing.get_args(t)
        value_type = args[1] if len(args) == 2 else Any
        expected = "a table" + (" of strings" if value_type is str else "")

        def hook(value: Any, _: Any) -> Any:
            if type(value) is not dict:
                raise _Wrong(expected, value)
            item = conv.get_structure_hook(value_type)
            out, errors = {}, []
            for key, element in value.items():
                try:
                    out[key] = item(element, value_type)
                except Exception as exc:
                    errors.append(_note(exc, key, value_type))
            if errors:
                raise IterableValidationError(f"While structuring {t!r}", errors, t)
            return out

        return hook

    def union(t: Any) -> Callable[[Any, Any], Any]:
        members = [a for a in typing.get_args(t) if a is not type(None)]
        if len(members) == 1:  # `X | None`: TOML has no null, so it is X
            return conv.get_structure_hook(members[0])
        expected = " or ".join(dict.fromkeys(_expected(m) for m in members))

        def hook(value: Any, _: Any) -> Any:
            for member in members:
                try:
                    return conv.structure(value, member)
                except Exception:
                    continue
            raise _Wrong(expected, value)

        return hook

    def literal(t: Any) -> Callable[[Any, Any], Any]:
        allowed = typing.get_args(t)

        def hook(value: Any, _: Any) -> Any:
            if value in allowed and type(value) in {type(a) for a in allowed}:
                return value
            raise _Wrong(_expected(t), value, repr(value))

        return hook

    def attrs_class(cls: type) -> Callable[[Any, Any], Any]:
        inner: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, conv)  # strict: conv's

        def hook(value: Any, _: Any) -> Any:
            if type(value) is not dict:
                raise _Wrong("a table", value)
            return inner(value, cls)

        return hook

    # Registered last, checked first.
    conv.register_structure_hook_factory(_is_sequence, sequence)
    conv.register_structure_hook_factory(_is_mapping, mapping)
    conv.register_structure_hook_factory(_is_union, union)
    conv.register_structure_hook_factory(_is_literal, literal)
    conv.register_structure_hook_factory(_is_enum, lambda t: lambda v, _: _enum(t, v))
    conv.register_structure_hook_factory(attrs.has, attrs_class)
    return conv


#: The converter for config: the wire's, made strict (unknown keys are errors,
#: an array is never read from a string, every value is checked).
_STRICT = _make_strict()

_Keys = tuple[str | int, ...]


def _unknown(what: str, key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown {what} (did you mean {close[0]!r}?)"
    return f"unknown {what} (known: {', '.join(sorted(known)) or 'none'})"


def _faults(exc: BaseException, at: _Keys = ()) -> Iterator[tuple[_Keys, str]]:
    """Each fault in a structuring error: where (keys from the table) and what."""
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        for key in sorted(exc.extra_fields):
            yield at + (key,), _unknown("option", key, known)
    elif isinstance(exc, ClassValidationError):
        named, other = exc.group_exceptions()
        for sub, note in named:
            yield from _faults(sub, at + (note.name,))
        for sub in other:
            yield from _faults(sub, at)
    elif isinstance(exc, IterableValidationError):
        indexed, rest = exc.group_exceptions()
        for sub, inote in indexed:
            yield from _faults(sub, at + (inote.index,))
        for sub in rest:
            yield from _faults(sub, at)
    elif isinstance(exc, KeyError):
        yield at, "required option missing"
    elif isinstance(exc, _Wrong):
        yield at, str(exc)
    else:
        yield at, f"invalid value ({exc})"


# -- where keys are ----------------------------------------------------------------------

_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_KEY}(?:[ \t]*\.[ \t]*{_KEY})*"
_HEADER = re.compile(rf"[ \t]*(\[\[?)[ \t]*({_DOTTED})[ \t]*\]")
_ASSIGN = re.compile(rf"[ \t]*({_DOTTED})[ \t]*=")


def _split_key(dotted: str) -> tuple[str, ...]:
    """`units."a.b" . c` → ("units", "a.b", "c"), by TOML's own rules."""
    try:
        node: Any = tomllib.loads(f"{dotted} = 0")
    except tomllib.TOMLDecodeError:
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
    """The line of each table and key in a TOML text (tomllib gives none).

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
                scan = _ValueScan(path, self._note)
                if scan.feed(line[assign.end() :], number):
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


# -- reading -----------------------------------------------------------------------------


def _bare(key: str | int) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dotted(path: _Keys) -> str:
    """("accept", 0, "port") → "accept[0].port"."""
    return "".join(
        _bare(k) if isinstance(k, int) or i == 0 else f".{_bare(k)}" for i, k in enumerate(path)
    )


@attrs.define
class _Reader:
    file: str
    locate: _Locator
    problems: list[ConfigProblem] = attrs.Factory(list)

    def error(self, unit: str | None, path: _Keys, message: str) -> None:
        """Record a problem at `path` (from the top of the file)."""
        key = path[2:] if unit is not None else path
        line = self.locate.line(path)
        self.problems.append(ConfigProblem(self.file, line, unit, _dotted(key) or None, message))

    def structure(self, cls: type, table: dict[str, Any], unit: str | None, at: _Keys) -> Any:
        try:
            return _STRICT.structure(table, cls)
        except Exception as exc:
            for where, message in _faults(exc):
                self.error(unit, at + where, message)
            return None


def _transports_with(attribute: str) -> list[str]:
    """The transports whose module has `attribute` (DIALER or LISTENER)."""
    found = []
    for name in _registry.transport_names():
        try:
            if getattr(_registry.load_transport(name), attribute, None) is not None:
                found.append(name)
        except Exception:
            continue  # a plugin that does not load cannot be offered
    return found


def _plugin(
    reader: _Reader,
    unit: str,
    at: _Keys,
    value: object,
    what: Literal["provisioner", "dial", "accept"],
) -> tuple[PluginConfig, Any] | None:
    """Read a plugin table (`what`: provisioner, dial or accept); None if it is wrong."""
    if what == "provisioner":
        names, load, noun = _registry.provisioner_names, _registry.load_provisioner, "provisioner"
    else:
        names, load, noun = _registry.transport_names, _registry.load_transport, "transport"
    if type(value) is not dict:
        reader.error(unit, at, f"expected a table with a 'type' key, got {_kind(value)}")
        return None
    kind = value.get("type")
    if kind is None:
        known = ", ".join(names()) or "none"
        reader.error(unit, at + ("type",), f"required key missing (the {noun}: one of {known})")
        return None
    if type(kind) is not str:
        reader.error(unit, at + ("type",), f"expected a string, got {_kind(kind)}")
        return None
    try:
        plugin = load(kind)
    except LookupError:
        known = ", ".join(names()) or "none"
        reader.error(unit, at + ("type",), f"unknown {noun} {kind!r} (known: {known})")
        return None
    except Exception as exc:
        reader.error(unit, at + ("type",), f"{noun} {kind!r} cannot be loaded ({exc})")
        return None
    if what == "provisioner":
        cls = getattr(plugin, "Options", None)
        missing = f"provisioner {kind!r} has no Options class"
    else:
        attribute, ability = ("DIALER", "dialer") if what == "dial" else ("LISTENER", "listener")
        cls = getattr(plugin, attribute, None)
        able = ", ".join(_transports_with(attribute)) or "none"
        missing = f"transport {kind!r} has no {ability} (transports with one: {able})"
    if cls is None:
        reader.error(unit, at + ("type",), missing)
        return None
    table = {k: v for k, v in value.items() if k != "type"}
    token_file = None
    if what == "dial" and "token_file" in table:
        # Not the transport's: the proof a unit that listens asks of cmdr.
        token_file = table.pop("token_file")
        if type(token_file) is not str or not token_file:
            reader.error(unit, at + ("token_file",), f"expected a file name, got "
                         f"{_kind(token_file)}")
            return None
    before = len(reader.problems)
    options = reader.structure(cls, table, unit, at)
    if len(reader.problems) > before:
        return None
    if token_file is not None:
        table["token_file"] = token_file
    return PluginConfig(kind, options, table, reader.locate.line(at), token_file), plugin


def _agent_options(reader: _Reader, unit: str, value: object) -> dict[str, str]:
    at: _Keys = ("units", unit, "agent_options")
    if type(value) is not dict:
        reader.error(unit, at, f"expected a table of strings, got {_kind(value)}")
        return {}
    for key, item in value.items():
        if type(item) is not str:
            shown = str(item).lower() if type(item) is bool else str(item)
            reader.error(
                unit, at + (key,), f'expected a string, got {_kind(item)} (write "{shown}")'
            )
    return dict(value)


def _unit(reader: _Reader, name: str, table: object) -> UnitConfig | None:
    at: _Keys = ("units", name)
    before = len(reader.problems)
    if not _UNIT_NAME.fullmatch(name):
        reader.error(
            name,
            at,
            "bad unit name: expected lower-case letters, digits, '_', '.' and '-', "
            "starting with a letter or a digit",
        )
    if type(table) is not dict:
        reader.error(name, at, f"expected a table, got {_kind(table)}")
        return None
    for key in table:
        if key not in _UNIT_KEYS:
            reader.error(name, at + (key,), _unknown("key", key, _UNIT_KEYS))
    agent = table.get("agent", "echo")
    if type(agent) is not str:
        reader.error(name, at + ("agent",), f"expected a string, got {_kind(agent)}")
    agent_options = _agent_options(reader, name, table.get("agent_options", {}))
    agent_command = table.get("agent_command", [])
    if type(agent_command) is not list or any(type(w) is not str for w in agent_command):
        reader.error(
            name,
            at + ("agent_command",),
            f"expected an array of strings (the agent's command line), got {_kind(agent_command)}",
        )
        agent_command = []

    provisioner = dial = None
    provisioner_class: Any = None
    if "provisioner" in table:
        read = _plugin(reader, name, at + ("provisioner",), table["provisioner"], "provisioner")
        if read:
            provisioner, provisioner_class = read
    if "dial" in table:
        read = _plugin(reader, name, at + ("dial",), table["dial"], "dial")
        dial = read[0] if read else None
    accept: list[PluginConfig] = []
    if "accept" in table:
        entries = table["accept"]
        if type(entries) is not list:
            reader.error(
                name,
                at + ("accept",),
                f"expected an array of tables ([[units.{_bare(name)}.accept]]), "
                f"got {_kind(entries)}",
            )
            entries = []
        for index, entry in enumerate(entries):
            read = _plugin(reader, name, at + ("accept", index), entry, "accept")
            if read:
                accept.append(read[0])

    if "dial" not in table and "accept" not in table:
        if "provisioner" not in table:
            reader.error(
                name,
                at,
                f"neither dial nor accept: expected [units.{_bare(name)}.dial], "
                f"[[units.{_bare(name)}.accept]], or a provisioner (which implies "
                'dial = { type = "local" })',
            )
        elif provisioner is not None:
            if callable(getattr(provisioner_class, "dialer", None)):
                dial = _implied_local(reader, name)
            else:
                reader.error(
                    name,
                    at,
                    f"neither dial nor accept, and provisioner {provisioner.type!r} cannot "
                    f"dial the unit it runs: expected [units.{_bare(name)}.dial] or "
                    f"[[units.{_bare(name)}.accept]]",
                )
    elif (
        dial is not None
        and dial.type == "local"
        and "provisioner" not in table
        and not getattr(dial.options, "command", None)
    ):
        reader.error(
            name,
            at + ("dial", "command"),
            "required without a provisioner (the command that starts the unit)",
        )
    if len(reader.problems) > before:
        return None
    return UnitConfig(
        name,
        agent if type(agent) is str else "echo",
        agent_options,
        provisioner,
        dial,
        tuple(accept),
        reader.locate.line(at),
        tuple(agent_command),
    )


def _implied_local(reader: _Reader, unit: str) -> PluginConfig | None:
    read = _plugin(reader, unit, ("units", unit, "dial"), {"type": "local"}, "dial")
    return None if read is None else attrs.evolve(read[0], line=None)


def _daemon(reader: _Reader, value: object) -> DaemonConfig:
    at: _Keys = ("daemon",)
    if type(value) is not dict:
        reader.error(None, at, f"expected a table, got {_kind(value)}")
        return DaemonConfig()
    for key in ("handshake_timeout", "dial_in_timeout"):
        timeout = value.get(key, 1)
        if type(timeout) in (int, float) and timeout <= 0:
            reader.error(None, at + (key,), f"expected seconds above 0, got {timeout}")
    daemon = reader.structure(DaemonConfig, value, None, at)
    return daemon if isinstance(daemon, DaemonConfig) else DaemonConfig()


_BUILTIN_LOCAL = {"agent": "echo", "provisioner": {"type": "process"}, "dial": {"type": "local"}}


def parse_config(text: str, source: Path | None = None) -> Config:
    """Read config from TOML `text`; `source` is the file it came from (for messages).

    Raises:
        ConfigError: the text is not TOML, or not a valid config (one line per problem).
    """
    file = str(source) if source is not None else _NO_FILE
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        problem = ConfigProblem(
            file, int(found[1]) if found else None, None, None, f"invalid TOML: {exc}"
        )
        raise ConfigError.of([problem]) from None
    reader = _Reader(file, _Locator(text))
    for key, value in data.items():
        if key not in _TOP_KEYS:
            what = "table" if type(value) is dict else "key"
            reader.error(None, (key,), _unknown(what, key, _TOP_KEYS))
    daemon = _daemon(reader, data.get("daemon", {}))
    units: dict[str, UnitConfig] = {}
    declared = data.get("units", {})
    if type(declared) is not dict:
        reader.error(None, ("units",), f"expected a table, got {_kind(declared)}")
        declared = {}
    if "local" not in declared:
        builtin = _Reader("<built-in>", _Locator(""))
        local = _unit(builtin, "local", _BUILTIN_LOCAL)
        if local is None:
            raise ConfigError.of(builtin.problems)
        units["local"] = local
    for name, table in declared.items():
        unit = _unit(reader, name, table)
        if unit is not None:
            units[name] = unit
    if reader.problems:
        raise ConfigError.of(reader.problems)
    return Config(units, daemon, source)


def default_config() -> Config:
    """The config without a file: the built-in unit `local` and nothing else."""
    return parse_config("", None)


def _existing(path: Path, origin: str) -> Path:
    if not path.is_file():
        why = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"{path}: config file {why} (named by {origin})")
    return path


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read, or None for the built-in default.

    First found wins: `explicit` (the CLI's `--config`), `LATIS_CONFIG`,
    `latis.toml` in the current directory or the nearest parent that has one,
    then the user config file (`paths().config_file`).

    Raises:
        ConfigError: `explicit` or `LATIS_CONFIG` names a file that does not exist.
    """
    if explicit is not None and os.fspath(explicit) != "":
        return _existing(Path(explicit).expanduser(), "--config")
    named = os.environ.get("LATIS_CONFIG")
    if named:
        return _existing(Path(named).expanduser(), "LATIS_CONFIG")
    here = Path.cwd()
    for folder in (here, *here.parents):
        candidate = folder / "latis.toml"
        if candidate.is_file():
            return candidate
    user = paths().config_file
    return user if user.is_file() else None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find the config (see `find_config`) and read it; the default without one.

    Raises:
        ConfigError: it could not be found, read or understood.
    """
    path = find_config(explicit)
    if path is None:
        return default_config()
    return parse_config(_read(path), path)


# -- writing -----------------------------------------------------------------------------


def add_unit_text(name: str, table: Mapping[str, Any]) -> str:
    """The TOML of a new unit `name` (a `[units.NAME]` table and its sub-tables).

    Raises:
        ConfigError: `name` is not a valid unit name.
    """
    import tomli_w

    if not _UNIT_NAME.fullmatch(name):
        raise ConfigError(
            f"bad unit name {name!r}: expected lower-case letters, digits, '_', '.' and '-', "
            "starting with a letter or a digit"
        )
    return tomli_w.dumps({"units": {name: dict(table)}})


def add_unit(path: str | os.PathLike[str], name: str, table: Mapping[str, Any]) -> Config:
    """Append unit `name` to the config file at `path` (created if need be); return the result.

    What the file holds already is kept as it is, comments and all. Nothing
    is written unless the whole file, with the new unit, is a valid config.

    Raises:
        ConfigError: the name is taken or invalid, the unit is not valid, or the
            file is not valid as it stands.
    """
    target = Path(path)
    existing = _read(target) if target.exists() else ""
    before = parse_config(existing, target)
    if name in before.units and before.units[name].line is not None:  # not the built-in
        problem = ConfigProblem(str(target), before.units[name].line, name, None, "already defined")
        raise ConfigError.of([problem])
    addition = add_unit_text(name, table)
    if existing and not existing.endswith("\n"):
        addition = "\n" + addition
    if existing.strip():
        addition = "\n" + addition
    try:
        after = parse_config(existing + addition, target)
    except ConfigError as exc:
        raise ConfigError(f"cannot add unit {name!r}:\n{exc}", exc.problems) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as out:
        out.write(addition)
    return after


def init_text() -> str:
    """A commented `latis.toml` showing every provisioner, dialer, listener and agent.

    As written it defines one unit, `demo`; the built-in `local` stays.
    """
    return _INIT_TEXT


_INIT_TEXT = """\
# latis.toml: the units latis knows, and how it reaches them.
#
# latis reads ONE file, the first it finds of: --config FILE, $LATIS_CONFIG,
# ./latis.toml (here or in a parent directory), the user config file
# (~/.config/latis/config.toml on Linux). Reference: docs/config.md.
#
# Each [units.NAME] table is a unit: the agent it runs, an optional provisioner
# that creates and runs it, and how cmdr reaches it: `dial` (cmdr connects to
# the unit), `accept` (the unit connects to cmdr), or both. There is always a
# built-in unit `local` (process provisioner, local dial, echo agent) unless a
# unit of that name is defined here.

# [daemon]
# handshake_timeout = 10.0            # seconds a new connection gets for `hello`
# socket = "/run/user/1000/latis/cmdr.sock"       # default: the user runtime dir
# state = "/home/me/.local/share/latis/latis.db"  # default: the user data dir

[units.demo]
# The agent the unit runs, and its options (always strings). echo:
#   delay  = seconds before each chunk (default "0")
#   ask    = a question put to you before it answers (default: none)
#   repeat = how many times the prompt is echoed (default "1")
agent = "echo"
agent_options = { delay = "0.05", repeat = "1" }
# agent_options = { ask = "Which language?" }

# The provisioner creates, starts, stops and destroys the unit.
# process: a latis-unit process on this machine.
[units.demo.provisioner]
type = "process"
# command = ["latis-unit"]            # default: this Python's latis-unit
# env = { LOG_LEVEL = "debug" }       # added to the inherited environment
# cwd = "/srv/agents"                 # default: the daemon's
# ready_timeout = 15.0                # seconds `up` waits for the unit to answer
# stop_timeout = 10.0                 # seconds after SIGTERM before SIGKILL

# dial: how cmdr connects to the unit. A unit with a provisioner and neither
# dial nor accept dials { type = "local" }.
# local: without a command, the unit its provisioner runs (through the
# provisioner); with one, that command, started for each connection, over stdio.
[units.demo.dial]
type = "local"
# command = ["latis-unit", "--stdio"]
# env = { LOG_LEVEL = "debug" }       # added to the inherited environment
# cwd = "/srv/agents"
# grace = 5.0                         # seconds it gets to exit when the connection ends

# container: the unit in a podman or docker container.
# [units.box]
# agent = "echo"
# [units.box.provisioner]
# type = "container"
# image = "localhost/latis-unit:1"    # required: an image holding latis-unit
# engine = "podman"                   # "podman", "docker" or a path (default: podman, else docker)
# mounts = ["/srv/data:/data:ro"]     # HOST:CONTAINER[:ro]
# env = { LOG_LEVEL = "debug" }       # in the container
# workdir = "/work"                   # in the container
# command = ["latis-unit"]            # the unit's command in the container
# name = "latis-box"                  # the container's name (default: latis-UNIT)
# extra_args = ["--memory", "2g"]     # more `ENGINE create` arguments
# init = true                         # an init as PID 1 (--init)
# timeout = 60.0                      # seconds any engine command may take
# create_timeout = 600.0              # seconds `create` may take (it may pull)
# ready_timeout = 30.0                # seconds `up` waits for the unit to answer
# stop_timeout = 5                    # seconds `ENGINE stop` waits before SIGKILL

# unix: a unit that already runs and listens on a unix socket
# (latis-unit --listen unix:PATH); no provisioner.
# [units.sock]
# dial = { type = "unix", path = "/run/user/1000/latis-sock.sock" }

# A unit that already runs elsewhere and listens (latis-unit --listen URL):
# [units.gpu.dial]
# type = "tcp"
# host = "10.0.0.5"
# port = 7447
# fingerprint = "sha256:…"            # what `latis-unit --tls` printed (or ca = FILE)
# token_file = "~/.latis/gpu.token"   # the unit's --token-file, proven by cmdr
# Other dialers:
# dial = { type = "websocket", url = "wss://units.example.com:7448/latis" }
# dial = { type = "quic", host = "10.0.0.5", port = 7447, fingerprint = "sha256:…" }
# dial = { type = "ssh", host = "gpu1", user = "me", command = ["latis-unit", "--stdio"] }
# dial = { type = "container", container = "my-agent" }  # exec into a running one

# A unit that dials in (behind NAT, short-lived boxes): `latis unit add edge
# --accept tcp://0.0.0.0:7447` writes this and prints the line to run on it.
# [units.edge]
# agent = "echo"
# [[units.edge.accept]]
# type = "tcp"                        # also "unix", "websocket", "quic"
# host = "0.0.0.0"
# port = 7447
# tls = true                          # cmdr's own CA; the unit pins it
"""
