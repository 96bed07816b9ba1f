"""The `latis` command, run from trio tests against a `LATIS_HOME` of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

__all__ = ["LATIS", "cli_env", "latis"]

LATIS = [sys.executable, "-m", "latis_cli"]


def cli_env(latis_home: Path) -> dict[str, str]:
    """The environment of a `latis` command in `latis_home`: no colour, wide tables."""
    env = {**os.environ, "LATIS_HOME": str(latis_home), "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("LATIS_CONFIG", None)
    return env


async def latis(
    latis_home: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """Run `latis ARGS` in `latis_home`; return it finished (stdout, stderr captured).

    With `check`, it must exit 0. Never a traceback on stderr.
    """
    done = await trio.run_process(
        [*LATIS, *args],
        env=cli_env(latis_home),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert b"Traceback" not in done.stderr, done.stderr
    return done
