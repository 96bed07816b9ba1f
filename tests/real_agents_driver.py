"""Run a real agent CLI under latis, offline, against tests/model_stubs.py; print JSON.

tests/test_real_agents.py runs this inside a loopback-only network namespace,
stub, unit and agent together, so no packet can leave the machine:

    unshare -n sh -c 'ip link set lo up && exec python tests/real_agents_driver.py SPEC'

SPEC is a JSON object:

    {"agent": "claude-acp" | "claude-command" | "codex-command" | "acp",
     "command": [...],                 # for "acp": the ACP agent's command line
     "agents_dir": DIR,                # where .ci/agents.sh installed the CLIs
     "prompts": [{"text": "...",       # one session, these prompts in turn
                  "answer": "yes",     # to each permission question (default "no")
                  "cancel": "ticks" | "stub"}],  # cancel after 3 "tick" chunks, or
                                                 # once the stub streams its slow answer
     "timeout": 40,                    # seconds per prompt (and for the setup)
     "slow_delay": 0.2,                # seconds between the stub's `stub:slow` deltas
     "env": {...}}                     # more environment for the unit and agent

It starts the stub on 127.0.0.1 (port 0), writes each agent's config into temp
dirs (HOME, CODEX_HOME, the working directory), runs one `latis-unit --stdio`
through `latis_core.connect_local`, and prints one JSON object: the unit's
hello, what each prompt streamed and how it ended, what the stub received,
the files in the working directory, the network interfaces it saw, and any
process it started that was still running afterwards (then killed).

Every process it starts carries LATIS_REAL_AGENTS_RUN=<random> in its
environment (or runs in the run's temp dir): that is how leftovers are found.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_stubs import ModelStub  # noqa: E402

import latis_core  # noqa: E402
from latis_core import InputRequest, RequestError  # noqa: E402

MARK = "LATIS_REAL_AGENTS_RUN"
#: Chunks whose data is bigger than this (as JSON) keep only its keys.
DATA_LIMIT = 4000

CODEX_CONFIG = """\
model = "gpt-5.2-codex"
model_provider = "stub"
approval_policy = "never"
sandbox_mode = "workspace-write"
check_for_update_on_startup = false
features = {{ plugins = false, apps = false }}
analytics = {{ enabled = false }}
feedback = {{ enabled = false }}
model_providers.stub = {{ name = "Stub", base_url = "http://127.0.0.1:{port}/v1", \
wire_api = "responses", env_key = "STUB_API_KEY", request_max_retries = 0, \
stream_max_retries = 0 }}
"""


def agent_setup(
    spec: dict[str, Any], port: int, tmp: Path, marker: str
) -> tuple[list[str], dict[str, str]]:
    """The unit's command line and environment for `spec["agent"]`."""
    bin_dir = Path(spec["agents_dir"]) / "node_modules" / ".bin"
    node = shutil.which("node")
    path = [str(bin_dir)]
    if node:
        path.append(str(Path(node).parent))
    path += ["/usr/local/bin", "/usr/bin", "/bin"]
    home, codex_home = tmp / "home", tmp / "codex"
    home.mkdir()
    codex_home.mkdir()
    env = {
        "PATH": os.pathsep.join(dict.fromkeys(path)),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        MARK: marker,
        # Claude Code (claude and claude-agent-acp):
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
        "ANTHROPIC_API_KEY": "dummy",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "IS_SANDBOX": "1",  # as root, or claude-agent-acp's session/new fails
        # Codex:
        "CODEX_HOME": str(codex_home),
        "STUB_API_KEY": "dummy",
    }
    env.update(spec.get("env", {}))
    (codex_home / "config.toml").write_text(CODEX_CONFIG.format(port=port))
    timeout = str(spec.get("timeout", 40))
    options = {"timeout": timeout, "grace": "1"}
    log = ["--log-level", "info"]
    agent = spec["agent"]
    if agent == "claude-acp":
        argv = latis_core.unit_command("acp", options, args=[*log, "--", "claude-agent-acp"])
    elif agent == "claude-command":
        argv = latis_core.unit_command("command", {"preset": "claude", **options}, args=log)
    elif agent == "codex-command":
        argv = latis_core.unit_command(
            "command",
            {"preset": "codex", **options},
            args=[*log, "--", "codex", "exec", "--skip-git-repo-check"],
        )
    elif agent == "acp":  # any other ACP agent, by hand: "command": [...]
        argv = latis_core.unit_command("acp", options, args=[*log, "--", *spec["command"]])
    else:
        raise SystemExit(f"unknown agent {agent!r}")
    return argv, env


def chunk_record(ev: Any) -> dict[str, Any]:
    data = ev.data
    if data is not None and len(json.dumps(data, default=str)) > DATA_LIMIT:
        data = {"truncated": sorted(data)}
    return {"kind": ev.kind, "text": ev.text, "data": data}


