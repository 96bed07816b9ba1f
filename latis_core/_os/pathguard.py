"""Paths an agent names, kept inside a root folder.

An agent asks the unit to read and write files and to run commands in a
folder (ACP's `fs/*` and `terminal/*`). Every such path is hostile until
proved otherwise (THREATS.md, "Path traversal through agent file requests"):
`resolve_inside` resolves it the way the kernel will (symlinks followed,
`..` applied after each symlink) and refuses it unless the result is the
root itself or under it.

Refused outright, before anything touches the file system: an empty path, a
NUL byte, text that is not valid Unicode, a backslash (a Windows separator:
never part of a name an agent means on POSIX), a Windows drive name (`C:`)
or a UNC name (`\\\\host\\share`, `//host/share`), a path over 4096 bytes, a
name over 255 bytes, and percent-encoded dots and separators (`%2e`, `%2f`,
`%5c`: THREATS.md's `..%2f` case). A literal name like `..%2fetc` would be
harmless here (nothing decodes it), but no agent needs one, and a layer that
did decode it (a URL, a log viewer) must never be handed one. Then `..`, an
absolute path elsewhere, or a symlink that leads out is refused once resolved.

What is left: a symlink swapped in between this check and the open (a race
open to whoever can write inside the root). Callers open the final name with
`O_NOFOLLOW`, which closes it for the last component.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["MAX_NAME", "MAX_PATH", "PathRefused", "resolve_inside"]

#: Longest path accepted, in bytes of UTF-8 (Linux's PATH_MAX).
MAX_PATH = 4096
#: Longest single name accepted, in bytes of UTF-8 (NAME_MAX).
MAX_NAME = 255

_DRIVE = re.compile(r"^[A-Za-z]:")
_ENCODED = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


class PathRefused(ValueError):
    """A path names something outside the root, or is not a path at all."""

    def __init__(self, path: object, reason: str) -> None:
        shown = repr(path) if len(repr(path)) <= 200 else repr(path)[:197] + "..."
        super().__init__(f"path {shown} refused: {reason}")
        self.path = path
        self.reason = reason


def resolve_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Return `path` resolved, if it is `root` or inside it.

    A relative `path` is taken relative to `root`; an absolute one must lead
    inside it. Symlinks are followed (also in `root`, so a root that is itself
    a symlink works); a name that does not exist yet is fine (a file about to
    be written), as long as where it would be is inside.

    Raises:
        PathRefused: the path escapes the root, or is refused outright (see
            the module's docstring for the list).
    """
    raw = os.fspath(path)
    if not isinstance(raw, str):
        raise PathRefused(raw, "a path must be text")
    if not raw:
        raise PathRefused(raw, "the path is empty")
    if "\0" in raw:
        raise PathRefused(raw, "it contains a NUL byte")
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise PathRefused(raw, "it is not valid Unicode (a lone surrogate)") from None
    if "\\" in raw:
        if raw.startswith("\\\\"):
            raise PathRefused(raw, "a Windows UNC name (\\\\host\\share) is not accepted")
        raise PathRefused(raw, "a backslash (a Windows path separator) is not accepted")
    if _ENCODED.search(raw):
        raise PathRefused(raw, "a percent-encoded dot or separator (%2e, %2f, %5c)")
    if _DRIVE.match(raw):
        raise PathRefused(raw, "a Windows drive name is not accepted")
    if raw.startswith("//") and not raw.startswith("///"):
        raise PathRefused(raw, "a UNC-style name (//host/share) is not accepted")
    if size > MAX_PATH:
        raise PathRefused(raw, f"it is longer than {MAX_PATH} bytes")
    for name in raw.split("/"):
        if len(name.encode("utf-8")) > MAX_NAME:
            raise PathRefused(raw, f"a name in it is longer than {MAX_NAME} bytes")
    base = Path(os.path.realpath(os.fspath(root)))
    joined = raw if raw.startswith("/") else os.path.join(base, raw)
    try:
        resolved = Path(os.path.realpath(joined))
    except (OSError, ValueError) as exc:  # (realpath is lenient: this is belt and braces)
        raise PathRefused(raw, f"it cannot be resolved: {exc}") from None
    if resolved != base and not resolved.is_relative_to(base):
        raise PathRefused(raw, f"it is outside the working directory {str(base)!r}")
    if len(os.fsencode(resolved)) > MAX_PATH:
        raise PathRefused(raw, f"resolved, it is longer than {MAX_PATH} bytes")
    return resolved
