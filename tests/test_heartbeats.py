"""Heartbeats: every connection, both ways, finds a silent peer within its bound.

A side that hears nothing for `heartbeat` seconds sends a `ping`; nothing
within `heartbeat_timeout` of it and the connection is dropped. The clock
runs from the last byte received (not from the timer's own wake-up). Checked
on the sans-IO connection with explicit times, on the peer with trio's mock
clock, and end to end: a unit that goes silent behind a stalled link shows
`unreachable` in `latis status`; a controller that goes silent is dropped by
the unit.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from clirun import latis
from faultproxy import FaultProxy, tcp_target
from helpers import ConnectionPair
from units import listening_unit

import latis_core
from latis_core import ConnectionClosed, Ping, Pong
from latis_core._cmdr.config import parse_config

# ---- the clock, without I/O --------------------------------------------------------------


def test_the_keepalive_clock_runs_from_the_last_byte_received() -> None:
    """A ping goes out `keepalive` seconds after the last byte received, whenever the
    timer happens to wake; the connection is dead `timeout` seconds after the ping."""
    pair = ConnectionPair(keepalive=15.0, keepalive_timeout=10.0)
    pair.handshake()
    cmdr = pair.cmdr
    assert cmdr.handle_timer(100.0) == b""  # starts the clock
    assert cmdr.get_timer() == 115.0
    cmdr.receive_data(pair.unit.send(Ping(7)), 107.0)  # a byte at 107
    assert cmdr.get_timer() == 122.0
    assert cmdr.handle_timer(115.0) == b""  # a wake-up before it is due sends nothing ...
    assert cmdr.get_timer() == 122.0  # ... and does not move the clock
    ping = cmdr.handle_timer(122.0)
    assert ping
    pair.unit.receive_data(ping)
    [sent] = [event for event in _events(pair.unit) if isinstance(event, Ping)]
    assert cmdr.get_timer() == 132.0
    cmdr.receive_data(pair.unit.send(Pong(sent.id)), 125.0)  # the answer
    assert cmdr.get_timer() == 140.0  # quiet again, from the answer on
    assert cmdr.handle_timer(140.0)
    assert cmdr.handle_timer(149.9) == b""
    with pytest.raises(ConnectionClosed, match="no reply within 10 s of a keep-alive ping"):
        cmdr.handle_timer(150.0)
    assert cmdr.closed


def _events(conn: Any) -> list[Any]:
    from helpers import drain

    return drain(conn)


def test_a_units_heartbeat_overrides_the_daemons() -> None:
    """`[daemon] heartbeat` is every connection's; a unit's own table overrides it,
    and 0 turns it off for that unit."""
    config = parse_config("""
