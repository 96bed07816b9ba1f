"""A conversation continues (issue 11, item 6), through the real `latis` and daemon.

`latis session new` makes a session current; `latis prompt` continues it, so
an agent that remembers (the echo agent's `remember` option) answers the
second prompt knowing the first; `--new`, `session use`, `LATIS_SESSION`,
`prompt --json` (the session first), `status`, and idle sessions closed by
`session prune` or by the daemon itself, their transcripts kept.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

from test_cli import Home
from test_cli import home as home  # noqa: F401 (the fixture: a fresh LATIS_HOME)


def _open(home: Home, *args: str) -> str:
    """`latis session new ARGS`: the id it printed (it becomes current)."""
    return str(home.ok("session", "new", *args).stdout.strip())


def _sessions(home: Home, *args: str) -> dict[str, dict[str, object]]:
    return {row["session"]: row for row in home.json("session", "ls", *args)}


def test_a_conversation_continues_in_the_current_session(home: Home) -> None:
    """After `session new`, two prompts share one session: the agent remembers the first."""
    sid = _open(home, "-o", "remember=1")
    first = home.ok("prompt", "the plan is ready")
    assert first.stdout == "the plan is ready\n"
    second = home.ok("prompt", "ship it")
    assert second.stdout == "(you said: the plan is ready) ship it\n"
    assert "Traceback" not in first.stderr + second.stderr
    rows = _sessions(home)
    assert list(rows) == [sid] and rows[sid]["prompts"] == 2 and rows[sid]["current"]
    status = home.json("status")
    assert status["current_session"] == {"session": sid, "unit": "local"}
    assert f"current session: {sid} on unit local" in home.ok("status").stderr


def test_new_use_and_the_shell_override(home: Home) -> None:
    """`--new` opens a session that becomes current; `session use` and LATIS_SESSION pick one."""
    first = _open(home)
    home.ok("prompt", "one")
    made = home.ok("prompt", "--new", "two")
    second = made.stderr.split("session ", 1)[1].split()[0]
    assert second != first and "(now current)" in made.stderr
    assert home.json("status")["current_session"]["session"] == second

    assert f"current session: {first}" in home.ok("session", "use", first).stderr
    home.ok("prompt", "three")
    assert _sessions(home)[first]["prompts"] == 2 and _sessions(home)[second]["prompts"] == 1

    home.env["LATIS_SESSION"] = second  # this shell only; the file still names `first`
    home.ok("prompt", "four")
    assert _sessions(home)[second]["prompts"] == 2
    del home.env["LATIS_SESSION"]
    assert home.json("status")["current_session"]["session"] == first

    wrong = home.run("session", "use", "no-such-id")
    assert wrong.returncode == 1 and "latis session ls lists them" in wrong.stderr
    typo = home.run("session", "list", "--unit", "lokal")  # not "no sessions", exit 0
    assert typo.returncode == 1 and "no unit 'lokal'" in typo.stderr

    # A LATIS_SESSION that names no open session is said, not replaced by a new one each
    # time (that also moved every other shell's current session).
    home.env["LATIS_SESSION"] = "no-such-id"
    named = home.run("prompt", "five")
    assert named.returncode == 1 and "LATIS_SESSION names session 'no-such-id'" in named.stderr
    assert "current session: no-such-id (not a session known here)" in home.ok("status").stderr
    del home.env["LATIS_SESSION"]
    assert home.json("status")["current_session"]["session"] == first


def test_prompt_json_names_the_session_first(home: Home) -> None:
    """`prompt --json` emits the session id as its first line, then the chunks, then the end."""
    sid = _open(home)
    lines = [json.loads(line) for line in home.ok("prompt", "--json", "a b").stdout.splitlines()]
    assert lines[0] == {"type": "session", "session": sid}
    assert [e["text"] for e in lines if e["type"] == "chunk"] == ["a ", "b"]
    assert lines[-1] == {"type": "outcome", "outcome": "complete"}
    fresh = json.loads(home.ok("prompt", "--json", "--new", "c").stdout.splitlines()[0])
    assert fresh["type"] == "session" and fresh["session"] != sid


def test_another_unit_gets_a_session_of_its_own(home: Home) -> None:
    """`--unit` on another unit than the current session's opens a session there."""
    home.ok("unit", "add", "box", "--provisioner", "process")
    local = _open(home)
    result = home.ok("prompt", "-u", "box", "hello box")
    assert result.stdout == "hello box\n" and "on unit box (now current)" in result.stderr
    current = home.json("status")["current_session"]
    assert current["unit"] == "box" and current["session"] != local


def test_prune_closes_idle_sessions_and_keeps_their_transcripts(home: Home) -> None:
    """`session prune --idle 0` closes sessions with no prompt running; a prompt then opens
    a new session, and the closed one's transcript is still there."""
    sid = _open(home)
    home.ok("prompt", "remember this")
    data = json.loads(home.ok("session", "prune", "--idle", "0", "--json").stdout)
    assert data["closed"] == [sid]
    assert sid not in _sessions(home) and _sessions(home, "--all")[sid]["state"] == "closed"
    assert "remember this" in home.ok("session", "show", sid).stdout
    closed = home.run("session", "use", sid)
    assert closed.returncode == 1 and "is closed" in closed.stderr
    for args in (("session", "resume", sid), ("session", "destroy", sid),
                 ("prompt", "--session", sid, "hi")):
        said = home.run(*args)  # closed, not "no session" (and not "latis session ls")
        assert said.returncode == 1
        assert f"session {sid!r} is closed (its transcript stays: latis session show {sid})" in (
            said.stderr), args

    again = home.ok("prompt", "after the prune")
    assert again.stdout == "after the prune\n" and "(now current)" in again.stderr
    assert home.json("status")["current_session"]["session"] != sid
    for idle in ("-1", "inf", "nan"):  # (JSON has no inf: it would arrive as the default)
        assert home.run("session", "prune", "--idle", idle).returncode == 2


def test_the_daemon_closes_sessions_idle_past_the_config(home: Home) -> None:
    """With `[daemon] session_idle_timeout`, the daemon closes idle sessions by itself."""
    (home.path / "latis.toml").write_text("[daemon]\nsession_idle_timeout = 1\n")
    sid = _open(home)
    deadline = time.monotonic() + 30
    while sid in _sessions(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sid not in _sessions(home)
    assert _sessions(home, "--all")[sid]["state"] == "closed"


def test_the_readmes_conversation_is_true(home: Home) -> None:
    """The README's conversation, run as written: each prompt prints what its comment says."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"### A conversation\n.*?```sh\n(.*?)```", readme, re.S)
    assert block, "README.md has no conversation example"
    lines = [line for line in block.group(1).splitlines() if line.startswith("latis ")]
    new, first, second = (line.partition("#") for line in lines[:3])
    home.ok(*shlex.split(new[0])[1:])
    for command, _, said in (first, second):
        assert home.ok(*shlex.split(command)[1:]).stdout == said.strip() + "\n"
