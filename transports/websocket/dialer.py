"""`WebSocketDialer`: the websocket transport's dialer. It opens TCP, and TLS for
`wss://` (the server checked before anything is sent), then the websocket
handshake, and says why it failed when it does."""

from __future__ import annotations

import http
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import trio

from latis_core._errors import ConnectError
from latis_core._util import unwrap_group
from latis_core._wire.frames import DEFAULT_MAX_FRAME, HEADER_SIZE

from .. import checks
from .options import DEFAULT_PATH, _positive
from .reader import RECEIVE_SIZE, _ReaderTask
from .stream import WebSocketStream, _peer_address

if TYPE_CHECKING:
    from trio_websocket import ConnectionRejected, WebSocketConnection


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
    connect_timeout: float = attrs.field(default=10.0, validator=checks.seconds)

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
