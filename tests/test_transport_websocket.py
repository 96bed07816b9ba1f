"""The websocket transport: the latis byte stream in binary messages, ws:// and wss://.

Loopback only, port 0. Certificates are made per test in tmp_path (EC keys:
milliseconds). Raw trio-websocket clients stand in for peers that misbehave.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from latis_transports import websocket
from latis_transports.websocket import (
    WebSocketAcceptor,
    WebSocketDialer,
    WebSocketListener,
    WebSocketStream,
)
from units import conversation

import latis_core
from latis_core import ConnectError, EchoAgent
from latis_core._os.tls import CMDR_NAME, CertificateAuthority, self_signed, server_context
from latis_core._wire.frames import DEFAULT_MAX_FRAME

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def listening(**options: Any) -> AsyncIterator[WebSocketAcceptor]:
    """A websocket listener on 127.0.0.1, any free port."""
    listener = WebSocketListener("127.0.0.1", 0, **options)
    async with listener.listen() as acceptor:
        assert isinstance(acceptor, WebSocketAcceptor)
        yield acceptor


def url(acceptor: WebSocketAcceptor, scheme: str = "ws", path: str = "/latis") -> str:
    return f"{scheme}://127.0.0.1:{acceptor.port}{path}"


@asynccontextmanager
async def raw_client(
    acceptor: WebSocketAcceptor,
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A plain trio-websocket client with no limit of its own, on a socket we close
    (trio-websocket leaves it open when the server closes first)."""
    tcp = await trio.open_tcp_stream("127.0.0.1", acceptor.port)
    try:
        async with trio.open_nursery() as nursery:
            connection = await trio_websocket.wrap_client_stream(
                nursery, tcp, f"127.0.0.1:{acceptor.port}", "/latis", max_message_size=1 << 20
            )
            yield connection
            await connection.aclose()
    finally:
        await tcp.aclose()


def issue(
    ca: CertificateAuthority, directory: Path, hosts: list[str], *, client: bool = False
) -> tuple[str, str]:
    """A certificate of `ca` for `hosts` (a client's with `client`), as (cert, key) files."""
    chain, key = ca.issue("latis test", hosts, server=not client, client=client)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(chain)
    (directory / "key.pem").write_bytes(key)
    return str(directory / "cert.pem"), str(directory / "key.pem")


@asynccontextmanager
async def pair(**options: Any) -> AsyncIterator[tuple[WebSocketStream, WebSocketStream]]:
    """A dialed stream and the stream its listener accepted."""
    async with listening(**options) as acceptor:
        async with WebSocketDialer(url(acceptor)).connect() as dialed:
            accepted = await acceptor.accept()
            try:
                yield dialed, accepted
            finally:
                await accepted.aclose()


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = await stream.receive_some()
        assert data, f"end of stream after {len(got)} of {size} bytes"
        got += data
    return bytes(got)


