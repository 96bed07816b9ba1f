"""Tests of latis_core._wire.connection: the sans-IO state machine, exact and synchronous."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import UNIT_HELLO, ConnectionPair, drain, frame_of, raw_frame

from latis_core import (
    CLOSED,
    NEED_DATA,
    Ack,
    Connection,
    ConnectionClosed,
    Error,
    ErrorCode,
    Hello,
    InputReply,
    InputRequest,
    LocalProtocolError,
    Message,
    Ping,
    Pong,
    PromptCancel,
    PromptSend,
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
    Violation,
    chunk_of,
    encode_frame,
)

ROLES = pytest.mark.parametrize("role", [Role.CMDR, Role.UNIT], ids=["cmdr", "unit"])


def other(role: Role) -> Role:
    return Role.UNIT if role is Role.CMDR else Role.CMDR


def only_violation(events: list[Any]) -> Violation:
    """The single event in `events`, which must be a Violation."""
    assert len(events) == 1, events
    (event,) = events
    assert isinstance(event, Violation), event
    return event


def fatal_violation(events: list[Any]) -> Violation:
    """The Violation in `events`, which must be a fatal one followed by CLOSED."""
    assert len(events) == 2, events
    violation, closed = events
    assert isinstance(violation, Violation), violation
    assert violation.fatal
    assert closed is CLOSED
    return violation


def snapshot(conn: Connection) -> tuple[Any, ...]:
    """Everything a LocalProtocolError must leave as it was."""
    return (
        conn.requests_sent,
        conn.requests_received,
        conn.handshake_done,
        conn.closed,
        conn.their_hello,
    )


@pytest.fixture
def pair() -> ConnectionPair:
    """A connection pair that has done its handshake."""
    pair = ConnectionPair()
    pair.handshake()
    return pair


class TestHandshake:
    def test_handshake(self) -> None:
        """cmdr's hello then the unit's makes both sides ready, with nothing in flight."""
        pair = ConnectionPair()
        assert not pair.cmdr.handshake_done and not pair.unit.handshake_done
        assert pair.send(Role.CMDR, Hello()) == [Hello()]
        assert pair.cmdr.requests_sent == {0: Hello}
        assert pair.unit.requests_received == {0: Hello}
        assert not pair.cmdr.handshake_done and not pair.unit.handshake_done
        assert pair.send(Role.UNIT, UNIT_HELLO) == [UNIT_HELLO]
        assert pair.cmdr.handshake_done and pair.unit.handshake_done
        assert pair.unit.their_hello == Hello()
        assert pair.cmdr.their_hello == UNIT_HELLO
        for conn in (pair.cmdr, pair.unit):
            assert conn.requests_sent == {} and conn.requests_received == {}

    def test_nothing_yet(self) -> None:
        """A fresh connection has no event: it needs data."""
        conn = Connection(Role.UNIT)
        assert conn.next_event() is NEED_DATA
        assert not conn.closed

    def test_roles(self) -> None:
        """Each side knows its own role and the other's."""
        pair = ConnectionPair()
        assert (pair.cmdr.our_role, pair.cmdr.their_role) == (Role.CMDR, Role.UNIT)
        assert (pair.unit.our_role, pair.unit.their_role) == (Role.UNIT, Role.CMDR)

    def test_max_frame_announced(self) -> None:
        """The other side's `max_frame` from its hello limits what we may send."""
        pair = ConnectionPair()
        pair.handshake(Hello(role="unit", max_frame=1024))
        assert pair.cmdr.their_max_frame == 1024
        before = snapshot(pair.cmdr)
        with pytest.raises(LocalProtocolError) as info:
            pair.cmdr.send(PromptSend(1, "s", "x" * 1100))
        assert info.value.code is ErrorCode.FRAME_TOO_LARGE
        assert snapshot(pair.cmdr) == before
        assert pair.send(Role.CMDR, PromptSend(1, "s", "x")) == [PromptSend(1, "s", "x")]

    def test_pipelined_request(self) -> None:
        """cmdr may send requests right after its hello, before the unit answers."""
        pair = ConnectionPair()
        events = pair.send(Role.CMDR, Hello(), SessionCreate(1))
        assert events == [Hello(), SessionCreate(1)]
        assert pair.send(Role.UNIT, UNIT_HELLO, Ack(1, {"session": "s"})) == [
            UNIT_HELLO,
            Ack(1, {"session": "s"}),
        ]
        assert pair.cmdr.requests_sent == {}

    @ROLES
    def test_request_before_hello(self, role: Role) -> None:
        """A request before the hello gets a non-fatal handshake_required answered under its id."""
        pair = ConnectionPair()
        if role is Role.CMDR:
            pair.send(Role.CMDR, Hello())
            request: Message = Ping(3)
        else:
            request = SessionCreate(3)
        violation = only_violation(pair.deliver(role, frame_of(request)))
        assert violation.code is ErrorCode.HANDSHAKE_REQUIRED
        assert violation.id == 3
        assert not violation.fatal
        assert violation.reply == Error(3, "handshake_required", violation.message)
        assert request.TYPE in violation.message
        assert not pair.conn(role).closed
        assert pair.conn(role).requests_received == {}

    def test_connection_serves_after_handshake_required(self) -> None:
        """After handshake_required the handshake can still happen."""
        pair = ConnectionPair()
        only_violation(pair.deliver(Role.UNIT, frame_of(SessionCreate(1))))
        pair.handshake()
        assert pair.send(Role.CMDR, SessionCreate(1)) == [SessionCreate(1)]

    def test_reply_before_unit_hello(self) -> None:
        """A reply from the unit before its hello gets handshake_required, with no id."""
        pair = ConnectionPair()
        pair.send(Role.CMDR, Hello(), SessionCreate(1))
        violation = only_violation(pair.deliver(Role.CMDR, frame_of(Ack(1))))
        assert violation.code is ErrorCode.HANDSHAKE_REQUIRED
        assert violation.reply is not None and violation.reply.id is None
        assert pair.cmdr.in_flight(1)

    def test_note_before_hello(self) -> None:
        """prompt.cancel before the hello gets handshake_required, with no id."""
        pair = ConnectionPair()
        violation = only_violation(pair.deliver(Role.UNIT, frame_of(PromptCancel(4))))
        assert violation.code is ErrorCode.HANDSHAKE_REQUIRED
        assert violation.id is None

    def test_chunk_before_unit_hello(self) -> None:
        """A chunk from the unit before its hello gets handshake_required, like any reply."""
        pair = ConnectionPair()
        pair.send(Role.CMDR, Hello(), PromptSend(1, "s", "hi"))
        violation = only_violation(pair.deliver(Role.CMDR, frame_of(ResponseChunk(1, 0, "x"))))
        assert violation.code is ErrorCode.HANDSHAKE_REQUIRED

    def test_unit_chunk_before_own_hello(self) -> None:
        """A unit may not send a chunk before its own hello, like any reply."""
        pair = ConnectionPair()
        pair.send(Role.CMDR, Hello(), PromptSend(1, "s", "hi"))
        with pytest.raises(LocalProtocolError):
            pair.unit.send(ResponseChunk(1, 0, "x"))

    @ROLES
    def test_version_mismatch(self, role: Role) -> None:
        """A hello with another protocol version is a fatal version_mismatch, then CLOSED."""
        pair = ConnectionPair()
        if role is Role.CMDR:
            pair.send(Role.CMDR, Hello())
        hello = Hello(protocol=2, role=other(role).value)
        violation = fatal_violation(pair.deliver(role, frame_of(hello)))
        assert violation.code is ErrorCode.VERSION_MISMATCH
        assert violation.fatal
        assert violation.reply == Error(0, "version_mismatch", violation.message)
        conn = pair.conn(role)
        assert conn.closed and conn.their_hello is None
        assert conn.next_event() is CLOSED
        # The answer can still be sent before the stream is closed.
        assert conn.send(violation.reply)

    @ROLES
    def test_role_mismatch(self, role: Role) -> None:
        """A hello claiming our own role is a fatal role_mismatch, then CLOSED."""
        pair = ConnectionPair()
        if role is Role.CMDR:
            pair.send(Role.CMDR, Hello())
        violation = fatal_violation(pair.deliver(role, frame_of(Hello(role=role.value))))
        assert violation.code is ErrorCode.ROLE_MISMATCH
        assert pair.conn(role).next_event() is CLOSED

    def test_unknown_role(self) -> None:
        """A hello with a role that is neither is a fatal role_mismatch."""
        pair = ConnectionPair()
        violation = fatal_violation(pair.deliver(Role.UNIT, frame_of(Hello(role="robot"))))
        assert violation.code is ErrorCode.ROLE_MISMATCH
        assert "robot" in violation.message

    def test_unit_hello_unasked(self) -> None:
        """A unit's hello before cmdr has sent its own is bad_message."""
        pair = ConnectionPair()
        violation = only_violation(pair.deliver(Role.CMDR, frame_of(UNIT_HELLO)))
        assert violation.code is ErrorCode.BAD_MESSAGE
        assert not violation.fatal
        assert pair.cmdr.their_hello is None

    @ROLES
    def test_second_hello(self, role: Role, pair: ConnectionPair) -> None:
        """A second hello is a non-fatal bad_message."""
        hello = UNIT_HELLO if role is Role.CMDR else Hello()
        violation = only_violation(pair.deliver(role, frame_of(hello)))
        assert violation.code is ErrorCode.BAD_MESSAGE
        assert not violation.fatal
        assert not pair.conn(role).closed

    def test_hello_must_have_id_0(self) -> None:
        """A cmdr hello with an id other than 0 is refused; the unit then waits for a real one."""
        pair = ConnectionPair()
        violation = only_violation(pair.deliver(Role.UNIT, frame_of(Hello(id="h"))))
        assert violation.code is ErrorCode.BAD_MESSAGE
        assert "hello has id 0" in violation.message
        assert pair.unit.their_hello is None
        assert pair.deliver(Role.UNIT, frame_of(Hello())) == [Hello()]

    def test_hello_without_its_fields(self) -> None:
        """A hello must carry id, protocol and role: a bare one is refused, naming the field."""
        pair = ConnectionPair()
        bare = b"\x00\x00\x00\x10" + b'{"type":"hello"}'
        violation = only_violation(pair.deliver(Role.UNIT, bare))
        assert violation.code is ErrorCode.BAD_MESSAGE
        assert "required field missing @ $.id" in violation.message
        assert pair.unit.their_hello is None

    def test_max_frame_has_a_floor(self) -> None:
        """A side may not announce (or be given) a frame limit too small for a hello."""
        with pytest.raises(ValueError, match="at least 1024"):
            Connection(Role.CMDR, max_frame=64)
        pair = ConnectionPair()
        pair.send(Role.CMDR, Hello())
        violation = only_violation(pair.send(Role.UNIT, Hello(role="unit", max_frame=64)))
        assert "under the minimum of 1024" in violation.message
        assert pair.cmdr.their_hello is None


