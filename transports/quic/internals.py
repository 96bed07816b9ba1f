"""Everything the QUIC transport uses of aioquic's internals: `_Quic` (aioquic's
connection with our stream credit and client certificate requests) and the
`_aioquic_*` helpers that read its private state."""

from __future__ import annotations

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionState,
)
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream as _AioquicStream
from cryptography import x509

# ---- aioquic internals --------------------------------------------------------------
#
# aioquic's sans-IO API has no way to grant flow-control credit by what the
# application read, to ask a client for its certificate, to read the peer's
# certificates, or to see how much of a stream is unsent. These are the only
# places that reach inside it (written against aioquic 1.7; the tests cover each).


class _Quic(QuicConnection):
    """aioquic's connection with two changes.

    - Stream credit (MAX_STREAM_DATA) is `credit[stream_id]`, raised by our
      reader as the application reads, instead of doubling as data arrives
      (which lets a sender fill the receiver's memory without limit). Streams
      we do not read get no credit beyond the first window.
    - A server may ask the client for a certificate (mTLS).
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        original_destination_connection_id: bytes | None = None,
        request_client_certificate: bool = False,
    ) -> None:
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
        )
        self.credit: dict[int, int] = {}
        self._latis_request_certificate = request_client_certificate

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if self._latis_request_certificate:
            # aioquic marks this "for test purposes only"; it sends a
            # CertificateRequest and keeps what the client shows (checked by us).
            self.tls._request_client_certificate = True

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: _AioquicStream
    ) -> None:
        # aioquic's own version, less the doubling.
        limit = self.credit.get(stream.stream_id or 0)
        if limit is not None and limit > stream.max_stream_data_local:
            stream.max_stream_data_local = limit
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id or 0)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local


def _aioquic_peer_certificates(quic: QuicConnection) -> list[x509.Certificate]:
    """The certificates the peer showed, its own first (aioquic keeps them parsed)."""
    leaf = quic.tls._peer_certificate
    return [] if leaf is None else [leaf, *quic.tls._peer_certificate_chain]


def _aioquic_asked_for_certificate(quic: QuicConnection) -> bool:
    """Whether the server asked us (a client) for a certificate."""
    return getattr(quic.tls, "_certificate_request", True) is not None


def _aioquic_closing(quic: QuicConnection) -> ConnectionTerminated | None:
    """Why the connection is closing; aioquic reports it as an event only
    after the closing period (three PTOs), we want to know at once."""
    return quic._close_event


def _aioquic_closed_by_peer(quic: QuicConnection) -> bool:
    return quic._state is QuicConnectionState.DRAINING


def _aioquic_stream(quic: QuicConnection, stream_id: int) -> _AioquicStream:
    return quic._streams[stream_id]


def _aioquic_connection_window(quic: QuicConnection) -> int:
    """Bytes the peer's connection-wide flow control lets us send now."""
    return quic._remote_max_data - quic._remote_max_data_used