class TestBytes:
    async def test_bytes_go_both_ways(self) -> None:
        """What one side sends the other receives; both know the other's address."""
        async with listening() as acceptor:
            async with WebSocketDialer(url(acceptor)).connect() as dialed:
                accepted = await acceptor.accept()
                await dialed.send_all(b"hello over a websocket")
                assert await receive_exactly(accepted, 22) == b"hello over a websocket"
                await accepted.send_all(bytearray(b"and back"))
                assert await receive_exactly(dialed, 8) == b"and back"
                assert dialed.peer_address == ("127.0.0.1", acceptor.port)
                assert accepted.peer_address[0] == "127.0.0.1"
                assert accepted.peer_address[1] not in (0, acceptor.port)
                await accepted.aclose()

    async def test_big_send_is_split_into_messages(self) -> None:
        """A 20 MiB send_all arrives whole, in messages no bigger than max_frame + 4."""
        data = bytes(range(256)) * (20 * 4096)
        async with pair() as (dialed, accepted), trio.open_nursery() as nursery:
            nursery.start_soon(dialed.send_all, data)
            pieces: list[bytes] = []
            while sum(len(piece) for piece in pieces) < len(data):
                pieces.append(await accepted.receive_some())  # at most one message each
            assert b"".join(pieces) == data
            assert len(pieces) >= 2
            assert max(len(piece) for piece in pieces) == DEFAULT_MAX_FRAME + 4

    async def test_message_bigger_than_max_bytes_comes_in_pieces(self) -> None:
        """receive_some(max_bytes) returns the rest of a message on the next calls."""
        async with pair() as (dialed, accepted):
            await dialed.send_all(b"abcdefghij")
            assert await accepted.receive_some(4) == b"abcd"
            assert await accepted.receive_some(4) == b"efgh"
            assert await accepted.receive_some(4) == b"ij"

    async def test_is_a_proper_stream(self) -> None:
        """Dialed and accepted streams pass trio's two-way stream conformance checks."""
        async with AsyncExitStack() as stack:
            acceptor = await stack.enter_async_context(listening())
            dialer = WebSocketDialer(url(acceptor))

            async def maker() -> tuple[WebSocketStream, WebSocketStream]:
                dialed = await stack.enter_async_context(dialer.connect())
                return dialed, await acceptor.accept()

            await trio.testing.check_two_way_stream(maker, None)

    async def test_clean_close_reads_as_end_of_stream(self) -> None:
        """The peer's aclose (the closing handshake) reads as b"" after its last bytes."""
        async with pair() as (dialed, accepted):
            await accepted.send_all(b"last words")
            await accepted.aclose()
            assert await receive_exactly(dialed, 10) == b"last words"
            assert await dialed.receive_some() == b""
            assert await dialed.receive_some() == b""

    async def test_peer_gone_is_a_broken_stream(self) -> None:
        """A peer whose connection drops without a close handshake: BrokenResourceError."""
        async with pair() as (dialed, accepted):
            await trio.aclose_forcefully(accepted._transport)
            with pytest.raises(trio.BrokenResourceError):
                await dialed.receive_some()
            with pytest.raises(trio.BrokenResourceError):
                await dialed.send_all(b"anyone there?")


class TestLimits:
    async def test_message_over_the_limit_closes_the_connection(self) -> None:
        """A message over max_frame + 4 from a raw client: close code 1009, stream broken."""
        async with listening(max_frame=1024) as acceptor:
            async with raw_client(acceptor) as raw:
                accepted = await acceptor.accept()
                await raw.send_message(b"x" * 1028)  # exactly the limit: fine
                assert len(await receive_exactly(accepted, 1028)) == 1028
                await raw.send_message(b"x" * 1029)
                with pytest.raises(trio.BrokenResourceError, match="1009"):
                    await accepted.receive_some()
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    await raw.get_message()
                assert info.value.reason is not None
                assert info.value.reason.code == 1009
                await accepted.aclose()

    async def test_text_message_breaks_the_stream(self) -> None:
        """Text is not latis: the stream breaks and the peer is told (close code 1003)."""
        async with listening() as acceptor:
            async with raw_client(acceptor) as raw:
                accepted = await acceptor.accept()
                await raw.send_message("not bytes")
                with pytest.raises(trio.BrokenResourceError, match="text message"):
                    await accepted.receive_some()
                with pytest.raises(trio.BrokenResourceError):
                    await accepted.receive_some()
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    await raw.get_message()
                assert info.value.reason is not None
                assert info.value.reason.code == 1003
                await accepted.aclose()

    async def test_max_pending_bounds_the_queue(self) -> None:
        """Beyond max_pending connections waiting for accept(), new ones get 503."""
        async with listening(max_pending=2) as acceptor, AsyncExitStack() as stack:
            dialer = WebSocketDialer(url(acceptor))
            for _ in range(2):
                await stack.enter_async_context(dialer.connect())
            with pytest.raises(ConnectError, match="HTTP 503 Service Unavailable"):
                async with dialer.connect():
                    pass
            taken = await acceptor.accept()
            async with dialer.connect() as third:
                await third.send_all(b"made it")
                await acceptor.accept()
                await acceptor.accept()
            await taken.aclose()

    async def test_max_pending_bounds_handshakes(self) -> None:
        """Beyond max_pending connections in their handshake, new ones are closed at once."""
        async with listening(max_pending=1) as acceptor:
            silent = await trio.open_tcp_stream("127.0.0.1", acceptor.port)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ConnectError, match="closed the connection during the websocket"):
                async with WebSocketDialer(url(acceptor)).connect():
                    pass
            await silent.aclose()
            await trio.testing.wait_all_tasks_blocked()
            async with WebSocketDialer(url(acceptor)).connect():
                await (await acceptor.accept()).aclose()

    async def test_closing_the_listener_closes_waiting_connections(self) -> None:
        """Connections never accepted are closed with the listener; accept() then refuses."""
        async with listening() as acceptor:
            async with WebSocketDialer(url(acceptor)).connect() as dialed:
                await acceptor.aclose()
                assert await dialed.receive_some() == b""
            with pytest.raises(trio.ClosedResourceError):
                await acceptor.accept()