#: (request, non-final replies, final reply)
EXCHANGES: list[tuple[Message, list[Message], Message]] = [
    (SessionCreate(1), [], Ack(1, {"session": "s1", "state": "idle"})),
    (SessionResume(1, "s1"), [], Ack(1, {"session": "s1", "state": "idle"})),
    (SessionDestroy(1, "s1"), [], Ack(1)),
    (SessionCreate(1), [], Error(1, "limit_reached", "too many sessions")),
    (
        PromptSend(1, "s1", "hi"),
        [ResponseChunk(1, 0, "a"), InputRequest(1, 0, "ok?"), ResponseChunk(1, 1, "b")],
        ResponseComplete(1, chunks=2),
    ),
    (PromptSend(1, "s1", "hi"), [ResponseChunk(1, 0, "a")], ResponseCancelled(1, chunks=1)),
    (PromptSend(1, "s1", "hi"), [], Error(1, "agent_error", "boom")),
    (StateGet(1), [], StateUpdate(1, "idle", {"s1": "idle"})),
    (
        StateSubscribe(1),
        [StateUpdate(1, "idle"), StateUpdate(1, "busy", {"s1": "busy"})],
        ResponseCancelled(1),
    ),
    (StateSubscribe(1), [StateUpdate(1, "idle")], Error(1, "internal", "oops")),
    (Ping(1), [], Pong(1)),
]


