"""The QUIC transport's UDP sockets: how one is made, and how many datagrams
are read from it at a time."""

from __future__ import annotations

import socket

#: Datagrams read from a socket before the replies go out.
_BATCH = 64
_MAX_DATAGRAM = 65536
_SOCKET_BUFFER = 4 * 1024 * 1024


def _udp_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        except OSError:
            pass  # over the system's limit: the default works too
    return sock
