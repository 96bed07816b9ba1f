"""The quic transport: real UDP on 127.0.0.1, aioquic driven by trio, no network beyond it."""

from __future__ import annotations

import functools
import os
import socket
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest
import trio
import trio.testing
from latis_agents.echo import EchoAgent
from latis_transports import quic
from latis_transports.quic import QuicDialer, QuicListener, QuicStream, QuicStreamListener

import latis_core
from latis_core import ConnectError
from latis_core._os.tls import CertificateAuthority, TlsFiles, self_signed
from latis_core._unit.unit import serve_unit

P = ParamSpec("P")
R = TypeVar("R")

#: Seconds after which a test that waits on the network fails (with its traceback).
LIMIT = 20


def bounded(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Fail the test after `LIMIT` seconds instead of hanging."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with trio.fail_after(LIMIT):
            return await fn(*args, **kwargs)

    return wrapper


@pytest.fixture
def unit_files(tmp_path: Path) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1, as a unit has."""
    return self_signed(tmp_path / "unit", ["127.0.0.1"])


def listener(files: TlsFiles, **options: Any) -> QuicListener:
    return QuicListener("127.0.0.1", 0, cert=str(files.cert), key=str(files.key), **options)


def dialer(port: int, files: TlsFiles | None = None, **options: Any) -> QuicDialer:
    if files is not None:
        options.setdefault("fingerprint", files.fingerprint)
    return QuicDialer("127.0.0.1", port, **options)


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = await stream.receive_some()
        assert data, f"EOF after {len(got)} of {size} bytes"
        got += data
    return bytes(got)


async def echo(stream: trio.abc.HalfCloseableStream) -> None:
    """Send back what arrives; at EOF, send EOF and close."""
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()


async def serve_echo(accepting: QuicStreamListener) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            nursery.start_soon(echo, await accepting.accept())


async def round_trip(stream: trio.abc.Stream, data: bytes) -> bytes:
    await stream.send_all(data)
    return await receive_exactly(stream, len(data))


async def serve_listener(
    options: QuicListener,
    *,
    task_status: trio.TaskStatus[tuple[QuicStreamListener, trio.CancelScope]],
) -> None:
    """Listen in a task of its own, until the scope it reports is cancelled."""
    with trio.CancelScope() as scope:
        async with options.listen() as accepting:
            task_status.started((accepting, scope))
            await trio.sleep_forever()


@asynccontextmanager
async def echo_server(options: QuicListener) -> AsyncIterator[QuicStreamListener]:
    """Listen and echo every stream, until the block is left."""
    async with options.listen() as accepting, trio.open_nursery() as nursery:
        nursery.start_soon(serve_echo, accepting)
        yield accepting
        nursery.cancel_scope.cancel()


class Relay:
    """A UDP relay in front of a listener that can fall silent, as a peer that vanished."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.silent = False

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        front = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        back = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with front, back:
            await front.bind(("127.0.0.1", 0))
            await back.connect(("127.0.0.1", self.target))
            self.port = front.getsockname()[1]
            client: Any = None

            async def downstream() -> None:
                while True:
                    data = await back.recv(65536)
                    if not self.silent and client is not None:
                        await front.sendto(data, client)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(downstream)
                task_status.started()
                while True:
                    data, client = await front.recvfrom(65536)
                    if not self.silent:
                        await back.send(data)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class TestBytes:
    @bounded
    async def test_bytes_go_both_ways(self, unit_files: TlsFiles) -> None:
        """Bytes reach the other side and come back in order, a few MiB at a time."""
        data = os.urandom(3 * 1024 * 1024)
        async with echo_server(listener(unit_files)) as accepting:
            async with dialer(accepting.port, unit_files).connect() as stream:
                assert await round_trip(stream, b"hello") == b"hello"
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream.send_all, data)
                    assert await receive_exactly(stream, len(data)) == data
                await stream.send_eof()
                assert await stream.receive_some() == b""

    @bounded
    async def test_several_clients_share_one_socket(self, unit_files: TlsFiles) -> None:
        """Clients talking at once on one listener port each get their own bytes back."""
        seen: list[tuple[str, int]] = []

        async def client(i: int) -> None:
            payload = bytes([i]) * (64 * 1024 + i)
            async with dialer(accepting.port, unit_files).connect() as stream:
                assert stream.peer_address == ("127.0.0.1", accepting.port)
                assert await round_trip(stream, payload) == payload

        async with listener(unit_files).listen() as accepting:
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    async with trio.open_nursery() as inner:
                        for _ in range(5):
                            stream = await accepting.accept()
                            seen.append(stream.peer_address)
                            inner.start_soon(echo, stream)

                nursery.start_soon(serve)
                async with trio.open_nursery() as clients:
                    for i in range(5):
                        clients.start_soon(client, i)
        assert len(set(seen)) == 5
        assert all(host == "127.0.0.1" for host, _ in seen)

    @bounded
    async def test_eof_is_a_half_close(self, unit_files: TlsFiles) -> None:
        """After send_eof the peer reads b"" and may still answer; then we read b"" too."""
        async with listener(unit_files).listen() as accepting:
            async with dialer(accepting.port, unit_files).connect() as client:
                server = await accepting.accept()
                await client.send_all(b"question")
                await client.send_eof()
                assert await receive_exactly(server, 8) == b"question"
                assert await server.receive_some() == b""
                with pytest.raises(trio.ClosedResourceError):
                    await client.send_all(b"more")
                await server.send_all(b"answer")
                await server.send_eof()
                assert await receive_exactly(client, 6) == b"answer"
                assert await client.receive_some() == b""
                await server.aclose()

    @bounded
    async def test_abrupt_close_resets_the_stream(self, unit_files: TlsFiles) -> None:
        """A stream closed abruptly is reset: the peer's receive_some raises BrokenResourceError."""
        async with listener(unit_files).listen() as accepting:
            async with dialer(accepting.port, unit_files).connect() as client:
                server = await accepting.accept()
                await client.send_all(b"partial")
                await trio.aclose_forcefully(client)
                with pytest.raises(trio.BrokenResourceError, match="reset the stream"):
                    while True:
                        await server.receive_some()
                with pytest.raises(trio.BrokenResourceError):
                    while True:
                        await server.send_all(b"x" * 100)

    @bounded
    async def test_a_reader_that_stops_holds_the_sender_back(self, unit_files: TlsFiles) -> None:
        """A peer that stops reading stops the sender; what waits stays bounded, nothing is lost."""
        data = os.urandom(3 * 1024 * 1024)
        async with listener(unit_files).listen() as accepting:
            async with dialer(accepting.port, unit_files).connect() as client:
                server = await accepting.accept()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.send_all, data)
                    # Wait until the peer's flow control lets nothing more go.
                    while True:
                        stats = client.statistics()
                        if stats.send_window == 0 and stats.unsent >= quic.SEND_BUFFER:
                            break
                        await trio.sleep(0.01)
                    assert stats.unsent == quic.SEND_BUFFER
                    assert 0 < server.statistics().unread <= quic.WINDOW
                    assert await receive_exactly(server, len(data)) == data