[daemon]
heartbeat = 5
heartbeat_timeout = 3
[units.near.dial]
type = "unix"
path = "/tmp/near.sock"
[units.far]
heartbeat = 20
heartbeat_timeout = 15
[units.far.dial]
type = "unix"
path = "/tmp/far.sock"
[units.quiet]
heartbeat = 0
[units.quiet.dial]
type = "unix"
path = "/tmp/quiet.sock"
""")
    daemon = config.daemon
    assert daemon.heartbeat_of(config.units["near"]) == (5.0, 3.0)
    assert daemon.heartbeat_of(config.units["far"]) == (20.0, 15.0)
    assert daemon.heartbeat_of(config.units["quiet"]) == (None, 3.0)
    defaults = parse_config("").daemon
    assert (defaults.heartbeat, defaults.heartbeat_timeout) == (15.0, 10.0)


# ---- the peer, on a mock clock -----------------------------------------------------------


def frame(obj: dict[str, Any]) -> bytes:
    payload = orjson.dumps(obj)
    return struct.pack(">I", len(payload)) + payload


UNIT_HELLO = {
    "type": "hello",
    "id": 0,
    "protocol": 1,
    "role": "unit",
    "unit": "mute",
    "agent": {"name": "echo", "version": "1"},
    "capabilities": [],
}


async def test_a_silent_unit_is_pinged_and_dropped_within_the_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """cmdr's side of a connection to a unit that answers hello and then nothing:
    a ping 15 s after the unit's last byte, the connection dropped 10 s later,
    and why is said."""
    ours, theirs = trio.testing.memory_stream_pair()
    pings: list[float] = []
    async with trio.open_nursery() as nursery:

        async def mute_unit() -> None:
            await theirs.send_all(frame(UNIT_HELLO))
            while True:  # reads, never answers
                data = await theirs.receive_some()
                if not data:
                    return
                if b'"ping"' in data:
                    pings.append(trio.current_time())

        nursery.start_soon(mute_unit)
        start = trio.current_time()
        async with latis_core.connect(
            ours, label="unit 'mute'", keepalive=15.0, keepalive_timeout=10.0
        ) as unit:
            await unit.peer.wait_closed()
            closed = trio.current_time()
        nursery.cancel_scope.cancel()
    assert len(pings) == 1
    assert pings[0] - start == pytest.approx(15.0, abs=0.01)
    assert closed - pings[0] == pytest.approx(10.0, abs=0.01)
    assert unit.peer.why_closed is not None
    assert "went silent: no reply within 10 s of a keep-alive ping" in unit.peer.why_closed


async def test_a_unit_that_drops_a_silent_controller_keeps_the_prompt_for_a_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A controller asks for a prompt, reads a few chunks, then hears and says nothing:
    the unit's heartbeat drops it, the prompt goes on into the replay log, and a
    new connection picks it up after the
    last chunk the first one read: every chunk once, then complete."""
    words = [f"w{i}" for i in range(100)]
    async with (
        latis_core.open_unit(
            latis_core.EchoAgent(delay=0.1), name="u", heartbeat=1.0, heartbeat_timeout=1.0
        ) as unit,
        trio.open_nursery() as nursery,
    ):
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(unit.serve, theirs)
        await ours.send_all(frame({"type": "hello", "id": 0, "protocol": 1, "role": "cmdr"}))
        await ours.send_all(frame({"type": "session.create", "id": 1}))
        buffer = bytearray()
        seqs: list[int] = []
        sid = None
        while True:  # reads (a deaf controller's kernel would), never answers
            data = await ours.receive_some()
            if not data:
                break
            buffer += data
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack(">I", buffer[:4])[0]:
                (size,) = struct.unpack(">I", buffer[:4])
                message = orjson.loads(bytes(buffer[4 : 4 + size]))
                del buffer[: 4 + size]
                if message["type"] == "ack" and sid is None:
                    sid = message["data"]["session"]
                    await ours.send_all(
                        frame(
                            {
                                "type": "prompt.send",
                                "id": 2,
                                "session": sid,
                                "text": " ".join(words),
                            }
                        )
                    )
                elif message["type"] == "response.chunk" and len(seqs) < 5:
                    seqs.append(message["seq"])
        assert seqs == [0, 1, 2, 3, 4] and sid is not None
        dropped = trio.current_time()
        again, theirs_again = trio.testing.memory_stream_pair()
        nursery.start_soon(unit.serve, theirs_again)
        async with latis_core.connect(again) as cmdr:
            stream = await latis_core.Session(cmdr, sid).reattach(2, after=seqs[-1])
            rest = [chunk.seq async for chunk in stream]
        assert seqs + rest == list(range(len(words)))
        assert stream.outcome == "complete"
        assert dropped < 5.0  # the drop came while the prompt still ran (10 s of chunks)
        nursery.cancel_scope.cancel()


