"""What the human-in-the-loop tests share (test_inbox, test_notify, test_policy,
test_usage): units written into a fresh home's config, and waiting for what the
daemon does on its own time (a question reaching the inbox, a prompt ending).

They drive the real `latis` CLI in a fresh `LATIS_HOME` (test_cli's `Home` and
`home` fixture), with real `latis-unit` processes: the echo agent, or the ACP
test agents of tests/acp_agents/ written with the real SDK.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from test_cli import LATIS, Home

__all__ = [
    "ACP_AGENTS",
    "Lines",
    "acp_unit",
    "echo_unit",
    "eventually",
    "new_session",
    "open_items",
    "prompt_of",
    "start_prompt",
    "wait_ended",
    "wait_question",
    "write_config",
]

_T = TypeVar("_T")

ACP_AGENTS = Path(__file__).resolve().parent / "acp_agents"
#: Seconds anything the daemon does on its own may take before a test gives up.
PATIENCE = 30.0


def echo_unit(name: str, **options: str) -> str:
    """A `[units.NAME]` table: the echo agent in a `latis-unit` process."""
    opts = ", ".join(f"{key} = {json.dumps(value)}" for key, value in options.items())
    return (
        f'[units.{name}]\nagent = "echo"\nagent_options = {{ {opts} }}\n'
        f'[units.{name}.provisioner]\ntype = "process"\n'
    )


def acp_unit(name: str, script: str = "hitl_agent.py") -> str:
    """A `[units.NAME]` table: an ACP test agent (tests/acp_agents/SCRIPT) behind the
    `acp` adapter in a `latis-unit` process."""
    command = json.dumps([sys.executable, str(ACP_AGENTS / script)])
    return (
        f'[units.{name}]\nagent = "acp"\nagent_command = {command}\n'
        f'[units.{name}.provisioner]\ntype = "process"\n'
    )


def write_config(home: Home, *tables: str) -> None:
    """The home's latis.toml: these tables (top-level ones such as [notify] first)."""
    (home.path / "latis.toml").write_text("\n".join(tables))


def eventually(probe: Callable[[], _T | None], what: str, timeout: float = PATIENCE) -> _T:
    """`probe()`'s first true value, asked again until `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.2)


def new_session(home: Home, unit: str) -> str:
    """A new session on `unit` (started if need be)."""
    sid: str = home.ok("session", "new", "--unit", unit).stdout.strip()
    return sid


def start_prompt(home: Home, sid: str, text: str) -> None:
    """Send a prompt to session `sid` and leave it running (`--detach`)."""
    home.ok("prompt", "--session", sid, "--detach", text)


def open_items(home: Home) -> list[dict[str, Any]]:
    """`latis inbox --json`: the open questions."""
    items: list[dict[str, Any]] = home.json("inbox")
    return items


def wait_question(home: Home, sid: str) -> dict[str, Any]:
    """The open question of session `sid`, once it is in the inbox."""
    return eventually(
        lambda: next((i for i in open_items(home) if i["session"] == sid), None),
        f"a question of session {sid} in the inbox",
    )


def prompt_of(home: Home, sid: str, index: int = -1) -> dict[str, Any]:
    """A prompt of session `sid` as `latis session show --json` gives it."""
    prompt: dict[str, Any] = home.json("session", "show", sid)["prompts"][index]
    return prompt


def wait_ended(home: Home, sid: str) -> dict[str, Any]:
    """Session `sid`'s last prompt, once it ended."""

    def ended() -> dict[str, Any] | None:
        prompt = prompt_of(home, sid)
        return prompt if prompt["state"] != "running" else None

    return eventually(ended, f"the prompt of session {sid} to end")


class Lines:
    """A long-running `latis` command (`inbox watch`, a prompt that waits), with
    its stdout read line by line in a thread, so a test waits for a line with a
    deadline instead of blocking for ever."""

    def __init__(self, home: Home, *args: str, stdin: Any = subprocess.DEVNULL) -> None:
        self.proc = subprocess.Popen(
            [*LATIS, *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=home.env,
            cwd=home.path,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def line(self, timeout: float = PATIENCE) -> str:
        """The next line of its stdout."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from {self.proc.args[3:]} in {timeout:g} s") from None

    def finish(self, timeout: float = PATIENCE) -> tuple[int, str, str]:
        """Its exit status, the rest of its stdout, and its stderr."""
        assert self.proc.stderr is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(timeout)
        rest = []
        while not self._lines.empty():
            rest.append(self._lines.get())
        return self.proc.returncode, "".join(rest), self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
