"""benchmarks/bench.py runs and prints every row (no timing is checked here)."""

from __future__ import annotations

import pytest
from benchrun import run_benchmark

ROWS = [
    "F1",
    "F2",
    "rt_latis_socketpair",
    "rt_latis_pipes",
    "rt_zmq",
    "rt_execnet",
    "F3",
    "codec_latis",
    "codec_json",
    "F4",
    "stream_latis",
    "stream_execnet",
    "mem_conn_cmdr",
    "mem_conn_unit",
    "mem_conn_total",
    "mem_conn_rss",
    "mem_session",
    "F5",
    "start_cyclopts",
    "start_latis_help",
    "start_latis_status",
    "prompt_lib_proc",
    "prompt_cli",
    "prompt_lib",
    "prompt_daemon",
    "acp_sdk",
    "acp_latis",
]
#: A row each: the raw echo, latis's ping, a stream (the last two unless skipped).
TRANSPORTS = ["unix", "tcp", "websocket", "quic", "ssh", "container"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_quick_prints_every_row() -> None:
    pytest.importorskip("zmq")
    pytest.importorskip("execnet")
    pytest.importorskip("acp", reason="the acp rows run agents written with the ACP SDK")
    table, doc = run_benchmark("bench.py", "--quick", timeout=290)
    for name in ROWS:
        assert f"\n{name} " in table, f"row {name} missing from:\n{table}"
    assert set(ROWS) <= set(doc["rows"])
    for name in TRANSPORTS:
        assert f"raw_{name}" in doc["rows"], name
        if "skipped" not in doc["rows"][f"raw_{name}"]["what"]:
            assert {f"rt_{name}", f"stream_{name}"} <= set(doc["rows"]), name
    for name in ("unix", "tcp", "websocket", "quic"):  # nothing here can skip them
        assert f"rt_{name}" in doc["rows"], name


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_provision_cloud_prints_every_row() -> None:
    """benchmarks/provision_cloud.py runs one round against moto and kmock and prints each row."""
    pytest.importorskip("moto")
    pytest.importorskip("kmock")
    _, results = run_benchmark("provision_cloud.py", "--rounds", "1", timeout=110)
    assert list(results) == ["ec2_floor", "ec2_handoff", "ec2_latis", "k8s_floor",
                             "k8s_handoff", "k8s_latis"]
    assert all(row["median"] > 0 for row in results.values())


@pytest.mark.timeout(240)
def test_web_short_prints_every_row() -> None:
    """benchmarks/web.py --short runs the dashboard under load, browser included, and
    prints each row."""
    from web_helpers import have_chromium

    if not have_chromium():
        pytest.skip("chromium and chromium-driver are not installed (.ci/run installs them)")
    rows = run_benchmark("web.py", "--short", timeout=230)[1]["rows"]
    assert list(rows) == ["page_load", "cpu_floor", "cpu_attach", "cpu_web", "lat_attach",
                          "lat_web_dom"]
    assert rows["lat_web_dom"]["n"] > 0 and rows["cpu_web"]["chunks"] > 0
