"""The life of a dial-in unit's key: enrollment, approval, revocation, rotation, limits.

A real controller with a real TLS listener on loopback (cmdr's own CA); the
units that dial it are served in this process by the same code as
`latis-unit --connect` (`dial_cmdr`), so each refusal's reason is at hand;
the last tests drive real `latis-unit` processes and the `latis` CLI.
tests/test_dialin.py covers the proof itself (wrong secret, replayed proof,
unknown enrollment, a second connection, a unit on another's listener,
slowloris and floods); this module covers what happens to a key over time.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import attrs
import orjson
import pytest
import trio
from clirun import latis
from faultproxy import FaultProxy
from latis_transports.tcp import TcpDialer
from units import UNIT

import latis_core
from latis_core import EchoAgent, Enrollment
from latis_core._cmdr.config import parse_config
from latis_core._cmdr.state import StateDB
from latis_core._wire.auth import prove

CONFIG = """
[daemon]
handshake_timeout = 2.0

[units.edge]
agent = "echo"
[[units.edge.accept]]
type = "tcp"
host = "127.0.0.1"
port = 0
tls = true
"""


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lkey", dir="/tmp") as folder:
        monkeypatch.setenv("LATIS_HOME", str(Path(folder) / "cmdr"))
        yield Path(folder)


class Cmdr:
    """A controller with the edge unit's listener."""

    def __init__(self, ctl: latis_core.Controller) -> None:
        self.ctl = ctl
        [self.listener] = ctl.dialins.listener_of(ctl.units["edge"])

    async def enroll(self, **options: Any) -> Enrollment:
        data = await self.ctl.dialins.enroll("edge", "127.0.0.1", **options)
        self.fingerprint = data["fingerprint"]
        return Enrollment.parse(data["secret"])

    def dialer(self, port: int | None = None) -> TcpDialer:
        return TcpDialer("127.0.0.1", port or self.port, fingerprint=self.fingerprint)

    @property
    def port(self) -> int:
        assert self.listener.port is not None
        return self.listener.port

    def refused(self) -> dict[str, int]:
        return dict(self.listener.stats.refused)

    @property
    def client(self) -> latis_core.UnitClient | None:
        return self.ctl.units["edge"].client

    async def wait_connected(self, other_than: Any = None) -> latis_core.UnitClient:
        with trio.fail_after(15):
            while (client := self.client) is None or client is other_than or client.peer.closed:
                await trio.sleep(0.01)
        return client

    async def wait_disconnected(self) -> None:
        with trio.fail_after(15):
            while self.client is not None:
                await trio.sleep(0.01)

    async def answers(self, text: str = "still serving") -> None:
        """The unit connected now answers a prompt."""
        session = await self.ctl.create_session("edge")
        record = await self.ctl.start_prompt(session["session"], text)
        events = [e async for e in self.ctl.follow(record.id)]
        assert "".join(e[1].text for e in events if e[0] == "chunk") == text


@asynccontextmanager
async def cmdr(home: Path, config: str = CONFIG) -> AsyncIterator[Cmdr]:
    with StateDB(home / "state.db") as state:
        async with latis_core.open_controller(parse_config(config), state) as ctl:
            yield Cmdr(ctl)


@asynccontextmanager
async def dialing_unit(dialer: Any, enrollment: Enrollment) -> AsyncIterator[list[str]]:
    """A unit that dials cmdr (again after each drop) until cmdr refuses it for good;
    yields where that refusal's reason lands."""
    refused: list[str] = []
    async with latis_core.open_unit(EchoAgent(), name="edge", enrollment=enrollment) as unit:
        async with trio.open_nursery() as nursery:

            async def dial() -> None:
                refused.append(await latis_core.dial_cmdr(unit, dialer, backoff=(0.05,)))

            nursery.start_soon(dial)
            yield refused
            nursery.cancel_scope.cancel()


async def wait_refused(refused: list[str]) -> str:
    with trio.fail_after(15):
        while not refused:
            await trio.sleep(0.01)
    return refused[0]


def frame(obj: dict[str, Any]) -> bytes:
    payload = orjson.dumps(obj)
    return struct.pack(">I", len(payload)) + payload