class TestRequests:
    @pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: f"{e[0].TYPE}-{e[2].TYPE}")
    def test_exchange(
        self, pair: ConnectionPair, exchange: tuple[Message, list[Message], Message]
    ) -> None:
        """Non-final replies keep a request open on both sides; the final one ends it."""
        request, more, final = exchange
        assert pair.send(Role.CMDR, request) == [request]
        assert pair.cmdr.requests_sent == {1: type(request)}
        assert pair.unit.requests_received == {1: type(request)}
        for reply in more:
            assert pair.send(Role.UNIT, reply) == [reply]
            assert pair.cmdr.in_flight(1)
            assert pair.unit.requests_received == {1: type(request)}
        assert pair.send(Role.UNIT, final) == [final]
        assert not pair.cmdr.in_flight(1)
        assert pair.cmdr.requests_sent == {} and pair.unit.requests_received == {}

    @pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: f"{e[0].TYPE}-{e[2].TYPE}")
    def test_after_final(
        self, pair: ConnectionPair, exchange: tuple[Message, list[Message], Message]
    ) -> None:
        """A reply after the final one is refused: unknown_request there, a local error here."""
        request, more, final = exchange
        pair.send(Role.CMDR, request)
        pair.send(Role.UNIT, final)
        late = (more or [final])[0]
        if type(late) is Error:
            late = Pong(1)
        with pytest.raises(LocalProtocolError):
            pair.unit.send(late)
        violation = only_violation(pair.deliver(Role.CMDR, frame_of(late)))
        assert violation.code is ErrorCode.UNKNOWN_REQUEST
        assert violation.id == 1
        assert not violation.fatal

    def test_unit_ping(self, pair: ConnectionPair) -> None:
        """A unit may ping cmdr, which answers pong."""
        assert pair.send(Role.UNIT, Ping(7)) == [Ping(7)]
        assert pair.unit.requests_sent == {7: Ping}
        assert pair.cmdr.requests_received == {7: Ping}
        assert pair.send(Role.CMDR, Pong(7)) == [Pong(7)]
        assert pair.unit.requests_sent == {} and pair.cmdr.requests_received == {}

    def test_many_in_flight(self, pair: ConnectionPair) -> None:
        """Many requests interleave; each reply goes to its own request."""
        pair.send(Role.CMDR, PromptSend(1, "a", "x"), PromptSend(2, "b", "y"), StateSubscribe(3))
        assert pair.send(
            Role.UNIT, ResponseChunk(2, 0, "q"), StateUpdate(3, "busy"), ResponseChunk(1, 0, "p")
        ) == [ResponseChunk(2, 0, "q"), StateUpdate(3, "busy"), ResponseChunk(1, 0, "p")]
        pair.send(Role.UNIT, ResponseComplete(2))
        assert set(pair.cmdr.requests_sent) == {1, 3}
        assert set(pair.unit.requests_received) == {1, 3}

    def test_int_and_str_ids(self, pair: ConnectionPair) -> None:
        """Integer 1 and string "1" are two different request ids."""
        pair.send(Role.CMDR, Ping(1), Ping("1"))
        assert pair.cmdr.requests_sent == {1: Ping, "1": Ping}
        assert pair.send(Role.UNIT, Pong("1")) == [Pong("1")]
        assert pair.cmdr.requests_sent == {1: Ping}

    def test_id_reused_after_final(self, pair: ConnectionPair) -> None:
        """An id may be used again once its request has ended."""
        pair.send(Role.CMDR, Ping(1))
        pair.send(Role.UNIT, Pong(1))
        assert pair.send(Role.CMDR, SessionCreate(1)) == [SessionCreate(1)]
        assert pair.unit.requests_received == {1: SessionCreate}

    def test_next_id(self, pair: ConnectionPair) -> None:
        """next_id returns ids never used before and not in flight."""
        pair.send(Role.CMDR, Ping(1), Ping(2))
        ids = [pair.cmdr.next_id() for _ in range(5)]
        assert len(set(ids)) == 5
        assert not {1, 2} & set(ids)

    @ROLES
    def test_reply_to_unknown_id(self, pair: ConnectionPair, role: Role) -> None:
        """A reply naming no request in flight is a non-fatal unknown_request.

        Its answer carries no id: an error's id names a request of the side
        that gets it, and this id was ours.
        """
        reply: Message = Ack(99) if role is Role.CMDR else Pong(99)
        violation = only_violation(pair.deliver(role, frame_of(reply)))
        assert violation.code is ErrorCode.UNKNOWN_REQUEST
        assert violation.id == 99
        assert not violation.fatal
        assert violation.reply == Error(None, "unknown_request", violation.message)
        assert "99" in violation.message
        assert not pair.conn(role).closed

    def test_unknown_reply_id_in_use_by_peer(self, pair: ConnectionPair) -> None:
        """An unknown_request answer leaves out an id the other side uses for its own request."""
        pair.send(Role.UNIT, Ping(5))
        violation = only_violation(pair.deliver(Role.CMDR, frame_of(Ack(5))))
        assert violation.code is ErrorCode.UNKNOWN_REQUEST
        assert violation.reply is not None and violation.reply.id is None
        assert pair.cmdr.requests_received == {5: Ping}

    @ROLES
    @pytest.mark.parametrize("rid", [99, None, "x"])
    def test_error_for_unknown_id(self, pair: ConnectionPair, role: Role, rid: Any) -> None:
        """An error naming no request in flight is returned as it is, never answered."""
        error = Error(rid, "internal", "something")
        assert pair.deliver(role, frame_of(error)) == [error]
        assert not pair.conn(role).closed

    def test_error_ends_request(self, pair: ConnectionPair) -> None:
        """An error reply ends the request it names on both sides."""
        pair.send(Role.CMDR, PromptSend(1, "s", "hi"), Ping(2))
        assert pair.send(Role.UNIT, Error(1, "unknown_session", "no s")) == [
            Error(1, "unknown_session", "no s")
        ]
        assert pair.cmdr.requests_sent == {2: Ping}
        assert pair.unit.requests_received == {2: Ping}

    @pytest.mark.parametrize(
        ("request_", "reply"),
        [
            (PromptSend(1, "s", "hi"), Ack(1)),
            (PromptSend(1, "s", "hi"), StateUpdate(1, "idle")),
            (PromptSend(1, "s", "hi"), Pong(1)),
            (SessionCreate(1), Pong(1)),
            (SessionCreate(1), ResponseChunk(1, 0)),
            (StateGet(1), ResponseChunk(1, 0)),
            (StateGet(1), ResponseCancelled(1)),
            (StateSubscribe(1), InputRequest(1, 0, "q")),
            (Ping(1), Ack(1)),
        ],
        ids=lambda m: m.TYPE,
    )
    def test_reply_of_wrong_type(
        self, pair: ConnectionPair, request_: Message, reply: Message
    ) -> None:
        """A reply the request may not get is bad_message, and the request stays open."""
        pair.send(Role.CMDR, request_)
        before = snapshot(pair.unit)
        with pytest.raises(LocalProtocolError):
            pair.unit.send(reply)
        assert snapshot(pair.unit) == before
        violation = only_violation(pair.deliver(Role.CMDR, frame_of(reply)))
        assert violation.code is ErrorCode.BAD_MESSAGE
        assert violation.id == 1
        assert not violation.fatal
        assert reply.TYPE in violation.message and request_.TYPE in violation.message
        assert pair.cmdr.requests_sent == {1: type(request_)}

    @ROLES
    def test_duplicate_request_id(self, pair: ConnectionPair, role: Role) -> None:
        """A request reusing an id in flight is bad_message answered with no id."""
        request: Message = SessionCreate(1) if role is Role.UNIT else Ping(1)
        pair.send(other(role), request)
        violation = only_violation(pair.deliver(role, frame_of(Ping(1))))
        assert violation.code is ErrorCode.BAD_MESSAGE
        assert violation.id is None
        assert violation.reply is not None and violation.reply.id is None
        assert not violation.fatal
        assert pair.conn(role).requests_received == {1: type(request)}

    def test_resume_with_prompt(self, pair: ConnectionPair) -> None:
        """session.resume with `prompt` puts that prompt in flight on both sides."""
        resume = SessionResume(2, "s1", prompt=1, seq=3)
        assert pair.send(Role.CMDR, resume) == [resume]
        assert pair.cmdr.requests_sent == {1: PromptSend, 2: SessionResume}
        assert pair.unit.requests_received == {1: PromptSend, 2: SessionResume}
        assert pair.send(Role.UNIT, Ack(2), ResponseChunk(1, 4, "rest")) == [
            Ack(2),
            ResponseChunk(1, 4, "rest"),
        ]
        assert pair.send(Role.UNIT, ResponseComplete(1, chunks=5)) == [ResponseComplete(1, 5)]
        assert pair.cmdr.requests_sent == {} and pair.unit.requests_received == {}

    def test_resume_without_prompt(self, pair: ConnectionPair) -> None:
        """session.resume without `prompt` is an ordinary request."""
        pair.send(Role.CMDR, SessionResume(2, "s1"))
        assert pair.cmdr.requests_sent == {2: SessionResume}

    @pytest.mark.parametrize("prompt", [1, 2], ids=["in-flight", "own-id"])
    def test_resume_prompt_in_flight(self, pair: ConnectionPair, prompt: int) -> None:
        """session.resume naming an id already in flight (or its own) is refused both ways."""
        pair.send(Role.CMDR, Ping(1))
        resume = SessionResume(2, "s1", prompt=prompt)
        before = snapshot(pair.cmdr)
        with pytest.raises(LocalProtocolError):
            pair.cmdr.send(resume)
        assert snapshot(pair.cmdr) == before
        violation = only_violation(pair.deliver(Role.UNIT, frame_of(resume)))
        assert violation.code is ErrorCode.BAD_MESSAGE
        assert violation.id == 2
        assert pair.unit.requests_received == {1: Ping}

    def test_next_events_stop_after_the_first_that_is_not_a_chunk(
        self, pair: ConnectionPair
    ) -> None:
        """`next_events` gives the chunks that come first, then one event of another
        kind, and decodes nothing after it: the request that event ends is still
        in flight until its own end is taken (what a controller's reader checks)."""
        pair.send(Role.CMDR, PromptSend(1, "s", "hi"), StateSubscribe(2))
        replies = [ResponseChunk(1, 0, "a"), ResponseChunk(1, 1, "b"), StateUpdate(2, "idle"),
                   ResponseCancelled(2), ResponseChunk(1, 2, "c"), ResponseComplete(1, 3)]
        pair.cmdr.receive_data(b"".join(pair.unit.send(m) for m in replies))
        assert pair.cmdr.next_events() == replies[:3]
        assert pair.cmdr.in_flight(2)
        assert pair.cmdr.next_events() == [ResponseCancelled(2)]
        assert not pair.cmdr.in_flight(2)
        assert pair.cmdr.next_event() == ResponseChunk(1, 2, "c")  # one by one, where it was
        assert pair.cmdr.next_events() == [ResponseComplete(1, 3)]
        assert pair.cmdr.next_events() == [NEED_DATA]
        pair.cmdr.receive_data(b"")
        assert pair.cmdr.next_events() == [CLOSED]

    def test_lazy_chunks_are_the_same_chunks_once_made(self, pair: ConnectionPair) -> None:
        """With `lazy`, the plain chunks of a prompt in flight come as their checked
        objects, which `chunk_of` makes the very chunks `next_events` gives; a
        chunk with a kind, and one of a request not in flight, come as usual."""
        pair.send(Role.CMDR, PromptSend(1, "s", "hi"))
        replies = [ResponseChunk(1, 0, "a"), ResponseChunk(1, 1, "", "plan", {"steps": [1]}),
                   ResponseChunk(1, 2, "c \"quoted\" é"), ResponseComplete(1, 3)]
        wire = b"".join(pair.unit.send(m) for m in replies)
        stray = frame_of(ResponseChunk(9, 0, "x"))
        pair.cmdr.receive_data(wire + stray)
        events = pair.cmdr.next_events(lazy=True)
        assert [type(e) for e in events] == [dict, ResponseChunk, dict, ResponseComplete]
        assert [chunk_of(e) if type(e) is dict else e for e in events] == replies
        (violation, need) = pair.cmdr.next_events(lazy=True), pair.cmdr.next_events(lazy=True)
        assert type(violation[0]) is Violation and violation[0].id == 9
        assert need == [NEED_DATA]

    @pytest.mark.parametrize("streamed", [PromptSend(1, "s", "hi"), StateSubscribe(1)], ids=repr)
    def test_prompt_cancel(self, pair: ConnectionPair, streamed: Message) -> None:
        """prompt.cancel reaches the unit and leaves the request open until its final reply."""
        pair.send(Role.CMDR, streamed)
        assert pair.send(Role.CMDR, PromptCancel(1)) == [PromptCancel(1)]
        assert pair.cmdr.in_flight(1)
        assert pair.unit.requests_received == {1: type(streamed)}
        assert pair.send(Role.UNIT, ResponseCancelled(1)) == [ResponseCancelled(1)]
        assert not pair.cmdr.in_flight(1)

    def test_prompt_cancel_after_end(self, pair: ConnectionPair) -> None:
        """A unit accepts prompt.cancel for a prompt that has already ended (they crossed)."""
        pair.send(Role.CMDR, PromptSend(1, "s", "hi"))
        cancel = pair.cmdr.send(PromptCancel(1))
        pair.send(Role.UNIT, ResponseComplete(1))
        assert pair.deliver(Role.UNIT, cancel) == [PromptCancel(1)]
        assert pair.unit.requests_received == {}

    def test_input_reply(self, pair: ConnectionPair) -> None:
        """input.reply answers a question of a prompt in flight."""
        pair.send(Role.CMDR, PromptSend(1, "s", "hi"))
        pair.send(Role.UNIT, InputRequest(1, 0, "Allow?", ("yes", "no"), "permission"))
        assert pair.send(Role.CMDR, InputReply(1, 0, "yes")) == [InputReply(1, 0, "yes")]
        assert pair.unit.requests_received == {1: PromptSend}


