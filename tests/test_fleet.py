"""cmdr at fleet scale: a busy listener says when to come back, refusals are
summarised, big configs load, and session counts stay right.

A real controller with a real TLS listener on loopback for the refusals (units
served in this process dial it through the public library); the unit's side of
a refusal under trio's MockClock, so that when it dials again is exact, not
timed; configs of 5,000 units through the parser and through `latis unit add`;
the daemon in-process for its session counts. Nothing here checks how long
anything takes (benchmarks/load.py measures that).
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from cli_home import Home, cli_home
from fleet_config import fleet_config
from latis_transports import open_unix
from latis_transports.tcp import TcpDialer

import latis_core
from latis_core import EchoAgent, Enrollment
from latis_core._cmdr.config import load_config, parse_config
from latis_core._cmdr.daemon import Daemon, serve_daemon
from latis_core._cmdr.dialin import _tell_busy
from latis_core._cmdr.state import StateDB
from latis_core._io.accept import (
    RETRY_MAX,
    RETRY_MIN,
    Gate,
    ListenerStats,
    RefusalLog,
    serve_listener,
)
from latis_core._os.paths import paths


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    with cli_home("lf") as here:
        monkeypatch.setenv("LATIS_HOME", str(here.path))
        yield here


# ---- a busy listener: why, and when to come back ----------------------------------------

#: One handshake slot; a connection waits for it at most 2 s (half the handshake
#: timeout), then is told when to come back.
BUSY = """
[daemon]
handshake_timeout = 4.0

[units.edge]
[[units.edge.accept]]
type = "tcp"
host = "127.0.0.1"
port = 0
tls = true
max_pending = 1
max_pending_per_host = 1

[units.flooded]
[[units.flooded.accept]]
type = "tcp"
host = "127.0.0.1"
port = 0
burst_per_host = 2
rate_per_host = 0.01
"""


@asynccontextmanager
async def busy_cmdr() -> AsyncIterator[tuple[latis_core.Controller, dict[str, Any]]]:
    """A controller over BUSY, and the edge unit's enrollment."""
    with StateDB(paths().state_file) as state:
        async with latis_core.open_controller(parse_config(BUSY), state) as ctl:
            yield ctl, await ctl.dialins.enroll("edge", "127.0.0.1")


def listener(ctl: latis_core.Controller, unit: str) -> Any:
    [found] = ctl.dialins.listener_of(ctl.units[unit])
    return found


async def read_frame(stream: trio.abc.Stream) -> dict[str, Any] | None:
    """The first frame the stream carries, as JSON (None at its end)."""
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        try:
            more = await stream.receive_some()
        except trio.BrokenResourceError:
            return None
        if not more:
            return None
        data += more
    return orjson.loads(data[4 : 4 + struct.unpack(">I", data[:4])[0]])  # type: ignore[no-any-return]


