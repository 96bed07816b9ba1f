"""benchmarks/coordinate.py, load.py and recovery.py run in their short modes and
print every row (no timing is checked here). Apart from tests/test_benchmarks.py
so that the two files' minutes spread over pytest-xdist's workers."""

from __future__ import annotations

import pytest
from benchrun import run_benchmark


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_coordinate_short_prints_every_row() -> None:
    """benchmarks/coordinate.py --short: the fan-out rows beside their floors, in one run."""
    table, results = run_benchmark("coordinate.py", "--short", timeout=110)
    assert list(results) == [f"{kind}_{who}" for kind in ("inproc", "procs")
                             for who in ("floor", "engine", "latis")]
    assert all(0 < row["first"] <= row["done"] <= row["ended"] for row in results.values())
    assert [line.split()[:2] for line in table.splitlines()[1:7]] == [
        [row, str(results[row]["units"])] for row in results]


@pytest.mark.timeout(600)
def test_load_short_prints_every_target() -> None:
    """benchmarks/load.py --short runs every part once, small, and prints each row
    (issue 13's targets; no number is checked here)."""
    table, doc = run_benchmark("load.py", "--short", timeout=590)
    rows = doc["rows"]
    names = ["chunk_p99", "chunk_cpu", "added_small", "added_big", "added_flat", "fanout_procs",
             "fanout_live", "fanout_inproc", "client_kib", "cli_prompt", "dialin_first",
             "dialin_back", "dialin_kib", "status_storm", "config_parse", "unit_add"]
    assert list(rows) == names
    for name in names:
        assert f"\n{name} " in table, f"row {name} missing from:\n{table}"
        assert rows[name]["latis"] is not None, name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_recovery_short_prints_every_transport() -> None:
    """benchmarks/recovery.py --short measures a pick-up and a death on every transport."""
    table, doc = run_benchmark("recovery.py", "--short", timeout=290)
    rows = doc["rows"]
    kinds = ["tcp", "tls", "websocket", "unix", "ssh", "quic", "dial-in", "process"]
    assert list(rows) == kinds
    for kind in kinds:
        assert f"\n{kind} " in table, kind
        if "skipped" not in rows[kind]:
            assert len(rows[kind]["death"]) == 1, kind
            if kind != "process":
                assert len(rows[kind]["restored"]) == 1, kind
