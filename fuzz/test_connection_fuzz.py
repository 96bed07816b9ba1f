"""Property tests of the connection state machine: a stateful cmdr/unit pair, and garbage in."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from helpers import ConnectionPair, frame_of, raw_frame
from hypothesis import event as note_event
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from latis_core import (
    CLOSED,
    NEED_DATA,
    Ack,
    Connection,
    Error,
    ErrorCode,
    Hello,
    InputRequest,
    LocalProtocolError,
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
    Violation,
    encode_frame,
)
from latis_core._wire.messages import MESSAGE_TYPES

texts = st.text(max_size=12)
STREAMED = (PromptSend, StateSubscribe)


def sort_ids(ids: Any) -> list[RequestId]:
    """Request ids in a stable order (ints and strings mixed)."""
    return sorted(ids, key=lambda rid: (type(rid) is str, str(rid)))


def replies_for(kind: type, rid: RequestId, final: bool) -> st.SearchStrategy[Any]:
    """Valid replies the unit may send to request `rid` of class `kind`."""
    error = st.builds(Error, st.just(rid), st.sampled_from(["agent_error", "internal"]), texts)
    if kind is PromptSend:
        if final:
            return st.one_of(
                st.builds(ResponseComplete, st.just(rid), st.none() | st.integers(0, 99)),
                st.builds(ResponseCancelled, st.just(rid), st.none() | st.integers(0, 99)),
                error,
            )
        return st.one_of(
            st.builds(ResponseChunk, st.just(rid), st.integers(0, 99), texts),
            st.builds(InputRequest, st.just(rid), st.integers(0, 9), texts),
        )
    if kind is StateSubscribe:
        if final:
            return st.builds(ResponseCancelled, st.just(rid)) | error
        return st.builds(StateUpdate, st.just(rid), st.sampled_from(["idle", "busy"]))
    if kind in (SessionCreate, SessionResume, SessionDestroy):
        return st.builds(Ack, st.just(rid), st.just({"session": "s", "state": "idle"})) | error
    if kind is StateGet:
        return st.builds(StateUpdate, st.just(rid), st.just("idle")) | error
    assert kind is Ping
    return st.builds(Pong, st.just(rid)) | error


#: Replies to build for a request that is not in flight.
STRAY_REPLIES = [
    lambda rid: Ack(rid),
    lambda rid: ResponseChunk(rid, 0, "late"),
    lambda rid: ResponseComplete(rid),
    lambda rid: ResponseCancelled(rid),
    lambda rid: StateUpdate(rid, "idle"),
    lambda rid: InputRequest(rid, 0, "late?"),
    lambda rid: Pong(rid),
]

REQUESTS = {
    "session.create": lambda rid: SessionCreate(rid),
    "session.destroy": lambda rid: SessionDestroy(rid, "s"),
    "session.resume": lambda rid: SessionResume(rid, "s"),
    "prompt.send": lambda rid: PromptSend(rid, "s", "hello"),
    "state.get": lambda rid: StateGet(rid),
    "state.subscribe": lambda rid: StateSubscribe(rid),
    "ping": lambda rid: Ping(rid),
}


class ConnectionMachine(RuleBasedStateMachine):
    """A cmdr and a unit exchanging requests and replies, valid and not."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = ConnectionPair()
        self.pair.handshake()
        #: cmdr's requests in flight, as the model sees them.
        self.open: dict[RequestId, type] = {}
        #: ids whose request has ended (and that are not in flight again).
        self.finished: set[RequestId] = set()
        #: the unit's pings in flight.
        self.unit_pings: set[RequestId] = set()
        self.fresh = 0

    @property
    def cmdr(self) -> Connection:
        return self.pair.cmdr

    @property
    def unit(self) -> Connection:
        return self.pair.unit

    def new_id(self, as_string: bool) -> RequestId:
        if as_string:
            self.fresh += 1
            return f"r{self.fresh}"
        return self.cmdr.next_id()

    def start(self, msg: Any) -> None:
        assert self.pair.send(Role.CMDR, msg) == [msg]
        self.open[msg.id] = type(msg)
        self.finished.discard(msg.id)

    # ---- cmdr's requests ---------------------------------------------------------

    @rule(kind=st.sampled_from(sorted(REQUESTS)), as_string=st.booleans())
    def send_request(self, kind: str, as_string: bool) -> None:
        self.start(REQUESTS[kind](self.new_id(as_string)))

    @precondition(lambda self: self.finished)
    @rule(data=st.data(), kind=st.sampled_from(sorted(REQUESTS)))
    def reuse_finished_id(self, data: st.DataObject, kind: str) -> None:
        rid = data.draw(st.sampled_from(sort_ids(self.finished)))
        self.start(REQUESTS[kind](rid))

    @rule(as_string=st.booleans())
    def resume_prompt(self, as_string: bool) -> None:
        rid = self.new_id(as_string)
        prompt = self.new_id(not as_string)
        msg = SessionResume(rid, "s", prompt=prompt, seq=0)
        assert self.pair.send(Role.CMDR, msg) == [msg]
        self.open[rid] = SessionResume
        self.open[prompt] = PromptSend
        self.finished -= {rid, prompt}

    @precondition(lambda self: any(kind in STREAMED for kind in self.open.values()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        streamed = [rid for rid in sort_ids(self.open) if self.open[rid] in STREAMED]
        rid = data.draw(st.sampled_from(streamed))
        assert self.pair.send(Role.CMDR, PromptCancel(rid)) == [PromptCancel(rid)]

    @precondition(lambda self: self.finished)
    @rule(data=st.data())
    def cancel_finished(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sort_ids(self.finished)))
        with pytest.raises(LocalProtocolError):
            self.cmdr.send(PromptCancel(rid))

    # ---- the unit's replies -----------------------------------------------------

    def _reply(self, rid: RequestId, msg: Any, final: bool) -> None:
        note_event(f"reply {msg.TYPE} to {self.open[rid].TYPE}")
        assert self.pair.send(Role.UNIT, msg) == [msg]
        if final:
            del self.open[rid]
            self.finished.add(rid)

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def reply_final(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sort_ids(self.open)))
        self._reply(rid, data.draw(replies_for(self.open[rid], rid, final=True)), final=True)

    @precondition(lambda self: any(kind in STREAMED for kind in self.open.values()))
    @rule(data=st.data())
    def reply_more(self, data: st.DataObject) -> None:
        streamed = [rid for rid in sort_ids(self.open) if self.open[rid] in STREAMED]
        rid = data.draw(st.sampled_from(streamed))
        self._reply(rid, data.draw(replies_for(self.open[rid], rid, final=False)), final=False)

    @rule(data=st.data(), make=st.sampled_from(STRAY_REPLIES))
    def stray_reply(self, data: st.DataObject, make: Any) -> None:
        choices = st.sampled_from(["never-sent", 10**12 + self.fresh])
        if self.finished:
            choices = st.sampled_from(sort_ids(self.finished)) | choices
        rid = data.draw(choices)
        note_event("stray reply to a finished request" if rid in self.finished else "stray reply")
        msg = make(rid)
        before = self.unit.requests_received
        with pytest.raises(LocalProtocolError):
            self.unit.send(msg)
        assert self.unit.requests_received == before
        events = self.pair.deliver(Role.CMDR, frame_of(msg))
        assert len(events) == 1
        (violation,) = events
        assert isinstance(violation, Violation)
        assert violation.code is ErrorCode.UNKNOWN_REQUEST
        assert violation.id == rid
        assert not violation.fatal

    @rule(rid=st.sampled_from(["nobody", 10**13]) | st.none())
    def stray_error(self, rid: RequestId | None) -> None:
        error = Error(rid, "internal", "stray")
        assert self.pair.deliver(Role.CMDR, frame_of(error)) == [error]

    # ---- the unit's pings --------------------------------------------------------

    @rule()
    def unit_ping(self) -> None:
        rid = self.unit.next_id()
        assert self.pair.send(Role.UNIT, Ping(rid)) == [Ping(rid)]
        self.unit_pings.add(rid)

    @precondition(lambda self: self.unit_pings)
    @rule(data=st.data())
    def cmdr_pong(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sort_ids(self.unit_pings)))
        assert self.pair.send(Role.CMDR, Pong(rid)) == [Pong(rid)]
        self.unit_pings.discard(rid)

    # ---- invariants -----------------------------------------------------------------

    @invariant()
    def both_sides_agree(self) -> None:
        assert self.cmdr.requests_sent == self.unit.requests_received == self.open
        assert self.unit.requests_sent.keys() == self.cmdr.requests_received.keys()
        assert set(self.unit.requests_sent) == self.unit_pings

    @invariant()
    def finished_not_in_flight(self) -> None:
        for rid in self.finished:
            assert not self.cmdr.in_flight(rid)

    @invariant()
    def still_open(self) -> None:
        assert not self.cmdr.closed and not self.unit.closed
        assert self.cmdr.next_event() is NEED_DATA
        assert self.unit.next_event() is NEED_DATA


