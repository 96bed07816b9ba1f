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
    from ._cmdr import daemon_pid

    pid = daemon_pid()
    #: (id, name, provisioner, connection, transport, error, last seen) per unit.
    overview: list[tuple[Any, ...]] = []
    sessions_of: dict[int, dict[str, str]] = {}
    attention: list[dict[str, Any]] = []
    named = config_names()
    state = _state()
    if state is not None:
        with state:
            # Plain tuples, one query per table (10,000 units).
            active: list[tuple[int, str, str]] = []
            for unit_id, session, session_state in state.session_states():
                sessions_of.setdefault(unit_id, {})[session] = session_state
                if session_state in ("busy", "waiting"):
                    active.append((unit_id, session, session_state))
            overview = state.unit_overview()
            if active:
                names = {row[0]: row[1] for row in overview}
                attention = [_attention(state, names[unit_id], session, session_state)
                             for unit_id, session, session_state in active
                             if unit_id in names]  # (a destroyed unit's sessions are closed)
    from ._current import current_session

    current = current_session()
    if json_output:
        units = [{"unit": name, "provisioner": provisioner,
                  "connection": conn or "disconnected", "transport": transport,
                  "error": error, "last_seen": last_seen,
                  "sessions": sessions_of.get(unit_id, {}),
                  "in_config": named is None or name in named}
                 for unit_id, name, provisioner, conn, transport, error, last_seen in overview]
        print(json.dumps({"daemon": {"running": pid is not None, "pid": pid}, "units": units,
                          "current_session": current, "active": attention}, indent=2))
        return OK
    from ._console import print_table

    daemon = f"cmdr runs (pid {pid})" if pid else "cmdr is not running (last known state)"
    print(daemon, file=sys.stderr)
    if current is not None:
        on = f"on unit {current['unit']}" if current["unit"] else "(not a session known here)"
        print(f"current session: {current['session']} {on}",
              file=sys.stderr)
    if not overview:
        print("no units yet: latis prompt \"hello\" brings up the built-in unit 'local'",
              file=sys.stderr)
        return OK
    rows = []
    none = ("0", "0", "0")
    for unit_id, name, provisioner, conn, _transport, error, last_seen in overview:
        sessions = sessions_of.get(unit_id)
        if sessions:
            states = list(sessions.values())
            counts = (str(len(states)), str(states.count("busy")), str(states.count("waiting")))
        else:
            counts = none
        seen = "now" if pid and conn == "connected" else _ago(last_seen)
        rows.append((name, provisioner or "-",
                     "FAILED" if conn == "unreachable" else conn or "disconnected",
                     *counts, seen, _note(name, conn, error, named is None or name in named)))
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


def _attention(state: State, unit: str, session: str, session_state: str) -> dict[str, Any]:
    """A busy or waiting session, with its context use and its question."""
    from latis_core import a2a_state, session_context

    entry: dict[str, Any] = {
        "unit": unit, "session": session, "state": session_state,
        "a2a_state": a2a_state(session_state), "context": session_context(state, session),
    }
    last = state.last_prompt(session)
    pending = state.pending_inputs(last.id) if last is not None else []
    if session_state == "waiting" and last is not None and pending:
        entry["question"] = {"id": f"{last.id}.{pending[0].number}",
                             "question": pending[0].question, "since": pending[0].asked_at}
    return entry


def config_names() -> set[str] | None:
    """The units the config names (cached beside it), or None if it does not read."""
    try:
        from latis_core import config_unit_names, paths

        return set(config_unit_names(
            os.environ.get("LATIS_CONFIG") or None, paths().run_dir / "config-units.json"))
    except Exception:  # a broken config is reported by the commands that use it
        return None


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


def _note(unit: str, connection: str, error: str | None, in_config: bool) -> str:
    """Why a unit failed, or that config no longer names it (and the way out)."""
    if not in_config and connection == "connected":
        return "not in config: connected for this daemon's run (latis connect)"
    if not in_config:
        return f"not in config: latis unit rm {unit}"
    if connection == "unreachable" and error:
        return error
    return ""