async def recv(stream: trio.abc.Stream, buffer: bytearray) -> dict[str, Any] | None:
    """The next frame's message, or None at the end of the stream."""
    while True:
        if len(buffer) >= 4:
            (size,) = struct.unpack(">I", buffer[:4])
            if len(buffer) >= 4 + size:
                payload = bytes(buffer[4 : 4 + size])
                del buffer[: 4 + size]
                return orjson.loads(payload)  # type: ignore[no-any-return]
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not data:
            return None
        buffer += data


def hello_with(enrollment_id: str, secret: bytes, challenge: str) -> dict[str, Any]:
    return {
        "type": "hello",
        "id": 0,
        "protocol": 1,
        "role": "unit",
        "unit": "edge",
        "agent": {"name": "echo", "version": ""},
        "capabilities": [],
        "auth": {
            "enrollment": enrollment_id,
            "proof": prove(secret, "unit", challenge, enrollment_id),
        },
    }


async def prove_by_hand(c: Cmdr, enrollment_id: str, secret: bytes) -> dict[str, Any] | None:
    """Dial, answer cmdr's challenge as `enrollment_id` with `secret`; cmdr's answer
    (None if it closed without one: then it took the unit in, and we hang up)."""
    async with c.dialer().connect() as stream:
        buffer = bytearray()
        hello = await recv(stream, buffer)
        assert hello is not None
        await stream.send_all(frame(hello_with(enrollment_id, secret, hello["auth"]["challenge"])))
        with trio.move_on_after(3):
            return await recv(stream, buffer)
        return None


# ---- enrollments that expire -------------------------------------------------------------


async def test_an_enrollment_not_used_within_its_ttl_is_refused(home: Path) -> None:
    """A line not used within its TTL is refused (`expired`, counted), whatever the
    proof; `[daemon] enrollment_ttl` is the default TTL (an hour)."""
    async with cmdr(home) as c:
        assert c.ctl.config.daemon.enrollment_ttl == 3600.0
        enrollment = await c.enroll(ttl=0.2)
        await trio.sleep(0.4)
        async with dialing_unit(c.dialer(), enrollment) as refused:
            reason = await wait_refused(refused)
        assert reason.startswith(f"enrollment {enrollment.id!r} expired before its first use")
        assert "latis unit enroll edge" in reason
        assert c.refused() == {"expired": 1}
        assert c.client is None
        fresh = await c.enroll(ttl=60)
        async with dialing_unit(c.dialer(), fresh):
            await c.wait_connected()
            await c.answers()


async def test_an_enrollment_line_is_spent_by_its_first_use(home: Path) -> None:
    """The TTL bounds the first use only: once a unit has used its line, the line is
    that unit's key and keeps working past the TTL; the same line from a second
    place, while the unit is connected, is refused; and a newer line replaces it
    for good (its first use retires the old one)."""
    async with cmdr(home) as c:
        enrollment = await c.enroll(ttl=0.5)
        async with dialing_unit(c.dialer(), enrollment):
            first = await c.wait_connected()
            await trio.sleep(0.7)  # past the TTL
            await first.peer.aclose()  # the network drops it: it dials again
            await c.wait_connected(other_than=first)
            await c.answers()
            async with dialing_unit(c.dialer(), enrollment) as refused:
                reason = await wait_refused(refused)
            assert reason.startswith("unit 'edge' is already connected")
        await c.wait_disconnected()
        newer = await c.enroll(ttl=60)
        async with dialing_unit(c.dialer(), newer):
            await c.wait_connected()
        async with dialing_unit(c.dialer(), enrollment) as refused:
            reason = await wait_refused(refused)
        assert reason.startswith(f"enrollment {enrollment.id!r} was replaced")
        assert c.refused() == {"duplicate": 1, "replaced": 1}


# ---- a person decides -------------------------------------------------------------------


