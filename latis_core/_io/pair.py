"""Two connected byte streams in one process, for units served in process and for tests."""

from __future__ import annotations

import socket

import trio

__all__ = ["socket_stream_pair"]


def socket_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Return two connected streams over a kernel socket pair.

    Unlike `trio.testing.memory_stream_pair`, the buffers are the kernel's
    (bounded), and the peer takes its fast path on the raw sockets.
    """
    a, b = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), trio.SocketStream(
        trio.socket.from_stdlib_socket(b)
    )
