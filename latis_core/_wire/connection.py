"""The connection state machine: one side of one connection, with no I/O.

Bytes in, events out; messages in, bytes out (in the style of h11)::

    conn.receive_data(data)          # b"" means the stream ended
    event = conn.next_event()        # a message, a Violation, NEED_DATA or CLOSED
    data = conn.send(message)        # the frame to write, or LocalProtocolError

Rules this module keeps (all of them live here):

1. The first message each way is `hello`. cmdr sends it (id 0); the unit
   answers with its own. Until then the unit sends nothing but `error`, and a
   request it receives gets `handshake_required`. A `protocol` other than ours
   is `version_mismatch`, two sides claiming one role `role_mismatch`: both fatal.
2. A request's id is unique among the sender's requests in flight. Every reply
   names a request in flight on the other side, is one of the replies that
   request may get (`REPLIES`), and the final one ends it.
3. Received bytes never raise: whatever the other side does wrong becomes a
   `Violation` saying which code to answer with, and whether the connection
   must close (only `frame_too_large`, `version_mismatch` and `role_mismatch`).
   An `error` is never answered with an `error`.
4. What we send is checked the same way; breaking a rule raises
   `LocalProtocolError`, which is a bug in the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

from latis_core._errors import (
    FATAL_CODES,
    ConnectionClosed,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
)
from latis_core._wire.codec import (
    chunk_of,
    decode,
    decode_chunks,
    decode_object,
    encode,
    encode_chunk,
    encode_text_chunk,
)
from latis_core._wire.frames import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame, pack_header
from latis_core._wire.messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Ack,
    Call,
    Error,
    Hello,
    InputReply,
    InputRequest,
    Message,
    Ping,
    Pong,
    PromptCancel,
    PromptSend,
    RequestId,
    ResponseCancelled,
    ResponseChunk,
    ResponseComplete,
    Role,
    SessionCreate,
    SessionDestroy,
    SessionResume,
    StateGet,
    StateSubscribe,
    StateUpdate,
)

__all__ = [
    "CLOSED", "HEARTBEAT", "HEARTBEAT_TIMEOUT", "NEED_DATA", "REPLIES", "Connection", "Violation",
]


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: `next_event` has nothing whole yet: feed more bytes.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: The stream ended (or the connection failed); nothing more will come.
CLOSED: Final = _Sentinel("CLOSED")


@attrs.frozen
class Violation:
    """The other side broke the protocol.

    Attributes:
        code: the error code that answers it.
        message: what was wrong, for a human.
        id: the request it concerns, when one could be read.
        fatal: the connection must be closed once `reply` is sent.
        reply: the `error` to send back, or None (never answer an `error`).
    """

    code: ErrorCode
    message: str
    id: RequestId | None
    fatal: bool
    reply: Error | None


#: The replies each request may get: (not final, final).
REPLIES: Final[dict[type[Any], tuple[frozenset[type[Any]], frozenset[type[Any]]]]] = {
    Hello: (frozenset(), frozenset({Hello, Error})),
    SessionCreate: (frozenset(), frozenset({Ack, Error})),
    SessionResume: (frozenset(), frozenset({Ack, Error})),
    SessionDestroy: (frozenset(), frozenset({Ack, Error})),
    PromptSend: (
        frozenset({ResponseChunk, InputRequest}),
        frozenset({ResponseComplete, ResponseCancelled, Error}),
    ),
    StateGet: (frozenset(), frozenset({StateUpdate, Error})),
    StateSubscribe: (frozenset({StateUpdate}), frozenset({ResponseCancelled, Error})),
    Ping: (frozenset(), frozenset({Pong, Error})),
    Call: (frozenset({ResponseChunk}), frozenset({Ack, ResponseCancelled, Error})),
}

#: What each role may send: requests, notes about a request in flight, replies.
_REQUESTS: Final[dict[Role, frozenset[type[Any]]]] = {
    Role.CMDR: frozenset(
        {Hello, SessionCreate, SessionResume, SessionDestroy, PromptSend, StateGet,
         StateSubscribe, Ping, Call}
    ),
    Role.UNIT: frozenset({Ping}),
}
_NOTES: Final = {
    Role.CMDR: {
        PromptCancel: (PromptSend, StateSubscribe, Call),
        InputReply: (PromptSend,),
    },
    Role.UNIT: {},
}
_REPLY_TYPES: Final = {
    Role.CMDR: frozenset({Pong, Error}),
    Role.UNIT: frozenset(
        {Hello, Ack, ResponseChunk, ResponseComplete, ResponseCancelled, StateUpdate,
         InputRequest, Pong, Error}
    ),
}


_REQUEST_NAMES: Final = frozenset(
    cls.TYPE for role in Role for cls in _REQUESTS[role]
)
_KNOWN_NAMES: Final = frozenset(MESSAGE_TYPES)
#: No requests in flight (`next_events` before the other side's hello).
_NONE: Final[dict[Any, Any]] = {}
#: Seconds of silence before a keep-alive `ping`, by default, on every connection.
HEARTBEAT = 15.0
#: Seconds that ping waits for any byte before the connection counts as dead.
HEARTBEAT_TIMEOUT = 10.0

#: The smallest frame limit a side may announce: room for any hello.
MIN_MAX_FRAME = 1024


class Connection:
    """One side of a latis connection.

    Args:
        role: which side this is (`Role.CMDR` or `Role.UNIT`).
        max_frame: the largest payload we accept, in bytes; announce it in
            our `hello` so the other side keeps to it.
        keepalive: seconds of silence before `handle_timer` sends a `ping`,
            or None for no keep-alive.
        keepalive_timeout: seconds to wait for any byte after that ping
            before the connection counts as dead.
        strict: a listener's rule for a peer that has not proven itself yet:
            until the other side's `hello` is accepted, every refusal closes
            the connection (nothing but the handshake is let through).
        handshake_max_frame: until then, frames are also limited to this
            many bytes (a hello is small; a stranger gets no big buffer).
    """

    def __init__(
        self,
        role: Role,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        keepalive: float | None = None,
        keepalive_timeout: float = 10.0,
        strict: bool = False,
        handshake_max_frame: int | None = None,
    ) -> None:
        if max_frame < MIN_MAX_FRAME:
            raise ValueError(f"max_frame must be at least {MIN_MAX_FRAME} bytes")
        self.strict = strict
        self.our_role = Role(role)
        self.their_role = Role.UNIT if self.our_role is Role.CMDR else Role.CMDR
        self.max_frame = max_frame
        #: The largest payload the other side accepts (from its `hello`).
        self.their_max_frame = DEFAULT_MAX_FRAME
        #: The other side's `hello`, once received.
        self.their_hello: Hello | None = None
        self._decoder = FrameDecoder(
            max_frame if handshake_max_frame is None else min(max_frame, handshake_max_frame)
        )
        #: Payloads `next_events` took from the decoder, and how many it decoded.
        self._payloads: Sequence[bytes] = ()
        self._at = 0
        self._sent: dict[RequestId, type[Any]] = {}
        self._received: dict[RequestId, type[Any]] = {}
        self._hello_sent = False
        self._eof = False
        self._closed = False
        self._failed = False
        self._next_id = 1
        self._requests_in = _REQUESTS[self.their_role]
        self._notes_in = _NOTES[self.their_role]
        self._replies_in = _REPLY_TYPES[self.their_role]
        self._requests_out = _REQUESTS[self.our_role]
        self._notes_out = _NOTES[self.our_role]
        self._replies_out = _REPLY_TYPES[self.our_role]
        self._keepalive = keepalive
        self._keepalive_timeout = keepalive_timeout
        self._heard = False
        self._last_heard: float | None = None
        self._ping_at: float | None = None

    # ---- state ---------------------------------------------------------------

    @property
    def handshake_done(self) -> bool:
        """Both `hello` messages have gone through."""
        return self._hello_sent and self.their_hello is not None

    @property
    def closed(self) -> bool:
        """`next_event` has returned CLOSED, or `send_failed` was called."""
        return self._closed or self._failed

    def in_flight(self, request_id: RequestId) -> bool:
        """Whether our request `request_id` is waiting for its final reply."""
        return request_id in self._sent

    @property
    def requests_sent(self) -> dict[RequestId, type[Any]]:
        """Our requests in flight: id to request class (a copy)."""
        return dict(self._sent)

    @property
    def requests_received(self) -> dict[RequestId, type[Any]]:
        """Their requests we have not finished answering: id to class (a copy)."""
        return dict(self._received)

    def next_id(self) -> int:
        """Return a request id not used before on this connection, nor in flight.

        (A prompt reattached by `session.resume` keeps the id it was sent
        with on another connection; new ids step around it.)
        """
        rid = self._next_id
        while rid in self._sent:
            rid += 1
        self._next_id = rid + 1
        return rid

    # ---- receiving ------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float | None = None) -> None:
        """Feed bytes from the stream; `b""` means it ended.

        `now` (the clock `handle_timer` is given) is when they arrived: the
        keep-alive's silence is measured from it. Without it, from the next
        `handle_timer` call (later than the bytes, by up to a whole period).
        """
        if data:
            if now is None:
                self._heard = True
            else:
                self._heard = False
                self._last_heard = now
                self._ping_at = None
            self._decoder.feed(data)
        else:
            self._eof = True

    def next_event(self) -> Any:
        """Return the next message, a `Violation`, `NEED_DATA` or `CLOSED`.

        (Typed `Any`: callers dispatch on the exact class.)

        Never raises for anything the other side sent.
        """
        if self._closed:
            return CLOSED
        at = self._at
        if at < len(self._payloads):  # taken by `next_events`, not yet decoded
            self._at = at + 1
            return self._event(self._payloads[at])
        try:
            payload = self._decoder.next_frame()
        except RemoteProtocolError as exc:
            self._closed = True
            return self._violation(exc.code, exc.message, None)
        if payload is None:
            if not self._eof:
                return NEED_DATA
            self._closed = True
            if self._decoder.in_frame:
                return self._violation(
                    ErrorCode.BAD_FRAME, "the stream ended in the middle of a frame", None
                )
            return CLOSED
        return self._event(payload)

    def next_events(self, *, lazy: bool = False) -> list[Any]:
        """`next_event` until it returns something that is not a chunk, in one
        call: the chunks that come first, then that event (NEED_DATA or CLOSED
        once nothing else is left).

        Decoding stops at that event, so what the caller does with it (a
        request's end, say) is done before the frames after it are read, as
        with `next_event`; call again for those.

        With `lazy`, a plain chunk of a prompt in flight comes as its JSON
        object, checked (`codec.decode_chunks`): make it a `ResponseChunk` with
        `codec.chunk_of` when it is taken. A reader that queues a read's chunks
        so spares the garbage collector (the dicts are not tracked).
        """
        out: list[Any] = []
        if self._closed or not self._decode_run(out):
            out.append(self.next_event())
        return out if lazy else [chunk_of(e) if type(e) is dict else e for e in out]

    def _decode_run(self, out: list[Any]) -> bool:
        """Decode the frames at hand into `out` (plain chunks as their objects)
        up to the first event that is not a chunk: True if one was met (it is
        last in `out`), False if every frame at hand is decoded."""
        payloads = self._payloads
        at = self._at
        if at == len(payloads):
            payloads = self._payloads = self._decoder.take_frames()
            at = 0
        # Plain chunks of prompts in flight, in one call; anything else by
        # `_event`, which checks it in full.
        prompts = self._sent if self.their_hello is not None else _NONE
        end = len(payloads)
        while at < end:
            at, obj = decode_chunks(payloads, at, out, prompts, PromptSend)
            if at == end:
                break
            ev = self._event(payloads[at], obj)
            at += 1
            out.append(ev)
            if type(ev) is not ResponseChunk:
                self._at = at
                return True
        self._payloads = ()
        self._at = 0
        return False

    def _event(self, payload: bytes, obj: Any = None) -> Any:
        """The event for `payload` (`obj`: the payload parsed already, if not None)."""
        msg: Any
        try:
            msg = decode(payload) if obj is None else decode_object(obj)
        except RemoteProtocolError as exc:
            rid: Any = exc.request_id
            kind = exc.message_type
            return self._violation(
                exc.code,
                exc.message,
                rid,
                answer=kind != Error.TYPE,
                about_request=kind is None or kind in _REQUEST_NAMES or kind not in _KNOWN_NAMES,
            )
        if (
            type(msg) is ResponseChunk
            and self._sent.get(msg.id) is PromptSend
            and self.their_hello is not None
        ):
            return msg  # the common case, checked in full below
        return self._check_received(msg)

    # Dispatch below is by exact class (`cls is X`), which mypy cannot narrow
    # a union by: the internal helpers take `msg: Any`.

    def _check_received(self, msg: Any) -> Any:
        cls = type(msg)
        if cls is Error:
            # An error always gets through; it ends the request it names.
            if self._sent.pop(msg.id, None) is Hello:
                # Our hello was refused (not fatally, or the connection
                # closes): we may send a corrected one, for example with a
                # proof of identity (`auth_required`).
                self._hello_sent = False
            return msg
        if self.their_hello is None:
            return self._before_handshake(msg)
        if cls is Hello:
            return self._violation(
                ErrorCode.BAD_MESSAGE,
                "hello was already exchanged",
                msg.id,
                about_request=self.our_role is Role.UNIT,
            )
        if cls in self._replies_in:
            kind = self._sent.get(msg.id)
            if kind is None:
                return self._violation(
                    ErrorCode.UNKNOWN_REQUEST,
                    f"{cls.TYPE} for request {msg.id!r}, which is not in flight",
                    msg.id,
                    about_request=False,
                )
            more, final = REPLIES[kind]
            if cls in more:
                return msg
            if cls in final:
                del self._sent[msg.id]
                return msg
            return self._violation(
                ErrorCode.BAD_MESSAGE,
                f"{cls.TYPE} is not a reply to {kind.TYPE} (request {msg.id!r})",
                msg.id,
                about_request=False,
            )
        if cls in self._requests_in:
            return self._open_received(msg)
        if cls in self._notes_in:
            return msg
        return self._violation(
            ErrorCode.BAD_MESSAGE,
            f"{cls.TYPE} is not sent by a {self.their_role.value}",
            getattr(msg, "id", None),
            about_request=cls.TYPE in _REQUEST_NAMES,
        )

    def _open_received(self, msg: Any) -> Any:
        rid = msg.id
        received = self._received
        if rid in received:
            return self._violation(
                ErrorCode.BAD_MESSAGE,
                f"request id {rid!r} is already in flight ({received[rid].TYPE})",
                None,
            )
        if type(msg) is SessionResume and msg.prompt is not None:
            if msg.prompt in received or msg.prompt == rid:
                return self._violation(
                    ErrorCode.BAD_MESSAGE,
                    f"session.resume names prompt {msg.prompt!r}, an id already in flight",
                    rid,
                )
            # The reattached prompt streams its rest under its own id.
            received[msg.prompt] = PromptSend
        received[rid] = type(msg)
        return msg

    def _before_handshake(self, msg: Any) -> Any:
        cls = type(msg)
        rid = getattr(msg, "id", None)
        if cls is Error and rid is None and self.our_role is Role.UNIT:
            # A listener too busy to shake hands says so (and when to come back)
            # in place of its hello, then closes.
            return msg
        if cls is not Hello:
            if cls in self._requests_in or cls in self._notes_in:
                return self._violation(
                    ErrorCode.HANDSHAKE_REQUIRED,
                    f"{cls.TYPE} before the hello handshake",
                    rid if cls in self._requests_in else None,
                )
            return self._violation(
                ErrorCode.HANDSHAKE_REQUIRED,
                f"{cls.TYPE} before the hello handshake",
                None,
            )
        if self.our_role is Role.CMDR and 0 not in self._sent:
            return self._violation(
                ErrorCode.BAD_MESSAGE, "hello from the unit before cmdr's hello", rid
            )
        if msg.id != 0:
            return self._violation(
                ErrorCode.BAD_MESSAGE, f"hello has id 0, not {msg.id!r}", None
            )
        if msg.protocol != PROTOCOL_VERSION:
            return self._violation(
                ErrorCode.VERSION_MISMATCH,
                f"this side speaks protocol {PROTOCOL_VERSION}, the other side "
                f"{msg.protocol}",
                rid,
            )
        if msg.role != self.their_role.value:
            return self._violation(
                ErrorCode.ROLE_MISMATCH,
                f"expected a hello from a {self.their_role.value}, got one from a "
                f"{msg.role!r}",
                rid,
            )
        if msg.max_frame is not None and msg.max_frame < MIN_MAX_FRAME:
            return self._violation(
                ErrorCode.BAD_MESSAGE,
                f"max_frame {msg.max_frame} is under the minimum of {MIN_MAX_FRAME} bytes",
                rid,
            )
        self.their_hello = msg
        self._decoder.max_size = self.max_frame
        if msg.max_frame is not None:
            self.their_max_frame = msg.max_frame
        if self.our_role is Role.CMDR:
            del self._sent[0]
        else:
            self._received[msg.id] = Hello
        return msg

    def _violation(
        self,
        code: ErrorCode,
        message: str,
        rid: RequestId | None,
        *,
        answer: bool = True,
        about_request: bool = True,
    ) -> Violation:
        fatal = code in FATAL_CODES or (self.strict and self.their_hello is None)
        if fatal:
            self._closed = True
        if not answer:
            return Violation(code, message, rid, fatal, None)
        # An error's id names a request of the side that gets it. So it goes
        # without one when the offending message was a reply or a note (their
        # ids are ours, or name a request of theirs that is fine), and when
        # the sender has that id in flight for another request.
        reply_id = rid if about_request and rid not in self._received else None
        return Violation(code, message, rid, fatal, Error(reply_id, code.value, message))

    # ---- sending --------------------------------------------------------------

    def send(self, msg: Message) -> bytes:
        """Return the frame that carries `msg`.

        Raises:
            LocalProtocolError: sending `msg` now would break the protocol
                (the message is not sent, and nothing changes), or it is over
                the other side's frame limit (code `frame_too_large`).
        """
        if self._failed:
            raise LocalProtocolError("the connection has failed; nothing more can be sent")
        return self._send(msg)

    def send_chunk(self, rid: RequestId, seq: int, text: str) -> bytes:
        """`send(ResponseChunk(rid, seq, text))`, without making the message when
        the chunk may go (a unit's hot path: a chunk of a prompt in flight)."""
        if not self._failed and self._hello_sent and self._received.get(rid) is PromptSend:
            payload = encode_text_chunk(rid, seq, text)
            size = len(payload)
            if size <= self.their_max_frame:
                return pack_header(size) + payload  # (`encode_frame`, inline)
        return self.send(ResponseChunk(rid, seq, text))

    def _send(self, msg: Any) -> bytes:
        cls = type(msg)
        if cls is ResponseChunk and self._received.get(msg.id) is PromptSend and self._hello_sent:
            return encode_frame(encode_chunk(msg), self.their_max_frame)
        frame = encode_frame(encode(msg), self.their_max_frame)
        if cls is Error:
            if self._received.pop(msg.id, None) is Hello and not self._hello_sent:
                # The unit refused cmdr's hello: the handshake has not
                # happened, and cmdr may send another (`auth_required`).
                self.their_hello = None
                self.their_max_frame = DEFAULT_MAX_FRAME
            return frame
        if not self._hello_sent:
            if cls is not Hello:
                raise LocalProtocolError(f"{cls.TYPE} before our hello")
            if self.our_role is Role.UNIT and self.their_hello is None:
                raise LocalProtocolError("a unit answers cmdr's hello; it does not start")
        if cls in self._replies_out:
            kind = self._received.get(msg.id)
            if kind is None:
                raise LocalProtocolError(f"{cls.TYPE} for request {msg.id!r}, not in flight")
            more, final = REPLIES[kind]
            if cls in final:
                del self._received[msg.id]
            elif cls not in more:
                raise LocalProtocolError(f"{cls.TYPE} is not a reply to {kind.TYPE}")
        elif cls in self._requests_out:
            rid = msg.id
            if rid in self._sent:
                raise LocalProtocolError(f"request id {rid!r} is already in flight")
            if cls is Hello:
                if self._hello_sent:
                    raise LocalProtocolError("hello was already sent")
                if rid != 0:
                    raise LocalProtocolError("hello has id 0")
            elif cls is SessionResume and msg.prompt is not None:
                if msg.prompt in self._sent or msg.prompt == rid:
                    raise LocalProtocolError(f"prompt {msg.prompt!r} is already in flight")
                self._sent[msg.prompt] = PromptSend
            self._sent[rid] = cls
        elif cls in self._notes_out:
            kind = self._sent.get(msg.id)
            if kind not in self._notes_out[cls]:
                raise LocalProtocolError(f"{cls.TYPE} for request {msg.id!r}, not in flight")
        else:
            raise LocalProtocolError(f"a {self.our_role.value} does not send {cls.TYPE}")
        if cls is Hello:
            self._hello_sent = True
        return frame

    def send_failed(self) -> None:
        """Say that writing a frame failed: the connection is unusable from now on."""
        self._failed = True
        self._closed = True

    # ---- keep-alive -------------------------------------------------------------

    def set_keepalive(self, keepalive: float | None, timeout: float) -> None:
        """Change the keep-alive period (None: none) and its timeout from now on."""
        self._keepalive = keepalive
        self._keepalive_timeout = timeout

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called, or None (no keep-alive).

        Call `handle_timer` once first to start the clock.
        """
        if self._keepalive is None or self._last_heard is None:
            return None
        if self._ping_at is not None:
            return self._ping_at + self._keepalive_timeout
        return self._last_heard + self._keepalive

    def handle_timer(self, now: float) -> bytes:
        """Advance the keep-alive clock to `now`; return a `ping` frame to send, or b"".

        Raises:
            ConnectionClosed: nothing arrived within `keepalive_timeout` of a ping.
        """
        if self._keepalive is None or self._closed:
            return b""
        if self._heard or self._last_heard is None:
            self._heard = False
            self._last_heard = now
            self._ping_at = None
        if self._ping_at is not None:
            if now >= self._ping_at + self._keepalive_timeout:
                self._failed = self._closed = True
                raise ConnectionClosed(
                    f"no reply within {self._keepalive_timeout:g} s of a keep-alive ping"
                )
            return b""
        if now >= self._last_heard + self._keepalive and self.handshake_done:
            self._ping_at = now
            return self.send(Ping(self.next_id()))
        return b""