class TestRefusals:
    async def test_wrong_path_is_404(self) -> None:
        """A dialer that asks for another path gets a ConnectError that says 404."""
        async with listening() as acceptor:
            with pytest.raises(ConnectError) as info:
                async with WebSocketDialer(url(acceptor, path="/other")).connect():
                    pass
            assert str(info.value) == (
                f"cannot connect to {url(acceptor, path='/other')}: the server refused the"
                " websocket: HTTP 404 Not Found (no latis websocket at this path)"
            )

    async def test_nothing_listening(self) -> None:
        """A port nobody listens on: ConnectError with the system's reason."""
        async with listening() as acceptor:
            port = acceptor.port
        with pytest.raises(ConnectError, match=f"cannot connect to ws://127.0.0.1:{port}/latis: "):
            async with WebSocketDialer(f"ws://127.0.0.1:{port}/latis").connect():
                pass

    async def test_not_a_websocket_server(self) -> None:
        """A server that answers the upgrade with garbage and hangs up: a ConnectError."""

        async def rude(stream: trio.SocketStream) -> None:
            await stream.receive_some()
            await stream.send_all(b"SSH-2.0-OpenSSH_9.2\r\n")

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, rude, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(ConnectError, match="closed the connection during the websocket"):
                async with WebSocketDialer(f"ws://127.0.0.1:{port}/latis").connect():
                    pass
            nursery.cancel_scope.cancel()

    async def test_server_that_never_answers(self) -> None:
        """A server that takes the connection and says nothing: ConnectError after the timeout."""

        async def silent(stream: trio.SocketStream) -> None:
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            dialer = WebSocketDialer(f"ws://127.0.0.1:{port}/latis", connect_timeout=0.2)
            with pytest.raises(ConnectError) as info:
                async with dialer.connect():
                    pass
            assert str(info.value) == (
                f"cannot connect to ws://127.0.0.1:{port}/latis: no answer within 0.2 s"
            )
            nursery.cancel_scope.cancel()

    async def test_listener_keeps_serving_after_bad_clients(self) -> None:
        """Garbage, a hang-up mid-request and a silent client do not stop the listener."""
        async with listening() as acceptor:
            garbage = await trio.open_tcp_stream("127.0.0.1", acceptor.port)
            await garbage.send_all(b"\x00\x01 this is not HTTP\r\n\r\n")
            assert (await garbage.receive_some()).startswith(b"HTTP/1.1 400")
            half = await trio.open_tcp_stream("127.0.0.1", acceptor.port)
            await half.send_all(b"GET /latis HTTP/1.1\r\nHost: x\r\n")
            await half.aclose()
            silent = await trio.open_tcp_stream("127.0.0.1", acceptor.port)
            async with WebSocketDialer(url(acceptor)).connect() as dialed:
                accepted = await acceptor.accept()
                await dialed.send_all(b"still here")
                assert await receive_exactly(accepted, 10) == b"still here"
                await accepted.aclose()
            await garbage.aclose()
            await silent.aclose()


