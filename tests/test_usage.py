"""Usage and cost, as the agents report them: `latis usage` and `status`.

The real `latis` CLI and daemon in a fresh `LATIS_HOME`, real `latis-unit`
processes: the ACP test agent tests/acp_agents/hitl_agent.py (written with the
real ACP SDK: a `usage_update` with context and the session's cost so far, and
the turn's tokens in its prompt response), the openai adapter against
tests/openai_stub.py streaming a usage chunk, and the echo agent, which reports
nothing. Claude Code's and Codex's own reports are in test_real_agents_hitl.py.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio
from hitl import (
    acp_unit,
    echo_unit,
    new_session,
    start_prompt,
    wait_ended,
    wait_question,
    write_config,
)
from openai_stub import StubRequest, StubResponse, open_stub
from test_cli import Home
from test_cli import home as home  # noqa: F401 (the fixture: a fresh LATIS_HOME)

pytest.importorskip("acp", reason="the ACP SDK (agent-client-protocol) runs the test agents")

# What hitl_agent.py reports for each `usage` prompt.
TURN_IN, TURN_OUT, TURN_COST, CONTEXT_SIZE = 1200.0, 300.0, 0.0125, 200000.0


def rows_by_key(home: Home, by: str) -> tuple[dict[Any, dict[str, Any]], list[dict[str, Any]]]:
    data = home.json("usage", "--by", by)
    assert data["by"] == by
    return {row["key"]: row for row in data["rows"]}, data["unreported"]


def test_acp_usage_adds_up_by_session_unit_agent_and_day(home: Home) -> None:
    """Two sessions of an ACP agent report tokens per turn and their cost so far:
    `latis usage` sums the tokens, counts a cumulative cost by its increase, keeps
    the last context use; rolled up by unit, agent and day the numbers agree. The
    echo agent's session, which reported nothing, has no number at all."""
    write_config(home, acp_unit("acp"), echo_unit("quiet"))
    first, second = new_session(home, "acp"), new_session(home, "acp")
    quiet = new_session(home, "quiet")
    for sid, text in (
        (first, "usage"),
        (first, "usage"),
        (second, "usage"),
        (first, "hello"),
        (quiet, "hello"),
    ):
        home.ok("prompt", "--session", sid, text)

    sessions, unreported = rows_by_key(home, "session")
    one = sessions[first]
    assert (one["unit"], one["agent"], one["prompts"], one["reported"]) == ("acp", "acp", 3, 2)
    assert (one["input_tokens"], one["output_tokens"], one["total_tokens"]) == (
        2 * TURN_IN,
        2 * TURN_OUT,
        2 * (TURN_IN + TURN_OUT),
    )
    assert one["cost"] == pytest.approx(2 * TURN_COST) and one["currency"] == "USD"
    assert (one["context_used"], one["context_size"]) == (2 * (TURN_IN + TURN_OUT), CONTEXT_SIZE)
    two = sessions[second]
    assert (two["input_tokens"], two["output_tokens"]) == (TURN_IN, TURN_OUT)
    assert two["cost"] == pytest.approx(TURN_COST)
    nothing = sessions[quiet]
    assert (nothing["prompts"], nothing["reported"]) == (1, 0)
    assert [
        nothing[k] for k in ("input_tokens", "output_tokens", "total_tokens", "cost", "currency")
    ] == [None] * 5
    assert "context_used" not in nothing
    assert unreported == [{"session": quiet, "unit": "quiet", "agent": "echo", "prompts": 1}]

    for by, key, other in (("unit", "acp", "quiet"), ("agent", "acp", "echo")):
        rows, _ = rows_by_key(home, by)
        assert (rows[key]["prompts"], rows[key]["reported"]) == (4, 3)
        assert (rows[key]["input_tokens"], rows[key]["output_tokens"]) == (
            3 * TURN_IN,
            3 * TURN_OUT,
        )
        assert rows[key]["cost"] == pytest.approx(3 * TURN_COST)
        assert (rows[other]["prompts"], rows[other]["cost"]) == (1, None)
    days, _ = rows_by_key(home, "day")
    assert sum(r["prompts"] for r in days.values()) == 5
    assert sum(r["cost"] or 0 for r in days.values()) == pytest.approx(3 * TURN_COST)

    table = home.ok("usage")
    assert "2,400" in table.stdout and "0.0250 USD" in table.stdout
    assert (
        f"session {quiet} (quiet, agent echo): its agent reported no usage for its 1 prompt(s)"
    ) in table.stderr


