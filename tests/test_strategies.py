"""Each coordination strategy's message flow, with real `latis-unit` processes running
scripted agents (tests/team_agents.py): who received what, in which order, as the
units saw it, and what the coordination made of their replies."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from teams import Team, team_fixture

import latis_core
from latis_core._cmdr.strategies.lead import INSTRUCTIONS, RESULTS, RETRY

team = pytest.fixture(team_fixture, name="team")


async def coordinate(
    team: Team, task: str, agents: list[str], **settings: Any
) -> tuple[latis_core.Coordination, list[latis_core.CoordinationEvent]]:
    """Run a coordination in a controller of this process; its result and its events."""
    events: list[latis_core.CoordinationEvent] = []
    async with team.controller() as ctl:
        result = await ctl.coordinate(
            task, agents, events.append, latis_core.CoordinationSettings(**settings)
        )
    return result, events


def replies(events: list[latis_core.CoordinationEvent]) -> list[tuple[str, str | None, str]]:
    """(agent, step, text) of each reply, in the order they came."""
    return [(e.agent, e.step, e.text) for e in events if e.type == "reply"]


# -- parallel ----------------------------------------------------------------------------


async def test_parallel_gives_every_agent_the_task_at_once(team: Team) -> None:
    """Each agent gets the task, all before any answers (each waits for the other two);
    every answer is its own, and there is no final answer."""
    for name in "abc":
        team.unit(name, TEAM_BARRIER="3")
    result, events = await coordinate(team, "count the files", ["a", "b", "c"])
    assert (result.outcome, result.final) == ("complete", None)
    assert {u: team.received(u) for u in "abc"} == {u: ["count the files"] for u in "abc"}
    assert [e["event"] for e in team.events()] == ["prompt"] * 3 + ["done"] * 3
    assert sorted(replies(events)) == [(u, "answer", f"{u} answer 1") for u in "abc"]
    assert [(e.agent, e.outcome, e.state) for e in result.agents] == [
        (u, "complete", "completed") for u in "abc"
    ]


async def test_merge_with_hands_every_answer_to_the_merging_agent(team: Team) -> None:
    """--merge-with m: after all answered, m gets the task and every answer; its reply is
    the final answer."""
    team.unit("a")
    team.unit("b")
    team.unit("m", replies=["m answer 1", "the merged answer"])
    result, events = await coordinate(
        team, "review the plan", ["a", "b", "m"], options={"merge_with": "m"}
    )
    assert (result.outcome, result.final) == ("complete", "the merged answer")
    assert team.received("a") == team.received("b") == ["review the plan"]
    first, merge = team.received("m")
    assert first == "review the plan"
    assert merge.startswith("review the plan\n\nThese are the answers of 3 agents:")
    for name in "abm":
        assert f"--- {name} ---\n{name} answer 1" in merge
    # The merge came after every answer of the first step.
    log = [(e["event"], e["text"]) for e in team.events()]
    answered = [
        i for i, (event, text) in enumerate(log) if event == "done" and text.endswith("answer 1")
    ]
    assert len(answered) == 3 and log.index(("prompt", merge)) > max(answered)
    assert replies(events)[-1] == ("m", "merge", "the merged answer")


@pytest.mark.parametrize(
    ("strategy", "options", "agents", "message"),
    [
        ("parallel", {"merge_with": "zed"}, ["a"],
         "--merge-with 'zed' is not one of the agents (a)"),
        ("roundtable", {"final": "zed"}, ["a"], "--final 'zed' is not one of the agents (a)"),
        ("lead", {"lead": "zed"}, ["a", "a"], "--lead 'zed' is not one of the agents (a, a#2)"),
        ("lead", {}, ["a"], "the lead strategy needs at least one agent besides the lead"),
    ],
)
async def test_an_option_naming_an_agent_not_there_is_refused_before_anything_starts(
    team: Team, strategy: str, options: dict[str, str], agents: list[str], message: str
) -> None:
    team.unit("a")
    settings = latis_core.CoordinationSettings(strategy=strategy, options=options)
    async with team.controller() as ctl:
        with pytest.raises(ValueError) as refused:
            await ctl.coordinate("x", agents, settings=settings)
    assert str(refused.value) == message
    assert team.received("a") == []


# -- pipeline ----------------------------------------------------------------------------


async def test_pipeline_hands_each_output_to_the_next_agent(team: Team) -> None:
    """Agents in the order named; each gets the task and the previous one's output; the
    last output is the final answer."""
    for name in "abc":
        team.unit(name)
    result, events = await coordinate(team, "draft a reply", ["c", "a", "b"], strategy="pipeline")
    assert team.received("c") == ["draft a reply"]
    assert team.received("a") == [
        "draft a reply\n\nThe previous agent (c) produced:\n\nc answer 1\n\n"
        "Continue from its output."
    ]
    assert team.received("b") == [
        "draft a reply\n\nThe previous agent (a) produced:\n\na answer 1\n\n"
        "Continue from its output."
    ]
    assert [e["unit"] for e in team.events() if e["event"] == "prompt"] == ["c", "a", "b"]
    assert [step for _, step, _ in replies(events)] == ["stage 1", "stage 2", "stage 3"]
    assert (result.outcome, result.final) == ("complete", "b answer 1")


async def test_pipeline_opens_every_stage_session_at_once(team: Team) -> None:
    """The later stages' sessions open while the first stage works, not when their
    turn comes: the first stage does not answer until all three are open."""
    gate = team.gate()
    team.unit("c", TEAM_GATE=gate)
    for name in "ab":
        team.unit(name)
    started: list[str] = []
    all_open = trio.Event()

    def on_event(event: latis_core.CoordinationEvent) -> None:
        if event.type == "started":
            started.append(event.agent)
            if len(started) == 3:
                all_open.set()

    async with team.controller() as ctl, trio.open_nursery() as nursery:
        result: list[latis_core.Coordination] = []

        async def run() -> None:
            result.append(await ctl.coordinate(
                "draft a reply", ["c", "a", "b"], on_event,
                latis_core.CoordinationSettings(strategy="pipeline")))

        nursery.start_soon(run)
        with trio.fail_after(20):
            await all_open.wait()
        assert team.logged("done") == []  # the first stage still waits at its gate
        team.open_gate()
    assert sorted(started) == ["a", "b", "c"]
    assert result[0].outcome == "complete"


async def test_pipeline_skips_a_failed_stage(team: Team) -> None:
    """A stage that fails is reported; the next gets the output from before it."""
    team.unit("a")
    team.unit("bad", "fail")
    team.unit("c")
    result, _ = await coordinate(team, "t", ["a", "bad", "c"], strategy="pipeline", require="2")
    assert team.received("bad") == [
        "t\n\nThe previous agent (a) produced:\n\na answer 1\n\nContinue from its output."
    ]
    assert team.received("c") == team.received("bad")
    assert (result.outcome, result.final) == ("complete", "c answer 1")
    assert [(e.agent, e.outcome) for e in result.agents] == [
        ("a", "complete"),
        ("bad", "error"),
        ("c", "complete"),
    ]
    assert "scripted failure" in (result.agents[1].error or "")


# -- roundtable --------------------------------------------------------------------------


async def test_roundtable_shows_everyone_the_last_round(team: Team) -> None:
    """Round 1: the task; round 2: the task and every answer of round 1; then the final
    agent gets the last round's answers and gives the final answer."""
    team.unit("a", replies=["a one", "a two", "a final"])
    team.unit("b", replies=["b one", "b two"])
    result, events = await coordinate(
        team,
        "name the project",
        ["a", "b"],
        strategy="roundtable",
        options={"rounds": "2", "final": "a"},
    )
    round2 = (
        "name the project\n\nRound 2 of 2. The answers of the last round:\n\n"
        "--- a ---\na one\n\n--- b ---\nb one\n\n"
        "Give your answer again, improved by what the others said."
    )
    final = (
        "name the project\n\nThe answers of the last round:\n\n"
        "--- a ---\na two\n\n--- b ---\nb two\n\nGive the final answer."
    )
    assert team.received("a") == ["name the project", round2, final]
    assert team.received("b") == ["name the project", round2]
    # Round 2 starts only when round 1 has ended (for everyone).
    log = [(e["unit"], e["event"], e["text"]) for e in team.events()]
    done1 = max(i for i, e in enumerate(log) if e[1] == "done" and e[2].endswith("one"))
    assert all(i > done1 for i, e in enumerate(log) if e[1] == "prompt" and e[2] == round2)
    assert (result.outcome, result.final) == ("complete", "a final")
    assert replies(events)[-1] == ("a", "final", "a final")