@pytest.mark.slow
async def test_a_busy_listener_tells_the_unit_why_and_when_to_come_back(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    """With its one slot taken, the listener holds two newcomers in its waiting room,
    then answers each, in place of its hello, with `limit_reached`, the reason and a
    time (two different times); the real unit waits and then gets in by itself."""
    caplog.set_level(logging.INFO, logger="latis.unit")
    async with busy_cmdr() as (ctl, enrolled):
        edge = listener(ctl, "edge")
        dialer = TcpDialer(host="127.0.0.1", port=edge.port, fingerprint=enrolled["fingerprint"])
        # A connection that never starts TLS holds the one slot.
        holder = await trio.open_tcp_stream("127.0.0.1", edge.port)
        with trio.fail_after(10):
            while edge.stats.accepted < 1:
                await trio.sleep(0.01)
        frames: list[dict[str, Any] | None] = []
        async with (
            latis_core.open_unit(
                EchoAgent(), name="edge", enrollment=Enrollment.parse(enrolled["secret"])
            ) as unit,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(
                functools.partial(latis_core.dial_cmdr, unit, dialer, backoff=(0.05,))
            )

            async def raw() -> None:
                async with dialer.connect() as stream:
                    frames.append(await read_frame(stream))
                    frames.append(await read_frame(stream))

            nursery.start_soon(raw)
            with trio.fail_after(20):
                while edge.stats.refused.get("busy", 0) < 2:
                    await trio.sleep(0.01)
            await holder.aclose()
            with trio.fail_after(20):
                while ctl.units["edge"].client is None:
                    await trio.sleep(0.01)
                while len(frames) < 2:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    [error, end] = frames
    assert end is None  # and then the connection ends
    assert error is not None
    assert (error["type"], error["id"], error["code"]) == ("error", None, "limit_reached")
    assert RETRY_MIN <= error["retry_after"] <= RETRY_MAX
    assert re.fullmatch(
        r"cmdr is busy with other units' handshakes: dial again in \d+\.\d s", error["message"]
    )
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cmdr is busy")]
    assert len(told) == 1 and "dial again in" in told[0]
    said = re.search(r"dial again in (\d+\.\d) s", told[0])
    assert said is not None and said.group(1) != f"{error['retry_after']:.1f}"  # two tickets
    assert edge.stats.refused["busy"] == 2


async def test_a_stopping_listener_refuses_new_connections_while_its_own_end() -> None:
    """Once a listener stops accepting, its port refuses new connections at once,
    while the connections it served are still ending (cmdr stopping with a fleet
    connected): a unit redialing then is told so, instead of waiting unanswered."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    ending = trio.Event()
    ended = trio.Event()

    async def handler(stream: trio.abc.Stream, peer: Any, release: Any) -> None:
        release()
        try:
            await trio.sleep_forever()
        finally:
            ending.set()
            with trio.CancelScope(shield=True):
                await ended.wait()  # a slow end, like 10,000 of them

    stop = trio.CancelScope()

    async def serve() -> None:
        with stop:
            await serve_listener(listeners[0], handler, gate=Gate(8, 8), stats=ListenerStats(),
                                 label="test")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        first = await trio.open_tcp_stream("127.0.0.1", port)
        await trio.testing.wait_all_tasks_blocked()
        stop.cancel()  # the listener, and the connection it serves
        try:
            with trio.fail_after(5):
                await ending.wait()
            with pytest.raises(OSError):  # (before: taken by the kernel, then nothing)
                await trio.open_tcp_stream("127.0.0.1", port)
        finally:
            ended.set()
    await first.aclose()


class ClosedPort:
    """cmdr's address while it restarts: a real TCP port that nothing listens on;
    records when (trio's clock) each dial came."""

    def __init__(self) -> None:
        self.dials: list[float] = []
        self.tcp = TcpDialer("127.0.0.1", free_port())
        self.describe = self.tcp.describe

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[trio.abc.Stream]:
        self.dials.append(trio.current_time())
        async with self.tcp.connect() as stream:
            yield stream


async def dial_gaps(dialer: ClosedPort | SilentHost, seconds: float) -> list[float]:
    """A unit dialing `dialer` for `seconds` (trio's clock): the gaps between dials."""
    async with trio.open_nursery() as nursery:
        unit = await nursery.start(_serve_unit, "u")
        nursery.start_soon(latis_core.dial_cmdr, unit, dialer)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return [b - a for a, b in zip(dialer.dials, dialer.dials[1:], strict=False)]


async def test_a_unit_redials_a_closed_port_within_ten_seconds(autojump_clock: Any) -> None:
    """While cmdr's port refuses connections (it restarts), a dial-in unit's backoff
    stops growing at 10 s."""
    gaps = await dial_gaps(ClosedPort(), 300)
    assert len(gaps) > 25 and max(gaps) <= 10.0 + 0.5, gaps  # (+ the dial itself)
    assert max(gaps) > 5.0  # it did back off


class SilentHost:
    """A host that never answers: each dial gives up (the fault is injected)."""

    def __init__(self) -> None:
        self.dials: list[float] = []

    def describe(self) -> str:
        return "a silent host"

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[trio.abc.Stream]:
        self.dials.append(trio.current_time())
        await trio.sleep(1)
        raise latis_core.ConnectError("cannot connect to tcp://10.0.0.9:1: no answer within 1 s")
        yield  # (a generator: unreachable)


async def test_a_unit_backs_off_further_from_a_host_that_does_not_answer(
    autojump_clock: Any,
) -> None:
    """No answer at all (not a refusal): the backoff grows to its last step, 30 s."""
    gaps = await dial_gaps(SilentHost(), 600)
    assert max(gaps) > 12.0, gaps


class BusyCmdr:
    """cmdr's listener when it has no slot, for one unit: the first dial is told, by
    the listener's own refusal, to come back in `after` s; the second is recorded."""

    def __init__(self, after: float) -> None:
        self.after = after
        #: When (trio's clock) each dial came.
        self.dials: list[float] = []

    def describe(self) -> str:
        return "a busy cmdr"

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[trio.abc.Stream]:
        self.dials.append(trio.current_time())
        if len(self.dials) > 1:
            await trio.sleep_forever()
        ours, theirs = trio.testing.memory_stream_pair()
        await _tell_busy(theirs, self.after)
        await theirs.aclose()
        yield ours


async def test_refused_units_come_back_when_told_spread_out(autojump_clock: Any) -> None:
    """Twenty units refused at the same moment with `retry_after` 10 s each dial again
    no sooner than told and at most a quarter later, each at its own moment."""
    cmdrs = [BusyCmdr(10.0) for _ in range(20)]
    async with trio.open_nursery() as nursery:
        for n, cmdr in enumerate(cmdrs):
            unit = await nursery.start(_serve_unit, f"u{n}")
            nursery.start_soon(latis_core.dial_cmdr, unit, cmdr)
        while any(len(c.dials) < 2 for c in cmdrs):
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    waited = [c.dials[1] - c.dials[0] for c in cmdrs]
    assert all(10.0 <= w <= 12.5 for w in waited), waited
    assert len({round(w, 6) for w in waited}) == 20  # jitter: no two together


async def _serve_unit(name: str, *, task_status: Any) -> None:
    async with latis_core.open_unit(EchoAgent(), name=name) as unit:
        task_status.started(unit)
        await trio.sleep_forever()


async def test_retry_times_are_handed_out_like_tickets(autojump_clock: Any) -> None:
    """Connections refused at one moment get successive times, one free slot apart,
    within the bounds; more wait behind them when others already wait."""
    gate = Gate(1, 1)
    times = [gate.retry_after() for _ in range(5)]
    assert times == sorted(times) and len(set(times)) == 5
    assert times[0] >= RETRY_MIN
    assert all(
        b - a == pytest.approx(1 / gate.rate()) for a, b in zip(times, times[1:], strict=False)
    )
    late = [gate.retry_after() for _ in range(100)]
    assert max(late) == RETRY_MAX


async def test_waiters_are_served_in_order_of_arrival_among_hosts_with_room() -> None:
    """Two connections from a host at its bound wait; one from another host then
    takes a free slot at once; the first two get theirs in order as slots free."""
    gate = Gate(3, 1, max_wait=30.0)
    assert gate.admit("10.0.0.1") is None  # the host's one slot
    order: list[str] = []

    async def wait(host: str, tag: str) -> None:
        assert await gate.wait(host)
        order.append(tag)

    async with trio.open_nursery() as nursery:
        for tag in ("a1", "a2"):
            nursery.start_soon(wait, "10.0.0.1", tag)
            await trio.testing.wait_all_tasks_blocked()
        assert order == [] and gate.waiting == 2
        nursery.start_soon(wait, "10.0.0.2", "b1")
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["b1"]
        gate.release("10.0.0.1")
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["b1", "a1"]
        gate.release("10.0.0.1")
    assert order == ["b1", "a1", "a2"] and gate.waiting == 0


async def test_the_rate_of_a_fleet_just_back_is_not_underestimated(autojump_clock: Any) -> None:
    """Slots freeing at 200 a second for 2 s after a quiet spell: the gate counts
    200 a second (not 2 s' worth over its whole 5 s window), so a refused unit is
    told to come back within the time the queue takes, and the waiting room holds
    what that rate serves."""
    gate = Gate(200, 200, max_wait=5.0)
    await trio.sleep(60)  # quiet
    for _ in range(400):
        gate.admit("10.0.0.1")
        gate.release("10.0.0.1")
        await trio.sleep(1 / 200)
    assert gate.rate() == pytest.approx(200, rel=0.02)
    assert gate.room() == pytest.approx(200 * 5.0, rel=0.02)
    assert gate.retry_after() < 2 * RETRY_MIN


# ---- refusals in the log: counts per interval -------------------------------------------


async def test_refusals_are_logged_as_one_summary_not_one_line_each(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    """Thirty connections from one address past its rate are closed unanswered, and
    the log says so in one line with the count and the address."""
    caplog.set_level(logging.INFO)
    async with busy_cmdr() as (ctl, _):
        flooded = listener(ctl, "flooded")
        streams = []
        for _ in range(30):
            streams.append(
                await trio.open_tcp_stream("127.0.0.1", flooded.port, local_address="127.0.0.2")
            )
        with trio.fail_after(10):
            while sum(flooded.stats.refused.values()) < 28:
                await trio.sleep(0.01)
        limited = flooded.stats.refused["rate_limited"]
    for stream in streams:
        await stream.aclose()
    lines = [r.getMessage() for r in caplog.records if r.name == "latis.accept"]
    assert len(lines) == 1, lines
    assert re.search(
        rf"refused {limited} connections in the last 10 s \({limited} "
        r"rate_limited from 127\.0\.0\.2\)",
        lines[0],
    ), lines[0]
    assert "faster than 0.01 connections a second" in lines[0]


async def test_each_interval_gets_its_own_summary(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A line per interval with what that interval refused; none for a quiet one."""
    refusals = RefusalLog("listener tcp: x", interval=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(refusals.run)
        for _ in range(5):
            refusals.note("busy", "10.0.0.1", "no slot")
        await trio.sleep(15)  # the first summary
        await trio.sleep(10)  # a quiet interval
        for host in ("10.0.0.1", "10.0.0.2", "10.0.0.2"):
            refusals.note("flood", host, "the waiting room is full")
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "latis.accept"]
    assert lines == [
        "listener tcp: x: refused 5 connections in the last 10 s (5 busy from 10.0.0.1) "
        "(busy: no slot)",
        "listener tcp: x: refused 3 connections in the last 10 s (2 flood from 10.0.0.2, "
        "1 flood from 10.0.0.1) (flood: the waiting room is full)",
    ]


# ---- big configs ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_5000_unit_config_loads_and_is_right(tmp_path: Path) -> None:
    """Every unit of a 5,000-unit file is there, as written, with its line; the units
    that name one address share one listener."""
    text = fleet_config(5000)
    path = tmp_path / "latis.toml"
    path.write_text(text)
    config = load_config(str(path))
    assert len(config.units) == 5001 and "local" in config.units
    lines = {
        m.group(1): n
        for n, line in enumerate(text.splitlines(), 1)
        if (m := re.fullmatch(r"\[units\.(\w+)\]", line))
    }
    for i in range(5000):
        name = ("p", "d", "a")[i % 3] + str(i)
        unit = config.units[name]
        assert unit.line == lines[name]
        if i % 3 == 0:
            assert unit.provisioner is not None and unit.provisioner.type == "process"
            assert unit.agent_options == {"delay": str(i % 7)}
        elif i % 3 == 1:
            assert unit.dial is not None and unit.dial.type == "tcp"
            assert (unit.dial.options.host, unit.dial.options.port) == (  # type: ignore[attr-defined]
                f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                7000 + i,
            )
        else:
            [accept] = unit.accept
            assert (accept.options.port, accept.options.tls) == (17447, True)  # type: ignore[attr-defined]
    shared = {u.accept[0].options for n, u in config.units.items() if n.startswith("a")}
    assert len(shared) == 1


@pytest.mark.slow
def test_unit_add_on_a_5000_unit_config(home: Home) -> None:
    """`latis unit add` appends to a 5,000-unit file, keeps the rest as it was, and
    the running daemon serves the new unit at once; a second add of it is refused."""
    text = fleet_config(5000, port=free_port())
    home.config_file.write_text(text)
    home.ok("daemon", "start")
    result = home.ok("unit", "add", "newbie", "--provisioner", "process", "-o", "delay=0")
    assert "added unit 'newbie'" in result.stdout + result.stderr
    after = home.config_file.read_text()
    assert after.startswith(text)
    assert "[units.newbie]" in after[len(text) :]
    assert len(load_config(str(home.config_file)).units) == 5002
    again = home.run("unit", "add", "newbie", "--provisioner", "process")
    assert again.returncode == 1 and "unit 'newbie': already defined" in again.stderr
    assert home.ok("prompt", "--unit", "newbie", "--new", "hello fleet").stdout == "hello fleet\n"
    units = {u["unit"]: u for u in home.json("status")["units"]}
    assert len(units) == 5002
    assert units["newbie"]["connection"] == "connected"


# ---- session counts ------------------------------------------------------------------------

COUNTS = """
[units.fast.provisioner]
type = "process"
[units.slow]
agent_options = { delay = "0.05" }
[units.slow.provisioner]
type = "process"
"""


@asynccontextmanager
async def daemon_and_client() -> AsyncIterator[tuple[Daemon, latis_core.UnitClient]]:
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(serve_daemon, parse_config(COUNTS))
        async with open_unix(paths().socket) as stream, latis_core.connect(stream) as client:
            yield daemon, client
        daemon.stop.set()


async def stored_counts(daemon: Daemon) -> dict[str, int]:
    """Sessions per state, counted over the state file (once the daemon's writes
    behind are in it)."""
    await daemon.controller.flush()
    with StateDB.open_readonly(paths().state_file) as state:
        return dict(
            collections.Counter(row.state for row in state.list_sessions() if row.state != "closed")
        )


def counts(daemon: Daemon) -> dict[str, int]:
    """The daemon's own counts (the states it has none of left out)."""
    return {state: n for state, n in daemon.counts.items() if n}


async def test_session_counts_stay_right_across_many_sessions(home: Home) -> None:
    """300 sessions made, prompted (many at once), some closed: the daemon's counts
    per state match what state holds at every step, `state.get` says busy while a
    prompt runs and idle after, and a new daemon counts the same from state."""
    async with daemon_and_client() as (daemon, cmdr):
        sessions = [await cmdr.create_session(unit="fast") for _ in range(300)]
        assert counts(daemon) == await stored_counts(daemon) == {"idle": 300}

        async def prompt(session: latis_core.Session) -> None:
            assert await session.prompt("one two").text() == "one two"

        async with trio.open_nursery() as nursery:
            for session in sessions[:120]:
                nursery.start_soon(prompt, session)
        assert counts(daemon) == await stored_counts(daemon) == {"idle": 300}
        slow = await cmdr.create_session(unit="slow")
        stream = slow.prompt(" ".join(["w"] * 40))
        async with stream:
            await stream.__anext__()
            assert counts(daemon) == await stored_counts(daemon) == {"idle": 300, "busy": 1}
            assert (await cmdr.state()).state == "busy"
            async for _ in stream:
                pass
        for session in sessions[:100]:
            await session.destroy()
        assert counts(daemon) == await stored_counts(daemon) == {"idle": 201}
        assert (await cmdr.state()).state == "idle"
        assert len((await cmdr.state()).sessions) == 201
    async with daemon_and_client() as (daemon, cmdr):
        assert counts(daemon) == await stored_counts(daemon) == {"idle": 201}