class TestLifetime:
    @bounded
    async def test_a_silent_peer_ends_by_the_idle_timeout(self, unit_files: TlsFiles) -> None:
        """When the peer falls silent, both streams raise BrokenResourceError (idle timeout)."""
        async with listener(unit_files, idle_timeout=0.5).listen() as accepting:
            relay = Relay(accepting.port)
            async with trio.open_nursery() as nursery:
                await nursery.start(relay.run)
                options = dialer(relay.port, unit_files, idle_timeout=0.5)
                async with options.connect() as client:
                    server = await accepting.accept()
                    await client.send_all(b"ping")
                    assert await receive_exactly(server, 4) == b"ping"
                    relay.silent = True
                    with pytest.raises(trio.BrokenResourceError, match="idle timeout"):
                        await client.receive_some()
                    with pytest.raises(trio.BrokenResourceError, match="idle timeout"):
                        await server.receive_some()
                nursery.cancel_scope.cancel()

    @bounded
    async def test_a_quiet_peer_is_kept_alive(self, unit_files: TlsFiles) -> None:
        """A live connection with nothing to say outlasts the idle timeout (QUIC pings)."""
        async with echo_server(listener(unit_files, idle_timeout=0.3)) as accepting:
            async with dialer(accepting.port, unit_files, idle_timeout=0.3).connect() as stream:
                await trio.sleep(1.0)
                assert await round_trip(stream, b"still here") == b"still here"

    @bounded
    async def test_leaving_listen_closes_its_connections(self, unit_files: TlsFiles) -> None:
        """Leaving listen() closes the connections it accepted; their peers see it at once."""
        async with trio.open_nursery() as nursery:
            accepting, listening = await nursery.start(serve_listener, listener(unit_files))
            async with dialer(accepting.port, unit_files).connect() as client:
                server = await accepting.accept()
                listening.cancel()
                with pytest.raises(trio.BrokenResourceError, match="the listener shut down"):
                    await client.receive_some()
                with pytest.raises(trio.BrokenResourceError, match="the listener shut down"):
                    await server.send_all(b"x")

    @bounded
    async def test_pending_connections_are_bounded(self, unit_files: TlsFiles) -> None:
        """Beyond max_pending connections not accepted, new ones are refused at once."""
        async with listener(unit_files, max_pending=1).listen() as accepting:
            async with dialer(accepting.port, unit_files).connect():
                with pytest.raises(ConnectError, match=r"refused .*max_pending=1"):
                    async with dialer(accepting.port, unit_files).connect():
                        pass
                first = await accepting.accept()
                async with dialer(accepting.port, unit_files).connect() as later:
                    second = await accepting.accept()
                    await later.send_all(b"hi")
                    assert await receive_exactly(second, 2) == b"hi"
                await first.aclose()

    @bounded
    async def test_closed_listener_accepts_no_more(self, unit_files: TlsFiles) -> None:
        """After the listener's aclose, accept() raises ClosedResourceError; dials are refused."""
        async with listener(unit_files).listen() as accepting:
            await accepting.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await accepting.accept()
            with pytest.raises(ConnectError, match="the listener is closed"):
                async with dialer(accepting.port, unit_files).connect():
                    pass

    @bounded
    async def test_nothing_listens(self, unit_files: TlsFiles) -> None:
        """Dialing a port where nothing listens is a ConnectError naming the address."""
        port = free_udp_port()
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
            async with dialer(port, unit_files, connect_timeout=2.0).connect():
                pass

    async def test_unreadable_ca_file(self, tmp_path: Path) -> None:
        """A CA file that cannot be read is a ConnectError naming it, before any packet."""
        missing = tmp_path / "nowhere.pem"
        with pytest.raises(ConnectError, match=f"cannot read the CA file {missing}"):
            async with dialer(free_udp_port(), ca=str(missing)).connect():
                pass

    @bounded
    async def test_no_answer_within_connect_timeout(self, unit_files: TlsFiles) -> None:
        """A server that never answers is a ConnectError once connect_timeout has passed."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:
            mute.bind(("127.0.0.1", 0))
            port = mute.getsockname()[1]
            with pytest.raises(ConnectError, match=f"no answer from 127.0.0.1:{port} within 0.3 s"):
                async with dialer(port, unit_files, connect_timeout=0.3).connect():
                    pass


class TestTls:
    @bounded
    async def test_wrong_pin_is_refused_and_the_listener_goes_on(
        self, unit_files: TlsFiles, tmp_path: Path
    ) -> None:
        """A server that does not match the pin is refused; the listener serves the next client."""
        other = self_signed(tmp_path / "other", ["127.0.0.1"])
        async with listener(unit_files).listen() as accepting:
            refused = "does not match the pinned " + other.fingerprint
            with pytest.raises(ConnectError, match=refused):
                async with dialer(accepting.port, other).connect():
                    pass
            async with dialer(accepting.port, unit_files).connect() as good:
                # The first stream accepted is the good client's: the refused
                # one never got as far as opening its stream.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(echo, await accepting.accept())
                    assert await round_trip(good, b"good") == b"good"
                    await good.send_eof()

    @bounded
    async def test_pin_of_cmdr_ca(self, tmp_path: Path) -> None:
        """Pinning cmdr's CA accepts the certificate it issued for cmdr."""
        ca = CertificateAuthority.load_or_create(tmp_path / "ca")
        async with echo_server(listener(ca.cmdr_files())) as accepting:
            async with dialer(accepting.port, fingerprint=ca.fingerprint).connect() as stream:
                assert await round_trip(stream, b"cmdr") == b"cmdr"

    @bounded
    async def test_ca_verifies_the_server(self, tmp_path: Path) -> None:
        """With `ca`, a server certificate from that CA for the host passes; another CA's fails."""
        ca = CertificateAuthority.load_or_create(tmp_path / "ca")
        stranger = CertificateAuthority.load_or_create(tmp_path / "stranger")
        server = ca.files("server", "latis unit", ["127.0.0.1"])
        async with echo_server(listener(server)) as accepting:
            async with dialer(accepting.port, ca=str(ca.cert_file)).connect() as stream:
                assert await round_trip(stream, b"verified") == b"verified"
            with pytest.raises(ConnectError, match=f"TLS with 127.0.0.1:{accepting.port} failed"):
                async with dialer(accepting.port, ca=str(stranger.cert_file)).connect():
                    pass

    @bounded
    async def test_ca_checks_the_host_name(self, tmp_path: Path) -> None:
        """With `ca`, the certificate must name the host, or `server_name` when given."""
        ca = CertificateAuthority.load_or_create(tmp_path / "ca")
        server = ca.files("named", "latis unit", ["unit.example"])
        async with echo_server(listener(server)) as accepting:
            with pytest.raises(ConnectError, match="unit.example"):
                async with dialer(accepting.port, ca=str(ca.cert_file)).connect():
                    pass
            named = dialer(accepting.port, ca=str(ca.cert_file), server_name="unit.example")
            async with named.connect() as stream:
                assert await round_trip(stream, b"named") == b"named"

    @bounded
    async def test_mtls_requires_a_client_certificate_from_the_ca(
        self, unit_files: TlsFiles, tmp_path: Path
    ) -> None:
        """With client_ca, only clients showing a client certificate that CA issued get in."""
        ca = CertificateAuthority.load_or_create(tmp_path / "ca")
        client = ca.files("client", "latis unit", ["unit.example"], server=False, client=True)
        server_only = ca.cmdr_files()  # issued by the CA, but for server use
        options = listener(unit_files, client_ca=str(ca.cert_file))
        async with echo_server(options) as accepting:
            good = dialer(accepting.port, unit_files, cert=str(client.cert), key=str(client.key))
            async with good.connect() as stream:
                assert await round_trip(stream, b"mutual") == b"mutual"
            with pytest.raises(ConnectError, match="client certificate refused: it showed none"):
                async with dialer(accepting.port, unit_files).connect():
                    pass
            wrong = dialer(
                accepting.port, unit_files, cert=str(server_only.cert), key=str(server_only.key)
            )
            with pytest.raises(ConnectError, match="client certificate refused: not issued"):
                async with wrong.connect():
                    pass
            async with good.connect() as stream:
                assert await round_trip(stream, b"again") == b"again"