def test_connection_machine() -> None:
    """Both sides agree on the requests in flight, and a finished request takes no more replies."""
    run_state_machine_as_test(ConnectionMachine)


# ---- garbage into a connection ------------------------------------------------------

ids = st.one_of(st.integers(-5, 5), st.text(max_size=3))
valid_messages = st.one_of(
    st.builds(Ping, ids),
    st.builds(Pong, ids),
    st.builds(Ack, ids),
    st.builds(SessionCreate, ids),
    st.builds(PromptSend, ids, texts, texts),
    st.builds(PromptCancel, ids),
    st.builds(ResponseChunk, ids, st.integers(0, 3), texts),
    st.builds(ResponseComplete, ids),
    st.builds(StateUpdate, ids, texts),
    st.builds(Error, st.none() | ids, texts, texts),
    st.builds(Hello, st.just(0), st.integers(0, 2), st.sampled_from(["cmdr", "unit", "x"])),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
json_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(MESSAGE_TYPES)) | json_values},
    optional={"id": ids | json_values, "seq": json_values, "text": json_values},
)
chunks = st.one_of(
    st.binary(max_size=64),
    valid_messages.map(frame_of),
    json_objects.map(lambda obj: encode_frame(orjson.dumps(obj))),
    st.binary(max_size=32).map(raw_frame),
    st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
)


