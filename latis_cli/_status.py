"""`latis status`'s work, apart from its command (`_sessions.status`): this
module imports no cyclopts, so that `latis status` alone on the command line
runs before the parser of every command is built (`latis_cli.main`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from ._cmdr import OK

if TYPE_CHECKING:
    from latis_core import StateStore as State


def show_status(json_output: bool = False) -> int:
    """Print what runs where (see `latis status --help`); the exit status."""
    from latis_core import a2a_state, session_context

    from ._cmdr import daemon_pid

    pid = daemon_pid()
    units: list[dict[str, Any]] = []
    attention: list[dict[str, Any]] = []
    try:
        from latis_core import config_unit_names, paths

        named: set[str] | None = config_unit_names(
            os.environ.get("LATIS_CONFIG") or None, paths().run_dir / "config-units.json")
    except Exception:  # a broken config is reported by the commands that use it
        named = None
    state = _state()
    if state is not None:
        with state:
            # One query per table, not one per unit (10,000 units).
            by_unit: dict[int, list[Any]] = {}
            for session in state.list_sessions():
                by_unit.setdefault(session.unit_id, []).append(session)
            connections = state.list_connections()
            for unit_id, name, provisioner in state.unit_names():
                conn = connections.get(name)
                sessions = by_unit.get(unit_id, [])
                for s in sessions:
                    if s.state not in ("busy", "waiting"):
                        continue
                    entry: dict[str, Any] = {
                        "unit": name, "session": s.id, "state": s.state,
                        "a2a_state": a2a_state(s.state),
                        "context": session_context(state, s.id),
                    }
                    last = state.last_prompt(s.id)
                    pending = state.pending_inputs(last.id) if last is not None else []
                    if s.state == "waiting" and last is not None and pending:
                        entry["question"] = {"id": f"{last.id}.{pending[0].number}",
                                             "question": pending[0].question,
                                             "since": pending[0].asked_at}
                    attention.append(entry)
                units.append({
                    "unit": name,
                    "provisioner": provisioner,
                    "connection": conn.state if conn else "disconnected",
                    "transport": conn.transport if conn else None,
                    "error": conn.error if conn else None,
                    "last_seen": conn.last_seen if conn else None,
                    "sessions": {s.id: s.state for s in sessions},
                    "in_config": named is None or name in named,
                })
    from ._current import current_session

    current = current_session()
    data = {"daemon": {"running": pid is not None, "pid": pid}, "units": units,
            "current_session": current, "active": attention}
    if json_output:
        print(json.dumps(data, indent=2))
        return OK
    from ._console import print_table

    daemon = f"cmdr runs (pid {pid})" if pid else "cmdr is not running (last known state)"
    print(daemon, file=sys.stderr)
    if current is not None:
        print(f"current session: {current['session']} on unit {current['unit']}",
              file=sys.stderr)
    if not units:
        print("no units yet: latis prompt \"hello\" brings up the built-in unit 'local'",
              file=sys.stderr)
        return OK
    rows = []
    for u in units:
        states = list(u["sessions"].values())
        busy = states.count("busy")
        waiting = states.count("waiting")
        seen = "now" if pid and u["connection"] == "connected" else _ago(u["last_seen"])
        rows.append((u["unit"], u["provisioner"] or "-", _connection(u), str(len(states)),
                     str(busy), str(waiting), seen, _note(u)))
    print_table(("unit", "provisioner", "connection", "sessions", "busy", "waiting",
                 "last seen", "note"), rows)
    for a in sorted(attention, key=lambda a: a["state"] != "waiting"):
        context = a["context"]
        used = (f"context {context.get('context_used', 0):,.0f}"
                + (f"/{context['context_size']:,.0f}" if "context_size" in context else ""))\
            if context else "context: not reported"
        if a["state"] == "waiting":
            question = a.get("question")
            asks = (f"asks {question['question']!r} ({_ago(question['since'])}; "
                    f"latis inbox answer {question['id']} ...)") if question else "waits"
            print(f"waiting  {a['unit']}/{a['session']}  {asks}  {used}")
        else:
            print(f"busy     {a['unit']}/{a['session']}  {used}")
    return OK


def _state() -> State | None:
    from latis_core import StateError, StateStore, paths

    path = paths().state_file
    if not path.exists():
        return None
    try:
        return StateStore.open_readonly(path)
    except StateError as exc:
        print(f"latis: {exc}", file=sys.stderr)
        return None


def _ago(when: float | None) -> str:
    if not when:
        return "-"
    seconds = max(0, time.time() - when)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _connection(unit: dict[str, Any]) -> str:
    """The connection column: FAILED stands out for a unit that could not be reached."""
    return "FAILED" if unit["connection"] == "unreachable" else str(unit["connection"])


def _note(unit: dict[str, Any]) -> str:
    """Why a unit failed, or that config no longer names it (and the way out)."""
    if not unit["in_config"]:
        return f"not in config: latis unit rm {unit['unit']}"
    if unit["connection"] == "unreachable" and unit["error"]:
        return str(unit["error"])
    return ""
