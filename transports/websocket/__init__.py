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

The modules, one concern each:

- `stream`: `WebSocketStream`, the byte stream over one connection.
- `reader`: `_ReaderTask`, which runs trio-websocket's reader task so that
  a hang-up during the handshake ends the wait for it.
- `dialer`: `WebSocketDialer`: TCP, TLS and the server check, the upgrade.
- `acceptor`: `WebSocketAcceptor`, the accepting side of a listener: each
  connection's handshake, and the bounded queue `accept()` reads.
- `listener`: `WebSocketListener`, its options, and serving its sockets.
- `options`: what the dialer and listener share (the default path, a validator).
"""

from __future__ import annotations

from .acceptor import HANDSHAKE_TIMEOUT as HANDSHAKE_TIMEOUT
from .acceptor import WebSocketAcceptor as WebSocketAcceptor
from .dialer import WebSocketDialer as WebSocketDialer
from .listener import DEFAULT_PORT as DEFAULT_PORT
from .listener import WebSocketListener as WebSocketListener
from .options import DEFAULT_PATH as DEFAULT_PATH
from .reader import RECEIVE_SIZE as RECEIVE_SIZE
from .stream import CLEAN_CLOSE as CLEAN_CLOSE
from .stream import CLOSE_TIMEOUT as CLOSE_TIMEOUT
from .stream import WebSocketStream as WebSocketStream

__all__ = [
    "WebSocketAcceptor",
    "WebSocketDialer",
    "WebSocketListener",
    "WebSocketStream",
]


#: This module's dialer and listener, for the `latis.transports` registry.
DIALER = WebSocketDialer
LISTENER = WebSocketListener