async def test_roundtable_without_final_answers_with_the_last_round(team: Team) -> None:
    team.unit("a")
    team.unit("b")
    result, _ = await coordinate(
        team, "t", ["a", "b"], strategy="roundtable", options={"rounds": "3"}
    )
    assert len(team.received("a")) == len(team.received("b")) == 3
    assert result.final == "--- a ---\na answer 3\n\n--- b ---\nb answer 3"


# -- lead --------------------------------------------------------------------------------


async def test_lead_plans_dispatches_gathers_and_answers(team: Team) -> None:
    """The lead's plan is split among the workers (several sub-tasks to one run in order
    on it; a unit named twice is two workers); the results go back to the lead."""
    plan = (
        "Here is my plan.\nTASK w: step one\nTASK v: step two\nTASK w: step three\n"
        "TASK w#2: step four"
    )
    team.unit("boss", replies=[plan, "all four steps are done"])
    team.unit("w")
    team.unit("v")
    result, events = await coordinate(
        team, "port the tests", ["boss", "w", "v", "w"], strategy="lead", options={"lead": "boss"}
    )
    assert team.received("boss")[0] == "port the tests\n\n" + INSTRUCTIONS.format(
        workers="w, v, w#2"
    )
    # w and w#2 are two sessions of unit w: the first got steps one and three, in order.
    by_session: dict[str, list[str]] = {}
    for e in team.events():
        if e["unit"] == "w" and e["event"] == "prompt":
            by_session.setdefault(e["session"], []).append(e["text"])
    assert sorted(by_session.values()) == [["step four"], ["step one", "step three"]]
    assert team.received("v") == ["step two"]
    results = (
        "--- w: step one ---\nw answer 1\n\n--- v: step two ---\nv answer 1\n\n"
        "--- w: step three ---\nw answer 2\n\n--- w#2: step four ---\nw answer 1"
    )
    assert team.received("boss")[1] == RESULTS.format(task="port the tests", results=results)
    assert (result.outcome, result.final) == ("complete", "all four steps are done")
    steps = [(agent, step) for agent, step, _ in replies(events)]
    assert steps[0] == ("boss", "plan") and steps[-1] == ("boss", "final")
    assert {s for a, s in steps if a != "boss"} == {f"sub-task {n}" for n in (1, 2, 3, 4)}