#: (sender, message) pairs the sender's role never sends.
WRONG_DIRECTION: list[tuple[Role, Message]] = [
    (Role.UNIT, SessionCreate(5)),
    (Role.UNIT, PromptSend(5, "s", "x")),
    (Role.UNIT, StateGet(5)),
    (Role.UNIT, PromptCancel(5)),
    (Role.UNIT, InputReply(5, 0, "x")),
    (Role.CMDR, ResponseChunk(5, 0, "x")),
    (Role.CMDR, ResponseComplete(5)),
    (Role.CMDR, Ack(5)),
    (Role.CMDR, StateUpdate(5, "idle")),
    (Role.CMDR, InputRequest(5, 0, "q")),
]


class TestDirection:
    @pytest.mark.parametrize(("sender", "msg"), WRONG_DIRECTION, ids=repr)
    def test_send_refused(self, pair: ConnectionPair, sender: Role, msg: Message) -> None:
        """Sending a message our role never sends is a LocalProtocolError."""
        conn = pair.conn(sender)
        before = snapshot(conn)
        with pytest.raises(LocalProtocolError):
            conn.send(msg)
        assert snapshot(conn) == before

    @pytest.mark.parametrize(("sender", "msg"), WRONG_DIRECTION, ids=repr)
    def test_receive_refused(self, pair: ConnectionPair, sender: Role, msg: Message) -> None:
        """Receiving a message the other role never sends is a non-fatal bad_message."""
        violation = only_violation(pair.deliver(other(sender), frame_of(msg)))
        assert violation.code is ErrorCode.BAD_MESSAGE
        assert not violation.fatal
        assert msg.TYPE in violation.message

    def test_chunk_from_cmdr_for_own_prompt(self, pair: ConnectionPair) -> None:
        """A chunk sent by cmdr is refused even under the id of a prompt in flight."""
        pair.send(Role.CMDR, PromptSend(1, "s", "hi"))
        with pytest.raises(LocalProtocolError):
            pair.cmdr.send(ResponseChunk(1, 0, "x"))
        violation = only_violation(pair.deliver(Role.UNIT, frame_of(ResponseChunk(1, 0, "x"))))
        assert violation.code is ErrorCode.BAD_MESSAGE


