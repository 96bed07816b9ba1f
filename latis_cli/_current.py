"""The current session: the one `latis prompt` continues.

Like kubectl's current context, it is one per latis home (a small file in the
data folder, beside the state database); `LATIS_SESSION` overrides it for one
shell (`export LATIS_SESSION=SID`), as `KUBECONFIG`/`--context` do.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def _file() -> Path:
    from latis_core import paths

    return paths().data_dir / "current-session.json"


def current_session() -> dict[str, Any] | None:
    """`{"session": id, "unit": name}` of the current session, or None."""
    override = os.environ.get("LATIS_SESSION")
    if override:
        return {"session": override, "unit": _unit_of(override)}
    try:
        data = json.loads(_file().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("session"), str):
        return None
    return data


def set_current_session(session: str, unit: str) -> None:
    """Make `session` (on `unit`) the current one (written atomically)."""
    import tempfile

    path = _file()
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file of its own: two commands may set it at the same moment.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".current-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps({"session": session, "unit": unit}))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _unit_of(session: str) -> str | None:
    """The unit of `session`, from the state file (None if unknown)."""
    from latis_core import StateError, StateStore, paths

    state_file = paths().state_file
    if not state_file.exists():
        return None
    try:
        with StateStore.open_readonly(state_file) as state:
            row = state.get_session(session)
    except StateError:
        return None
    return row.unit if row is not None else None