def test_usage_by_coordination_and_context_in_status(home: Home) -> None:
    """A coordination's usage is its sessions' (with the agent that said nothing
    listed apart); `status` shows a waiting session's context use as its agent last
    reported it, and says so where an agent reported none."""
    write_config(home, acp_unit("acp"), echo_unit("quiet"))
    home.ok("coordinate", "--agents", "acp,quiet", "usage")
    coordinations, unreported = rows_by_key(home, "coordination")
    [(key, row)] = coordinations.items()
    assert key.startswith("co-")
    assert (row["prompts"], row["reported"], row["input_tokens"]) == (2, 1, TURN_IN)
    assert row["cost"] == pytest.approx(TURN_COST)
    assert [u["unit"] for u in unreported] == ["quiet"]

    sid = new_session(home, "acp")
    home.ok("prompt", "--session", sid, "usage")
    start_prompt(home, sid, "run make deploy")
    wait_question(home, sid)
    [active] = home.json("status")["active"]
    assert active["context"] == {"context_used": TURN_IN + TURN_OUT, "context_size": CONTEXT_SIZE}
    status = home.ok("status").stdout
    assert f"waiting  acp/{sid}  asks 'Run make deploy'" in status
    assert "context 1,500/200,000" in status


async def test_openai_stream_usage(home: Home) -> None:
    """The openai adapter passes on the usage an OpenAI-compatible server streams in
    its last chunk; `latis usage` adds up the prompts' tokens and shows no cost (the
    server gave none)."""

    async def answer(request: StubRequest, response: StubResponse) -> None:
        await response.start()
        await response.chunk(role="assistant", content="Hello")
        await response.chunk(content=" there", finish_reason="stop")
        await response.chunk(
            usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        )
        await response.done()

    async with open_stub(answer) as stub:
        write_config(
            home,
            '[units.oa]\nagent = "openai"\n'
            f'agent_options = {{ base_url = "{stub.base_url}", model = "m" }}\n'
            '[units.oa.provisioner]\ntype = "process"\n',
        )

        async def cli(*args: str) -> Any:
            return await trio.to_thread.run_sync(functools.partial(home.ok, *args))

        sid = (await cli("session", "new", "--unit", "oa")).stdout.strip()
        for _ in range(2):
            assert (await cli("prompt", "--session", sid, "hi")).stdout == "Hello there\n"
        assert len(stub.requests) == 2
    sessions, unreported = rows_by_key(home, "session")
    row = sessions[sid]
    assert (row["agent"], row["prompts"], row["reported"]) == ("openai", 2, 2)
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (22, 14, 36)
    assert (row["cost"], row["currency"]) == (None, None)
    assert unreported == []
    assert wait_ended(home, sid)["state"] == "complete"


def test_many_silent_sessions_are_one_line_per_agent(home: Home) -> None:
    """Past a few sessions whose agent reported nothing, `latis usage` says so once per
    agent (how many prompts, sessions, which units), not once per session."""
    for i in range(6):
        home.ok("prompt", "--new", f"p{i}")
    said = home.ok("usage").stderr
    assert said.strip() == (
        "agent echo reported no usage for 6 prompt(s) in 6 session(s) (units: local; "
        "`latis usage --json` lists them)"
    )
    assert len(home.json("usage")["unreported"]) == 6