def _before_hello(pair: ConnectionPair) -> None:
    pass


def _cmdr_hello_only(pair: ConnectionPair) -> None:
    pair.send(Role.CMDR, Hello())


def _handshake(pair: ConnectionPair) -> None:
    pair.handshake()


def _prompt_in_flight(pair: ConnectionPair) -> None:
    pair.handshake()
    pair.send(Role.CMDR, PromptSend(1, "s", "hi"), SessionCreate(2), StateSubscribe(3))


#: (setup, sender, message): our own protocol mistakes.
LOCAL_MISTAKES = [
    pytest.param(_before_hello, Role.CMDR, SessionCreate(1), id="request-before-hello"),
    pytest.param(_before_hello, Role.CMDR, Hello(id=1), id="hello-id-not-0"),
    pytest.param(_before_hello, Role.UNIT, UNIT_HELLO, id="unit-speaks-first"),
    pytest.param(_before_hello, Role.UNIT, Ping(1), id="unit-pings-first"),
    pytest.param(_cmdr_hello_only, Role.CMDR, Hello(), id="hello-twice-in-flight"),
    pytest.param(_cmdr_hello_only, Role.UNIT, Ack(0), id="unit-reply-before-its-hello"),
    pytest.param(_cmdr_hello_only, Role.UNIT, Ping(1), id="unit-ping-before-its-hello"),
    pytest.param(_handshake, Role.CMDR, Hello(), id="hello-again"),
    pytest.param(_handshake, Role.UNIT, UNIT_HELLO, id="unit-hello-again"),
    pytest.param(_handshake, Role.UNIT, Ack(1), id="reply-to-nothing"),
    pytest.param(_handshake, Role.CMDR, Pong(1), id="pong-to-nothing"),
    pytest.param(_prompt_in_flight, Role.CMDR, Ping(1), id="duplicate-id"),
    pytest.param(_prompt_in_flight, Role.CMDR, PromptCancel(9), id="cancel-not-in-flight"),
    pytest.param(_prompt_in_flight, Role.CMDR, PromptCancel(2), id="cancel-not-streamed"),
    pytest.param(_prompt_in_flight, Role.CMDR, InputReply(9, 0, "x"), id="input-reply-nothing"),
    pytest.param(_prompt_in_flight, Role.CMDR, InputReply(3, 0, "x"), id="input-reply-subscribe"),
    pytest.param(_prompt_in_flight, Role.CMDR, InputReply(2, 0, "x"), id="input-reply-session"),
    pytest.param(_prompt_in_flight, Role.UNIT, Ack(1), id="ack-to-prompt"),
    pytest.param(_prompt_in_flight, Role.UNIT, ResponseChunk(2, 0), id="chunk-to-session"),
    pytest.param(_prompt_in_flight, Role.UNIT, ResponseChunk(9, 0), id="chunk-to-nothing"),
]