async def test_a_unit_that_needs_approval_waits_until_accepted(home: Path) -> None:
    """With approval, a unit's first proven dial leaves it pending (told so; it dials
    again) and listed with where it dialed from; once accepted it gets in."""
    async with cmdr(home) as c:
        enrollment = await c.enroll(approval=True)
        async with dialing_unit(c.dialer(), enrollment) as refused:
            with trio.fail_after(15):
                while not await c.ctl.dialins.pending():
                    await trio.sleep(0.01)
            [waiting] = await c.ctl.dialins.pending()
            assert waiting["unit"] == "edge" and waiting["enrollment"] == enrollment.id
            assert waiting["from"].startswith("127.0.0.1:")
            assert c.client is None
            with trio.fail_after(10):
                while c.refused().get("pending", 0) < 2:  # it keeps dialing
                    await trio.sleep(0.01)
            accepted = await c.ctl.dialins.accept("edge")
            assert accepted == {"unit": "edge", "enrollment": enrollment.id, "accepted": True}
            await c.wait_connected()
            await c.answers()
            assert not refused
        assert await c.ctl.dialins.pending() == []
        with pytest.raises(ValueError, match="does not wait for acceptance"):
            await c.ctl.dialins.accept("edge")


async def test_a_rejected_unit_is_refused_for_good(home: Path) -> None:
    """Rejecting a waiting unit retires its enrollment: it is refused and stops dialing."""
    async with cmdr(home) as c:
        enrollment = await c.enroll(approval=True)
        async with dialing_unit(c.dialer(), enrollment) as refused:
            with trio.fail_after(15):
                while not await c.ctl.dialins.pending():
                    await trio.sleep(0.01)
            rejected = await c.ctl.dialins.reject("edge")
            assert rejected == {"unit": "edge", "rejected": [enrollment.id]}
            reason = await wait_refused(refused)
        assert reason.startswith(f"enrollment {enrollment.id!r} was rejected")
        assert c.refused().get("rejected") == 1
        assert c.client is None and await c.ctl.dialins.pending() == []
        with pytest.raises(ValueError, match="does not wait for acceptance"):
            await c.ctl.dialins.reject("edge")


# ---- revoke, rotate ---------------------------------------------------------------------


async def test_revoking_cuts_the_connection_at_once_and_refuses_later_proofs(
    home: Path,
) -> None:
    """`revoke` cuts the unit's connection now (no waiting for a heartbeat), and its
    redial is refused: the id is retired, whatever key comes with it."""
    async with cmdr(home) as c:
        enrollment = await c.enroll()
        async with dialing_unit(c.dialer(), enrollment) as refused:
            await c.wait_connected()
            revoked = await c.ctl.dialins.revoke("edge")
            assert revoked == {"unit": "edge", "revoked": [enrollment.id], "cut": True}
            reason = await wait_refused(refused)
        assert reason.startswith(f"enrollment {enrollment.id!r} was revoked")
        assert c.client is None
        # The retired id with a key of our own choosing: the same answer, not a
        # wrong proof (nothing about the old key is learned either way).
        answer = await prove_by_hand(c, enrollment.id, b"a-key-of-our-own-choosing-000000")
        assert answer is not None and answer["code"] == "unauthorized"
        assert answer["message"].startswith(f"enrollment {enrollment.id!r} was revoked")
        assert c.refused() == {"revoked": 2}


async def test_an_id_is_never_taken_by_another_key(home: Path) -> None:
    """A unit is its enrollment's id and key together: a live id with another key
    is a wrong proof; enrolling again makes a new id, and the old one never comes
    back (Salt CVE-2016-9639)."""
    async with cmdr(home) as c:
        enrollment = await c.enroll()
        answer = await prove_by_hand(c, enrollment.id, b"another-key-for-the-same-id-0000")
        assert answer is not None and answer["code"] == "unauthorized"
        assert answer["message"] == f"wrong proof for enrollment {enrollment.id!r}"
        ids = {enrollment.id}
        for _ in range(3):
            ids.add((await c.enroll()).id)
        assert len(ids) == 4
        answer = await prove_by_hand(c, enrollment.id, enrollment.secret)
        assert answer is not None and "was replaced" in answer["message"]
        assert c.refused() == {"wrong_proof": 1, "replaced": 1}


