"""The QUIC transport's constants: what both ends agree on (ALPN, port, stream,
error codes), and the sizes of the flow-control window and the send buffer."""

from __future__ import annotations

from aioquic.quic.packet import QuicErrorCode

#: The ALPN protocol both sides require.
ALPN = "latis/1"
#: The UDP port dialers and listeners use unless told otherwise.
DEFAULT_PORT = 7447
#: Bytes the peer may send beyond what our application has read (per stream).
WINDOW = 1024 * 1024
#: Bytes `send_all` leaves inside aioquic that it has not sent yet.
SEND_BUFFER = 256 * 1024
#: What `receive_some()` returns at most without `max_bytes`.
READ_SIZE = 64 * 1024
#: The byte that opens the dialer's stream; the listener drops it.
OPEN = b"\x00"
#: The one stream of a connection: the client's first bidirectional stream.
STREAM_ID = 0
#: Application error code of an abrupt close (stream reset, connection close).
ABORTED = 0x1
#: A TLS `bad_certificate` alert as a QUIC error (RFC 9001 section 4.8).
BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + 42