class TestLatis:
    @bounded
    async def test_the_protocol_runs_over_quic(self, unit_files: TlsFiles) -> None:
        """A unit served on an accepted stream answers prompts, and a cancelled one ends cleanly."""
        async with listener(unit_files).listen() as accepting, trio.open_nursery() as nursery:

            async def serve() -> None:
                await serve_unit(await accepting.accept(), EchoAgent(delay=0.01))

            nursery.start_soon(serve)
            async with dialer(accepting.port, unit_files).connect() as stream:
                async with latis_core.connect(stream) as unit:
                    assert unit.agent.name == "echo"
                    session = await unit.create_session()
                    assert await session.prompt("hello over quic").text() == "hello over quic"
                    prompt = session.prompt("a b c d e f g h")
                    with trio.CancelScope() as scope:
                        async for _ in prompt:
                            scope.cancel()
                    assert prompt.outcome == "cancelled"
                    assert (await unit.state()).state == "idle"
            nursery.cancel_scope.cancel()


def set_everywhere(monkeypatch: pytest.MonkeyPatch, name: str, value: object) -> None:
    """Set quic's constant `name` in the package and in each of its modules that
    imported it (each holds its own binding)."""
    modules = [quic, *(m for m in vars(quic).values() if isinstance(m, types.ModuleType))]
    for module in modules:
        if hasattr(module, name):
            monkeypatch.setattr(module, name, value)