async def test_rotating_gives_a_new_key_without_downtime(home: Path) -> None:
    """`rotate`: the unit stays connected on its old key; the new one, once used,
    takes over (the old connection gives way) and the old key is refused after."""
    async with cmdr(home) as c:
        old = await c.enroll()
        async with dialing_unit(c.dialer(), old) as old_refused:
            first = await c.wait_connected()
            rotated = await c.ctl.dialins.enroll("edge", "127.0.0.1", rotate=True)
            new = Enrollment.parse(rotated["secret"])
            assert new.id != old.id and rotated["approval"] is False
            # Still connected on the old key, which still proves.
            assert c.client is first and not first.peer.closed
            await first.peer.aclose()
            second = await c.wait_connected(other_than=first)
            await c.answers()
            async with dialing_unit(c.dialer(), new) as new_refused:
                third = await c.wait_connected(other_than=second)
                assert third.hello.auth == {"enrollment": new.id, "proof": ANY}
                reason = await wait_refused(old_refused)
                assert reason.startswith(f"enrollment {old.id!r} was rotated")
                await c.answers()
                assert not new_refused
        assert c.refused() == {"rotated": 1}


# ---- redials and races ------------------------------------------------------------------


async def test_a_redial_while_the_old_connection_is_half_open_gets_in(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The unit's side of its connection is reset (a NAT forgot it), cmdr's side stays
    open and silent. The unit dials again at once, from another address (it
    roamed): cmdr pings the old connection, which cannot answer, so it gives way;
    the newcomer is let in with no refusal and no traceback in the log."""
    source = ["127.0.0.1"]

    async def target() -> trio.abc.Stream:  # the unit's address, as cmdr sees it
        return await trio.open_tcp_stream("127.0.0.1", c.port, local_address=source[0])

    async with cmdr(home) as c:
        enrollment = await c.enroll()
        async with trio.open_nursery() as nursery:
            proxy = await nursery.start(FaultProxy(target).serve)
            async with dialing_unit(c.dialer(proxy.port), enrollment) as refused:
                old = await c.wait_connected()
                assert "from 127.0.0.1:" in str(c.ctl.units["edge"].via)
                source[0] = "127.0.0.2"
                proxy.half_open("client")
                new = await c.wait_connected(other_than=old)
                assert old.peer.closed
                assert "from 127.0.0.2:" in str(c.ctl.units["edge"].via)
                await c.answers()
                assert not refused
            nursery.cancel_scope.cancel()
        assert c.refused() == {}
        assert c.listener.stats.accepted == 2
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert new is not old


async def test_malformed_proofs_are_refused_and_change_nothing(home: Path) -> None:
    """A proof made for the other role, a truncated one, one that is not a string, a
    truncated or oversized (1 MB) enrollment id: each refused; the enrollment is
    still unused (its TTL still runs, nobody waits for approval), and the real
    unit gets in after."""
    async with cmdr(home) as c:
        enrollment = await c.enroll(approval=True)
        eid, secret = enrollment.id, enrollment.secret

        async def attempt(hello_of: Any) -> dict[str, Any] | None:
            async with c.dialer().connect() as stream:
                buffer = bytearray()
                hello = await recv(stream, buffer)
                assert hello is not None
                try:
                    await stream.send_all(frame(hello_of(hello["auth"]["challenge"])))
                except trio.BrokenResourceError:
                    pass  # closed before it was all sent (the oversized one)
                with trio.fail_after(10):
                    answer = await recv(stream, buffer)
                    assert await recv(stream, buffer) is None  # then closed
                return answer

        def with_auth(auth: dict[str, Any]) -> dict[str, Any]:
            return {**hello_with(eid, secret, "x"), "auth": auth}

        answers = [
            await attempt(
                lambda ch: with_auth({"enrollment": eid, "proof": prove(secret, "cmdr", ch, eid)})
            ),
            await attempt(
                lambda ch: with_auth(
                    {"enrollment": eid, "proof": prove(secret, "unit", ch, eid)[:-4]}
                )
            ),
            await attempt(lambda ch: with_auth({"enrollment": eid, "proof": 12345})),
            await attempt(
                lambda ch: with_auth(
                    {"enrollment": eid[:-2], "proof": prove(secret, "unit", ch, eid)}
                )
            ),
        ]
        assert [a["code"] for a in answers if a] == ["unauthorized"] * 4
        huge = await attempt(lambda ch: with_auth({"enrollment": "e" * 1_000_000, "proof": "p"}))
        # Refused on its 4 length bytes, not read: the error may be lost to the reset.
        assert huge is None or huge["code"] == "frame_too_large"
        with trio.fail_after(10):  # counted as cmdr lets go of it, maybe after we saw the end
            while "handshake" not in c.refused():
                await trio.sleep(0.01)
        assert c.refused() == {"wrong_proof": 3, "unknown_unit": 1, "handshake": 1}
        row = c.ctl.state.enrollment(eid)
        assert row is not None and row.state == "new" and row.seen_from is None
        assert await c.ctl.dialins.pending() == []
        async with dialing_unit(c.dialer(), enrollment):
            with trio.fail_after(15):
                while not await c.ctl.dialins.pending():
                    await trio.sleep(0.01)
            await c.ctl.dialins.accept("edge")
            await c.wait_connected()


async def test_a_flood_from_one_address_is_throttled_while_another_enrolls(
    home: Path,
) -> None:
    """200 connections at once from one address, past its rate (5 a second, burst
    5): the excess is closed unanswered and counted `rate_limited`; a unit from
    another address enrolls meanwhile."""
    config = CONFIG + "rate_per_host = 5\nburst_per_host = 5\n"
    async with cmdr(home, config) as c:
        enrollment = await c.enroll()
        flood = []
        for _ in range(200):
            flood.append(await trio.open_tcp_stream("127.0.0.1", c.port, local_address="127.0.0.2"))
        with trio.fail_after(15):
            while c.refused().get("rate_limited", 0) < 190:
                await trio.sleep(0.01)
        async with dialing_unit(c.dialer(), enrollment) as refused:
            await c.wait_connected()
            await c.answers()
        assert not refused
        for stream in flood:
            await stream.aclose()
        assert c.refused()["rate_limited"] <= 195


async def test_a_unit_certificate_from_cmdrs_ca_cannot_pose_as_cmdr(home: Path) -> None:
    """A listener showing a certificate cmdr's CA issued for a unit (client use only),
    or for another name, fails the unit's pin check before it proves anything."""
    import ssl

    from latis_core import CertificateAuthority
    from latis_core._os.tls import CMDR_NAME

    async with cmdr(home) as c:
        await c.enroll()
        ca = CertificateAuthority.load_or_create(c.ctl.paths.data_dir / "tls")
        assert ca.fingerprint == c.fingerprint
        for n, (hosts, server, client) in enumerate(
            [([CMDR_NAME], False, True), (["evil.example"], True, False)]
        ):
            chain, key = ca.issue("a unit", hosts, server=server, client=client)
            (home / f"fake{n}.pem").write_bytes(chain)
            (home / f"fake{n}.key").write_bytes(key)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(home / f"fake{n}.pem", home / f"fake{n}.key")
            [listener] = await trio.open_ssl_over_tcp_listeners(0, context, host="127.0.0.1")
            port = listener.transport_listener.socket.getsockname()[1]
            async with listener, trio.open_nursery() as nursery:

                async def serve_one(
                    listener: trio.SSLListener[trio.SocketStream] = listener,
                    task_status: Any = trio.TASK_STATUS_IGNORED,
                ) -> None:
                    task_status.started()
                    stream = await listener.accept()
                    try:
                        await stream.do_handshake()
                        await stream.receive_some()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

                await nursery.start(serve_one)
                with pytest.raises(
                    latis_core.ConnectError, match="was not issued by the pinned CA .* for cmdr"
                ):
                    async with c.dialer(port).connect():
                        pass
                nursery.cancel_scope.cancel()


async def test_the_daemon_socket_closes_a_silent_connection(home: Path) -> None:
    """A client of the daemon's socket that says nothing is closed after the
    handshake timeout, as on the listeners; the daemon serves others meanwhile."""
    from latis_core._cmdr.daemon import serve_daemon
    from latis_core._os.paths import paths

    config = parse_config("[daemon]\nhandshake_timeout = 0.5\n")
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve_daemon, config)
        idle = [await trio.open_unix_socket(str(paths().socket)) for _ in range(20)]
        async with (
            await trio.open_unix_socket(str(paths().socket)) as stream,
            latis_core.connect(stream) as client,
        ):
            await client.ping()
        with trio.fail_after(10):
            for stream in idle:
                buffer = bytearray()
                while await recv(stream, buffer) is not None:
                    pass  # its hello (and whatever else), then the end
                await stream.aclose()
        running.stop.set()


