"""A latis installation of its own for a test: the `latis` CLI as a subprocess, its
daemon, the unit processes it starts, and the end of all of them.

    with cli_home() as home:
        home.ok("unit", "add", "slow", "--provisioner", "process", "-o", "delay=0.01")
        events = home.ndjson("prompt", "--new", "--unit", "slow", "hi")

The folder is a short one under /tmp (a unit's socket path must fit in 107
bytes); leaving the block stops the daemon and kills every process whose command
line names the folder (units the daemon started live in sessions of their own).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["LATIS", "Home", "cli_home", "kill_processes_under"]

#: `latis` of this Python.
LATIS = [sys.executable, "-m", "latis_cli"]


class Home:
    """One isolated latis installation (`LATIS_HOME`): run commands in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {**os.environ, "LATIS_HOME": str(path), "NO_COLOR": "1", "COLUMNS": "120"}
        self.env.pop("LATIS_CONFIG", None)

    @property
    def state_file(self) -> Path:
        """The daemon's SQLite state."""
        return self.path / "data" / "latis.db"

    @property
    def config_file(self) -> Path:
        """The config the CLI uses here (`./latis.toml`)."""
        return self.path / "latis.toml"

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LATIS, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.path,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )

    def ok(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def json(self, *args: str) -> Any:
        """What a `--json` command printed (one JSON document)."""
        return json.loads(self.ok(*args, "--json").stdout)

    def ndjson(self, *args: str) -> list[dict[str, Any]]:
        """The events a `--json` streaming command printed, one object a line."""
        return [json.loads(line) for line in self.ok(*args, "--json").stdout.splitlines()]

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*LATIS, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=self.path,
            stdin=subprocess.DEVNULL,
        )

    def daemon_pid(self) -> int:
        """The running daemon's pid (from its pid file)."""
        return int((self.path / "run" / "cmdr.pid").read_text().strip())

    def logs(self) -> str:
        """The tail of every log of the installation (cmdr and units), for failures."""
        return "".join(
            f"---- {log.name}\n{log.read_text(errors='replace')[-4000:]}\n"
            for log in sorted((self.path / "log").glob("*.log"))
        )


def kill_processes_under(path: Path) -> None:
    """SIGKILL every process whose command line names `path` (units) or whose
    `LATIS_HOME` is `path` (a daemon that did not stop)."""
    needle = str(path).encode()
    marker = b"LATIS_HOME=" + needle
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                ours = needle in f.read()
            if not ours:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    ours = marker in f.read().split(b"\0")
            if ours:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError):
            continue


@contextmanager
def cli_home(prefix: str = "lh") -> Iterator[Home]:
    """A fresh `Home` in /tmp; its daemon and units are ended when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    home = Home(path)
    try:
        yield home
    except BaseException:
        print(home.logs())  # shown by pytest only when the test fails
        raise
    finally:
        try:
            home.run("daemon", "stop", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        kill_processes_under(path)
        shutil.rmtree(path, ignore_errors=True)
