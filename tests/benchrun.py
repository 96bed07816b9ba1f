"""Run a script in benchmarks/ the way a user would and read what it printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "run_benchmark"]

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, *args: str, timeout: float) -> tuple[str, Any]:
    """Run ``benchmarks/<script> ARGS --json``; return its table and its JSON line.

    The table is every line printed before the last; the last is the JSON document.
    A non-zero exit fails the test with the end of the script's stderr.
    """
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.rstrip("\n").splitlines()
    return "\n".join(lines[:-1]), json.loads(lines[-1])
