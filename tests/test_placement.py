"""Placement by capacity: groups, label selectors and `--count N --from POOL`, units
with `max_sessions` and memory budgets (never oversubscribed; a task that waits says
why), and the `latis.placement` plugin point. Real `latis-unit` processes running
scripted agents (tests/team_agents.py); a unit's free memory is the one fault injected
(`TEAM_MEMINFO`: the file its probe reads instead of /proc/meminfo)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from teams import GiB, Team, team_fixture

import latis_core

team = pytest.fixture(team_fixture, name="team")


async def wait_for(check: Callable[[], bool], what: str, limit: float = 20) -> None:
    with trio.fail_after(limit):
        while not check():
            await trio.sleep(0.02)


def most_at_once(team: Team, unit: str) -> int:
    """The most prompts unit `unit` ran at once, by its own log."""
    running = most = 0
    for e in team.events():
        if e["unit"] == unit and e["event"] in ("prompt", "done", "cancelled"):
            running += 1 if e["event"] == "prompt" else -1
            most = max(most, running)
    return most


async def test_the_unit_side_probe_reports_capacity() -> None:
    """A unit answers `state` with what it can take: CPUs, sessions, its limit, memory."""
    argv = latis_core.unit_command("echo", args=["--max-sessions", "3"])
    async with latis_core.connect_local(argv) as unit:
        await unit.create_session()
        capacity = (await unit.state()).capacity or {}
    assert capacity["sessions"] == 1 and capacity["max_sessions"] == 3
    assert capacity["cpus"] == os.cpu_count()
    assert 0 < capacity["memory_free"] <= capacity["memory_total"]


async def test_a_full_pool_makes_the_next_task_wait_and_never_oversubscribes(
    team: Team,
) -> None:
    """p1 holds one session by config, p2 by its own `--max-sessions`: while a task holds
    both, the next waits (saying why, every agent `queued`) and runs once they are free."""
    gate = team.gate()
    team.unit("p1", config={"max_sessions": 1}, TEAM_GATE=gate)
    team.unit("p2", unit_max=1, TEAM_GATE=gate)
    team.group("pool", ["p1", "p2"])
    first: list[latis_core.CoordinationEvent] = []
    second: list[latis_core.CoordinationEvent] = []
    results: dict[str, latis_core.Coordination] = {}
    settings = latis_core.CoordinationSettings(count=2, source="pool")
    async with team.controller() as ctl, trio.open_nursery() as nursery:

        async def run(name: str, events: list[latis_core.CoordinationEvent]) -> None:
            results[name] = await ctl.coordinate("t", [], events.append, settings)

        nursery.start_soon(run, "first", first)
        await wait_for(lambda: len(team.logged("prompt")) == 2, "the first task's prompts")
        nursery.start_soon(run, "second", second)
        await wait_for(lambda: any(e.type == "note" for e in second), "the wait's reason")
        reason = (
            "queued: no unit has room (p1 holds its max_sessions (1); "
            "p2 holds its max_sessions (1))"
        )
        assert [e.text for e in second if e.type == "note"] == [reason]
        assert [(e.agent, e.state, e.text) for e in second if e.type == "state"] == [
            ("pool", "queued", reason),
            ("pool#2", "queued", reason),
        ]
        assert len(team.logged("prompt")) == 2
        team.open_gate()
    assert results["first"].outcome == results["second"].outcome == "complete"
    assert sorted(e.unit for e in results["first"].agents) == ["p1", "p2"]
    assert sorted(e.unit for e in results["second"].agents) == ["p1", "p2"]
    assert most_at_once(team, "p1") == most_at_once(team, "p2") == 1
    assert len(team.logged("done")) == 4


async def test_a_memory_budget_waits_for_free_memory(team: Team) -> None:
    """session_memory 2 GiB: with 1 GiB free the task waits and says so; the budgets of
    one task add up (3 GiB free is not enough for two sessions); with 5 GiB it runs."""
    team.unit("m", meminfo=True, config={"session_memory": "2GiB"})
    team.set_memory_free("m", 1 * GiB)
    events: list[latis_core.CoordinationEvent] = []
    result: list[latis_core.Coordination] = []
    async with team.controller() as ctl, trio.open_nursery() as nursery:

        async def run() -> None:
            result.append(await ctl.coordinate("t", ["m", "m"], events.append))

        nursery.start_soon(run)
        await wait_for(lambda: any(e.type == "note" for e in events), "the wait's reason")
        assert [e.text for e in events if e.type == "note"] == [
            "queued: no unit with 2 GiB free (m has 1 GiB free)"
        ]
        team.set_memory_free("m", 3 * GiB)
        await trio.sleep(1.5)  # three probes later: still not enough for two
        assert team.received("m") == []
        team.set_memory_free("m", 5 * GiB)
    [ended] = result
    assert ended.outcome == "complete"
    assert team.received("m") == ["t", "t"]
    assert len({e["session"] for e in team.events()}) == 2


async def test_a_task_that_can_never_fit_is_refused_at_once(team: Team) -> None:
    team.unit("p1", config={"max_sessions": 1})
    team.unit("p2", config={"max_sessions": 1})
    team.group("pool", ["p1", "p2"])
    async with team.controller() as ctl:
        with pytest.raises(
            ValueError,
            match="3 agents can never run at once on p1, p2: their max_sessions add up to 2",
        ):
            await ctl.coordinate(
                "t", ["p1"], settings=latis_core.CoordinationSettings(count=2, source="pool")
            )
    assert team.received("p1") == []


async def test_groups_and_label_selectors_name_their_units(team: Team) -> None:
    """`group:NAME` and `label:NAME` stand for each of their units, as if named."""
    team.unit("a")
    team.unit("b", config={"labels": ["gpu"]})
    team.unit("c", config={"labels": ["gpu", "big"]})
    team.group("reviewers", ["a", "c"])
    async with team.controller() as ctl:
        result = await ctl.coordinate("look", ["group:reviewers", "label:gpu"])
        assert [(e.agent, e.unit) for e in result.agents] == [
            ("a", "a"),
            ("c", "c"),
            ("b", "b"),
            ("c#2", "c"),
        ]
        with pytest.raises(ValueError, match=r"no group 'nope' in config \(groups: reviewers\)"):
            await ctl.coordinate("x", ["group:nope"])
        with pytest.raises(ValueError, match="no unit has the label 'tpu'"):
            await ctl.coordinate("x", ["label:tpu"])
    assert team.received("c") == ["look", "look"]


async def test_count_from_a_pool_spreads_by_room(team: Team) -> None:
    """`--count 4 --from p1,p2` with room for two on each: two on each, never more."""
    for name in ("p1", "p2"):
        team.unit(name, unit_max=2, config={"max_sessions": 2}, TEAM_BARRIER="4")
    async with team.controller() as ctl:
        result = await ctl.coordinate(
            "t", [], settings=latis_core.CoordinationSettings(count=4, source="p1,p2")
        )
    assert result.outcome == "complete"
    assert sorted(e.unit for e in result.agents) == ["p1", "p1", "p2", "p2"]
    assert most_at_once(team, "p1") == most_at_once(team, "p2") == 2


# -- through the CLI: the reason shown, and a policy of one's own ----------------------


def test_the_cli_shows_why_a_task_waits(team: Team) -> None:
    team.unit("m", meminfo=True, config={"session_memory": "2GiB"})
    team.set_memory_free("m", 1 * GiB)
    proc = team.popen("coordinate", "--count", "1", "--from", "m", "a task")
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "queued" in line:
            break
    assert lines[-1] == "latis: queued: no unit with 2 GiB free (m has 1 GiB free)\n"
    team.set_memory_free("m", 8 * GiB)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "[m] m answer 1" in out
    assert "Traceback" not in err


PLUGIN = '''
class Last:
    """Every agent on the last unit its slot may use (the built-in policy spreads)."""

    def place(self, slots, units):
        return [slot[-1] for slot in slots]
'''


def install_plugin(where: Path, group: str, name: str, value: str, source: str) -> str:
    """A distribution `team-plugins` registering `name` in `group` (as pip would install
    it: a module and its dist-info); returns the folder for PYTHONPATH."""
    module = value.split(":")[0]
    (where / f"{module}.py").write_text(source)
    info = where / "team_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {value}\n")
    return str(where)


def test_a_placement_policy_of_ones_own(team: Team, tmp_path: Path) -> None:
    """A policy registered in `latis.placement` by an installed distribution is chosen
    with --placement; an unknown one is refused with the names there are."""
    team.env["PYTHONPATH"] = install_plugin(
        tmp_path, "latis.placement", "last", "team_policy:Last", PLUGIN
    )
    team.unit("p1")
    team.unit("p2")
    ran = team.run(
        "coordinate", "--count", "2", "--from", "p1,p2", "--placement", "last", "--json", "t"
    )
    assert ran.returncode == 0, ran.stderr
    started = [line for line in ran.stdout.splitlines() if '"type": "started"' in line]
    assert len(started) == 2 and all('"unit": "p2"' in line for line in started)
    assert team.received("p1") == [] and team.received("p2") == ["t", "t"]
    wrong = team.run("coordinate", "-a", "p1", "--placement", "nosuch", "t")
    assert wrong.returncode == 2, wrong.stderr
    assert "unknown placement policy 'nosuch' (known: capacity, last)" in wrong.stderr
    assert "Traceback" not in wrong.stderr


async def test_a_task_placed_by_capacity_frees_its_room_before_it_returns(team: Team) -> None:
    """Two tasks one after the other on a one-session pool: the second is never told it
    is queued (the first's session is closed when the first returns, not after)."""
    team.unit("p1", config={"max_sessions": 1})
    team.group("pool", ["p1"])
    settings = latis_core.CoordinationSettings(count=1, source="pool")
    second: list[latis_core.CoordinationEvent] = []
    async with team.controller() as ctl:
        first = await ctl.coordinate("one", [], lambda event: None, settings)
        assert ctl.sessions == {}  # closed before the answer came back
        result = await ctl.coordinate("two", [], second.append, settings)
    assert first.outcome == result.outcome == "complete"
    assert [e.text for e in second if e.type == "note"] == []
