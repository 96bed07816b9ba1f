"""The `quic` transport: latis over QUIC, aioquic's sans-IO connection driven by trio.

One latis connection is one QUIC connection carrying one bidirectional
stream (the client's first, id 0), with ALPN `latis/1` over TLS 1.3.

- The dialer checks the server by a pin (`fingerprint`: the server's own
  certificate, or the CA that issued it for cmdr; see
  `latis_core._os.tls.check_pin`) or against a CA file (`ca`, host name
  included). With a pin aioquic verifies nothing: the pin is checked on the
  chain the server sent as soon as the handshake completes, before a byte of
  ours goes out.
- The listener serves any number of clients on one UDP socket and routes
  each datagram by its destination connection id. `accept()` gets a stream
  once its handshake completed and the client opened its stream. With
  `client_ca` clients must show a certificate that CA issued for client use
  (mTLS); `max_pending` bounds the connections not accepted yet.

QUIC opens a stream only by sending on it, and either side may speak first
(a unit that dials cmdr waits for cmdr's `hello`), so the dialer opens its
stream with one byte, `OPEN`, which the listener drops.

Flow control is end to end, as with TCP. aioquic grants the peer more
credit as soon as bytes arrive; here credit follows what the application
has read (`WINDOW` ahead of it), so a reader that stops reading stops the
sender. `send_all` leaves at most `SEND_BUFFER` bytes inside aioquic that
it has not sent yet, and waits for the rest.

A silent peer ends the connection after the idle timeout; a live but quiet
one is kept by a PING every third of it. `aclose()` sends FIN, waits until
the peer acknowledged everything, then closes the connection; cancelled (or
via `trio.aclose_forcefully`) it resets the stream instead.

aioquic has no public API for some of this; everything we use of its
internals is in `_Quic` and the `_aioquic_*` helpers (`internals`).

The modules, one concern each:

- `constants`: the ALPN, the default port, the stream id, error codes, and
  the window and buffer sizes.
- `internals`: aioquic's connection with our flow control and client
  certificates, and the helpers that read aioquic's private state.
- `stream`: `QuicStream`, the trio stream of one connection.
- `connection`: `_Connection`, which drives aioquic for one connection,
  and its client and server sides.
- `udp`: UDP sockets and how many datagrams are read at a time.
- `options`: what the dialer and listener share: option validators, URL
  parsing, how an address is written.
- `dialer`: `QuicDialer` and `open_quic`.
- `endpoint`: `_Server`, the listener's UDP socket, which routes datagrams
  to connections by connection id.
- `listener`: `QuicListener` and `QuicStreamListener`.
"""

from __future__ import annotations

from .constants import ABORTED as ABORTED
from .constants import ALPN as ALPN
from .constants import BAD_CERTIFICATE as BAD_CERTIFICATE
from .constants import DEFAULT_PORT as DEFAULT_PORT
from .constants import OPEN as OPEN
from .constants import READ_SIZE as READ_SIZE
from .constants import SEND_BUFFER as SEND_BUFFER
from .constants import STREAM_ID as STREAM_ID
from .constants import WINDOW as WINDOW
from .dialer import QuicDialer as QuicDialer
from .dialer import open_quic as open_quic
from .listener import QuicListener as QuicListener
from .listener import QuicStreamListener as QuicStreamListener
from .stream import QuicStream as QuicStream
from .stream import QuicStreamStatistics as QuicStreamStatistics

__all__ = [
    "ALPN",
    "DEFAULT_PORT",
    "QuicDialer",
    "QuicListener",
    "QuicStream",
    "QuicStreamListener",
    "QuicStreamStatistics",
    "open_quic",
]


#: This module's dialer, for the `latis.transports` registry.
DIALER = QuicDialer
#: This module's listener, for the `latis.transports` registry.
LISTENER = QuicListener
