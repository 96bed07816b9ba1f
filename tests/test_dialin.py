"""Units that dial in to cmdr's listeners: enrollment, proof, and every refusal.

A real controller with real TCP listeners (TLS with cmdr's own CA) on
loopback; units served in this process dial it with the real tcp dialer.
After each refusal a good unit still gets in.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import struct
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from latis_transports.tcp import TcpDialer

import latis_core
from latis_core import ConnectError, EchoAgent, Enrollment
from latis_core._cmdr.config import parse_config
from latis_core._cmdr.state import StateDB
from latis_core._os.paths import paths
from latis_core._wire.auth import prove

CONFIG = """
[daemon]
handshake_timeout = 1.0

[units.edge]
agent = "echo"
[[units.edge.accept]]
type = "tcp"
port = 0
tls = true
max_pending = 6
max_pending_per_host = 3

[units.other]
agent = "echo"
[[units.other.accept]]
type = "tcp"
port = 0
"""


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ldi", dir="/tmp"))
    monkeypatch.setenv("LATIS_HOME", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Cmdr:
    """A controller with the edge listener, and the edge unit's enrollment."""

    def __init__(self, ctl: latis_core.Controller, enrolled: dict[str, Any]) -> None:
        self.ctl = ctl
        self.enrolled = enrolled
        self.url: str = enrolled["urls"][0]
        self.enrollment = Enrollment.parse(enrolled["secret"])
        [self.listener] = ctl.dialins.listener_of(ctl.units["edge"])

    @property
    def port(self) -> int:
        assert self.listener.port is not None
        return self.listener.port

    def dialer(self, **changes: Any) -> TcpDialer:
        options = {"host": "127.0.0.1", "port": self.port,
                   "fingerprint": self.enrolled["fingerprint"], **changes}
        return TcpDialer(**options)

    def refused(self) -> dict[str, int]:
        return dict(self.listener.stats.refused)

    async def wait_connected(self, name: str = "edge") -> None:
        rt = self.ctl.units[name]
        with trio.fail_after(10):
            while rt.client is None:
                await trio.sleep(0.01)


@asynccontextmanager
async def cmdr(home: Path) -> AsyncIterator[Cmdr]:
    with StateDB(paths().state_file) as state:
        async with latis_core.open_controller(parse_config(CONFIG), state) as ctl:
            enrolled = await ctl.dialins.enroll("edge", "127.0.0.1")
            yield Cmdr(ctl, enrolled)


@asynccontextmanager
async def dialing_unit(
    dialer: Any, enrollment: Enrollment | None, name: str = "edge"
) -> AsyncIterator[list[str]]:
    """A unit in this process that dials cmdr; yields where cmdr's refusal lands."""
    refused: list[str] = []
    async with latis_core.open_unit(EchoAgent(), name=name, enrollment=enrollment) as unit:
        async with trio.open_nursery() as nursery:

            async def dial() -> None:
                refused.append(await latis_core.dial_cmdr(unit, dialer, backoff=(0.05,)))

            nursery.start_soon(dial)
            yield refused
            nursery.cancel_scope.cancel()


async def wait_refused(refused: list[str]) -> str:
    with trio.fail_after(10):
        while not refused:
            await trio.sleep(0.01)
    return refused[0]


async def a_good_unit_gets_in(c: Cmdr) -> None:
    """The check after every refusal: the real unit still connects and answers."""
    async with dialing_unit(c.dialer(), c.enrollment):
        await c.wait_connected()
        session = await c.ctl.create_session("edge")
        record = await c.ctl.start_prompt(session["session"], "still serving")
        events = [e async for e in c.ctl.follow(record.id)]
        assert "".join(e[1].text for e in events if e[0] == "chunk") == "still serving"
    with trio.fail_after(10):
        while c.ctl.units["edge"].client is not None:
            await trio.sleep(0.01)


# ---- raw frames, for what no real unit would send ----------------------------------------


def frame(obj: dict[str, Any]) -> bytes:
    payload = orjson.dumps(obj)
    return struct.pack(">I", len(payload)) + payload