async def test_one_silent_controller_among_many_is_dropped_and_the_others_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A unit keeps the keep-alive clocks of all its connections in one task: a
    controller that stops answering gets one ping 15 s after its hello and is
    dropped 10 s later, one that goes silent later is found the same way, and the
    three that answer are pinged every 15 s of silence and stay connected (also
    after one of them hung up)."""

    async def mute(started: float) -> tuple[list[float], float]:
        """A controller that says hello and never answers: its pings, when it was closed."""
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(unit.serve, theirs)
        await ours.send_all(frame({"type": "hello", "id": 0, "protocol": 1, "role": "cmdr"}))
        pings = []
        with trio.fail_after(60):
            while data := await ours.receive_some():
                if b'"ping"' in data:
                    pings.append(trio.current_time() - started)
        return pings, trio.current_time() - started

    async with (
        latis_core.open_unit(
            latis_core.EchoAgent(), name="u", heartbeat=15.0, heartbeat_timeout=10.0
        ) as unit,
        trio.open_nursery() as nursery,
        AsyncExitStack() as stack,
    ):
        answering = []
        for _ in range(3):
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(unit.serve, theirs)
            answering.append(await stack.enter_async_context(latis_core.connect(ours)))
        first = await mute(trio.current_time())
        await answering[0].peer.aclose()
        await trio.sleep(20)
        later = await mute(trio.current_time())
        await trio.sleep(100)  # the others answer ping after ping meanwhile
        for client in answering[1:]:
            assert not client.peer.closed
            assert (await client.create_session()).id
        nursery.cancel_scope.cancel()
    for pings, closed in (first, later):
        assert pings == [pytest.approx(15.0, abs=0.01)]
        assert closed == pytest.approx(25.0, abs=0.01)


# ---- end to end --------------------------------------------------------------------------


@pytest.fixture
def home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lhb", dir="/tmp") as folder:
        yield Path(folder)


@asynccontextmanager
async def daemon_of(home: Path, config: str) -> AsyncIterator[None]:
    """A real `latis daemon` over `config`, stopped (with what it started) at the end."""
    (home / "cmdr").mkdir()
    (home / "cmdr" / "config.toml").write_text(config)
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await latis(home / "cmdr", "daemon", "stop", check=False)


async def unit_status(home: Path, name: str) -> dict[str, Any]:
    rows = json.loads((await latis(home / "cmdr", "status", "--json")).stdout)
    units = rows["units"] if isinstance(rows, dict) else rows
    [row] = [row for row in units if row["unit"] == name]
    return row  # type: ignore[no-any-return]


async def test_a_unit_gone_silent_shows_unreachable_in_status_and_comes_back(
    home: Path,
) -> None:
    """The link to a unit stalls (the unit is alive; nothing gets through, either
    way, even on new connections): the heartbeat drops the connection and
    `latis status` says the unit is unreachable, and why. When the link carries
    bytes again, cmdr's next dial gets through and the unit is connected again."""
    async with listening_unit(home, "tcp://127.0.0.1:0", "--heartbeat", "0") as unit:
        assert unit.port is not None
        async with trio.open_nursery() as nursery:
            proxy = await nursery.start(FaultProxy(tcp_target("127.0.0.1", unit.port)).serve)
            config = f"""
[daemon]
heartbeat = 0.5
heartbeat_timeout = 1.0
handshake_timeout = 1.0
[units.u.dial]
type = "tcp"
host = "127.0.0.1"
port = {proxy.port}
"""
            async with daemon_of(home, config):
                await latis(home / "cmdr", "unit", "up", "u")
                assert (await unit_status(home, "u"))["connection"] == "connected"
                proxy.stall(new=True)
                with trio.fail_after(20):
                    while (row := await unit_status(home, "u"))["connection"] != "unreachable":
                        await trio.sleep(0.2)
                assert "went silent" in row["error"] or "handshake" in row["error"], row
                text = (await latis(home / "cmdr", "status")).stdout.decode()
                assert "FAILED" in text  # the table's word for it
                proxy.release()
                with trio.fail_after(30):
                    while (await unit_status(home, "u"))["connection"] != "connected":
                        await trio.sleep(0.2)
            nursery.cancel_scope.cancel()


async def test_a_unit_drops_a_controller_gone_silent(home: Path) -> None:
    """The other way: a controller that finishes hello and then answers nothing
    gets a ping from the unit, then the unit closes the connection."""
    async with listening_unit(
        home, "tcp://127.0.0.1:0", "--heartbeat", "0.5", "--heartbeat-timeout", "1"
    ) as unit:
        assert unit.port is not None
        stream = await trio.open_tcp_stream("127.0.0.1", unit.port)
        async with stream:
            await stream.send_all(frame({"type": "hello", "id": 0, "protocol": 1, "role": "cmdr"}))
            got = b""
            with trio.fail_after(20):
                while True:
                    try:
                        data = await stream.receive_some()
                    except trio.BrokenResourceError:
                        data = b""
                    if not data:
                        break
                    got += data
        messages = []
        while got:
            (size,) = struct.unpack(">I", got[:4])
            messages.append(orjson.loads(got[4 : 4 + size]))
            got = got[4 + size :]
        assert [m["type"] for m in messages] == ["hello", "ping"]
        assert unit.process.returncode is None  # the unit goes on, for the next controller
