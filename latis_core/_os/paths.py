"""Where latis keeps things on this machine (XDG through platformdirs).

| what | where | override |
|---|---|---|
| user config | `user_config_dir/config.toml` | `LATIS_CONFIG` (a file), `--config` |
| state (SQLite: units, sessions, transcripts) | `user_data_dir/latis.db` | |
| daemon socket, pid and lock; unit sockets | `user_runtime_dir` (0700), else `/tmp/latis-UID` | |
| daemon and unit logs | `user_log_dir` | |

`LATIS_HOME`, when set, puts all of them under one folder (`config.toml`,
`data/`, `run/`, `log/`): tests and side-by-side installs use it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

__all__ = ["Paths", "paths"]


class Paths(NamedTuple):
    """The folders latis uses."""

    config_file: Path
    data_dir: Path
    run_dir: Path
    log_dir: Path

    @property
    def state_file(self) -> Path:
        """The SQLite database."""
        return self.data_dir / "latis.db"

    @property
    def socket(self) -> Path:
        """The daemon's unix socket."""
        return self.run_dir / "cmdr.sock"

    @property
    def units_dir(self) -> Path:
        """Where provisioned units keep their sockets (one folder each)."""
        return self.run_dir / "units"

    def private_run_dir(self) -> Path:
        """`run_dir`, created with mode 0700 (and checked: ours, not open to others)."""
        make_private_dir(self.run_dir)
        return self.run_dir


def make_private_dir(path: Path) -> None:
    """Create `path` (0700) if needed; refuse one that others may write or read.

    Raises:
        PermissionError: it belongs to another user, or its mode lets others in.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {info.st_uid}, not to us")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def paths() -> Paths:
    """The folders for this user, from `LATIS_HOME` or the platform's conventions."""
    home = os.environ.get("LATIS_HOME")
    if home:
        base = Path(home)
        return Paths(base / "config.toml", base / "data", base / "run", base / "log")
    import platformdirs

    return Paths(
        Path(platformdirs.user_config_dir("latis")) / "config.toml",
        Path(platformdirs.user_data_dir("latis")),
        _runtime_dir(),
        Path(platformdirs.user_log_dir("latis")),
    )


def _runtime_dir() -> Path:
    # XDG_RUNTIME_DIR is often unset on servers and in containers; platformdirs
    # then guesses (and warns on every call). Our fallback is /tmp/latis-UID,
    # made 0700 and checked to be ours before use (make_private_dir).
    if sys.platform.startswith("linux") or "XDG_RUNTIME_DIR" in os.environ:
        xdg = os.environ.get("XDG_RUNTIME_DIR", "")
        if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
            return Path(xdg) / "latis"
        return Path(f"/tmp/latis-{os.getuid()}")
    import platformdirs

    return Path(platformdirs.user_runtime_dir("latis"))