class Raw:
    """A connection to the listener that speaks frames by hand."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def recv(self, timeout: float = 10) -> dict[str, Any] | None:
        """The next message, or None at EOF."""
        with trio.fail_after(timeout):
            while True:
                if len(self.buffer) >= 4:
                    (size,) = struct.unpack(">I", self.buffer[:4])
                    if len(self.buffer) >= 4 + size:
                        payload, self.buffer = self.buffer[4:4 + size], self.buffer[4 + size:]
                        return orjson.loads(payload)  # type: ignore[no-any-return]
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None
                if not data:
                    return None
                self.buffer += data

    async def closed(self, timeout: float = 10) -> bool:
        """Whether the listener closes the connection (after any messages)."""
        with trio.move_on_after(timeout):
            while await self.recv(timeout) is not None:
                pass
            return True
        return False


@asynccontextmanager
async def raw(c: Cmdr, **changes: Any) -> AsyncIterator[Raw]:
    async with c.dialer(**changes).connect() as stream:
        yield Raw(stream)


def unit_hello(auth: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "hello", "id": 0, "protocol": 1, "role": "unit", "unit": "edge",
            "agent": {"name": "echo", "version": ""}, "capabilities": [], "auth": auth}


# ---- the good path ----------------------------------------------------------------------


async def test_enrolled_unit_dials_in_over_tls(home: Path) -> None:
    """The enrollment line's URL pins cmdr's CA; the unit proves its secret and serves."""
    async with cmdr(home) as c:
        assert c.url.startswith(f"tcp://127.0.0.1:{c.port}?fingerprint=sha256:")
        assert c.enrolled["fingerprint"] in c.url
        assert f"latis-unit --connect '{c.url}'" in c.enrolled["command"]
        assert c.enrolled["secret"] in c.enrolled["command"]
        _, dialer = latis_core.dialer_from_url(c.url)
        async with dialing_unit(dialer, c.enrollment):
            await c.wait_connected()
            rt = c.ctl.units["edge"]
            assert rt.state == "connected"
            assert rt.via is not None and "from 127.0.0.1:" in rt.via
            session = await c.ctl.create_session("edge")
            record = await c.ctl.start_prompt(session["session"], "over a dial in")
            events = [e async for e in c.ctl.follow(record.id)]
            assert events[-1][0] == "end" and events[-1][1]["outcome"] == "complete"
        assert c.listener.stats.accepted == 1
        assert c.refused() == {}


async def test_unit_that_drops_dials_again_and_resumes(home: Path) -> None:
    """A connection cut under a unit: it dials again, and its session is still there."""
    async with cmdr(home) as c, dialing_unit(c.dialer(), c.enrollment):
        await c.wait_connected()
        session = await c.ctl.create_session("edge")
        rt = c.ctl.units["edge"]
        assert rt.client is not None
        await rt.client.peer.aclose()  # as if the network dropped it
        with trio.fail_after(10):
            while rt.client is None or rt.client.peer.closed:
                await trio.sleep(0.01)
        record = await c.ctl.start_prompt(session["session"], "after a redial")
        events = [e async for e in c.ctl.follow(record.id)]
        assert "".join(e[1].text for e in events if e[0] == "chunk") == "after a redial"
        assert c.listener.stats.accepted == 2


async def test_a_stopping_cmdr_records_its_dialed_in_units_as_disconnected(
    home: Path,
) -> None:
    """cmdr stops with a unit dialed in: its state says the unit is disconnected (what
    `latis status` shows while cmdr is down), not connected; written as the
    connection ends, and stored before the controller is gone."""
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        async with cmdr(home) as c:

            async def unit_runs() -> None:  # on past cmdr's end
                async with dialing_unit(c.dialer(), c.enrollment):
                    await done.wait()

            nursery.start_soon(unit_runs)
            await c.wait_connected()
            await c.ctl.flush()
            with StateDB(paths().state_file) as state:
                row = state.get_connection("edge")
                assert row is not None and row.state == "connected"
        with StateDB(paths().state_file) as state:
            row = state.get_connection("edge")
            assert row is not None and row.state == "disconnected"
        done.set()


# ---- refusals of proof --------------------------------------------------------------------


async def test_wrong_secret_is_refused(home: Path) -> None:
    async with cmdr(home) as c:
        wrong = Enrollment(c.enrollment.id, b"not-the-secret-at-all-000000")
        async with dialing_unit(c.dialer(), wrong) as refused:
            reason = await wait_refused(refused)
        assert reason == f"wrong proof for enrollment {c.enrollment.id!r}"
        assert c.refused() == {"wrong_proof": 1}
        assert c.ctl.units["edge"].client is None
        await a_good_unit_gets_in(c)


async def test_replayed_proof_is_refused(home: Path) -> None:
    """A hello captured from one connection answers that connection's challenge only."""
    async with cmdr(home) as c:
        async with raw(c) as first:
            hello = await first.recv()
            assert hello is not None and hello["type"] == "hello"
            challenge = hello["auth"]["challenge"]
            secret, eid = c.enrollment.secret, c.enrollment.id
            captured = unit_hello(
                {"enrollment": eid, "proof": prove(secret, "unit", challenge, eid)}
            )
            await first.stream.send_all(frame(captured))
            await c.wait_connected()
        with trio.fail_after(10):
            while c.ctl.units["edge"].client is not None:
                await trio.sleep(0.01)
        async with raw(c) as second:
            hello = await second.recv()
            assert hello is not None and hello["auth"]["challenge"] != challenge
            await second.stream.send_all(frame(captured))
            error = await second.recv()
            assert error is not None and error["type"] == "error"
            assert error["code"] == "unauthorized"
            assert await second.closed()
        assert c.refused() == {"wrong_proof": 1}
        await a_good_unit_gets_in(c)