class TestLocalProtocolError:
    @pytest.mark.parametrize(("setup", "sender", "msg"), LOCAL_MISTAKES)
    def test_refused_and_unchanged(self, setup: Any, sender: Role, msg: Message) -> None:
        """Our own protocol mistake raises LocalProtocolError and changes nothing."""
        pair = ConnectionPair()
        setup(pair)
        conn = pair.conn(sender)
        before = snapshot(conn), snapshot(pair.peer(sender))
        with pytest.raises(LocalProtocolError):
            conn.send(msg)
        assert (snapshot(conn), snapshot(pair.peer(sender))) == before

    def test_still_usable(self, pair: ConnectionPair) -> None:
        """After a LocalProtocolError the connection sends correct messages as before."""
        with pytest.raises(LocalProtocolError):
            pair.cmdr.send(PromptCancel(1))
        assert pair.send(Role.CMDR, PromptSend(1, "s", "x")) == [PromptSend(1, "s", "x")]

    def test_error_always_sendable(self) -> None:
        """An error may be sent at any time, even before the hello."""
        pair = ConnectionPair()
        error = Error(None, "bad_message", "nope")
        assert pair.send(Role.UNIT, error) == [error]

    def test_sent_error_ends_received_request(self, pair: ConnectionPair) -> None:
        """Answering a request with an error ends it on the answering side."""
        pair.send(Role.CMDR, SessionCreate(1))
        pair.send(Role.UNIT, Error(1, "limit_reached", "full"))
        assert pair.unit.requests_received == {}
        assert pair.cmdr.requests_sent == {}


