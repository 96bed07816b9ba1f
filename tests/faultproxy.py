"""Proxies a test controls, to inject network faults between two real endpoints.

`FaultProxy` relays TCP or unix-socket connections to a target and can, at the
test's word:

- `cut()`: reset every connection it carries (RST on TCP: SO_LINGER 0), and
  refuse new ones until `restore()`;
- `stall()`: stop passing bytes on the connections it carries (they stay open,
  silent both ways) until `release()`; `stall(mid_frame="down")` first lets
  through half of the next latis frame going that way (plain framing only:
  tcp and unix, not TLS, websocket or ssh);
- `half_open(side)`: reset one side's connection and leave the other open and
  silent (what a peer sees when the machine on the far side vanished, or a
  NAT forgot the flow);
- `delay(seconds)`: hold every piece of data that long before passing it on.

"down" is from the target to whoever connected (the listener side to the
dialing side), "up" the other way.

`UdpRelay` does the same for datagrams (QUIC): `cut()` drops everything both
ways until `restore()`.

This module imports nothing from the tests or from latis, so benchmarks load
it by path.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["FaultProxy", "UdpRelay", "tcp_target", "unix_target"]

#: Bytes read at once from either side.
READ_SIZE = 65536

Target = Callable[[], Awaitable[trio.abc.Stream]]


def tcp_target(host: str, port: int) -> Target:
    """Connect to `host:port` (TCP)."""

    async def connect() -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    return connect


def unix_target(path: str) -> Target:
    """Connect to the unix socket at `path`."""

    async def connect() -> trio.abc.Stream:
        return await trio.open_unix_socket(path)

    return connect


def _reset(stream: trio.abc.Stream) -> None:
    """Close `stream` at once; on TCP with a RST (no FIN, no goodbye)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class _Frames:
    """Where latis frames (4-byte length, payload) start in a byte stream."""

    def __init__(self) -> None:
        self.header = b""
        self.left = 0  # payload bytes of the current frame still to come

    def feed(self, data: bytes, *, split: bool = False) -> int | None:
        """Follow `data` through the frames. With `split`, stop half-way through the
        payload of the first frame (of two or more payload bytes) whose header
        ends in `data`, and return how many bytes of `data` come before that
        point (the rest is this frame's, as if fed next); None if there is none."""
        at = 0
        while at < len(data):
            if self.left:
                step = min(self.left, len(data) - at)
                self.left -= step
                at += step
                continue
            need = 4 - len(self.header)
            self.header += data[at : at + need]
            at += min(need, len(data) - at)
            if len(self.header) < 4:
                return None
            (size,) = struct.unpack(">I", self.header)
            self.header = b""
            if split and size >= 2:
                self.left = size - size // 2  # what is held back
                return at + size // 2
            self.left = size
        return None