class TestTls:
    @pytest.fixture
    def ca(self, tmp_path: Path) -> CertificateAuthority:
        return CertificateAuthority.load_or_create(tmp_path / "ca")

    async def say_hello(self, dialer: WebSocketDialer, acceptor: WebSocketAcceptor) -> None:
        async with dialer.connect() as dialed:
            accepted = await acceptor.accept()
            await dialed.send_all(b"over tls")
            assert await receive_exactly(accepted, 8) == b"over tls"
            await accepted.aclose()

    def tls(self, files: tuple[str, str], **options: Any) -> dict[str, Any]:
        cert, key = files
        return {"tls": True, "cert": cert, "key": key, **options}

    async def test_pinned_self_signed_certificate(self, tmp_path: Path) -> None:
        """wss:// with the server's own certificate pinned connects."""
        files = self_signed(tmp_path / "unit", ["127.0.0.1"])
        async with listening(**self.tls((str(files.cert), str(files.key)))) as acceptor:
            dialer = WebSocketDialer(url(acceptor, "wss"), fingerprint=files.fingerprint)
            await self.say_hello(dialer, acceptor)

    async def test_pinned_ca(self, ca: CertificateAuthority, tmp_path: Path) -> None:
        """wss:// with cmdr's CA pinned accepts the certificate it issued cmdr."""
        cmdr = issue(ca, tmp_path / "cmdr", [CMDR_NAME])
        async with listening(**self.tls(cmdr)) as acceptor:
            query = f"?fingerprint={ca.fingerprint}"
            dialer = WebSocketDialer.from_url(url(acceptor, "wss") + query)
            await self.say_hello(dialer, acceptor)

    async def test_wrong_pin_is_refused_before_anything_is_sent(self, tmp_path: Path) -> None:
        """A server that fails the pin gets a TLS handshake and then nothing at all."""
        files = self_signed(tmp_path / "unit", ["127.0.0.1"])
        other = self_signed(tmp_path / "other", ["127.0.0.1"])
        received: list[bytes | bytearray] = []
        done = trio.Event()

        async def record(stream: trio.SSLStream[trio.SocketStream]) -> None:
            try:
                while data := await stream.receive_some():
                    received.append(data)
            except trio.BrokenResourceError:
                pass
            finally:
                done.set()

        context = server_context(files.cert, files.key)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_ssl_over_tcp, record, 0, context, host="127.0.0.1")
            )
            port = listeners[0].transport_listener.socket.getsockname()[1]
            dialer = WebSocketDialer(f"wss://127.0.0.1:{port}/latis", fingerprint=other.fingerprint)
            with pytest.raises(ConnectError) as info:
                async with dialer.connect():
                    pass
            await done.wait()
            nursery.cancel_scope.cancel()
        assert str(info.value) == (
            f"wss://127.0.0.1:{port}/latis's TLS certificate does not match the pinned"
            f" {other.fingerprint} (it showed {files.fingerprint})"
        )
        assert received == []

    async def test_ca_file(self, ca: CertificateAuthority, tmp_path: Path) -> None:
        """wss:// verified against a CA file (host name included) connects."""
        async with listening(**self.tls(issue(ca, tmp_path / "unit", ["127.0.0.1"]))) as acceptor:
            dialer = WebSocketDialer(url(acceptor, "wss"), ca=str(ca.cert_file))
            await self.say_hello(dialer, acceptor)

    async def test_wrong_ca_is_refused(self, ca: CertificateAuthority, tmp_path: Path) -> None:
        """A server certificate another CA issued: ConnectError from the TLS check."""
        stranger = CertificateAuthority.load_or_create(tmp_path / "stranger")
        async with listening(**self.tls(issue(ca, tmp_path / "unit", ["127.0.0.1"]))) as acceptor:
            dialer = WebSocketDialer(url(acceptor, "wss"), ca=str(stranger.cert_file))
            with pytest.raises(ConnectError) as info:
                async with dialer.connect():
                    pass
            assert str(info.value) == (
                f"TLS with {url(acceptor, 'wss')} failed: self-signed certificate in"
                " certificate chain"
            )
            trusting = WebSocketDialer(url(acceptor, "wss"), ca=str(ca.cert_file))
            await self.say_hello(trusting, acceptor)

    async def test_client_certificate(self, ca: CertificateAuthority, tmp_path: Path) -> None:
        """With client_ca, a client that shows a certificate of that CA connects."""
        server = issue(ca, tmp_path / "unit", ["127.0.0.1"])
        cert, key = issue(ca, tmp_path / "client", ["client"], client=True)
        async with listening(**self.tls(server, client_ca=str(ca.cert_file))) as acceptor:
            dialer = WebSocketDialer(url(acceptor, "wss"), ca=str(ca.cert_file), cert=cert, key=key)
            await self.say_hello(dialer, acceptor)

    async def test_missing_client_certificate(
        self, ca: CertificateAuthority, tmp_path: Path
    ) -> None:
        """With client_ca, a client without a certificate is refused, and told why."""
        server = issue(ca, tmp_path / "unit", ["127.0.0.1"])
        async with listening(**self.tls(server, client_ca=str(ca.cert_file))) as acceptor:
            dialer = WebSocketDialer(url(acceptor, "wss"), ca=str(ca.cert_file))
            with pytest.raises(ConnectError, match="wants a client certificate"):
                async with dialer.connect():
                    pass
            cert, key = issue(ca, tmp_path / "client", ["client"], client=True)
            trusted = WebSocketDialer(
                url(acceptor, "wss"), ca=str(ca.cert_file), cert=cert, key=key
            )
            await self.say_hello(trusted, acceptor)

    def test_tls_listener_needs_cert_and_key(self) -> None:
        """tls without cert or key is a ValueError naming what is missing."""
        with pytest.raises(ValueError, match="needs cert and key"):
            WebSocketListener(tls=True).listen()
        with pytest.raises(ValueError, match="needs key"):
            WebSocketListener(tls=True, cert="c.pem").listen()


