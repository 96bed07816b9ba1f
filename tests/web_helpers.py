"""Helpers for the web dashboard's tests and benchmark: a home of its own, server-sent
events read with httpx, the CLI run as a subprocess, headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LATIS = [sys.executable, "-m", "latis_cli"]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def pids_under(path: Path) -> list[int]:
    """Processes whose command line names `path` (units, daemons of that home)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if str(path).encode() in f.read():
                    found.append(int(entry))
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"LATIS_HOME={path}".encode() in f.read().split(b"\x00"):
                    found.append(int(entry))
        except OSError:
            continue
    return sorted(set(found))


@contextmanager
def latis_home() -> Iterator[Path]:
    """A fresh LATIS_HOME in a short /tmp path; everything run from it is killed after."""
    path = Path(tempfile.mkdtemp(prefix="lw", dir="/tmp"))
    try:
        yield path
    finally:
        for pid in pids_under(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(path, ignore_errors=True)


def latis(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the `latis` CLI in `home`."""
    env = {**os.environ, "LATIS_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "120"}
    env.pop("LATIS_CONFIG", None)
    return subprocess.run(
        [*LATIS, *args], capture_output=True, text=True, env=env, cwd=home, timeout=timeout
    )


async def sse_events(response: Any) -> AsyncIterator[tuple[str, Any]]:
    """The (event, data) pairs of an httpx streaming response of server-sent events."""
    event, data = "message", []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def have_chromium() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


def chromium(width: int = 1400, height: int = 900) -> Any:
    """Headless Chromium from Debian's packages, driven by Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