class _Pipe:
    """One direction of one relayed connection."""

    def __init__(self, proxy: FaultProxy, direction: str) -> None:
        self.proxy = proxy
        self.direction = direction
        self.frames = _Frames()
        self.open = trio.Event()
        self.open.set()
        self.mid_frame = False  # stall half-way through the next frame
        self.held = b""
        self.stalled_mid_frame = trio.Event()

    def stall(self, mid_frame: bool) -> None:
        if mid_frame:
            self.mid_frame = True
        else:
            self.open = trio.Event()

    def release(self) -> None:
        self.mid_frame = False
        self.open.set()

    async def run(self, source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
        while True:
            if self.held:
                data, self.held = self.held, b""
            else:
                data = await source.receive_some(READ_SIZE)
                if not data:
                    if isinstance(sink, trio.abc.HalfCloseableStream):
                        await sink.send_eof()
                    return
            if self.mid_frame:
                split = self.frames.feed(data, split=True)
                if split is not None:
                    await sink.send_all(data[:split])
                    self.held = data[split:]
                    self.mid_frame = False
                    self.open = trio.Event()
                    self.proxy.passed[self.direction] += split
                    self.stalled_mid_frame.set()
                    await self.open.wait()
                    continue
                await sink.send_all(data)
                self.proxy.passed[self.direction] += len(data)
                continue
            await self.open.wait()
            if self.proxy._delay:
                await trio.sleep(self.proxy._delay)
            self.frames.feed(data)
            await sink.send_all(data)
            self.proxy.passed[self.direction] += len(data)


class _Relayed:
    """One connection through the proxy: the client's side and the target's."""

    def __init__(self, proxy: FaultProxy, client: trio.abc.Stream, server: trio.abc.Stream):
        self.client = client
        self.server = server
        self.up = _Pipe(proxy, "up")
        self.down = _Pipe(proxy, "down")
        self.scope = trio.CancelScope()
        self.dead: set[str] = set()

    def pipe(self, direction: str) -> _Pipe:
        return self.up if direction == "up" else self.down


class FaultProxy:
    """A relay of connections to `target` that a test can cut, stall, half-open, delay.

    Run it with `await nursery.start(proxy.serve)`; it listens on 127.0.0.1
    (`port`) or, given `path`, on a unix socket there.
    """

    def __init__(self, target: Target, *, path: str | None = None) -> None:
        self.target = target
        self.path = path
        self.port: int | None = None
        self.relayed: list[_Relayed] = []
        #: Connections accepted and passed on (not those refused while cut).
        self.connections = 0
        #: Bytes passed each way.
        self.passed = {"up": 0, "down": 0}
        self._refusing = False
        self._delay = 0.0
        self._stall_new = False
        self._changed = trio.Event()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and relay connections until cancelled."""
        if self.path is not None:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(self.path)
            sock.listen(128)
            listener: trio.abc.Listener[Any] = trio.SocketListener(sock)
        else:
            [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listener.socket.getsockname()[1]  # type: ignore[attr-defined]
        async with listener, trio.open_nursery() as nursery:
            task_status.started(self)
            while True:
                client = await listener.accept()
                if self._refusing:
                    _reset(client)
                    continue
                nursery.start_soon(self._relay, client)

    @property
    def address(self) -> str:
        """Where to connect: `127.0.0.1:PORT` or the unix socket's path."""
        return self.path if self.path is not None else f"127.0.0.1:{self.port}"

    async def _relay(self, client: trio.abc.Stream) -> None:
        try:
            server = await self.target()
        except OSError:
            _reset(client)
            return
        relayed = _Relayed(self, client, server)
        if self._stall_new:
            relayed.up.stall(False)
            relayed.down.stall(False)
        self.relayed.append(relayed)
        self.connections += 1
        self._wake()
        try:
            with relayed.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pass, relayed.up, client, server)
                    nursery.start_soon(self._pass, relayed.down, server, client)
        finally:
            if relayed in self.relayed:
                self.relayed.remove(relayed)
            for side, stream in (("client", client), ("server", server)):
                if side not in relayed.dead:
                    await trio.aclose_forcefully(stream)
            self._wake()

    async def _pass(self, pipe: _Pipe, source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
        try:
            await pipe.run(source, sink)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        # One way ended: wait for the other (a half-close), unless cut.

    def _wake(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_connections(self, count: int) -> None:
        """Wait until `count` connections in all have been passed on."""
        while self.connections < count:
            await self._changed.wait()

    # ---- faults ---------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every connection now; refuse (reset) new ones until `restore()`."""
        self._refusing = True
        for relayed in list(self.relayed):
            _reset(relayed.client)
            _reset(relayed.server)
            relayed.dead.update(("client", "server"))
            relayed.scope.cancel()

    def restore(self) -> None:
        """Pass new connections again (and end any stall or delay)."""
        self._refusing = False
        self._delay = 0.0
        self.release()

    def stall(self, mid_frame: str | None = None, *, new: bool = False) -> None:
        """Stop passing bytes on the connections open now, until `release()`.

        Args:
            mid_frame: "down" or "up": that way, first let through the header and
                half the payload of the next frame, then stop (plain framing only).
            new: stall new connections too (they connect, and hear nothing).
        """
        self._stall_new = new
        for relayed in self.relayed:
            relayed.up.stall(mid_frame == "up")
            relayed.down.stall(mid_frame == "down")
            if mid_frame:
                # The other way stops at once.
                relayed.pipe("up" if mid_frame == "down" else "down").stall(False)

    async def wait_mid_frame(self, direction: str = "down") -> None:
        """Wait until a `stall(mid_frame=...)` has stopped half-way through a frame."""
        while not any(r.pipe(direction).stalled_mid_frame.is_set() for r in self.relayed):
            await trio.sleep(0.005)

    def release(self) -> None:
        """Let stalled connections go on (and new ones pass)."""
        self._stall_new = False
        for relayed in self.relayed:
            relayed.up.release()
            relayed.down.release()

    def half_open(self, side: str = "client") -> None:
        """Reset `side`'s ("client" or "server") connection of every relayed
        connection; the other side stays open and hears nothing more."""
        for relayed in list(self.relayed):
            relayed.up.stall(False)
            relayed.down.stall(False)
            _reset(relayed.client if side == "client" else relayed.server)
            relayed.dead.add(side)
            self.relayed.remove(relayed)  # no longer ours to cut or release

    def delay(self, seconds: float) -> None:
        """Hold each piece of data `seconds` before passing it on (0: none)."""
        self._delay = seconds


class UdpRelay:
    """A relay of datagrams to `127.0.0.1:target_port` (for QUIC) that a test can cut.

    Each client address gets its own socket toward the target, as a NAT would.
    Run it with `await nursery.start(relay.serve)`; it listens on 127.0.0.1 (`port`).
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port: int | None = None
        self.dropping = False
        #: Datagrams passed each way.
        self.passed = {"up": 0, "down": 0}
        self._upstream: dict[Any, trio.socket.SocketType] = {}

    @property
    def connections(self) -> int:
        """Client addresses seen (a QUIC client that dials again has a new one)."""
        return len(self._upstream)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Relay datagrams until cancelled."""
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        with sock:
            async with trio.open_nursery() as nursery:
                task_status.started(self)
                try:
                    while True:
                        data, client = await sock.recvfrom(65536)
                        upstream = self._upstream.get(client)
                        if upstream is None:
                            upstream = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            await upstream.bind(("127.0.0.1", 0))
                            self._upstream[client] = upstream
                            nursery.start_soon(self._back, sock, upstream, client)
                        if not self.dropping:
                            self.passed["up"] += 1
                            await upstream.sendto(data, self.target)
                finally:
                    for upstream in self._upstream.values():
                        upstream.close()

    async def _back(
        self, sock: trio.socket.SocketType, upstream: trio.socket.SocketType, client: Any
    ) -> None:
        while True:
            try:
                data = await upstream.recv(65536)
            except OSError:
                return
            if not self.dropping:
                self.passed["down"] += 1
                await sock.sendto(data, client)

    def cut(self) -> None:
        """Drop every datagram both ways until `restore()`."""
        self.dropping = True

    def restore(self) -> None:
        """Pass datagrams again."""
        self.dropping = False