class TestStream:
    @bounded
    async def test_streams_pass_trios_conformance_checks(
        self, unit_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Both ends pass trio's half-closeable stream checks, clogged sender included."""
        # Small windows: clogging a stream then takes a few packets, not megabytes.
        set_everywhere(monkeypatch, "WINDOW", 64 * 1024)
        set_everywhere(monkeypatch, "SEND_BUFFER", 16 * 1024)
        async with AsyncExitStack() as stack:
            accepting = await stack.enter_async_context(listener(unit_files).listen())

            async def maker() -> tuple[QuicStream, QuicStream]:
                client = await stack.enter_async_context(
                    dialer(accepting.port, unit_files).connect()
                )
                return client, await accepting.accept()

            async def clog(sender: QuicStream) -> None:
                """Send until the peer's flow control lets nothing more go."""
                while True:
                    stats = sender.statistics()
                    if stats.unsent < quic.SEND_BUFFER:
                        await sender.send_all(b"x" * (quic.SEND_BUFFER - stats.unsent))
                    elif stats.send_window == 0:
                        return
                    else:
                        await trio.sleep(0.001)

            async def clogged_maker() -> tuple[QuicStream, QuicStream]:
                # Both ways: trio's checks use the pair reversed too.
                one, other = await maker()
                await clog(one)
                await clog(other)
                return one, other

            await trio.testing.check_half_closeable_stream(maker, clogged_maker)


class TestOptions:
    def test_dialer_from_url(self) -> None:
        """A quic:// URL gives host, port and options; the pin is normalized."""
        pin = "sha256:" + "AB:" * 31 + "AB"
        dialer = QuicDialer.from_url(f"quic://box.example:9000?fingerprint={pin}&ca=/etc/ca.pem")
        assert dialer == QuicDialer(
            "box.example", 9000, ca="/etc/ca.pem", fingerprint="sha256:" + "ab" * 32
        )
        assert QuicDialer.from_url("quic://box.example").port == quic.DEFAULT_PORT == 7447
        assert QuicDialer.from_url("quic://[::1]:9000?idle_timeout=5").idle_timeout == 5.0
        assert QuicDialer.from_url("quic://[::1]:9000").describe() == "quic: [::1]:9000"

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("tcp://box:1", "is not a quic URL"),
            ("quic://:9000", "names no host"),
            ("quic://box:99999", "port must be a number from 0 to 65535"),
            ("quic://box:1/path", r"options after '\?' only"),
            ("quic://box:1?colour=red", "unknown option 'colour'"),
            ("quic://box:1?idle_timeout=soon", "option 'idle_timeout' must be a number"),
            ("quic://box:1?fingerprint=nope", "not a certificate fingerprint"),
            ("quic://box:1?ca=a&ca=b", "option 'ca' is given twice"),
            ("quic://box:1?cert=a.pem", "cert and key go together"),
        ],
    )
    def test_bad_dialer_urls(self, url: str, message: str) -> None:
        """A bad URL is a ValueError saying what is wrong."""
        with pytest.raises(ValueError, match=message):
            QuicDialer.from_url(url)

    def test_listener_from_url(self) -> None:
        """A listener URL gives where to bind, and options."""
        options = QuicListener.from_url("quic://0.0.0.0:7448?cert=c.pem&key=k.pem&max_pending=3")
        assert options == QuicListener("0.0.0.0", 7448, cert="c.pem", key="k.pem", max_pending=3)
        assert options.describe() == "quic: 0.0.0.0:7448"
        with pytest.raises(ValueError, match="unknown option 'fingerprint'"):
            QuicListener.from_url("quic://0.0.0.0?fingerprint=x")

    def test_describe(self) -> None:
        """Dialer and listener say where they go, as `quic: HOST:PORT`."""
        assert QuicDialer("box.example", 9000).describe() == "quic: box.example:9000"
        assert QuicListener().describe() == "quic: 0.0.0.0:7447"

    @pytest.mark.parametrize(
        ("options", "missing"),
        [({}, "set cert and key"), ({"cert": "c.pem"}, "set key")],
    )
    async def test_listen_needs_a_certificate(self, options: dict[str, str], missing: str) -> None:
        """listen() without cert or key is a ValueError naming what is missing."""
        with pytest.raises(ValueError, match=missing):
            async with QuicListener("127.0.0.1", 0, **options).listen():
                pass

    def test_registry_names(self) -> None:
        """The module names its dialer and listener, which have the transport interface."""
        assert quic.DIALER is QuicDialer
        assert quic.LISTENER is QuicListener
        assert isinstance(QuicDialer("box"), latis_core.Dialer)
        assert isinstance(QuicListener(), latis_core.Listener)


