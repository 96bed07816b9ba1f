"""The `websocket` transport: the latis byte stream in WebSocket binary messages.

For units and controllers that can only reach each other over HTTP(S) (a
reverse proxy, a firewall that lets `443` through). The stream is a byte
stream: `send_all` sends its bytes as one binary message (several if they
are over the limit below), and `receive_some` returns the bytes of the
messages received, a message over `max_bytes` in several pieces. Message
boundaries carry no meaning.

Limits follow the protocol's frame limit: a message may hold a whole frame
with its header, `max_frame + 4` bytes. A bigger message from the peer
closes the connection (WebSocket close code 1009); `send_all` splits what it
sends into messages of at most that size, so both ends must use the same
`max_frame` (or the receiver a larger one).

The dialer (`ws://` or `wss://`) opens TCP and, for `wss://`, TLS itself,
checks the server (a `fingerprint` pin, else `ca` or the system's CAs, host
name included), and only then starts the websocket handshake: nothing is
sent to a server that fails the check. The listener serves one path;
a request for another path is answered 404. Nothing queues without bound:
connections whose websocket handshake is done wait for `accept()` in a
queue of at most `max_pending` (beyond it new ones are answered 503), and
at most `max_pending` connections may be in their handshake at once (more
are closed at once; each gets `HANDSHAKE_TIMEOUT` seconds).

Streams have `peer_address`, the other end's (host, port). A clean close by
the peer (close codes 1000, 1001, 1005) reads as end of stream (b""); any
other end raises `trio.BrokenResourceError`. `aclose` runs the closing
handshake (at most `CLOSE_TIMEOUT` seconds), then closes the connection.
Streams accepted by a listener live as long as the listener.

Built on trio-websocket (the `websocket` extra), imported on the first
`connect()` or `listen()`: it costs ~25 ms to import (wsproto and h11), too
much for a command line that only reads the config.
"""

from __future__ import annotations

import http
import logging
import operator
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import trio
from trio.lowlevel import checkpoint

from latis_core._errors import ConnectError
from latis_core._wire.frames import DEFAULT_MAX_FRAME, HEADER_SIZE
from latis_core._util import unwrap_group

if TYPE_CHECKING:
    from trio_websocket import (
        CloseReason,
        ConnectionRejected,
        WebSocketConnection,
        WebSocketRequest,
    )

__all__ = [
    "WebSocketAcceptor",
    "WebSocketDialer",
    "WebSocketListener",
    "WebSocketStream",
]

log = logging.getLogger("latis.transport.websocket")

#: The port a websocket listener listens on unless told otherwise.
DEFAULT_PORT = 7448
#: The path a websocket listener serves unless told otherwise (and the path a
#: dialer asks for when its URL has none).
DEFAULT_PATH = "/latis"
#: Seconds a client of a listener gets from TCP connect to its upgrade request.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds the closing handshake may take before the connection is cut.
CLOSE_TIMEOUT = 5.0
#: Bytes read from the socket at a time: trio-websocket's default (4 KiB)
#: takes thousands of reads for one big message.
RECEIVE_SIZE = 64 * 1024
#: Close codes that end the stream cleanly: normal, going away, no status.
CLEAN_CLOSE = frozenset({1000, 1001, 1005})


def _reason(reason: CloseReason | None) -> str:
    if reason is None:
        return "the connection ended"
    text = f"close code {reason.code} ({reason.name})"
    return f"{text}: {reason.reason}" if reason.reason else text


def _peer_address(stream: trio.abc.Stream) -> tuple[str, int]:
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    try:
        name = inner.socket.getpeername()
    except (AttributeError, OSError):
        return ("", 0)
    return (str(name[0]), int(name[1]))