async def test_unknown_enrollment_is_refused(home: Path) -> None:
    async with cmdr(home) as c:
        stranger = Enrollment.new()
        async with dialing_unit(c.dialer(), stranger) as refused:
            reason = await wait_refused(refused)
        assert reason.startswith(f"unknown enrollment {stranger.id!r}")
        assert c.refused() == {"unknown_unit": 1}
        await a_good_unit_gets_in(c)


async def test_unit_without_enrollment_is_refused(home: Path) -> None:
    async with cmdr(home) as c:
        async with dialing_unit(c.dialer(), None) as refused:
            reason = await wait_refused(refused)
        assert "takes enrolled units only" in reason and "--secret-file" in reason
        assert c.refused() == {"no_enrollment": 1}
        await a_good_unit_gets_in(c)


async def test_second_connection_for_a_connected_unit_is_refused(home: Path) -> None:
    """While the unit is connected and answers, another claim to it is refused."""
    async with cmdr(home) as c, dialing_unit(c.dialer(), c.enrollment):
        await c.wait_connected()
        first = c.ctl.units["edge"].client
        async with dialing_unit(c.dialer(), c.enrollment) as refused:
            reason = await wait_refused(refused)
        assert reason.startswith("unit 'edge' is already connected")
        assert c.refused() == {"duplicate": 1}
        assert c.ctl.units["edge"].client is first
        session = await c.ctl.create_session("edge")
        assert session["state"] == "idle"


async def test_a_silently_dead_connection_is_replaced(home: Path) -> None:
    """A connection that no longer answers a ping gives way to the unit dialing again."""
    async with cmdr(home) as c:
        async with raw(c) as dead:
            hello = await dead.recv()
            assert hello is not None
            challenge = hello["auth"]["challenge"]
            eid = c.enrollment.id
            await dead.stream.send_all(frame(unit_hello(
                {"enrollment": eid, "proof": prove(c.enrollment.secret, "unit", challenge, eid)}
            )))
            await c.wait_connected()
            # It never reads again: a ping goes unanswered.
            async with dialing_unit(c.dialer(), c.enrollment) as refused:
                with trio.fail_after(15):
                    while True:
                        client = c.ctl.units["edge"].client
                        if client is not None and client.hello.unit == "edge" and \
                                client.agent.name == "echo" and client.capabilities:
                            break
                        await trio.sleep(0.02)
                assert not refused
                session = await c.ctl.create_session("edge")
                assert session["state"] == "idle"
        assert c.refused() == {}