@asynccontextmanager
async def quic_unit(files: TlsFiles, agent: EchoAgent) -> AsyncIterator[latis_core.Client]:
    """A latis client over QUIC to an in-process unit serving `agent`."""
    async with listener(files).listen() as accepting, trio.open_nursery() as nursery:

        async def serve_one() -> None:
            await serve_unit(await accepting.accept(), agent)

        nursery.start_soon(serve_one)
        async with dialer(accepting.port, files).connect() as stream:
            async with latis_core.connect(stream) as client:
                yield client
        nursery.cancel_scope.cancel()


class TestLatisOverQuic:
    """QuicStream offers `send_nowait` and a cancel-safe `receive_some`: latis's
    link then sends with no task hop and lets a waiting request read for itself."""

    @bounded
    async def test_many_requests_in_flight_each_get_their_reply(
        self, unit_files: TlsFiles
    ) -> None:
        """A hundred requests at once, read by whichever task waits, each get their own reply."""
        async with quic_unit(unit_files, EchoAgent()) as client:
            assert client.peer.link.can_lead is True
            sessions = [await client.create_session() for _ in range(50)]
            results: dict[int, str] = {}

            async def one(i: int) -> None:
                if i % 2:
                    assert await client.ping() > 0
                    results[i] = "pong"
                else:
                    results[i] = await sessions[i // 2].prompt(f"w{i} x{i}").text()

            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, i)
            assert results == {i: "pong" if i % 2 else f"w{i} x{i}" for i in range(100)}

    @bounded
    async def test_a_request_after_a_quiet_moment_takes_over_the_reading(
        self, unit_files: TlsFiles
    ) -> None:
        """After a pause the idle reader is inside receive_some; a request that
        takes over the reading waits for it to leave, and gets its reply."""
        async with quic_unit(unit_files, EchoAgent()) as client:
            session = await client.create_session()
            for i in range(20):
                await trio.sleep(0.005)
                if i % 2:
                    assert await client.ping() > 0
                else:
                    assert await session.prompt(f"w{i}").text() == f"w{i}"

    @bounded
    async def test_a_slow_reader_holds_the_unit_back_and_loses_nothing(
        self, unit_files: TlsFiles
    ) -> None:
        """20,000 chunks read slowly at first arrive whole and in order; the unit waited."""
        async with quic_unit(unit_files, EchoAgent(repeat=2000)) as client:
            client.peer.queue_limit = 50
            session = await client.create_session()
            seqs: list[int] = []
            async with session.prompt("a b c d e f g h i j") as stream:
                async for chunk in stream:
                    seqs.append(chunk.seq)
                    if len(seqs) == 1:
                        await trio.sleep(0.3)  # the unit fills the window and waits
            assert seqs == list(range(len(seqs))) and len(seqs) == 20000
            assert await client.ping() > 0