# ---- the CLI, with real units -----------------------------------------------------------


@attrs.define
class UnitRun:
    """A `latis-unit` process and the file its stderr goes to."""

    process: trio.Process
    log: Path

    def said(self) -> bytes:
        return self.log.read_bytes()


@asynccontextmanager
async def unit_process(home: Path, url: str, secret: str, tag: str) -> AsyncIterator[UnitRun]:
    """`latis-unit --connect URL` with `secret` in a 0600 file, until the block ends
    (or it exits: its `returncode`, and what it said)."""
    path = home / f"secret-{tag}"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    log = home / f"unit-{tag}.log"
    env = {**os.environ, "LATIS_HOME": str(home / f"unit-{tag}")}
    err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [*UNIT, "--connect", url, "--secret-file", str(path), "--name", "edge"],
                    stderr=err,
                    env=env,
                    check=False,
                )
            )
            try:
                yield UnitRun(process, log)
            finally:
                process.terminate()
    finally:
        os.close(err)


async def edge_connected(at: Path) -> bool:
    """Whether `latis status` says unit edge is connected."""
    units = json.loads((await latis(at, "status", "--json")).stdout)["units"]
    return any(u["unit"] == "edge" and u["connection"] == "connected" for u in units)


async def test_the_key_lifecycle_through_the_cli(home: Path) -> None:
    """`latis unit enroll --approve`, `pending`, `accept`, `rotate` and `revoke` on a
    real daemon with real `latis-unit --connect` processes; `latis listeners`
    counts each refusal, including the per-source rate limit."""
    at = home / "cmdr"
    at.mkdir()
    (at / "config.toml").write_text("""
[units.edge]
agent = "echo"
[[units.edge.accept]]
type = "tcp"
host = "127.0.0.1"
port = 0
tls = true
rate_per_host = 1
burst_per_host = 3
""")
    try:
        enrolled = json.loads(
            (
                await latis(
                    at,
                    "unit",
                    "enroll",
                    "edge",
                    "--address",
                    "127.0.0.1",
                    "--approve",
                    "--ttl",
                    "600",
                    "--json",
                )
            ).stdout
        )
        assert enrolled["approval"] is True and enrolled["expires_at"] is not None
        url = enrolled["urls"][0]
        async with unit_process(home, url, enrolled["secret"], "a") as first:
            with trio.fail_after(20):
                while not json.loads((await latis(at, "unit", "pending", "--json")).stdout):
                    await trio.sleep(0.2)
            listed = (await latis(at, "unit", "pending")).stdout.decode()
            assert listed.startswith(f"edge\t{enrolled['enrollment']}\tfrom 127.0.0.1:")
            await latis(at, "unit", "accept", "edge")
            with trio.fail_after(20):
                while not await edge_connected(at):
                    await trio.sleep(0.2)
            rotated = json.loads(
                (
                    await latis(at, "unit", "rotate", "edge", "--address", "127.0.0.1", "--json")
                ).stdout
            )
            async with unit_process(home, rotated["urls"][0], rotated["secret"], "b") as second:
                with trio.fail_after(20):
                    await first.process.wait()  # its old key was refused once the new one was used
                assert first.process.returncode == 4 and b"was rotated" in first.said()
                assert await edge_connected(at)
                revoke = await latis(at, "unit", "revoke", "edge")
                assert (
                    b"revoked 1 enrollment(s) of unit 'edge'; its connection was cut"
                    in revoke.stderr
                )
                with trio.fail_after(20):
                    await second.process.wait()  # its redial was refused: it stops
                assert second.process.returncode == 4  # refused (CLI.md)
                assert b"was revoked" in second.said()
                assert not await edge_connected(at)
        # The rate limit: a burst of 3 from one address, then 1 a second.
        port = int(url.split(":")[2].split("?")[0])
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(8)]
        closed = 0
        for stream in streams:  # the ones past the limit are closed unanswered
            with trio.move_on_after(1):
                try:
                    closed += await stream.receive_some() == b""
                except trio.BrokenResourceError:
                    closed += 1
            await stream.aclose()
        assert closed >= 4
        [row] = json.loads((await latis(at, "listeners", "--json")).stdout)
        assert row["refused"].get("rate_limited", 0) >= 4, row
        assert row["refused"].get("rotated") == 1 and row["refused"].get("revoked") == 1
        table = (await latis(at, "listeners")).stdout.decode()
        assert "rate_limited" in table
    finally:
        with trio.CancelScope(shield=True):
            await latis(at, "daemon", "stop", check=False)
