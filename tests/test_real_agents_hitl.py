"""The real agent CLIs under the whole of latis: their questions in `latis inbox`,
their own usage reports in `latis usage`, offline.

Claude Code (through claude-agent-acp, and as `claude -p`) and Codex (`codex exec
--json`), installed from npm by `.ci/agents.sh`, run in a unit that cmdr
provisions, against the model-API stub of tests/model_stubs.py, all inside a
loopback-only network namespace (tests/real_agents_hitl_driver.py drives the
`latis` CLI there, as a person would, and prints what it saw as JSON).

The stub reports 12 input tokens and 8 output tokens for each Anthropic message
(Codex: 12 in, one out per text delta); the agents count what they were told,
and Claude Code prices it itself. latis adds up what the agents report, nothing
else. Skipped, with the reason, as test_real_agents.py is: agents not installed,
not root, or no `unshare -n`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from model_stubs import ASK_INPUT, TOOL_COMMAND
from test_real_agents import AGENTS_DIR, NETNS, _missing, _no_netns

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("real_agents_hitl_driver.py")
#: Seconds per prompt inside the driver, and for the whole driver run.
PROMPT_TIMEOUT = 40
RUN_TIMEOUT = 120


def run(agent: str, *prompts: dict[str, Any]) -> dict[str, Any]:
    """Run the driver for `agent` in a fresh network namespace; return its report."""
    for why in (_missing(agent), _no_netns()):
        if why:
            pytest.skip(why)
    spec = {
        "agent": agent,
        "agents_dir": str(AGENTS_DIR),
        "prompts": list(prompts),
        "timeout": PROMPT_TIMEOUT,
    }
    proc = subprocess.Popen(
        [*NETNS, sys.executable, str(DRIVER), json.dumps(spec)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the driver ran over {RUN_TIMEOUT} s; its stderr:\n{err[-4000:]}")
    assert proc.returncode == 0, f"the driver failed ({proc.returncode}):\n{err[-4000:]}"
    report: dict[str, Any] = json.loads(out)
    logs = json.dumps(report["logs"], indent=1)
    assert report["error"] is None, f"{report['error']}\n{report['calls']}\n{logs}"
    assert report["interfaces"] == ["lo"]  # nothing could leave the machine
    assert report["leftovers"] == [], f"left running: {report['leftovers']}"
    assert [p["prompt"]["state"] for p in report["prompts"]] == ["complete"] * len(prompts), logs
    return report


def messages(report: dict[str, Any]) -> int:
    """How many Anthropic messages the stub answered (12 in, 8 out each)."""
    return len(
        [
            r
            for r in report["stub"]
            if r["path"].startswith("/v1/messages") and "count_tokens" not in r["path"]
        ]
    )


def the_row(report: dict[str, Any]) -> dict[str, Any]:
    usage = report["usage"]
    assert usage["unreported"] == []
    [row] = usage["rows"]
    return dict(row)


def test_claude_acp_asks_in_the_inbox_and_reports_its_usage() -> None:
    """Claude Code (claude-agent-acp) asks to run a command: the request is in
    `latis inbox` (the command, its options); answered there, the tool runs. Its
    tokens (per turn) and cost (the session's so far) are in `latis usage`."""
    report = run(
        "claude-acp", {"text": "stub:tool run it", "answer": "allow"}, {"text": "Say the word KIWI"}
    )
    asked, said = report["prompts"]
    [item] = asked["inbox"]
    assert (item["kind"], item["agent"], item["state"]) == ("permission", "acp", "open")
    assert TOOL_COMMAND in item["question"]
    assert "Allow" in item["options"] and "Reject" in item["options"]
    assert (item["details"]["tool_kind"], item["details"]["command"]) == ("execute", TOOL_COMMAND)
    assert asked["prompt"]["answer"].endswith("Tool result: stub-tool-ran")
    assert said["prompt"]["answer"] == "Stub heard: KIWI."
    [logged] = report["inbox_log"]
    assert (logged["id"], logged["answer"], logged["answered_by"]) == (item["id"], "Allow", "inbox")

    row = the_row(report)
    n = messages(report)
    assert n >= 3  # the tool call, the answer after its result, KIWI
    assert (row["prompts"], row["reported"]) == (2, 2)
    assert (row["input_tokens"], row["output_tokens"]) == (12 * n, 8 * n)
    chunks = [c for p in report["prompts"] for c in p["usage_chunks"]]
    costs = [c["cost"]["amount"] for c in chunks if isinstance(c.get("cost"), dict)]
    assert costs and costs[-1] > 0  # the session's cost so far, as Claude Code priced it
    assert row["cost"] == pytest.approx(costs[-1]) and row["currency"] == "USD"
    last_context = [c for c in chunks if "used" in c][-1]
    assert (row["context_used"], row["context_size"]) == (
        last_context["used"],
        last_context["size"],
    )


def test_claude_acp_asks_a_question_as_a_form_in_the_inbox() -> None:
    """Claude Code's AskUserQuestion tool reaches latis as an ACP form elicitation
    (claude-agent-acp renders it so when the client can show forms, as latis says
    it can): the inbox lists the question with its choices; a choice named there
    is the answer Claude Code gets."""
    report = run("claude-acp", {"text": "stub:ask me", "answer": "blue"})
    [asked] = report["prompts"]
    [item] = asked["inbox"]
    [question] = ASK_INPUT["questions"]
    assert (item["kind"], item["question"]) == ("form", question["question"])
    assert item["options"] == [o["label"] for o in question["options"]]
    assert item["details"]["schema"]["properties"]["question_0_custom"]["title"] == "Other"
    [logged] = report["inbox_log"]
    assert (logged["answer"], logged["answered_by"]) == ("blue", "inbox")
    # The model got the answer as the tool's result, and closed the turn with it.
    [result] = [r["tool_results"] for r in report["stub"] if r["tool_results"]]
    assert f'"{question["question"]}"="Blue"' in result[0]["text"]
    assert not result[0]["is_error"]
    assert asked["prompt"]["answer"].startswith("I will ask you.Tool result: ")


def test_claude_p_reports_tokens_and_cost() -> None:
    """`claude -p` (the command adapter's claude preset): each run's stream-json
    result carries its tokens and cost; `latis usage` adds them up."""
    report = run("claude-command", {"text": "Say the word PINEAPPLE"}, {"text": "Now say KIWI"})
    row = the_row(report)
    n = messages(report)
    assert (row["prompts"], row["reported"]) == (2, 2)
    assert (row["input_tokens"], row["output_tokens"]) == (12 * n, 8 * n)
    results = [c for p in report["prompts"] for c in p["usage_chunks"]]
    assert len(results) == 2 and all(c["total_cost_usd"] > 0 for c in results)
    assert row["cost"] == pytest.approx(sum(c["total_cost_usd"] for c in results))


def test_codex_exec_json_reports_tokens_but_no_cost() -> None:
    """`codex exec --json` (format=codex-json): each turn's tokens come from its
    `turn.completed` event; Codex says nothing of cost, and neither does latis."""
    report = run("codex-command", {"text": "Say the word PINEAPPLE"}, {"text": "Say the word KIWI"})
    row = the_row(report)
    reported = [c["usage"] for p in report["prompts"] for c in p["usage_chunks"]]
    assert len(reported) == 2
    assert row["input_tokens"] == sum(u["input_tokens"] for u in reported) == 24
    assert row["output_tokens"] == sum(u["output_tokens"] for u in reported)
    assert (row["cost"], row["currency"]) == (None, None)
    assert [p["prompt"]["answer"] for p in report["prompts"]] == [
        "Stub heard: PINEAPPLE.",
        "Stub heard: KIWI.",
    ]