class TestBadBytes:
    @ROLES
    def test_clean_eof(self, pair: ConnectionPair, role: Role) -> None:
        """End of stream between frames is CLOSED, and stays CLOSED."""
        assert pair.deliver(role, b"") == [CLOSED]
        conn = pair.conn(role)
        assert conn.closed
        assert conn.next_event() is CLOSED

    @ROLES
    def test_eof_mid_frame(self, pair: ConnectionPair, role: Role) -> None:
        """End of stream in the middle of a frame is a bad_frame Violation, then CLOSED."""
        frame = frame_of(Ping(1))
        events = pair.deliver(role, frame + frame[:5])
        assert len(events) == 1 and type(events[0]) is Ping
        events = pair.deliver(role, b"")
        assert len(events) == 2
        violation, closed = events
        assert isinstance(violation, Violation)
        assert violation.code is ErrorCode.BAD_FRAME
        assert violation.id is None
        assert closed is CLOSED
        assert pair.conn(role).closed

    @ROLES
    def test_eof_mid_header(self, pair: ConnectionPair, role: Role) -> None:
        """End of stream inside a length header is a bad_frame Violation too."""
        pair.deliver(role, b"\x00\x00")
        events = pair.deliver(role, b"")
        assert isinstance(events[0], Violation) and events[0].code is ErrorCode.BAD_FRAME
        assert events[1:] == [CLOSED]

    @ROLES
    def test_frame_too_large(self, role: Role) -> None:
        """An oversized frame is a fatal frame_too_large after the frames before it, then CLOSED."""
        pair = ConnectionPair(max_frame=1024)
        pair.handshake()
        events = pair.deliver(role, frame_of(Ping(1)) + b"\x00\x00\x04\x01" + b"x" * 50)
        assert len(events) == 3
        ping, violation, closed = events
        assert type(ping) is Ping
        assert isinstance(violation, Violation)
        assert violation.code is ErrorCode.FRAME_TOO_LARGE
        assert violation.fatal
        assert violation.reply is not None and violation.reply.code == "frame_too_large"
        assert closed is CLOSED
        assert pair.deliver(role, frame_of(Ping(2))) == [CLOSED]

    @ROLES
    @pytest.mark.parametrize(
        ("payload", "code", "rid"),
        [
            (b"\xff\xfe", ErrorCode.BAD_FRAME, None),
            (b"not json", ErrorCode.BAD_MESSAGE, None),
            (b"[]", ErrorCode.BAD_MESSAGE, None),
            (b'{"id":4}', ErrorCode.BAD_MESSAGE, 4),
            (b'{"type":"warp","id":4}', ErrorCode.UNKNOWN_TYPE, 4),
            (b'{"type":"ping","id":4.5}', ErrorCode.BAD_MESSAGE, None),
            (b'{"type":"pong","id":"p","x":[}', ErrorCode.BAD_MESSAGE, None),
        ],
    )
    def test_bad_payload(
        self, pair: ConnectionPair, role: Role, payload: bytes, code: ErrorCode, rid: Any
    ) -> None:
        """A bad payload is a non-fatal Violation and the connection keeps serving."""
        violation = only_violation(pair.deliver(role, encode_frame(payload)))
        assert violation.code is code
        assert violation.id == rid
        assert not violation.fatal
        assert violation.reply == Error(rid, code.value, violation.message)
        assert pair.deliver(role, frame_of(Ping(1))) == [Ping(1)]

    @ROLES
    def test_bad_error_not_answered(self, pair: ConnectionPair, role: Role) -> None:
        """A malformed error is a Violation with no reply: an error is never answered."""
        bad = raw_frame({"type": "error", "id": 1, "code": 5, "message": "m"})
        violation = only_violation(pair.deliver(role, bad))
        assert violation.code is ErrorCode.BAD_MESSAGE
        assert violation.reply is None

    def test_bad_payload_before_hello(self) -> None:
        """Garbage before the hello is a non-fatal Violation; the handshake can follow."""
        pair = ConnectionPair()
        only_violation(pair.deliver(Role.UNIT, encode_frame(b"{")))
        pair.handshake()

    def test_violations_keep_state(self, pair: ConnectionPair) -> None:
        """A Violation changes no request in flight."""
        pair.send(Role.CMDR, PromptSend(1, "s", "x"))
        before = snapshot(pair.cmdr)
        only_violation(pair.deliver(Role.CMDR, frame_of(Ack(1))))
        only_violation(pair.deliver(Role.CMDR, frame_of(Ack(2))))
        only_violation(pair.deliver(Role.CMDR, encode_frame(b"[]")))
        assert snapshot(pair.cmdr) == before


