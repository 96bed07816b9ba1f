"""`latis session new|use|list|show|resume|destroy|prune` and `latis status`.

Reads (`list`, `show`, `status`) go straight to the state file, read-only
(SQLite in WAL mode lets them read while the daemon writes): they need no
daemon and start fast. Changes go through the daemon.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

from cyclopts import App, Parameter

from . import _complete
from ._cmdr import ERROR, OK, USAGE
from ._run import run_with_cmdr
from ._status import _ago, _state, config_names

#: A session id argument, completed from the state file.
_SessionName = Annotated[str, Parameter(completer=_complete.sessions)]

session_app = App(
    name="session",
    help="Sessions: conversations with the agent of a unit. They live in the daemon.",
    help_format="plaintext",
)


@session_app.command
def new(
    *,
    unit: Annotated[str, Parameter(name=["--unit", "-u"], completer=_complete.units)] = "local",
    connector: str | None = None,
    option: Annotated[tuple[str, ...], Parameter(name=["--option", "-o"])] = (),
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Open a session on a unit (bringing the unit up first if needed); print its id.

    The new session becomes the current one: `latis prompt` continues it.

    Options (`-o KEY=VALUE`) go to the unit's agent for this session (for
    example `-o model=llama3.1` for the openai adapter, `-o cwd=/src` for acp).

    `--connector` names the way to reach the unit: a transport (`local`,
    `unix`, ...: the unit must be reached that way), or an address to
    connect to first (`unix:PATH`, `local:COMMAND`).

    For example:
      latis session new
      latis session new --unit box
      latis session new --unit box --connector local
      latis session new --connector unix:/run/shared/unit.sock
      latis session new --unit llm -o model=qwen2.5 -o system="Be brief."
      SID=$(latis session new --json | jq -r .session)

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
        import latis_core

        from ._console import progress

        target = unit
        with progress(f"bringing unit {unit!r} up") as say:
            if connector is not None and ":" in connector:
                data = await cmdr.unit_connect(connector, progress=say)
                target = data["unit"]
            else:
                await cmdr.unit_up(unit, say)
        try:
            session = await cmdr.create_session(unit=target, **options)
        except latis_core.RequestError as exc:
            if exc.code != "bad_message":
                raise
            print(f"latis: {exc.message} (unit {target})", file=sys.stderr)  # -o: a usage error
            return USAGE
        from ._current import set_current_session

        set_current_session(session.id, target)
        if json_output:
            print(json.dumps({"session": session.id, "unit": target}))
        else:
            print(session.id)
        return OK

    return run_with_cmdr(work)


def _check_connector(unit: str, connector: str) -> str | None:
    """Why `unit` cannot be reached through transport `connector` (None if it can)."""
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


@session_app.command
def use(session: _SessionName) -> int:
    """Make a session the current one: `latis prompt` continues it.

    The current session is one per latis home (as kubectl's current context);
    `export LATIS_SESSION=SID` overrides it in one shell.

    For example:
      latis session use Zk3x9kQp2Lm8
      latis prompt "where were we?"

    Args:
        session: the session id.
    """
    from ._current import set_current_session

    state = _state()
    row = None
    if state is not None:
        with state:
            row = state.get_session(session)
    if row is None:
        print(f"latis: no session {session!r} (latis session ls lists them)", file=sys.stderr)
        return ERROR
    if row.state == "closed":
        print(f"latis: session {session} is closed (its transcript: latis session show "
              f"{session}); latis prompt --new starts another", file=sys.stderr)
        return ERROR
    set_current_session(session, row.unit)
    print(f"current session: {session} on unit {row.unit}", file=sys.stderr)
    return OK


@session_app.command
def prune(
    *,
    idle: float | None = None,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Close the sessions idle for a while on their units (transcripts stay).

    Without --idle, the config's `[daemon] session_idle_timeout` (default a
    day) is the limit; the daemon also closes such sessions by itself.

    For example:
      latis session prune
      latis session prune --idle 0     (all sessions with no prompt running)

    Args:
        idle: seconds without a prompt (default: the config's session_idle_timeout).
        json_output: print a JSON object.
    """
    if idle is not None and not 0 <= idle < float("inf"):  # (nan fails too)
        print("latis: --idle takes seconds >= 0", file=sys.stderr)
        return USAGE

    async def work(cmdr: Any) -> int:
        data = await cmdr.session_prune(None if idle is None else float(idle))
        if json_output:
            print(json.dumps(data))
        else:
            closed = data.get("closed", [])
            print(f"closed {len(closed)} session{'s' if len(closed) != 1 else ''}"
                  + (": " + " ".join(closed) if closed else ""), file=sys.stderr)
        return OK

    return run_with_cmdr(work)


@session_app.command(name=["list", "ls"])
def list_sessions(
    *,
    unit: Annotated[str | None, Parameter(name=["--unit", "-u"])] = None,
    all_: Annotated[bool, Parameter(name="--all")] = False,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """List sessions (open ones; --all for closed ones too); `*` marks the current one.

    For example:
      latis session list
      latis session list --unit box --all --json

    Args:
        unit: only this unit's sessions.
        all_: closed sessions too.
        json_output: print a JSON array.
    """
    from latis_core import a2a_state

    state = _state()
    from ._current import current_session

    current = (current_session() or {}).get("session")
    rows: list[dict[str, Any]] = []
    unknown = False
    if state is None:
        unknown = unit is not None and unit not in _unit_names(None)
    else:
        with state:
            for s in state.list_sessions(unit, include_closed=all_):
                last = state.last_prompt(s.id)
                rows.append({
                    "session": s.id, "unit": s.unit, "state": s.state,
                    "created": s.created_at, "prompts": len(state.prompts(s.id)),
                    "last_prompt": last.state if last else None,
                    "current": s.id == current,
                    # A2A's task state: waiting is input-required, never done.
                    "a2a_state": a2a_state(last.state if s.state == "idle" and last
                                           else s.state),
                })
            unknown = not rows and unit is not None and unit not in _unit_names(state)
    if unknown:
        print(f"latis: no unit {unit!r} (latis status lists them)", file=sys.stderr)
        return ERROR
    if json_output:
        print(json.dumps(rows, indent=2))
        return OK
    if not rows:
        print("no sessions", file=sys.stderr)
        return OK
    from ._console import print_table

    print_table(("session", "unit", "state", "prompts", "created"), [
        (("* " if row["current"] else "  ") + row["session"], row["unit"], row["state"],
         str(row["prompts"]), _ago(row["created"]))
        for row in rows
    ])
    return OK


def _unit_names(state: Any) -> set[str]:
    """The units config names and those the state knows (a typo is in neither)."""
    names = {"local"} | (config_names() or set())
    if state is not None:  # (open: the caller's `with`)
        names |= {row[1] for row in state.unit_overview()}
    return names


@session_app.command
def show(
    session: _SessionName, *, json_output: Annotated[bool, Parameter(name="--json")] = False
) -> int:
    """Print a session's transcript: every prompt and its whole answer, in order.

    For example:
      latis session show Zk3x9kQp2Lm8
      latis session show Zk3x9kQp2Lm8 --json | jq '.prompts[-1].answer'

    Args:
        session: the session id.
        json_output: print a JSON object.
    """
    from latis_core import a2a_state

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
            "a2a_state": a2a_state(entry.prompt.state),
            "chunks": len(entry.chunks),
            "answer": "".join(c.text for c in entry.chunks if c.kind is None),
            "error": entry.prompt.error,
            "inputs": [{"id": f"{i.prompt}.{i.number}", "question": i.question,
                        "answer": i.answer} for i in entry.inputs],
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
            answer = inp["answer"]
            if answer is None and p["state"] == "running":  # where it is answered, not "None"
                answer = f"(no answer yet: latis inbox answer {inp['id']} ...)"
            elif answer is None:
                answer = "(no answer: the prompt ended first)"
            out.write(f"? {inp['question']} -> {answer}\n")
        out.write(p["answer"] + "\n")
        if p["state"] != "complete":
            out.write(f"[{p['state']}{': ' + p['error'] if p['error'] else ''}]\n")
    return OK


@session_app.command
def resume(session: _SessionName) -> int:
    """Check that a session is still there (on a running unit) and print its state.

    For example:
      latis session resume Zk3x9 && latis prompt --session Zk3x9 "go on"

    Args:
        session: the session id.
    """

    async def work(cmdr: Any) -> int:
        resumed = await cmdr.resume_session(session)
        print(f"session {resumed.id}: {resumed.initial_state}")
        return OK

    return run_with_cmdr(work)


@session_app.command(name=["destroy", "rm"])
def destroy(session: _SessionName) -> int:
    """End a session (cancelling its prompt if one runs). Its transcript stays.

    For example:
      latis session destroy Zk3x9kQp2Lm8

    Args:
        session: the session id.
    """

    async def work(cmdr: Any) -> int:

        await cmdr.session(session).destroy()
        print(f"session {session}: closed", file=sys.stderr)
        return OK

    return run_with_cmdr(work)


def status(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """What runs where: units, provisioner, connection, sessions busy and waiting, last seen;
    then a line per session that waits for an answer (its question, since when, its
    context use) and per busy session its context use, as its agent reported it.

    Read from the state file: it works (showing the last known state) when
    the daemon is not running.

    For example:
      latis status
      latis status --json | jq '.units[] | select(.connection == "connected")'

    Args:
        json_output: print a JSON object.
    """
    from ._status import show_status

    return show_status(json_output)
