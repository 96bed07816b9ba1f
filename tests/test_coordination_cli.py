"""`latis coordinate` and `latis coordination`, as a user runs them: the CLI as a
subprocess, a real daemon, real `latis-unit` processes running scripted agents
(tests/team_agents.py). Faults under each --require, timeouts, Ctrl-C, questions with
stdin not a terminal, --json, --detach and follow, and the stored record."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import threading
import time
from typing import Any

import pytest
from teams import LATIS, Team, team_fixture

team = pytest.fixture(team_fixture, name="team")


def wait_for(check: Any, what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def ok(ran: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert ran.returncode == 0, (ran.args, ran.stdout, ran.stderr)
    assert "Traceback" not in ran.stderr
    return ran


def coordination_id(stderr: str) -> str:
    """The id in the last line of a failed coordination (`latis coordination show ID`)."""
    return stderr.rsplit("latis coordination show ", 1)[1].split(")")[0]


# -- faults under --require ----------------------------------------------------------


@pytest.mark.parametrize("fault", ["fail", "vanish"])
def test_a_failing_or_disconnecting_agent_under_each_require(team: Team, fault: str) -> None:
    """The agent that fails (or whose unit drops mid-prompt) is reported, the others go
    on; --require decides the exit status. With `all`, once the task cannot succeed the
    agents still working are cancelled (their units saw prompt.cancel)."""
    gate = team.gate()
    team.unit("ok1", TEAM_GATE=gate)
    team.unit("ok2", TEAM_GATE=gate)
    team.unit("bad", fault, TEAM_BARRIER="3")  # fails once all three were prompted
    why = "scripted failure" if fault == "fail" else "unit bad disconnected"

    ran = team.run("coordinate", "-a", "ok1,ok2,bad", "--require", "all", "the task")
    assert ran.returncode == 1, ran.stderr
    assert "[bad] ✗ error: " in ran.stderr and why in ran.stderr
    shortfall = "1 of 3 agents failed (require all)"
    for name in ("ok1", "ok2"):
        assert f"[{name}] ⊘ cancelled: {shortfall}" in ran.stderr
    cid = coordination_id(ran.stderr)
    assert f"latis: coordination {cid} error: {shortfall}" in ran.stderr
    assert sorted(team.logged("cancelled")) == ["ok1", "ok2"]
    assert "Traceback" not in ran.stderr

    team.open_gate()
    for require in ("any", "2"):
        ran = ok(team.run("coordinate", "-a", "ok1,ok2,bad", "--require", require, "again"))
        assert "== ok1 (complete) ==\nok1 answer 1" in ran.stdout
        assert "== ok2 (complete) ==\nok2 answer 1" in ran.stdout
        assert "== bad (error: " in ran.stdout and why in ran.stdout
        assert "[bad] ✗ error: " in ran.stderr
    ran = team.run("coordinate", "-a", "ok1,bad", "--require", "2", "once more")
    assert ran.returncode == 1
    assert "error: 1 of 2 agents failed (require 2)" in ran.stderr


# -- timeouts --------------------------------------------------------------------------


def test_an_agent_past_its_timeout_is_cancelled_and_reported(team: Team) -> None:
    team.unit("slow", TEAM_GATE=team.gate())
    team.unit("fast")
    ran = ok(
        team.run(
            "coordinate", "-a", "slow,fast", "--agent-timeout", "0.5", "--require", "any", "hurry"
        )
    )
    assert "[slow] ✗ error: timed out after 0.5 s" in ran.stderr
    assert "== fast (complete) ==\nfast answer 1" in ran.stdout
    assert team.logged("cancelled") == ["slow"]


def test_the_whole_task_timeout_cancels_every_agent(team: Team) -> None:
    """--timeout bounds the whole task: every prompt is cancelled; exit 3 (timed out)."""
    for name in ("a", "b"):
        team.unit(name, TEAM_GATE=team.gate())
    for name in ("a", "b"):  # up first: the bound is for the task, not the units' start
        ok(team.run("unit", "up", name))
    ran = team.run("coordinate", "-a", "a,b", "--timeout", "2", "slowly")
    assert ran.returncode == 3, ran.stderr
    assert "[a] ⊘ cancelled: timed out after 2 s" in ran.stderr
    assert "latis: coordination co-" in ran.stderr
    assert " cancelled: timed out after 2 s (latis coordination show" in ran.stderr
    assert sorted(team.logged("cancelled")) == ["a", "b"]
    assert "Traceback" not in ran.stderr


# -- Ctrl-C ------------------------------------------------------------------------------


def test_sigint_cancels_every_prompt_on_every_unit(team: Team) -> None:
    """SIGINT to the CLI: every running prompt is cancelled on its unit (each unit saw
    prompt.cancel by the time the CLI exits), exit 130, no traceback; what each agent
    had said is printed, the line it was in the middle of too."""
    for name in ("a", "b", "c"):
        # Its first chunk (up to the first space): a line, and the start of the next.
        team.unit(name, TEAM_GATE=team.gate(), TEAM_REPLIES=f'["{name}1\\n{name}2 {name}3"]')
    proc = team.popen("coordinate", "-a", "a,b,c", "wait for it")
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    wait_for(lambda: {"[a] a1\n", "[b] b1\n", "[c] c1\n"} <= set(lines), "every first line")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    reader.join(10)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert {"[a] a2 \n", "[b] b2 \n", "[c] c2 \n"} <= set(lines), lines
    assert "a3" not in "".join(lines)
    assert proc.returncode == 130, err
    assert "latis: interrupted: cancelling every running prompt" in err
    assert "Traceback" not in err
    assert sorted(team.logged("cancelled")) == ["a", "b", "c"]
    [row] = json.loads(ok(team.run("coordination", "list", "--json")).stdout)
    assert row["state"] == "cancelled"


# -- questions ---------------------------------------------------------------------------


def test_a_question_waits_for_an_answer_from_the_inbox(team: Team) -> None:
    """With stdin not a terminal, an agent's question neither hangs the view nor fails:
    it is shown with where to answer it, and the task goes on once answered elsewhere."""
    team.unit("q", "ask")
    team.unit("plain")
    proc = team.popen("coordinate", "-a", "q,plain", "paint the shed")
    assert proc.stdout is not None
    for line in proc.stdout:
        if "asks:" in line:
            break
    assert line.startswith("[    q] asks: which colour? (answer with: latis attach ")
    [item] = json.loads(ok(team.run("inbox", "--json")).stdout)
    assert item["question"] == "which colour?"
    ok(team.run("inbox", "answer", item["id"], "blue"))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "== q (complete) ==\nq paints it blue" in out
    assert team.received("q") == ["paint the shed"]
    assert [e["text"] for e in team.events() if e["event"] == "answered"] == ["blue"]


# -- output ------------------------------------------------------------------------------


def test_json_prints_every_event_then_the_result(team: Team) -> None:
    team.unit("a")
    team.unit("b")
    ran = ok(team.run("coordinate", "-a", "a,b", "--merge-with", "b", "--json", "t"))
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    *events, final, result = lines
    assert (final["type"], final["outcome"], final["text"]) == ("final", "complete", "b answer 2")
    assert result["type"] == "result" and result["outcome"] == "complete"
    assert result["final"] == "b answer 2" and result["id"].startswith("co-")
    for agent in ("a", "b"):
        kinds = [e["type"] for e in events if e.get("agent") == agent]
        assert kinds[0] == "started" and kinds[-1] == "ended"
        assert kinds.index("prompt") < kinds.index("chunk") < kinds.index("reply")
        assert all(
            e["elapsed"] >= 0 and e["unit"] == agent for e in events if e.get("agent") == agent
        )
    [merge] = [e for e in events if e["type"] == "prompt" and e.get("step") == "merge"]
    assert merge["agent"] == "b"
    assert [e["state"] for e in events if e["type"] == "ended"] == ["completed", "completed"]


def test_on_a_terminal_each_agent_has_a_panel(team: Team) -> None:
    team.unit("a")
    team.unit("b")
    team.write_config()
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*LATIS, "coordinate", "-a", "a,b", "t"],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
        env=team.env,
        cwd=team.path,
    )
    os.close(follower)
    screen = b""
    while proc.poll() is None or select.select([leader], [], [], 0.2)[0]:
        if select.select([leader], [], [], 0.2)[0]:
            try:
                screen += os.read(leader, 65536)
            except OSError:
                break
    os.close(leader)
    assert proc.wait(timeout=30) == 0
    text = screen.decode(errors="replace")
    assert "a ✓ completed" in text and "b ✓ completed" in text
    assert "a answer 1" in text and "b answer 1" in text


# -- detach, follow, the record ----------------------------------------------------------


def test_detach_then_follow(team: Team) -> None:
    """--detach prints the id at once; the task runs on in the daemon; `coordination
    follow` shows it from the start, live, to its end (and again from the record)."""
    for name in ("a", "b"):
        team.unit(name, TEAM_GATE=team.gate())
    ran = ok(team.run("coordinate", "-a", "a,b", "--detach", "in the background"))
    cid = ran.stdout.strip()
    assert cid.startswith("co-") and len(cid) == 11
    assert f"latis: follow it with: latis coordination follow {cid}" in ran.stderr
    wait_for(lambda: len(team.logged("prompt")) == 2, "both prompts")
    [row] = json.loads(ok(team.run("coordination", "list", "--json")).stdout)
    assert (row["id"], row["state"]) == (cid, "running")
    follow = team.popen("coordination", "follow", cid)
    team.open_gate()
    out, err = follow.communicate(timeout=30)
    assert follow.returncode == 0, err
    assert "== a (complete) ==\na answer 1" in out and "== b (complete) ==\nb answer 1" in out
    again = ok(team.run("coordination", "follow", cid))
    assert "== a (complete) ==\na answer 1" in again.stdout
    assert ok(team.run("coordination", "show", cid)).stdout.startswith(
        f"{cid}: parallel over a, b: complete"
    )


def test_the_record_lists_and_shows_every_coordination(team: Team) -> None:
    """Every coordination is stored: task, strategy, units, each agent's prompts and
    replies in order, timing, outcome, the final answer."""
    team.unit("a")
    team.unit("bad", "fail")
    ok(team.run("coordinate", "-a", "a,a", "--strategy", "pipeline", "first task"))
    failed = team.run("coordinate", "-a", "a,bad", "second task")
    assert failed.returncode == 1
    second, first = json.loads(ok(team.run("coordination", "list", "--json")).stdout)
    assert (first["strategy"], first["state"], first["units"], first["task"]) == (
        "pipeline",
        "complete",
        ["a", "a"],
        "first task",
    )
    assert (second["state"], second["units"]) == ("error", ["a", "bad"])
    # Every session a coordination opened counts for it in `latis usage --by coordination`.
    usage = json.loads(ok(team.run("usage", "--by", "coordination", "--json")).stdout)
    assert {row["key"]: row["prompts"] for row in usage["rows"]} == {
        first["id"]: 2,
        second["id"]: 2,
    }
    listed = ok(team.run("coordination", "list")).stdout.splitlines()
    assert listed[0].startswith(second["id"]) and "parallel" in listed[0]
    assert "error" in listed[0] and "a,bad  second task" in listed[0]

    shown = ok(team.run("coordination", "show", first["id"])).stdout
    assert shown.startswith(f"{first['id']}: pipeline over a, a: complete (")
    assert "task: first task" in shown
    assert "a <- stage 1 (task): first task" in shown
    assert "a -> complete: a answer 1" in shown
    assert "a#2 <- stage 2 (task): first task The previous agent (a) produced: a answer 1" in shown
    assert shown.endswith("== final answer ==\na answer 1\n")
    record = json.loads(ok(team.run("coordination", "show", first["id"], "--json")).stdout)
    assert record["final"] == "a answer 1"
    started = [e for e in record["events"] if e["type"] == "started"]
    assert sorted((e["agent"], e["unit"]) for e in started) == [("a", "a"), ("a#2", "a")]
    assert [e["type"] for e in record["events"]][-1] == "final"
    assert record["settings"]["require"] == "all"

    bad = team.run("coordination", "show", second["id"])
    assert bad.returncode == 1
    assert "error: 1 of 2 agents failed (require all)" in bad.stdout
    assert "bad ended: error" in bad.stdout and "scripted failure" in bad.stdout
    missing = team.run("coordination", "show", "co-00000000")
    assert missing.returncode == 1
    assert "no coordination 'co-00000000'" in missing.stderr
    assert "Traceback" not in missing.stderr


# -- routing ----------------------------------------------------------------------------


def test_max_hops_zero_routes_nothing(team: Team) -> None:
    """--max-hops 0 reaches the daemon as 0 (no message is delivered), not as the default."""
    team.unit("a", replies=["@b ping"])
    team.unit("b")
    ran = ok(team.run("coordinate", "-a", "a,b", "--max-hops", "0", "t"))
    assert team.received("b") == ["t"]
    assert "hop bound reached (0): a's message to @b was not delivered" in ran.stderr


# -- refused at once -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name the agents"),
        (
            ["-a", "a", "--strategy", "nosuch"],
            "unknown strategy 'nosuch' (known: lead, parallel, pipeline, roundtable)",
        ),
        (
            ["-a", "a,a", "--require", "3"],
            "require 3: the task has 2 agents (require 1 to 2, any or all)",
        ),
        (
            ["-a", "a", "--rounds", "2"],
            "strategy parallel: no option 'rounds' (it takes merge_with)",
        ),
        (["-a", "group:nope"], "no group 'nope' in config (groups: none)"),
        (["--count", "2"], "--count needs --from"),
        (["-a", "a,nosuch"], "no unit 'nosuch' (units: a, local)"),
        (["--count", "1", "--from", "a,nosuch"], "no unit 'nosuch' (units: a, local)"),
        (["-a", "a", "--merge-with", "z"], "--merge-with 'z' is not one of the agents (a)"),
        (["-a", "a", "-s", "lead"], "the lead strategy needs at least one agent besides"),
        (["-a", "a", "--timeout", "-1"], "the timeout must be more than 0 seconds, not -1"),
        (["-a", "a", "--agent-timeout", "0"], "the agent timeout must be more than 0 seconds"),
        (["-a", "a", "--max-hops", "-1"], "the max hops must be 0 or more, not -1"),
    ],
)
def test_a_task_that_cannot_start_is_a_usage_error(
    team: Team, args: list[str], message: str
) -> None:
    team.unit("a")
    ran = team.run("coordinate", *args, "t")
    assert ran.returncode == 2, ran.stderr
    assert message in ran.stderr
    assert "Traceback" not in ran.stderr
    assert team.received("a") == []