class WebSocketStream(trio.abc.Stream):
    """A byte stream over one WebSocket connection, in binary messages.

    Attributes:
        peer_address: the other end's (host, port).
        connection: the trio-websocket connection underneath.
    """

    def __init__(
        self,
        connection: WebSocketConnection,
        transport: trio.abc.Stream,
        peer_address: tuple[str, int],
        max_message: int,
    ) -> None:
        from trio_websocket import ConnectionClosed

        self.connection = connection
        self.peer_address = peer_address
        # Imported once here, not on every send and receive.
        self._connection_closed = ConnectionClosed
        self._transport = transport
        self._max_message = max_message
        # The message being read, and how much of it receive_some has returned.
        self._message = b""
        self._offset = 0
        self._eof = False
        self._broken: str | None = None
        self._closed = False
        self._sending = False
        self._receiving = False
        #: Set once `aclose` has closed the connection.
        self.closed = trio.Event()

    def __repr__(self) -> str:
        host, port = self.peer_address
        return f"<WebSocketStream peer={host}:{port}>"

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send `data` as one binary message, or several if it is over the limit."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            if self._closed:
                await checkpoint()
                raise trio.ClosedResourceError("this stream was closed")
            if self._broken is not None:
                await checkpoint()
                raise trio.BrokenResourceError(self._broken)
            if not data:
                # An empty message would say nothing: send nothing.
                await checkpoint()
                return
            send = self.connection.send_message
            limit = self._max_message
            try:
                if len(data) <= limit:
                    await send(bytes(data))  # no copy for bytes
                else:
                    view = memoryview(data).cast("B")
                    for start in range(0, len(view), limit):
                        await send(bytes(view[start : start + limit]))
            except self._connection_closed as exc:
                if self._closed:
                    raise trio.ClosedResourceError("this stream was closed") from None
                raise trio.BrokenResourceError(
                    f"the websocket connection is closed: {_reason(exc.reason)}"
                ) from exc
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        await checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return the next bytes received (at most `max_bytes`); b"" at end of stream."""
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            if self._closed:
                await checkpoint()
                raise trio.ClosedResourceError("this stream was closed")
            if self._offset < len(self._message):
                await checkpoint()
            elif not await self._next_message():
                return b""
            message, start = self._message, self._offset
            if start == 0 and (max_bytes is None or max_bytes >= len(message)):
                self._message = b""
                return message  # the whole message: no copy
            end = len(message) if max_bytes is None else min(start + max_bytes, len(message))
            if end == len(message):
                self._message, self._offset = b"", 0
            else:
                self._offset = end
            return message[start:end]
        finally:
            self._receiving = False

    async def _next_message(self) -> bool:
        """Wait for a non-empty message and keep it in `_message`; False at end of stream."""
        if self._broken is not None:
            await checkpoint()
            raise trio.BrokenResourceError(self._broken)
        if self._eof:
            await checkpoint()
            return False
        while True:
            try:
                message = await self.connection.get_message()
            except self._connection_closed as exc:
                # A closed channel raises without yielding: yield here, as
                # every receive_some must.
                await trio.lowlevel.cancel_shielded_checkpoint()
                if self._closed:
                    raise trio.ClosedResourceError("this stream was closed") from None
                reason = exc.reason
                if reason is not None and reason.code in CLEAN_CLOSE:
                    self._eof = True
                    return False
                self._broken = f"the websocket connection broke: {_reason(reason)}"
                raise trio.BrokenResourceError(self._broken) from exc
            if isinstance(message, str):
                # Text has no place in this byte stream: the peer speaks
                # something else. Say so, and give up on the connection.
                self._broken = "the peer sent a text message: not a latis websocket"
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self.connection.aclose(1003, "latis sends binary messages only")
                raise trio.BrokenResourceError(self._broken)
            if message:
                self._message, self._offset = message, 0
                return True

    async def aclose(self) -> None:
        """Close the connection: the closing handshake, then the socket.

        Waits at most `CLOSE_TIMEOUT` seconds for the peer; a cancelled
        `aclose` still closes the socket.
        """
        if self._closed:
            await checkpoint()
            return
        self._closed = True
        self._message, self._offset = b"", 0
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.connection.aclose()
        finally:
            # trio-websocket leaves the socket open when the peer closed first.
            await trio.aclose_forcefully(self._transport)
            self.closed.set()


class _ReaderTask:
    """Stands in for the nursery that trio-websocket's `wrap_*_stream` start
    their reader task in (they only call `start_soon`).

    trio-websocket waits for the opening handshake even when its reader task
    has ended because the peer hung up (its own `open_websocket` relies on a
    timeout for that), and the reader raises `ConnectionRejected` into its
    nursery. This runs the reader in `nursery`, keeps what it raised in
    `error`, and when it ends cancels the scopes handed out by `cancel_on_end`.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._scopes: list[trio.CancelScope] = []
        self.ended = False
        self.error: Exception | None = None

    def start_soon(
        self, async_fn: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> None:
        self._nursery.start_soon(self._run, async_fn, *args, name=name)

    async def _run(self, async_fn: Callable[..., Awaitable[object]], *args: object) -> None:
        from trio_websocket import ConnectionRejected

        try:
            await async_fn(*args)
        except Exception as exc:
            # The connection is over either way: the caller sees it end.
            if not isinstance(exc, ConnectionRejected):
                log.warning("a websocket reader task failed", exc_info=True)
            self.error = exc
        finally:
            self.ended = True
            for scope in self._scopes:
                scope.cancel()
            self._scopes.clear()

    def cancel_on_end(self) -> trio.CancelScope:
        """A cancel scope that is cancelled when the reader task ends."""
        scope = trio.CancelScope()
        if self.ended:
            scope.cancel()
        else:
            self._scopes.append(scope)
        return scope

    @property
    def nursery(self) -> trio.Nursery:
        """This object, typed as what trio-websocket asks for."""
        return cast(trio.Nursery, self)


class _Watched(trio.abc.Stream):
    """A stream that keeps the error its last receive failed with.

    trio-websocket's reader swallows it; the dialer uses it to say why a
    server hung up during the handshake (say, a TLS alert for a client
    certificate it did not want).
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.error: BaseException | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self.stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            self.error = exc.__cause__ or exc
            raise

    async def aclose(self) -> None:
        await self.stream.aclose()


def _why(exc: BaseException | None) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) if exc is not None else ""


def _rejection(exc: ConnectionRejected) -> str:
    try:
        phrase = http.HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = ""
    text = f"the server refused the websocket: HTTP {exc.status_code} {phrase}".rstrip()
    body = (exc.body or b"").decode("utf-8", "replace").strip()
    if body and len(body) <= 200 and body.isprintable():
        text += f" ({body})"
    return text


@attrs.frozen
class _Target:
    """Where a `ws://` or `wss://` URL points."""

    tls: bool
    host: str
    port: int
    resource: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"{url!r} is not a websocket address (expected ws:// or wss://)")
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host (expected ws://HOST:PORT/PATH)")
        tls = parts.scheme == "wss"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
        resource = parts.path or DEFAULT_PATH
        if parts.query:
            resource += "?" + parts.query
        return cls(tls, parts.hostname, port, resource)


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


def _check_url(instance: WebSocketDialer, attribute: attrs.Attribute[str], value: str) -> None:
    target = _Target.parse(value)
    tls_options = [
        name for name in ("ca", "fingerprint", "cert", "key") if getattr(instance, name) is not None
    ]
    if tls_options and not target.tls:
        raise ValueError(f"{value!r}: {', '.join(tls_options)} apply to wss:// only")


def _check_pin(
    instance: WebSocketDialer, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None:
        from latis_core._os.tls import normalize_pin

        normalize_pin(value)


@attrs.frozen
class WebSocketDialer:
    """Dial a unit (or cmdr) over a websocket, `ws://` or `wss://`.

    Attributes:
        url: `ws://HOST[:PORT][/PATH]` or `wss://…` (port 80 or 443 when left
            out; path `/latis` when left out).
        ca: for `wss://`: a PEM file of the CA to verify the server against
            (host name checked); the system's CAs when neither this nor a pin.
        fingerprint: for `wss://`: a pin, `sha256:HEX`: the server's certificate
            or its issuer's (see `latis_core._os.tls`). Checked before anything is sent.
        cert: our certificate (PEM), for a server that asks for one (mTLS).
        key: its private key.
        max_frame: the protocol's frame limit: messages up to `max_frame + 4`
            bytes are accepted, and sent.
        connect_timeout: seconds to connect, finish TLS and the websocket handshake.
    """

    url: str = attrs.field(validator=_check_url)
    ca: str | None = None
    fingerprint: str | None = attrs.field(default=None, validator=_check_pin)
    cert: str | None = None
    key: str | None = None
    max_frame: int = attrs.field(default=DEFAULT_MAX_FRAME, validator=_positive)
    connect_timeout: float = 10.0

    @classmethod
    def from_url(cls, url: str) -> WebSocketDialer:
        """`ws://HOST:PORT/PATH` or `wss://…?fingerprint=sha256:…&ca=FILE`.

        `fingerprint` and `ca` are taken out of the query (not sent); the rest
        of it goes to the server.
        """
        parts = urlsplit(url)
        options: dict[str, str] = {}
        kept: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in ("fingerprint", "ca"):
                if key in options:
                    raise ValueError(f"{url!r}: option {key!r} is given twice")
                options[key] = value
            else:
                kept.append((key, value))
        return cls(
            urlunsplit(parts._replace(query=urlencode(kept))),
            ca=options.get("ca"),
            fingerprint=options.get("fingerprint"),
        )

    def connect(self) -> AbstractAsyncContextManager[WebSocketStream]:
        """Open the stream: TCP, TLS for `wss://` (the server checked), the upgrade.

        Leaving the block closes it (the closing handshake, then the socket).

        Raises:
            ConnectError: no connection, TLS failed or the server is not the one
                expected, the upgrade was refused (its HTTP status said), or no
                answer within `connect_timeout`.
        """
        return self._connect()

    def describe(self) -> str:
        """`websocket: URL`."""
        return f"websocket: {self.url}"

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[WebSocketStream]:
        target = _Target.parse(self.url)
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                stream: WebSocketStream | None = None
                with trio.move_on_after(self.connect_timeout):
                    stream = await self._open(target, _ReaderTask(nursery))
                if stream is None:
                    raise ConnectError(
                        f"cannot connect to {self.url}: no answer within {self.connect_timeout:g} s"
                    )
                try:
                    yield stream
                finally:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
                    nursery.cancel_scope.cancel()

    async def _open(self, target: _Target, reader: _ReaderTask) -> WebSocketStream:
        from trio_websocket import wrap_client_stream

        try:
            tcp = await trio.open_tcp_stream(target.host, target.port)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.url}: {exc.strerror or exc}") from exc
        transport: trio.abc.Stream = tcp
        try:
            if target.tls:
                from latis_core._os.tls import tls_connect

                # The handshake and the pin check happen here, before the
                # HTTP upgrade request says anything.
                transport = await tls_connect(
                    tcp,
                    server_hostname=target.host,
                    ca=self.ca,
                    pin=self.fingerprint,
                    cert=self.cert,
                    key=self.key,
                    what=self.url,
                )
            watched = _Watched(transport)
            connection: WebSocketConnection | None = None
            with reader.cancel_on_end():
                connection = await wrap_client_stream(
                    reader.nursery,
                    cast(trio.SocketStream, watched),
                    target.host_header,
                    target.resource,
                    max_message_size=self.max_frame + HEADER_SIZE,
                    receive_buffer_size=RECEIVE_SIZE,
                )
            if connection is None:
                why = self._failure(target, reader, watched)
                raise ConnectError(f"cannot connect to {self.url}: {why}")
        except BaseException:
            await trio.aclose_forcefully(transport)
            raise
        return WebSocketStream(
            connection, transport, _peer_address(tcp), self.max_frame + HEADER_SIZE
        )

    def _failure(self, target: _Target, reader: _ReaderTask, watched: _Watched) -> str:
        from trio_websocket import ConnectionRejected

        if isinstance(reader.error, ConnectionRejected):
            return _rejection(reader.error)
        why = _why(watched.error) or _why(reader.error)
        text = "the server closed the connection during the websocket handshake"
        if why:
            text += f" ({why})"
        if target.tls and self.cert is None:
            # With TLS 1.3 the server judges our certificate after our side
            # of the handshake is done: its refusal arrives here, as an alert
            # or (if the alert is lost to a reset) as a hang-up.
            text += "; a server that wants a client certificate does that when shown none"
        return text


class WebSocketAcceptor(trio.abc.Listener[WebSocketStream]):
    """The accepting side of a `WebSocketListener`: `accept()` returns the next
    connection whose websocket handshake is done.

    Attributes:
        port: the port bound (useful after listening on port 0).
        path: the path served.
        max_pending: the bound on connections waiting for `accept()`, and on
            those in their handshake.
    """

    def __init__(self, port: int, path: str, max_pending: int, max_message: int) -> None:
        self.port = port
        self.path = path
        self.max_pending = max_pending
        self._max_message = max_message
        self._pending = 0
        self._handshaking = 0
        self._closed = False
        self._send, self._receive = trio.open_memory_channel[WebSocketStream](max_pending)

    async def accept(self) -> WebSocketStream:
        """Wait for the next connection and return it.

        Raises:
            trio.ClosedResourceError: the listener was closed.
        """
        if self._closed:
            await checkpoint()
            raise trio.ClosedResourceError("this listener was closed")
        try:
            stream = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("this listener was closed") from None
        self._pending -= 1
        return stream

    async def aclose(self) -> None:
        """Stop handing out connections; close those still waiting."""
        if self._closed:
            await checkpoint()
            return
        self._closed = True
        self._send.close()
        waiting = []
        while True:
            try:
                waiting.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self._receive.close()
        async with trio.open_nursery() as nursery:
            for stream in waiting:
                nursery.start_soon(stream.aclose)  # each within CLOSE_TIMEOUT

    async def handle(self, transport: trio.abc.Stream) -> None:
        """Serve one TCP connection: its websocket handshake, then hand it to `accept`
        and wait until it is closed. Never raises: one client's trouble is its own."""
        from trio_websocket import ConnectionClosed

        peer = _peer_address(transport)
        try:
            if self._handshaking >= self.max_pending:
                log.warning(
                    "websocket client %s refused: %d connections are in their handshake",
                    peer,
                    self._handshaking,
                )
                return
            async with trio.open_nursery() as nursery:
                try:
                    await self._serve(transport, peer, _ReaderTask(nursery))
                except ConnectionClosed:
                    log.debug("websocket client %s left during the handshake", peer)
                nursery.cancel_scope.cancel()
        except Exception:
            log.warning("websocket connection from %s failed", peer, exc_info=True)
        finally:
            await trio.aclose_forcefully(transport)

    async def _serve(
        self, transport: trio.abc.Stream, peer: tuple[str, int], reader: _ReaderTask
    ) -> None:
        from trio_websocket import wrap_server_stream

        request: WebSocketRequest | None = None
        self._handshaking += 1
        try:
            with trio.move_on_after(HANDSHAKE_TIMEOUT), reader.cancel_on_end():
                request = await wrap_server_stream(
                    reader.nursery,
                    transport,
                    max_message_size=self._max_message,
                    receive_buffer_size=RECEIVE_SIZE,
                )
        finally:
            self._handshaking -= 1
        if request is None:
            log.debug("websocket client %s sent no upgrade request", peer)
            return
        stream = await self._admit(request, transport, peer)
        if stream is not None:
            # The reader task runs in this task's nursery: keep it for as
            # long as the stream is open, or the connection lasts.
            with reader.cancel_on_end():
                await stream.closed.wait()

    async def _admit(
        self, request: WebSocketRequest, transport: trio.abc.Stream, peer: tuple[str, int]
    ) -> WebSocketStream | None:
        path = urlsplit(request.path).path
        if path != self.path:
            log.info("websocket client %s asked for %s: not found", peer, path)
            await request.reject(404, body=b"no latis websocket at this path")
            return None
        if self._closed or self._pending >= self.max_pending:
            log.warning(
                "websocket client %s refused: %d connections already wait to be accepted",
                peer,
                self._pending,
            )
            await request.reject(503, body=b"too many connections wait to be accepted")
            return None
        self._pending += 1
        try:
            connection = await request.accept()
            stream = WebSocketStream(connection, transport, peer, self._max_message)
            # Never blocks: the channel holds max_pending, and at most that
            # many are counted in _pending.
            self._send.send_nowait(stream)
        except BaseException:
            self._pending -= 1
            raise
        return stream


@attrs.frozen
class WebSocketListener:
    """Accept units (or controllers) that dial in over websockets.

    Attributes:
        host: the address to listen on (`0.0.0.0` or `::` for all).
        port: the port (0: any free one; the accepting side's `port` says which).
        path: the path served; other paths are answered 404.
        tls: serve `wss://`: `cert` and `key` must then be given (whoever runs
            the listener fills them in when left out).
        cert: the certificate chain (PEM) to show.
        key: its private key.
        client_ca: ask clients for a certificate this CA issued (mTLS).
        max_frame: the protocol's frame limit: messages up to `max_frame + 4`
            bytes are accepted, and sent.
        max_pending: connections at most that wait for `accept()` once their
            websocket handshake is done (more are answered 503), and that
            are in their handshake at once (more are closed).
    """

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    path: str = DEFAULT_PATH
    tls: bool = False
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    max_frame: int = attrs.field(default=DEFAULT_MAX_FRAME, validator=_positive)
    max_pending: int = attrs.field(default=64, validator=_positive)

    @classmethod
    def from_url(cls, url: str) -> WebSocketListener:
        """`ws://HOST:PORT/PATH` or `wss://HOST:PORT/PATH` (port 7448, path
        `/latis` when left out)."""
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"{url!r} is not a websocket address (expected ws:// or wss://)")
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host (expected ws://HOST:PORT/PATH)")
        if parts.query:
            raise ValueError(f"{url!r}: a websocket listener takes no options in its address")
        try:
            port = parts.port if parts.port is not None else DEFAULT_PORT
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
        return cls(parts.hostname, port, parts.path or DEFAULT_PATH, tls=parts.scheme == "wss")

    def listen(self) -> AbstractAsyncContextManager[trio.abc.Listener[trio.abc.Stream]]:
        """Listen; the block's target is the accepting side (a `WebSocketAcceptor`).

        Raises:
            ValueError: `tls` without `cert` or `key` (or `client_ca` without `tls`).
            OSError: the address cannot be bound (in use, not ours).
        """
        if self.tls:
            missing = [name for name in ("cert", "key") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"a wss:// listener needs {' and '.join(missing)}")
        elif self.client_ca is not None:
            raise ValueError("client_ca needs tls: client certificates come with TLS")
        return self._listen()

    def describe(self) -> str:
        """`websocket: ws://HOST:PORT/PATH` (or `wss://`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"websocket: {'wss' if self.tls else 'ws'}://{host}:{self.port}{self.path}"

    @asynccontextmanager
    async def _listen(self) -> AsyncIterator[trio.abc.Listener[trio.abc.Stream]]:
        context: ssl.SSLContext | None = None
        if self.tls and self.cert is not None and self.key is not None:
            from latis_core._os.tls import server_context

            context = server_context(self.cert, self.key, client_ca=self.client_ca)
        try:
            sockets = await trio.open_tcp_listeners(self.port, host=self.host or None)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {self.describe()}: {exc.strerror or exc}"
            ) from exc
        listeners: list[trio.abc.Listener[Any]] = list(sockets)
        if context is not None:
            # The TLS handshake runs in each connection's own task, inside
            # its handshake timeout.
            listeners = [trio.SSLListener(s, context, https_compatible=True) for s in sockets]
        acceptor = WebSocketAcceptor(
            sockets[0].socket.getsockname()[1],
            self.path,
            self.max_pending,
            self.max_frame + HEADER_SIZE,
        )
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, acceptor.handle, listeners)
                try:
                    yield acceptor
                finally:
                    with trio.CancelScope(shield=True):
                        await acceptor.aclose()
                    nursery.cancel_scope.cancel()


#: This module's dialer and listener, for the `latis.transports` registry.
DIALER = WebSocketDialer
LISTENER = WebSocketListener