class TestSendFailed:
    @ROLES
    def test_send_failed(self, pair: ConnectionPair, role: Role) -> None:
        """After send_failed the connection is closed and every send raises."""
        conn = pair.conn(role)
        conn.send_failed()
        assert conn.closed
        for msg in (Ping(1), Error(None, "internal", "x")):
            with pytest.raises(LocalProtocolError):
                conn.send(msg)
        assert conn.next_event() is CLOSED


class TestKeepalive:
    @ROLES
    def test_no_keepalive(self, pair: ConnectionPair, role: Role) -> None:
        """Without keep-alive there is no timer and handle_timer sends nothing."""
        conn = pair.conn(role)
        assert conn.get_timer() is None
        assert conn.handle_timer(0.0) == b""
        assert conn.handle_timer(1e9) == b""
        assert conn.get_timer() is None

    def test_timer_starts_with_first_call(self) -> None:
        """The timer starts at the first handle_timer call."""
        pair = ConnectionPair(keepalive=5.0)
        pair.handshake()
        assert pair.cmdr.get_timer() is None
        assert pair.cmdr.handle_timer(100.0) == b""
        assert pair.cmdr.get_timer() == 105.0

    @ROLES
    def test_ping_after_idle(self, role: Role) -> None:
        """After the idle interval handle_timer returns a ping, which the other side receives."""
        pair = ConnectionPair(keepalive=5.0, keepalive_timeout=2.0)
        pair.handshake()
        conn = pair.conn(role)
        assert conn.handle_timer(100.0) == b""
        assert conn.handle_timer(104.9) == b""
        frame = conn.handle_timer(105.0)
        assert frame
        (ping,) = pair.deliver(other(role), frame)
        assert type(ping) is Ping
        assert conn.requests_sent == {ping.id: Ping}
        assert conn.get_timer() == 107.0
        # Only one ping while waiting.
        assert conn.handle_timer(106.0) == b""

    def test_data_resets_idle(self) -> None:
        """Any bytes received push the next ping back."""
        pair = ConnectionPair(keepalive=5.0, keepalive_timeout=2.0)
        pair.handshake()
        pair.cmdr.handle_timer(0.0)
        pair.send(Role.UNIT, Ping(1))
        assert pair.cmdr.handle_timer(4.0) == b""
        assert pair.cmdr.get_timer() == 9.0
        assert pair.cmdr.handle_timer(8.9) == b""
        assert pair.cmdr.handle_timer(9.0) != b""

    def test_partial_bytes_count(self) -> None:
        """Even part of a frame counts as hearing from the other side."""
        pair = ConnectionPair(keepalive=5.0, keepalive_timeout=2.0)
        pair.handshake()
        pair.cmdr.handle_timer(0.0)
        pair.cmdr.handle_timer(5.0)
        pair.deliver(Role.CMDR, b"\x00")
        assert pair.cmdr.handle_timer(7.0) == b""
        assert not pair.cmdr.closed

    def test_answer_resets(self) -> None:
        """An answer to the ping clears the wait, and the idle clock restarts."""
        pair = ConnectionPair(keepalive=5.0, keepalive_timeout=2.0)
        pair.handshake()
        pair.cmdr.handle_timer(0.0)
        (ping,) = pair.deliver(Role.UNIT, pair.cmdr.handle_timer(5.0))
        assert pair.send(Role.UNIT, Pong(ping.id)) == [Pong(ping.id)]
        assert pair.cmdr.handle_timer(6.0) == b""
        assert pair.cmdr.get_timer() == 11.0
        assert pair.cmdr.handle_timer(20.0) != b""

    def test_silence_after_ping(self) -> None:
        """Silence past the timeout after a ping raises ConnectionClosed; the connection fails."""
        pair = ConnectionPair(keepalive=5.0, keepalive_timeout=2.0)
        pair.handshake()
        pair.cmdr.handle_timer(0.0)
        assert pair.cmdr.handle_timer(5.0)
        assert pair.cmdr.handle_timer(6.9) == b""
        with pytest.raises(ConnectionClosed):
            pair.cmdr.handle_timer(7.0)
        assert pair.cmdr.closed
        with pytest.raises(LocalProtocolError):
            pair.cmdr.send(Ping(100))
        assert pair.cmdr.handle_timer(8.0) == b""

    def test_no_ping_before_handshake(self) -> None:
        """No ping is sent before the handshake is done."""
        pair = ConnectionPair(keepalive=5.0)
        pair.cmdr.handle_timer(0.0)
        assert pair.cmdr.handle_timer(50.0) == b""
        pair.send(Role.CMDR, Hello())
        assert pair.cmdr.handle_timer(100.0) == b""

    def test_ping_id_avoids_ours(self) -> None:
        """The keep-alive ping takes an id no request of ours has in flight."""
        pair = ConnectionPair(keepalive=5.0)
        pair.handshake()
        pair.send(Role.CMDR, SessionCreate(1), SessionCreate(2))
        pair.cmdr.handle_timer(0.0)
        (ping,) = pair.deliver(Role.UNIT, pair.cmdr.handle_timer(5.0))
        assert ping.id not in (1, 2)
        assert len(pair.cmdr.requests_sent) == 3


class TestHelpers:
    def test_drain_stops_at_need_data(self) -> None:
        """drain returns what is ready and leaves the connection waiting for data."""
        pair = ConnectionPair()
        pair.cmdr.send(Hello())
        pair.unit.receive_data(frame_of(Hello())[:3])
        assert drain(pair.unit) == []
        assert pair.deliver(Role.UNIT, frame_of(Hello())[3:]) == [Hello()]
