"""`latis session new|list|show|resume|destroy` and `latis status`.

Reads (`list`, `show`, `status`) go straight to the state file, read-only
(SQLite in WAL mode lets them read while the daemon writes): they need no
daemon and start fast. Changes go through the daemon.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

from cyclopts import App, Parameter

from ._cmdr import ERROR, OK, USAGE
from ._run import run_with_cmdr

if TYPE_CHECKING:
    from latis_core import StateStore as State

session_app = App(
    name="session",
    help="Sessions: conversations with the agent of a unit. They live in the daemon.",
    help_format="markdown",
)


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


@session_app.command
def new(
    *,
    unit: Annotated[str, Parameter(name=["--unit", "-u"])] = "local",
    connector: str | None = None,
    option: Annotated[tuple[str, ...], Parameter(name=["--option", "-o"])] = (),
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Open a session on a unit (bringing the unit up first if needed); print its id.

    Options (`-o KEY=VALUE`) go to the unit's agent for this session (for
    example `-o model=llama3.1` for the openai adapter, `-o cwd=/src` for acp).

    `--connector` names the way to reach the unit: a transport (`local`,
    `unix`, ...: the unit must be reached that way), or an address to
    connect to first (`unix:PATH`, `local:COMMAND`).

    Examples
    --------
    ```
    latis session new
    latis session new --unit box
    latis session new --unit box --connector local
    latis session new --connector unix:/run/shared/unit.sock
    latis session new --unit llm -o model=qwen2.5 -o system="Be brief."
    SID=$(latis session new --json | jq -r .session)
    ```

    Args:
        unit: the unit.
        connector: a transport name, or an address (unix:PATH, local:COMMAND).
        option: a session option for the agent, KEY=VALUE (repeatable).
        json_output: print a JSON object.
    """
    options = {}
    for pair in option:
        key, sep, value = pair.partition("=")
        if not sep or not key or key == "unit":
            print(f"latis: option {pair!r} is not KEY=VALUE (and not 'unit')", file=sys.stderr)
            return USAGE
        options[key] = value
    if connector is not None and ":" not in connector:
        problem = _check_connector(unit, connector)
        if problem:
            print(f"latis: {problem}", file=sys.stderr)
            return ERROR

    async def work(cmdr: Any) -> int:
        from ._console import progress

        target = unit
        with progress(f"bringing unit {unit!r} up") as say:
            if connector is not None and ":" in connector:
                data = await cmdr.unit_connect(connector, progress=say)
                target = data["unit"]
            else:
                await cmdr.unit_up(unit, say)
        session = await cmdr.create_session(unit=target, **options)
        if json_output:
            print(json.dumps({"session": session.id, "unit": target}))
        else:
            print(session.id)
        return OK

    return run_with_cmdr(work)


def _check_connector(unit: str, connector: str) -> str | None:
    """Why `unit` cannot be reached through transport `connector` (None if it can)."""
    import os

    from latis_core import ConfigError, load_config

    try:
        config = load_config(os.environ.get("LATIS_CONFIG") or None)
        unit_config = config.unit(unit)
    except (ConfigError, LookupError) as exc:
        return str(exc.args[0]) if isinstance(exc, LookupError) else str(exc)
    ways = [unit_config.dial.type] if unit_config.dial else []
    ways += [listener.type for listener in unit_config.accept]
    if connector not in ways:
        return (f"unit {unit!r} is reached by {', '.join(ways) or 'nothing'}, not {connector}"
                f" (use --connector ADDRESS to connect to another unit)")
    return None


