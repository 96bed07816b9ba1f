"""The real agent CLIs under latis, end to end, offline.

Claude Code (through claude-agent-acp, with the `acp` adapter, and as `claude -p`
with the `command` adapter) and Codex (`codex exec`, with the `command` adapter)
run for real, installed from npm by `.ci/agents.sh`, against the model-API stub
of tests/model_stubs.py. Each test runs tests/real_agents_driver.py inside a
loopback-only network namespace (`unshare -n`), stub, `latis-unit` and agent
together, so nothing can leave the machine; the driver prints what happened as
JSON and the test checks it, including that the stub really got the agent's
requests and that no process of the run was left behind.

Skipped, with the reason, when the agents are not installed (run
`.ci/agents.sh`), when not root, or when `unshare -n` does not work here.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from model_stubs import FAIL_MESSAGE, TOOL_COMMAND

pytestmark = pytest.mark.slow

AGENTS_DIR = Path(os.environ.get("LATIS_AGENTS_DIR") or Path.home() / ".cache" / "latis" / "agents")
DRIVER = Path(__file__).with_name("real_agents_driver.py")
#: Seconds per prompt inside the driver, and for the whole driver run.
PROMPT_TIMEOUT = 40
RUN_TIMEOUT = 90
NETNS = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']

BINS = {
    "claude-acp": "claude-agent-acp",
    "claude-command": "claude",
    "codex-command": "codex",
}


@functools.cache
def _no_netns() -> str | None:
    """Why a loopback-only network namespace cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return (
            f"not root (uid {os.geteuid()}): the real agents run in a loopback-only "
            "network namespace, made with `unshare -n`, which needs root"
        )
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH: cannot make a loopback-only network namespace"
    try:
        probe = subprocess.run(
            [*NETNS, "true"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare -n` does not work here: {exc}"
    if probe.returncode != 0:
        why = probe.stderr.strip() or f"exit code {probe.returncode}"
        return f"`unshare -n` does not work here: {why}"
    return None


def _missing(agent: str) -> str | None:
    """Why `agent` cannot run here (None: it can)."""
    if shutil.which("node") is None:
        return "node is not on PATH: the real agent CLIs need it (install node, then .ci/agents.sh)"
    binary = AGENTS_DIR / "node_modules" / ".bin" / BINS[agent]
    if not os.access(binary, os.X_OK):
        return f"{BINS[agent]} is not installed in {AGENTS_DIR} (run .ci/agents.sh)"
    return None


def run(agent: str, *prompts: dict[str, Any], slow_delay: float = 0.2) -> dict[str, Any]:
    """Run the driver for `agent` in a fresh network namespace; return its report."""
    for why in (_missing(agent), _no_netns()):
        if why:
            pytest.skip(why)
    spec = {
        "agent": agent,
        "agents_dir": str(AGENTS_DIR),
        "prompts": list(prompts),
        "timeout": PROMPT_TIMEOUT,
        "slow_delay": slow_delay,
    }
    # Its own process group: on a timeout, all of it goes.
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
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"the driver failed ({proc.returncode}):\n{err[-4000:]}"
    report: dict[str, Any] = json.loads(out)
    log = "\n".join(report.get("unit_log", []))
    assert report["error"] is None, f"{report['error']}\nthe unit's log:\n{log}"
    # Nothing could leave the machine, and nothing of the run was left behind.
    assert report["interfaces"] == ["lo"]
    assert report["leftovers"] == [], f"left running: {report['leftovers']}"
    assert len(report["prompts"]) == len(prompts), log
    return report


def text_of(prompt: dict[str, Any]) -> str:
    return "".join(c["text"] for c in prompt["chunks"] if c["kind"] is None)


def model_requests(report: dict[str, Any], api: str) -> list[dict[str, Any]]:
    return [r for r in report["stub"] if r["api"] == api]


# -- Claude Code through claude-agent-acp (the acp adapter) --------------------------


def test_claude_acp_streams_the_stubs_answer() -> None:
    report = run("claude-acp", {"text": "Say the word PINEAPPLE"})
    # The unit starts the agent before its hello: the hello names the agent itself.
    assert report["hello"]["agent"] == "@agentclientprotocol/claude-agent-acp"
    (prompt,) = report["prompts"]
    assert prompt["outcome"] == "complete", prompt
    assert text_of(prompt) == "Stub heard: PINEAPPLE."
    # Streamed: the stub's deltas arrive as separate chunks.
    assert len([c for c in prompt["chunks"] if c["kind"] is None and c["text"]]) >= 3
    assert prompt["chunks"][-1]["kind"] == "stop"
    assert prompt["chunks"][-1]["data"]["stopReason"] == "end_turn"
    # The real agent talked to the stub: the prompt reached it, streamed.
    (request,) = model_requests(report, "anthropic")
    assert request["path"].startswith("/v1/messages")
    assert request["prompt"] == "Say the word PINEAPPLE"
    assert request["stream"] is True
    assert request["headers"]["user-agent"].startswith("claude-cli/")
    assert "claude-agent-acp" in "\n".join(report["unit_log"])


def test_claude_acp_cancel_mid_stream() -> None:
    report = run(
        "claude-acp",
        {"text": "stub:slow count for me", "cancel": "ticks"},
        {"text": "Then say KIWI"},
    )
    cancelled, after = report["prompts"]
    assert cancelled["outcome"] == "cancelled", cancelled
    assert [c["text"] for c in cancelled["chunks"] if "tick" in c["text"]][:3] == [
        "tick 0 ",
        "tick 1 ",
        "tick 2 ",
    ]
    # The agent really stopped: it hung up on the model's stream, long before its end.
    assert cancelled["stub_hung_up"] is True
    slow = next(r for r in model_requests(report, "anthropic") if r["answer"] == "slow")
    assert slow["disconnected"] and slow["events"] < 50
    assert cancelled["seconds"] - cancelled["cancelled_after"] < 5
    # The session goes on.
    assert after["outcome"] == "complete", after
    assert text_of(after) == "Stub heard: KIWI."


def test_claude_acp_permission_yes_runs_the_tool() -> None:
    report = run("claude-acp", {"text": "stub:tool run it", "answer": "yes"})
    (prompt,) = report["prompts"]
    assert prompt["outcome"] == "complete", prompt
    (question,) = prompt["inputs"]
    assert question["kind"] == "permission"
    assert TOOL_COMMAND in question["question"]
    assert "Allow" in question["options"] and "Reject" in question["options"]
    # The tool call streams as typed chunks, and the tool really ran.
    calls = [c["data"] for c in prompt["chunks"] if c["kind"] == "tool_call"]
    assert calls[0]["sessionUpdate"] == "tool_call"
    assert calls[-1]["status"] == "completed"
    assert report["files"] == ["stub-tool.txt"]
    # Its result went back to the model, whose answer closes the turn.
    results = [r["tool_results"] for r in model_requests(report, "anthropic")]
    assert [{"text": "stub-tool-ran", "is_error": False}] in results
    assert text_of(prompt).endswith("Tool result: stub-tool-ran")


def test_claude_acp_permission_no_refuses_the_tool() -> None:
    report = run("claude-acp", {"text": "stub:tool run it", "answer": "no"})
    (prompt,) = report["prompts"]
    assert prompt["outcome"] == "complete", prompt
    (question,) = prompt["inputs"]
    assert question["kind"] == "permission"
    calls = [c["data"] for c in prompt["chunks"] if c["kind"] == "tool_call"]
    assert calls[-1]["status"] == "failed"
    assert report["files"] == []  # the tool did not run
    # The refusal went back to the model as an error result; the turn ends normally.
    last = model_requests(report, "anthropic")[-1]
    (result,) = last["tool_results"]
    assert result["is_error"] is True
    assert "refused" in result["text"]
    assert text_of(prompt).startswith("I will run a command.Tool refused:")


def test_claude_acp_model_error_fails_the_prompt() -> None:
    report = run("claude-acp", {"text": "stub:fail this one"}, {"text": "Now say FIG"})
    failed, after = report["prompts"]
    assert failed["outcome"] == "error", failed
    assert failed["error"]["code"] == "agent_error"
    assert FAIL_MESSAGE in failed["error"]["message"]
    assert "400" in failed["error"]["message"]
    assert any(r["status"] == 400 for r in model_requests(report, "anthropic"))
    # The session survives a model error.
    assert after["outcome"] == "complete", after
    assert text_of(after) == "Stub heard: FIG."


# -- Codex through `codex exec` (the command adapter) --------------------------------


def test_codex_exec_streams_the_stubs_answer() -> None:
    report = run("codex-command", {"text": "Say the word PINEAPPLE"}, {"text": "and MANGO"})
    assert report["hello"]["agent"] == "command"
    first, second = report["prompts"]
    assert first["outcome"] == "complete", first
    assert text_of(first) == "Stub heard: PINEAPPLE.\n"
    assert second["outcome"] == "complete", second
    assert text_of(second) == "Stub heard: MANGO.\n"
    requests = model_requests(report, "openai")
    assert [r["prompt"] for r in requests] == ["Say the word PINEAPPLE", "and MANGO"]
    assert all(r["path"] == "/v1/responses" and r["stream"] is True for r in requests)
    assert requests[0]["headers"]["user-agent"].startswith("codex_exec/")
    assert [r for r in report["stub"] if r["api"] != "openai"] == []  # nothing else asked


def test_codex_exec_model_error_fails_the_prompt() -> None:
    report = run("codex-command", {"text": "stub:fail this one"})
    (prompt,) = report["prompts"]
    assert prompt["outcome"] == "error", prompt
    assert prompt["error"]["code"] == "agent_error"
    assert "exited with code 1" in prompt["error"]["message"]
    assert FAIL_MESSAGE in prompt["error"]["message"]  # codex's stderr, quoted
    (request,) = model_requests(report, "openai")
    assert request["status"] == 400


def test_codex_exec_cancel_ends_the_run() -> None:
    report = run(
        "codex-command",
        {"text": "stub:slow count for me", "cancel": "stub"},
        {"text": "Then say KIWI"},
    )
    cancelled, after = report["prompts"]
    assert cancelled["outcome"] == "cancelled", cancelled
    # The process group is gone: codex hung up on the model's stream.
    assert cancelled["stub_hung_up"] is True
    assert cancelled["seconds"] - cancelled["cancelled_after"] < 5
    assert after["outcome"] == "complete", after
    assert text_of(after) == "Stub heard: KIWI.\n"


# -- Claude Code as `claude -p` (the command adapter, preset claude) -----------------


def test_claude_p_streams_continues_and_fails() -> None:
    report = run(
        "claude-command",
        {"text": "Say the word PINEAPPLE"},
        {"text": "Now say BANANA"},
        {"text": "stub:fail this one"},
    )
    first, second, failed = report["prompts"]
    assert first["outcome"] == "complete", first
    assert [c["text"] for c in first["chunks"] if c["kind"] != "usage"] == [
        "Stub ", "heard: ", "PINEAPPLE."]
    # The result line's tokens and cost, as Claude Code reported them, follow the text.
    [usage] = [c for c in first["chunks"] if c["kind"] == "usage"]
    assert usage["text"] == "" and "usage" in usage["data"]
    assert second["outcome"] == "complete", second
    assert text_of(second) == "Stub heard: BANANA."
    assert failed["outcome"] == "error", failed
    assert FAIL_MESSAGE in failed["error"]["message"]
    requests = model_requests(report, "anthropic")
    assert [r["prompt"] for r in requests] == [
        "Say the word PINEAPPLE",
        "Now say BANANA",
        "stub:fail this one",
    ]
    # The preset continues the conversation: each turn carries the earlier ones.
    assert requests[0]["history"] == ["Say the word PINEAPPLE"]
    assert requests[1]["history"] == ["Say the word PINEAPPLE", "Now say BANANA"]
