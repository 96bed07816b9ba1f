"""Run a real agent CLI under the whole of latis (the `latis` CLI, cmdr and a unit
it provisions), offline, against tests/model_stubs.py; print JSON.

tests/test_real_agents_hitl.py runs this inside a loopback-only network
namespace, as test_real_agents.py runs tests/real_agents_driver.py (whose agent
set-up, environment and leftover check this reuses):

    unshare -n sh -c 'ip link set lo up && exec python tests/real_agents_hitl_driver.py SPEC'

SPEC is a JSON object:

    {"agent": "claude-acp" | "claude-command" | "codex-command",
     "agents_dir": DIR,                  # where .ci/agents.sh installed the CLIs
     "prompts": [{"text": "...",         # one session, these prompts in turn
                  "answer": "allow"}],   # to each question in the inbox
     "timeout": 40}                      # seconds per prompt (and for the setup)

Each prompt is sent with `latis prompt --detach`; while it runs, a question of its
session in `latis inbox --json` is answered with `latis inbox answer`, as a person
at another terminal would. At the end it reports what `latis session show`,
`latis inbox log` and `latis usage` say (all `--json`), each prompt's usage chunks
(the agent's own reports, replayed by `latis attach --json`), what the stub received,
and the processes of the run still running after `latis daemon stop` and the
unit's stop (then killed).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
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
from real_agents_driver import agent_setup, leftovers  # noqa: E402

LATIS = [sys.executable, "-m", "latis_cli"]


def unit_table(spec: dict[str, Any], env: dict[str, str], work: Path) -> str:
    """The `[units.agent]` table: the agent of `spec`, provisioned as a process."""
    timeout = str(spec.get("timeout", 40))
    options: dict[str, str] = {"timeout": timeout, "grace": "1"}
    agent = spec["agent"]
    if agent == "claude-acp":
        kind, command = "acp", ["claude-agent-acp"]
    elif agent == "claude-command":
        kind, command = "command", []
        options["preset"] = "claude"
    elif agent == "codex-command":
        # Its JSON events (`--json`, read by format=codex-json) carry its usage.
        kind, command = "command", ["codex", "exec", "--json", "--skip-git-repo-check"]
        options.update(preset="codex", format="codex-json")
    else:
        raise SystemExit(f"unknown agent {agent!r}")

    def table(values: dict[str, str]) -> str:
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.items()) + " }"
        )

    lines = ["[units.agent]", f"agent = {json.dumps(kind)}", f"agent_options = {table(options)}"]
    if command:
        lines.append(f"agent_command = {json.dumps(command)}")
    lines += [
        "[units.agent.provisioner]",
        'type = "process"',
        f"cwd = {json.dumps(str(work))}",
        f"env = {table(env)}",
        f"ready_timeout = {timeout}",
    ]
    return "\n".join(lines) + "\n"


class Cli:
    """`latis` in the run's own LATIS_HOME."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = {**env, "LATIS_HOME": str(home), "NO_COLOR": "1"}
        self.calls: list[dict[str, Any]] = []

    async def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        def call() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*LATIS, *args],
                capture_output=True,
                text=True,
                env=self.env,
                cwd=self.home,
                timeout=120,
                check=False,
            )

        done = await trio.to_thread.run_sync(call)
        self.calls.append(
            {"args": list(args), "code": done.returncode, "stderr": done.stderr[-2000:]}
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"latis {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}"
            )
        return done

    async def json(self, *args: str) -> Any:
        return json.loads((await self.run(*args, "--json")).stdout)


async def run_prompt(cli: Cli, sid: str, p: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one prompt (detached); answer its questions from the inbox; its record."""
    rec: dict[str, Any] = {"text": p["text"], "inbox": []}
    await cli.run("prompt", "--session", sid, "--detach", p["text"])
    with trio.fail_after(timeout):
        while True:
            shown = await cli.json("session", "show", sid)
            last = shown["prompts"][-1]
            if last["state"] != "running":
                rec["prompt"] = last
                # The agent's own usage reports, as stored: `attach --json` replays them.
                replay = (await cli.run("attach", sid, "--json", check=False)).stdout
                events = [json.loads(line) for line in replay.splitlines() if line.strip()]
                rec["usage_chunks"] = [
                    e.get("data")
                    for e in events
                    if e.get("type") == "chunk" and e.get("kind") == "usage"
                ]
                return rec
            for item in await cli.json("inbox"):
                if item["session"] == sid:
                    rec["inbox"].append(item)
                    await cli.run("inbox", "answer", item["id"], p.get("answer", "no"))
            await trio.sleep(0.3)


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "agent": spec["agent"],
        "interfaces": [name for _, name in socket.if_nameindex()],
        "prompts": [],
        "error": None,
    }
    timeout = float(spec.get("timeout", 40))
    marker = uuid.uuid4().hex
    tmp = Path(tempfile.mkdtemp(prefix="latis-real-hitl-"))
    work, home = tmp / "work", tmp / "latis"
    work.mkdir()
    home.mkdir()
    stub = ModelStub()
    cli: Cli | None = None
    start = time.monotonic()
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(stub.serve)
            _, env = agent_setup(spec, port, tmp, marker)
            (home / "latis.toml").write_text(unit_table(spec, env, work))
            cli = Cli(home, {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"})
            try:
                with trio.fail_after(timeout * (len(spec["prompts"]) + 2)):
                    sid = (await cli.run("session", "new", "--unit", "agent")).stdout.strip()
                    for p in spec["prompts"]:
                        out["prompts"].append(await run_prompt(cli, sid, p, timeout))
                    out["inbox_log"] = await cli.json("inbox", "log")
                    out["usage"] = await cli.json("usage")
                    out["status"] = await cli.json("status")
            except Exception:
                out["error"] = traceback.format_exc()
            finally:
                await cli.run("unit", "down", "agent", check=False)
                await cli.run("daemon", "stop", check=False)
            out["leftovers"] = await leftovers(marker, tmp)
            nursery.cancel_scope.cancel()
    finally:
        out["seconds"] = round(time.monotonic() - start, 3)
        out["stub"] = [r.summary() for r in stub.requests]
        out["calls"] = cli.calls if cli is not None else []
        logs = sorted((home / "log").glob("*.log")) if (home / "log").exists() else []
        out["logs"] = {p.name: p.read_text(errors="replace").splitlines()[-60:] for p in logs}
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    result = trio.run(main, json.loads(sys.argv[1]))
    print(json.dumps(result, default=str))