@session_app.command(name="list")
def list_sessions(
    *,
    unit: Annotated[str | None, Parameter(name=["--unit", "-u"])] = None,
    all_: Annotated[bool, Parameter(name="--all")] = False,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """List sessions (open ones; --all for closed ones too).

    Examples
    --------
    ```
    latis session list
    latis session list --unit box --all --json
    ```

    Args:
        unit: only this unit's sessions.
        all_: closed sessions too.
        json_output: print a JSON array.
    """
    state = _state()
    rows: list[dict[str, Any]] = []
    if state is not None:
        with state:
            for s in state.list_sessions(unit, include_closed=all_):
                last = state.last_prompt(s.id)
                rows.append({
                    "session": s.id, "unit": s.unit, "state": s.state,
                    "created": s.created_at, "prompts": len(state.prompts(s.id)),
                    "last_prompt": last.state if last else None,
                })
    if json_output:
        print(json.dumps(rows, indent=2))
        return OK
    if not rows:
        print("no sessions", file=sys.stderr)
        return OK
    from rich.table import Table

    from ._console import out

    table = Table("session", "unit", "state", "prompts", "created", box=None)
    for row in rows:
        table.add_row(row["session"], row["unit"], row["state"], str(row["prompts"]),
                      _ago(row["created"]))
    out().print(table)
    return OK


@session_app.command
def show(
    session: str, *, json_output: Annotated[bool, Parameter(name="--json")] = False
) -> int:
    """Print a session's transcript: every prompt and its whole answer, in order.

    Examples
    --------
    ```
    latis session show Zk3x9kQp2Lm8
    latis session show Zk3x9kQp2Lm8 --json | jq '.prompts[-1].answer'
    ```

    Args:
        session: the session id.
        json_output: print a JSON object.
    """
    state = _state()
    if state is None:
        print(f"latis: no session {session!r}", file=sys.stderr)
        return ERROR
    with state:
        row = state.get_session(session)
        if row is None:
            print(f"latis: no session {session!r}", file=sys.stderr)
            return ERROR
        entries = state.transcript(session)
    prompts: list[dict[str, Any]] = []
    for entry in entries:
        prompts.append({
            "prompt": entry.prompt.id,
            "text": entry.prompt.text,
            "state": entry.prompt.state,
            "chunks": len(entry.chunks),
            "answer": "".join(c.text for c in entry.chunks if c.kind is None),
            "error": entry.prompt.error,
            "inputs": [{"question": i.question, "answer": i.answer} for i in entry.inputs],
        })
    if json_output:
        print(json.dumps({"session": session, "unit": row.unit, "state": row.state,
                          "prompts": prompts}, indent=2))
        return OK
    out = sys.stdout
    out.write(f"session {session} on unit {row.unit} ({row.state})\n")
    for p in prompts:
        out.write(f"\n> {p['text']}\n")
        for inp in p["inputs"]:
            out.write(f"? {inp['question']} -> {inp['answer']}\n")
        out.write(p["answer"] + "\n")
        if p["state"] != "complete":
            out.write(f"[{p['state']}{': ' + p['error'] if p['error'] else ''}]\n")
    return OK


@session_app.command
def resume(session: str) -> int:
    """Check that a session is still there (on a running unit) and print its state.

    Examples
    --------
    ```
    latis session resume Zk3x9kQp2Lm8 && latis prompt --session Zk3x9kQp2Lm8 "go on"
    ```

    Args:
        session: the session id.
    """

    async def work(cmdr: Any) -> int:
        resumed = await cmdr.resume_session(session)
        print(f"session {resumed.id}: {resumed.initial_state}")
        return OK

    return run_with_cmdr(work)


@session_app.command
def destroy(session: str) -> int:
    """End a session (cancelling its prompt if one runs). Its transcript stays.

    Examples
    --------
    ```
    latis session destroy Zk3x9kQp2Lm8
    ```

    Args:
        session: the session id.
    """

    async def work(cmdr: Any) -> int:

        await cmdr.session(session).destroy()
        print(f"session {session}: closed", file=sys.stderr)
        return OK

    return run_with_cmdr(work)


def status(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """What runs where: units, provisioner, connection, sessions, busy or idle, last seen.

    Read from the state file: it works (showing the last known state) when
    the daemon is not running.

    Examples
    --------
    ```
    latis status
    latis status --json | jq '.units[] | select(.connection == "connected")'
    ```

    Args:
        json_output: print a JSON object.
    """
    from ._cmdr import daemon_pid

    pid = daemon_pid()
    units: list[dict[str, Any]] = []
    state = _state()
    if state is not None:
        with state:
            for unit in state.list_units():
                conn = state.get_connection(unit.name)
                sessions = state.list_sessions(unit.name)
                units.append({
                    "unit": unit.name,
                    "provisioner": unit.provisioner,
                    "connection": conn.state if conn else "disconnected",
                    "transport": conn.transport if conn else None,
                    "error": conn.error if conn else None,
                    "last_seen": conn.last_seen if conn else None,
                    "sessions": {s.id: s.state for s in sessions},
                })
    data = {"daemon": {"running": pid is not None, "pid": pid}, "units": units}
    if json_output:
        print(json.dumps(data, indent=2))
        return OK
    from rich.table import Table

    from ._console import out

    daemon = f"cmdr runs (pid {pid})" if pid else "cmdr is not running (last known state)"
    print(daemon, file=sys.stderr)
    if not units:
        print("no units yet: latis prompt \"hello\" brings up the built-in unit 'local'",
              file=sys.stderr)
        return OK
    table = Table("unit", "provisioner", "connection", "sessions", "busy", "last seen",
                  box=None)
    for u in units:
        states = list(u["sessions"].values())
        busy = sum(1 for s in states if s in ("busy", "waiting"))
        seen = "now" if pid and u["connection"] == "connected" else _ago(u["last_seen"])
        table.add_row(u["unit"], u["provisioner"] or "-", u["connection"], str(len(states)),
                      str(busy), seen)
    out().print(table)
    return OK
