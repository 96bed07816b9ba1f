"""What the coordination tests share: a home with units that run scripted agents
(`team_agents.py`, real `latis-unit --stdio` processes started by the `local`
dialer), the controller over it in this process, or the `latis` CLI over it (a
real daemon), and the log of what each unit received.

    team = Team.make()
    team.unit("a")                               # answers `a answer 1`
    team.unit("b", "fail")                       # fails its prompts
    team.unit("c", replies=["@a look"], max_sessions=1)
    async with team.controller() as ctl:
        await ctl.coordinate("task", ["a", "b"])
    team.received("a")                           # the prompts unit a got, in order
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import latis_core
from latis_core._cmdr.config import parse_config
from latis_core._cmdr.state import StateDB
from latis_core._os.paths import paths

TESTS = Path(__file__).resolve().parent
LATIS = [sys.executable, "-m", "latis_cli"]
#: `latis-unit --stdio` (team_agents.py run as a script: it may report fake memory).
UNIT = [sys.executable, str(TESTS / "team_agents.py"), "--stdio"]
GiB = 1024**3


class Team:
    """A home (`LATIS_HOME`, short: unix socket paths are limited) with a config of units."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log = path / "received.jsonl"
        self.toml: list[str] = []
        self.env = {**os.environ, "LATIS_HOME": str(path), "NO_COLOR": "1", "COLUMNS": "120"}
        self.env.pop("LATIS_CONFIG", None)

    @classmethod
    def make(cls) -> Team:
        return cls(Path(tempfile.mkdtemp(prefix="lc", dir="/tmp")))

    def unit(
        self,
        name: str,
        agent: str = "answer",
        *,
        replies: Sequence[str] = (),
        unit_max: int | None = None,
        meminfo: bool = False,
        config: Mapping[str, Any] | None = None,
        **env: str,
    ) -> None:
        """Add unit `name` running `team_agents.<agent>`.

        Args:
            replies: what it answers, prompt after prompt of a session (`TEAM_REPLIES`).
            unit_max: the unit's own `--max-sessions`.
            meminfo: the unit reports the memory written by `set_memory_free`.
            config: more keys of its `[units.NAME]` table (`max_sessions`, `labels`, ...).
            env: more `TEAM_*` settings (`TEAM_GATE`, `TEAM_DELAY`, `TEAM_BARRIER`).
        """
        command = [
            *UNIT,
            "--name",
            name,
            "--agent",
            "python",
            "-o",
            f"target=team_agents:{agent}",
            "-o",
            f"path={TESTS}",
        ]
        if unit_max is not None:
            command += ["--max-sessions", str(unit_max)]
        variables = {"TEAM_NAME": name, "TEAM_LOG": str(self.log), **env}
        if replies:
            variables["TEAM_REPLIES"] = json.dumps(list(replies))
        if meminfo:
            variables["TEAM_MEMINFO"] = str(self.meminfo(name))
            self.set_memory_free(name, 64 * GiB)
        keys = "".join(f"{key} = {json.dumps(value)}\n" for key, value in (config or {}).items())
        self.toml.append(
            f'[units.{name}]\n{keys}[units.{name}.dial]\ntype = "local"\n'
            f"command = {json.dumps(command)}\n"
            f"env = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in variables.items())} }}\n"
        )

    def group(self, name: str, units: Sequence[str]) -> None:
        self.toml.append(f"[groups]\n{name} = {json.dumps(list(units))}\n")

    def config_text(self) -> str:
        return "\n".join(self.toml)

    def write_config(self) -> None:
        (self.path / "config.toml").write_text(self.config_text())

    def meminfo(self, unit: str) -> Path:
        return self.path / f"meminfo-{unit}"

    def set_memory_free(self, unit: str, size: int) -> None:
        """What unit `unit` (added with `meminfo=True`) reports free from now on."""
        text = f"MemTotal: {128 * GiB // 1024} kB\nMemAvailable: {size // 1024} kB\n"
        part = self.meminfo(unit).with_suffix(".new")
        part.write_text(text)
        part.replace(self.meminfo(unit))

    def gate(self, name: str = "gate") -> str:
        """A gate's path (for `TEAM_GATE`); `open_gate` lets its agents answer."""
        return str(self.path / name)

    def open_gate(self, name: str = "gate") -> None:
        Path(self.gate(name)).touch()

    # -- what the units received -----------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Every line the agents logged, in the order they were written."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def received(self, unit: str) -> list[str]:
        """The prompts unit `unit` received, in order."""
        return [e["text"] for e in self.events() if e["unit"] == unit and e["event"] == "prompt"]

    def logged(self, event: str) -> list[str]:
        """The units that logged `event` (`prompt`, `cancelled`, `done`), in order."""
        return [e["unit"] for e in self.events() if e["event"] == event]

    # -- the controller in this process, or the CLI ----------------------------------

    @asynccontextmanager
    async def controller(self) -> AsyncIterator[latis_core.Controller]:
        """A controller in this process over the config (`LATIS_HOME` is set by `team`)."""
        with StateDB(paths().state_file) as state:
            async with latis_core.open_controller(parse_config(self.config_text()), state) as ctl:
                yield ctl

    def run(
        self, *args: str, timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """`latis ARGS` (the config written first), its output captured."""
        self.write_config()
        return subprocess.run(
            [*LATIS, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.path,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """`latis ARGS` in the background, stdin not a terminal, stdout and stderr piped."""
        self.write_config()
        return subprocess.Popen(
            [*LATIS, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=self.path,
        )

    def close(self) -> None:
        """Stop the daemon and every process of this home; remove it."""
        if (self.path / "config.toml").exists():
            subprocess.run(
                [*LATIS, "daemon", "stop"],
                capture_output=True,
                env=self.env,
                cwd=self.path,
                timeout=30,
                check=False,
            )
        for pid in _processes_of(self.path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.path, ignore_errors=True)


def team_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[Team]:
    """A fresh `Team` (its home in `LATIS_HOME`), closed at the end. A module takes it as
    `team = pytest.fixture(team_fixture, name="team")`."""
    team = Team.make()
    monkeypatch.setenv("LATIS_HOME", str(team.path))
    try:
        yield team
    finally:
        for log in sorted((team.path / "log").glob("*.log")):  # shown if the test failed
            print(f"---- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        team.close()


def _processes_of(path: Path) -> list[int]:
    """Processes whose environment names `path` (the daemon, the units)."""
    marker = str(path).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found