async def test_unit_on_another_units_listener_is_refused(home: Path) -> None:
    async with cmdr(home) as c:
        [plain] = c.ctl.dialins.listener_of(c.ctl.units["other"])
        assert plain.port is not None
        async with dialing_unit(TcpDialer("127.0.0.1", plain.port), c.enrollment) as refused:
            reason = await wait_refused(refused)
        assert reason.startswith("unit 'edge' does not dial in on tcp: 0.0.0.0:")
        assert dict(plain.stats.refused) == {"wrong_listener": 1}
        await a_good_unit_gets_in(c)


async def test_a_removed_units_name_enrolled_again_gets_nothing_of_the_old(home: Path) -> None:
    """Destroying a unit revokes its enrollment; enrolled again, it starts clean."""
    async with cmdr(home) as c:
        async with dialing_unit(c.dialer(), c.enrollment):
            await c.wait_connected()
            old_session = (await c.ctl.create_session("edge"))["session"]
        await c.ctl.destroy("edge")
        async with dialing_unit(c.dialer(), c.enrollment) as refused:
            reason = await wait_refused(refused)
        assert "was destroyed" in reason, reason
        await c.ctl.reload(parse_config(CONFIG))
        c.ctl.state.upsert_unit("edge", None, {})
        fresh = await c.ctl.dialins.enroll("edge", "127.0.0.1")
        assert fresh["enrollment"] != c.enrollment.id
        async with dialing_unit(c.dialer(), Enrollment.parse(fresh["secret"])):
            await c.wait_connected()
            assert [s.id for s in c.ctl.state.list_sessions("edge")] == []
            assert c.ctl.state.get_session(old_session).state == "closed"  # type: ignore[union-attr]


async def test_enrolling_again_revokes_the_old_secret(home: Path) -> None:
    async with cmdr(home) as c:
        await c.ctl.dialins.enroll("edge")
        async with dialing_unit(c.dialer(), c.enrollment) as refused:
            reason = await wait_refused(refused)
        assert "was replaced" in reason, reason


async def test_revoking_a_unit_that_never_dialed_in_or_a_negative_ttl_is_refused(
    home: Path,
) -> None:
    """Not "revoked 0 enrollment(s)" for a unit that does not dial in; not a secret that
    expired before it was printed."""
    async with cmdr(home) as c:
        with pytest.raises(ValueError, match="unit 'local' does not dial in: it has no"):
            await c.ctl.dialins.revoke("local")
        with pytest.raises(ValueError, match="ttl must be 0 .* got -5"):
            await c.ctl.dialins.enroll("edge", ttl=-5, rotate=True)


# ---- before the proof: nothing but the handshake ---------------------------------------


async def test_a_request_before_hello_closes_the_connection(home: Path) -> None:
    """Pre-auth, a frame other than hello is refused and the connection closed."""
    async with cmdr(home) as c:
        for attack in (
            {"type": "session.create", "id": 1},
            {"type": "call", "id": 1, "method": "daemon.stop"},
            {"type": "__init__", "id": 1},
            {"type": "response.chunk", "id": 0, "seq": 0, "text": "x"},
        ):
            async with raw(c) as r:
                await r.recv()
                await r.stream.send_all(frame(attack))
                assert await r.closed(), attack
        with trio.fail_after(5):  # counted as the server side ends, maybe after we saw it close
            while c.refused() != {"handshake": 4}:
                await trio.sleep(0.01)
        await a_good_unit_gets_in(c)


async def test_an_oversized_frame_before_hello_closes_the_connection(home: Path) -> None:
    """Pre-auth frames are held to 64 KiB: a larger length is refused before it is read."""
    async with cmdr(home) as c:
        async with raw(c) as r:
            await r.recv()
            await r.stream.send_all(struct.pack(">I", 65 * 1024) + b"{")
            error = await r.recv()
            assert error is not None and error["code"] == "frame_too_large"
            assert await r.closed()
        async with raw(c) as r:
            await r.recv()
            await r.stream.send_all(struct.pack(">I", 0xFFFFFFFF))
            assert await r.closed()
        await a_good_unit_gets_in(c)


