"""benchmarks/coordinate.py, load.py and recovery.py run in their short modes and
print every row (no timing is checked here). Apart from tests/test_benchmarks.py
so that the two files' minutes spread over pytest-xdist's workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_coordinate_short_prints_every_row() -> None:
    """benchmarks/coordinate.py --short: the fan-out rows beside their floors, in one run."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "coordinate.py"), "--short", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    assert list(results) == [f"{kind}_{who}" for kind in ("inproc", "procs")
                             for who in ("floor", "engine", "latis")]
    assert all(0 < row["first"] <= row["done"] <= row["ended"] for row in results.values())
    table = proc.stdout.splitlines()[:-1]
    assert [line.split()[:2] for line in table[1:7]] == [
        [row, str(results[row]["units"])] for row in results]


@pytest.mark.timeout(600)
def test_load_short_prints_every_target() -> None:
    """benchmarks/load.py --short runs every part once, small, and prints each row
    (issue 13's targets; no number is checked here)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load.py"), "--short", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=590,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.rstrip("\n").splitlines()
    rows = json.loads(lines[-1])["rows"]
    names = ["chunk_p99", "added_small", "added_big", "added_flat", "fanout_procs",
             "fanout_inproc", "cli_prompt", "dialin_first", "dialin_back", "dialin_kib",
             "status_storm", "config_parse", "unit_add"]
    assert list(rows) == names
    table = "\n".join(lines[:-1])
    for name in names:
        assert f"\n{name} " in table, f"row {name} missing from:\n{table}"
        assert rows[name]["latis"] is not None, name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_recovery_short_prints_every_transport() -> None:
    """benchmarks/recovery.py --short measures a pick-up and a death on every transport."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "recovery.py"), "--short", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=290,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.rstrip("\n").splitlines()
    rows = json.loads(lines[-1])["rows"]
    kinds = ["tcp", "tls", "websocket", "unix", "ssh", "quic", "dial-in", "process"]
    assert list(rows) == kinds
    for kind in kinds:
        assert f"\n{kind} " in "\n".join(lines[:-1]), kind
        if "skipped" not in rows[kind]:
            assert len(rows[kind]["death"]) == 1, kind
            if kind != "process":
                assert len(rows[kind]["restored"]) == 1, kind