class TestProtocol:
    async def test_a_latis_conversation(self) -> None:
        """Handshake, session, streamed prompt, cancel mid-stream and state, over ws://."""
        async with latis_core.open_unit(EchoAgent(delay=0.01)) as unit, listening() as acceptor:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, unit.serve, [acceptor])
                dialer = WebSocketDialer(url(acceptor))
                async with dialer.connect() as stream, latis_core.connect(stream) as client:
                    await conversation(client)
                    assert await client.ping() > 0
                nursery.cancel_scope.cancel()


class TestConfig:
    def test_dialer_from_url(self) -> None:
        """fingerprint and ca are taken out of the query; the rest of the URL stays."""
        pin = "sha256:" + "ab" * 32
        dialer = WebSocketDialer.from_url(
            f"wss://box.example:8443/units/latis?fingerprint={pin}&ca=/etc/ca.pem&team=a"
        )
        assert dialer == WebSocketDialer(
            "wss://box.example:8443/units/latis?team=a", ca="/etc/ca.pem", fingerprint=pin
        )
        assert dialer.describe() == "websocket: wss://box.example:8443/units/latis?team=a"
        assert WebSocketDialer.from_url("ws://h:1/p").url == "ws://h:1/p"

    def test_dialer_checks_its_options(self) -> None:
        """A non-websocket URL, a bad pin, or TLS options on ws:// are ValueErrors."""
        with pytest.raises(ValueError, match="not a websocket address"):
            WebSocketDialer("http://h/latis")
        with pytest.raises(ValueError, match="not a certificate fingerprint"):
            WebSocketDialer("wss://h/latis", fingerprint="sha256:nope")
        with pytest.raises(ValueError, match="fingerprint apply to wss:// only"):
            WebSocketDialer("ws://h/latis", fingerprint="sha256:" + "ab" * 32)

    def test_listener_from_url(self) -> None:
        """ws:// and wss:// addresses; port 7448 and path /latis when left out."""
        assert WebSocketListener.from_url("ws://0.0.0.0:9000/x") == WebSocketListener(
            "0.0.0.0", 9000, "/x"
        )
        listener = WebSocketListener.from_url("wss://[::]")
        assert listener == WebSocketListener("::", 7448, "/latis", tls=True)
        assert listener.describe() == "websocket: wss://[::]:7448/latis"
        with pytest.raises(ValueError, match="not a websocket address"):
            WebSocketListener.from_url("tcp://h:1")

    def test_registry_names(self) -> None:
        """The module offers DIALER and LISTENER, shaped as latis wants them."""
        assert websocket.DIALER is WebSocketDialer
        assert websocket.LISTENER is WebSocketListener
        assert isinstance(WebSocketDialer("ws://h/latis"), latis_core.Dialer)
        assert isinstance(WebSocketListener(), latis_core.Listener)
