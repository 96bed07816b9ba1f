"""Shell completion of unit and session names (`latis --install-completion`).

Read from the config and the state file (read-only), never from the daemon:
completion stays fast and never hangs when cmdr is down. Any failure offers
nothing rather than an error in the middle of the user's command line.
"""

from __future__ import annotations

import os
from typing import Any


def units(context: Any = None) -> list[str]:
    """The units of the config in use."""
    try:
        from latis_core import load_config

        return sorted(load_config(os.environ.get("LATIS_CONFIG") or None).units)
    except Exception:  # noqa: BLE001 (completion offers nothing rather than fail)
        return []


def sessions(context: Any = None) -> list[tuple[str, str]]:
    """The open sessions, each with its unit and state (the current one first)."""
    try:
        from latis_core import StateStore, paths

        from ._current import current_session

        path = paths().state_file
        if not path.exists():
            return []
        with StateStore.open_readonly(path) as state:
            rows = state.list_sessions(None)
        current = (current_session() or {}).get("session")
        found = [(r.id, f"{r.unit}, {r.state}" + (", current" if r.id == current else ""))
                 for r in rows]
        return sorted(found, key=lambda item: item[0] != current)
    except Exception:  # noqa: BLE001
        return []