async def run_prompt(
    session: latis_core.Session, p: dict[str, Any], stub: ModelStub, timeout: float
) -> dict[str, Any]:
    """Send one prompt; record its chunks, questions and end.

    `p["cancel"]`: "ticks" cancels after the third "tick" chunk (the stub's
    slow answer, streamed); "stub" cancels once the stub has streamed part of
    its slow answer, for an agent that prints nothing until the end (codex
    exec). Cancelling is what a library user does: cancel the task that
    iterates (the stream sends `prompt.cancel` and waits for the unit's
    `response.cancelled`).
    """
    rec: dict[str, Any] = {
        "text": p["text"],
        "chunks": [],
        "inputs": [],
        "outcome": None,
        "error": None,
    }
    start = time.monotonic()
    stream = session.prompt(p["text"])
    cancel = p.get("cancel")
    seen = len(stub.requests)
    scope = trio.CancelScope()

    def is_ours_and_slow(r: Any) -> bool:
        return r in stub.requests[seen:] and r.answer == "slow" and r.events >= 6

    async def consume() -> None:
        ticks = 0
        with scope:
            async for ev in stream:
                if isinstance(ev, InputRequest):
                    answer = p.get("answer", "no")
                    rec["inputs"].append(
                        {
                            "question": ev.question,
                            "options": list(ev.options),
                            "kind": ev.kind,
                            "answer": answer,
                        }
                    )
                    await stream.reply(answer)
                    continue
                rec["chunks"].append(chunk_record(ev))
                if ev.kind is None and "tick" in ev.text:
                    ticks += 1
                    if cancel == "ticks" and ticks == 3:
                        rec["cancelled_after"] = round(time.monotonic() - start, 3)
                        scope.cancel()

    async def cancel_when_streaming() -> None:
        await stub.wait_request(is_ours_and_slow, timeout)
        rec["cancelled_after"] = round(time.monotonic() - start, 3)
        scope.cancel()

    try:
        with trio.fail_after(timeout):
            if cancel == "stub":
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_when_streaming)
                    try:
                        await consume()
                    finally:
                        nursery.cancel_scope.cancel()
            else:
                await consume()
        rec["outcome"] = stream.outcome
    except* RequestError as group:
        exc = group.exceptions[0]
        assert isinstance(exc, RequestError)
        rec["outcome"] = "error"
        rec["error"] = {"type": "RequestError", "code": str(exc.code), "message": exc.message}
    except* trio.TooSlowError:
        rec["outcome"] = "timeout"
        rec["error"] = {"type": "TooSlowError", "message": f"no end within {timeout} s"}
    rec["seconds"] = round(time.monotonic() - start, 3)
    if "cancelled_after" in rec:
        # The agent really stopped: it hung up on the stub's slow answer.
        slow = [r for r in stub.requests[seen:] if r.answer == "slow"]
        if slow:
            with trio.move_on_after(5):
                await stub.wait_request(lambda r: r is slow[-1] and r.ended > 0, 5)
            rec["stub_hung_up"] = slow[-1].disconnected
            rec["stub_events_sent"] = slow[-1].events
    return rec


def processes_of_run(marker: str, tmp: Path) -> list[dict[str, Any]]:
    """Processes (other than us) that carry the run's marker or run in its temp dir."""
    found = []
    needle = f"{MARK}={marker}".encode()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue  # a zombie is gone, only not yet reaped
        if needle in environ or cwd == str(tmp) or cwd.startswith(str(tmp) + "/"):
            found.append({"pid": int(entry.name), "cmdline": cmdline.strip()[:300]})
    return found


async def leftovers(marker: str, tmp: Path, wait: float = 5.0) -> list[dict[str, Any]]:
    """What is still running of the run after `wait` seconds; killed, and reported."""
    deadline = trio.current_time() + wait
    while (found := processes_of_run(marker, tmp)) and trio.current_time() < deadline:
        await trio.sleep(0.1)
    for p in found:
        try:
            os.kill(p["pid"], signal.SIGKILL)
        except OSError:
            pass
    return found


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "agent": spec["agent"],
        "interfaces": [name for _, name in socket.if_nameindex()],
        "prompts": [],
        "error": None,
    }
    timeout = float(spec.get("timeout", 40))
    marker = uuid.uuid4().hex
    tmp = Path(tempfile.mkdtemp(prefix="latis-real-agents-"))
    work = tmp / "work"
    work.mkdir()
    stub = ModelStub(slow_delay=float(spec.get("slow_delay", 0.2)))
    log_path = tmp / "unit.log"
    start = time.monotonic()
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(stub.serve)
            argv, env = agent_setup(spec, port, tmp, marker)
            out["argv"] = argv
            with log_path.open("wb") as log:  # noqa: ASYNC230 (before anything runs)
                try:
                    # A bound on the whole conversation; each step has its own too.
                    with trio.fail_after(timeout * (len(spec["prompts"]) + 2)):
                        async with latis_core.connect_local(
                            argv, env=env, cwd=str(work), stderr=log.fileno(), grace=3
                        ) as unit:
                            out["hello"] = {
                                "agent": unit.agent.name,
                                "version": unit.agent.version,
                                "capabilities": list(unit.capabilities),
                            }
                            t = time.monotonic()
                            with trio.fail_after(timeout):
                                session = await unit.create_session()
                            out["session_seconds"] = round(time.monotonic() - t, 3)
                            for p in spec["prompts"]:
                                out["prompts"].append(await run_prompt(session, p, stub, timeout))
                except Exception:
                    out["error"] = traceback.format_exc()
            out["leftovers"] = await leftovers(marker, tmp)
            nursery.cancel_scope.cancel()
    finally:
        out["seconds"] = round(time.monotonic() - start, 3)
        out["stub"] = [r.summary() for r in stub.requests]
        out["files"] = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
        try:
            out["unit_log"] = log_path.read_text(errors="replace").splitlines()[-60:]
        except OSError:
            out["unit_log"] = []
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    result = trio.run(main, json.loads(sys.argv[1]))
    print(json.dumps(result, default=str))