async def test_silence_past_the_handshake_timeout_closes_the_connection(home: Path) -> None:
    async with cmdr(home) as c:
        async with raw(c) as r:
            assert await r.recv() is not None  # cmdr's hello
            assert await r.closed(timeout=5)  # handshake_timeout is 1 s
        assert c.refused() == {"handshake": 1}
        await a_good_unit_gets_in(c)


async def test_a_flood_of_half_open_connections_is_bounded(home: Path) -> None:
    """Connections stuck before hello hold at most max_pending_per_host slots per
    address and max_pending in all; past that they wait for a slot (at most half the
    handshake timeout), are refused as busy and closed, and a unit from another
    address still gets in."""
    async with cmdr(home) as c:
        async with trio.open_nursery() as nursery:
            streams: list[trio.abc.Stream] = []
            for _ in range(5):  # from 127.0.0.2: plain TCP, never a byte
                streams.append(await trio.open_tcp_stream(
                    "127.0.0.1", c.port, local_address="127.0.0.2"))
            with trio.fail_after(10):
                while c.refused().get("busy", 0) < 2:
                    await trio.sleep(0.01)
            # The 4th and 5th waited in vain and were closed; the first three hold slots.
            assert c.refused().get("handshake", 0) == 0
            closed = 0
            for stream in streams[3:]:
                with trio.move_on_after(5):
                    try:
                        while await stream.receive_some(4096):
                            pass
                    except trio.BrokenResourceError:
                        pass
                    closed += 1
            assert closed == 2
            await a_good_unit_gets_in(c)  # from 127.0.0.1
            for stream in streams:
                await stream.aclose()
            nursery.cancel_scope.cancel()


# ---- TLS: the unit checks cmdr before it proves anything ------------------------------


async def test_unit_refuses_a_cmdr_whose_certificate_does_not_match_the_pin(
    home: Path, tmp_path: Path
) -> None:
    """Another CA's certificate (a man in the middle) fails the pin: the unit sends nothing."""
    from latis_core import CertificateAuthority

    other = CertificateAuthority.load_or_create(tmp_path / "other")
    async with cmdr(home) as c:
        with pytest.raises(ConnectError, match="does not match the pinned"):
            async with c.dialer(fingerprint=other.fingerprint).connect():
                pass
        with pytest.raises(ConnectError, match="self-signed certificate in certificate chain"):
            async with c.dialer(fingerprint=None, ca=str(other.cert_file)).connect():
                pass
        assert c.listener.stats.accepted == 2 and c.ctl.units["edge"].client is None
        await a_good_unit_gets_in(c)


async def test_the_enrollment_line_runs_a_real_unit(home: Path, tmp_path: Path) -> None:
    """The printed line, run by sh, writes the secret (0600) and starts latis-unit --connect."""
    async with cmdr(home) as c:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        unit_script = bin_dir / "latis-unit"
        unit_script.write_text(
            f"#!/bin/sh\nexec {sys.executable} -m latis_core._unit.cli \"$@\"\n"
        )
        unit_script.chmod(0o755)
        env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        async with trio.open_nursery() as nursery:
            process = await nursery.start(functools.partial(
                trio.run_process, ["sh", "-c", c.enrolled["command"]], env=env, check=False,
                start_new_session=True,
            ))
            await c.wait_connected()
            secret_file = tmp_path / ".latis-unit-edge"
            assert secret_file.stat().st_mode & 0o777 == 0o600
            assert secret_file.read_text().strip() == c.enrolled["secret"]
            session = await c.ctl.create_session("edge")
            record = await c.ctl.start_prompt(session["session"], "from the line")
            events = [e async for e in c.ctl.follow(record.id)]
            assert "".join(e[1].text for e in events if e[0] == "chunk") == "from the line"
            # The line's shell and the unit it started: the whole group.
            os.killpg(process.pid, signal.SIGTERM)
