"""Routing between agents: a reply line `@agent text` is delivered to that agent, with a
bound on hops so two agents cannot loop; real `latis-unit` processes running scripted
agents (tests/team_agents.py)."""

from __future__ import annotations

from typing import Any

import pytest
from teams import Team, team_fixture

import latis_core
from latis_core import addressed

team = pytest.fixture(team_fixture, name="team")


async def coordinate(
    team: Team, agents: list[str], **settings: Any
) -> tuple[latis_core.Coordination, list[latis_core.CoordinationEvent]]:
    events: list[latis_core.CoordinationEvent] = []
    async with team.controller() as ctl:
        result = await ctl.coordinate(
            "the task", agents, events.append, latis_core.CoordinationSettings(**settings)
        )
    return result, events


def test_addresses_are_lines_that_name_another_agent() -> None:
    """A line `@label text` (`@label:` and `@label,` too) starts a message; the lines
    after it belong to it; unknown labels and the sender itself are not addresses."""
    reply = (
        "I looked.\n@b: check line 3\nand line 4\n@zed not an agent\n"
        "@a talking to myself\n@c, and you line 9"
    )
    assert addressed(reply, ["a", "b", "c"], "a") == [
        ("b", "check line 3\nand line 4\n@zed not an agent\n@a talking to myself"),
        ("c", "and you line 9"),
    ]
    assert addressed("no one here\n@ b spaced", ["a", "b"], "a") == []
    assert addressed("@a#2 the second a", ["a", "a#2"], "a") == [("a#2", "the second a")]


async def test_a_message_is_delivered_to_the_agent_it_addresses(team: Team) -> None:
    team.unit("a", replies=["I found it.\n@b: please check line 3\nand line 4\n@c, line 9"])
    team.unit("b")
    team.unit("c")
    result, events = await coordinate(team, ["a", "b", "c"])
    assert result.outcome == "complete"
    assert team.received("a") == ["the task"]
    assert team.received("b") == ["the task", "Message from a: please check line 3\nand line 4"]
    assert team.received("c") == ["the task", "Message from a: line 9"]
    routed = [
        (e.agent, e.step, e.source) for e in events if e.type == "prompt" and e.step == "route"
    ]
    assert sorted(routed) == [("b", "route", "a"), ("c", "route", "a")]
    assert ("b", "b answer 2") in [(e.agent, e.text) for e in events if e.type == "reply"]


@pytest.mark.parametrize("hops", [0, 2])
async def test_the_hop_bound_cuts_a_loop(team: Team, hops: int) -> None:
    """a always answers `@b ping`, b always `@a pong`: each chain (one from each task
    reply) is cut after `max_hops` deliveries, with a note; the coordination completes."""
    team.unit("a", replies=["@b ping"])
    team.unit("b", replies=["@a pong"])
    result, events = await coordinate(team, ["a", "b"], max_hops=hops)
    assert result.outcome == "complete"
    assert team.received("a")[0] == team.received("b")[0] == "the task"
    assert team.received("a")[1:] == ["Message from b: pong"] * hops
    assert team.received("b")[1:] == ["Message from a: ping"] * hops
    notes = sorted(e.text for e in events if e.type == "note")
    last = ("b", "a") if hops % 2 == 0 else ("a", "b")  # who speaks last in a's chain
    assert notes == sorted(
        [
            f"hop bound reached ({hops}): {last[0]}'s message to @{last[1]} was not delivered",
            f"hop bound reached ({hops}): {last[1]}'s message to @{last[0]} was not delivered",
        ]
    )


async def test_a_message_to_an_agent_named_twice_goes_to_that_one(team: Team) -> None:
    team.unit("x", replies=["@y#2 only you"])
    team.unit("y")
    _, events = await coordinate(team, ["x", "y", "y"])
    sessions: dict[str, list[str]] = {}
    for e in team.events():
        if e["unit"] == "y" and e["event"] == "prompt":
            sessions.setdefault(e["session"], []).append(e["text"])
    second = next(e.session for e in events if e.type == "started" and e.agent == "y#2")
    assert sessions.pop(second or "") == ["the task", "Message from x: only you"]
    assert list(sessions.values()) == [["the task"]]


@pytest.mark.parametrize("strategy", ["pipeline", "lead"])
async def test_strategies_that_keep_their_order_do_not_route(team: Team, strategy: str) -> None:
    """In pipeline and lead a reply's `@agent` lines are text, never deliveries."""
    team.unit("a", replies=["TASK b: this\n@b go now", "done @b"])
    team.unit("b")
    result, events = await coordinate(team, ["a", "b"], strategy=strategy)
    assert result.outcome == "complete"
    assert [len(team.received("a")), len(team.received("b"))] == [
        1 if strategy == "pipeline" else 2,
        1,
    ]
    assert not any(e.step == "route" for e in events)