FATAL = {ErrorCode.FRAME_TOO_LARGE, ErrorCode.VERSION_MISMATCH, ErrorCode.ROLE_MISMATCH}


def event_note(event: Any) -> None:
    """Tell hypothesis's statistics what kind of event came out."""
    if isinstance(event, Violation):
        note_event(f"violation {event.code.value}")
    else:
        note_event(repr(event) if event is CLOSED else type(event).__name__)


def check_events(conn: Connection, events: list[Any]) -> None:
    """Only messages, Violations and CLOSED come out; a Violation's reply can be sent."""
    for event in events:
        if isinstance(event, Violation):
            assert isinstance(event.code, ErrorCode)
            assert event.fatal == (event.code in FATAL)
            if event.reply is not None:
                assert isinstance(conn.send(event.reply), bytes)
        else:
            assert event is CLOSED or type(event) in MESSAGE_TYPES.values(), event
        assert event is not NEED_DATA
        event_note(event)


@pytest.mark.parametrize("role", [Role.CMDR, Role.UNIT], ids=["cmdr", "unit"])
@given(data=st.data(), handshake=st.booleans())
def test_garbage_into_connection(role: Role, data: st.DataObject, handshake: bool) -> None:
    """Random bytes and frames never raise: only messages, Violations, then CLOSED come out."""
    pair = ConnectionPair(max_frame=4096)
    if handshake:
        pair.handshake()
        pair.send(Role.CMDR, PromptSend(1, "s", "x"), StateSubscribe("sub"))
    conn = pair.conn(role)
    stream = b"".join(data.draw(st.lists(chunks, max_size=8)))
    cut = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    bounds = [0, *cut, len(stream)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        check_events(conn, pair.deliver(role, stream[a:b]))
    final = pair.deliver(role, b"")
    check_events(conn, final)
    assert final and final[-1] is CLOSED
    assert conn.next_event() is CLOSED