async def test_a_plan_that_does_not_parse_is_sent_back_once(team: Team) -> None:
    team.unit("boss", replies=["I would rather do it myself", "TASK w: all of it", "done"])
    team.unit("w")
    result, events = await coordinate(team, "t", ["boss", "w"], strategy="lead")
    error = "no line 'TASK <agent>: <sub-task>' in the plan"
    assert team.received("boss")[1] == RETRY.format(error=error, workers="w")
    assert team.received("w") == ["all of it"]
    assert (result.outcome, result.final) == ("complete", "done")
    notes = [e.text for e in events if e.type == "note"]
    assert notes == [f"the plan of boss did not parse ({error}); sent back once"]


async def test_a_plan_that_does_not_parse_twice_is_reported(team: Team) -> None:
    team.unit("boss", replies=["no plan", "TASK nobody: this"])
    team.unit("w")
    result, _ = await coordinate(team, "t", ["boss", "w"], strategy="lead")
    assert len(team.received("boss")) == 2
    assert team.received("w") == []
    assert result.outcome == "error"
    assert result.error == (
        "the plan of boss did not parse twice: line 1: 'nobody' is not one of the agents (w)"
    )
    assert result.final is None


# -- duplicated names --------------------------------------------------------------------


async def test_an_agent_named_twice_is_two_sessions(team: Team) -> None:
    """`-a a,a`: two agents, `a` and `a#2`, each in its own session with its own output
    (one shared session would have answered `a answer 2` the second time)."""
    team.unit("a")
    result, events = await coordinate(team, "hello", ["a", "a"])
    assert [e.agent for e in result.agents] == ["a", "a#2"]
    sessions = {e["session"] for e in team.events() if e["event"] == "prompt"}
    assert len(sessions) == 2 and sessions == {e.session for e in result.agents}
    assert sorted(replies(events)) == [
        ("a", "answer", "a answer 1"),
        ("a#2", "answer", "a answer 1"),
    ]
    for label in ("a", "a#2"):
        chunks = "".join(e.text for e in events if e.type == "chunk" and e.agent == label)
        assert chunks == "a answer 1"


async def test_sessions_closed_behind_the_answer_are_all_closed_when_the_controller_stops(
    team: Team,
) -> None:
    """A coordination returns with its answer and its sessions close behind it, in the
    controller (the answer of a fleet does not wait for one more round trip to every
    unit): a controller that stops right after still closes every one of them."""
    for name in "ab":
        team.unit(name)
    async with team.controller() as ctl:
        result = await ctl.coordinate("t", ["a", "b"])
        sessions = [agent.session for agent in result.agents]
        assert result.outcome == "complete" and all(sessions)
    with latis_core.StateStore(latis_core.paths().state_file) as state:
        for sid in sessions:
            found = state.get_session(str(sid))
            assert found is not None and found.state == "closed"
