"""Which config file a command reads (`find_config`), and the error a config
raises (`ConfigError`).

Apart from the config's reading (`latis_core._cmdr.config`) so that a command
that only names the file to the daemon (`latis prompt`) does not import the
config's classes, its plugins' registry and its converter.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from latis_core._errors import ErrorCode, LatisError
from latis_core._os.paths import paths

if TYPE_CHECKING:
    from latis_core._cmdr.config import ConfigProblem

__all__ = ["ConfigError", "find_config"]


class ConfigError(LatisError):
    """The config could not be found, read or understood.

    The message has one line per problem. `problems` holds them, for programs
    (empty when the file itself could not be found or read).
    """

    code = ErrorCode.BAD_CONFIG

    def __init__(self, message: str, problems: Sequence[ConfigProblem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)

    @classmethod
    def of(cls, problems: Sequence[ConfigProblem]) -> ConfigError:
        """The error for `problems` (one line each, in file order)."""
        ordered = sorted(problems, key=lambda p: p.line or 0)
        return cls("\n".join(map(str, ordered)), ordered)


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


def _existing(path: Path, origin: str) -> Path:
    if not path.is_file():
        why = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"{path}: config file {why} (named by {origin})")
    return path
