"""Tests of latis_core._wire.codec: messages to JSON payloads and back."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from latis_core import (
    Ack,
    AgentInfo,
    Call,
    Error,
    ErrorCode,
    Hello,
    InputReply,
    InputRequest,
    Message,
    Ping,
    Pong,
    PromptCancel,
    PromptSend,
    RemoteProtocolError,
    ResponseCancelled,
    ResponseChunk,
    ResponseComplete,
    SessionCreate,
    SessionDestroy,
    SessionResume,
    StateGet,
    StateSubscribe,
    StateUpdate,
    chunk_of,
    decode,
    encode,
)
from latis_core._wire.codec import decode_chunks
from latis_core._wire.messages import MESSAGE_TYPES

#: Hand-written examples: each type at least once with its optional fields
#: unset and once with all of them set.
EXAMPLES: list[Message] = [
    Hello(),
    Hello(
        id=0,
        protocol=1,
        role="unit",
        unit="box-1",
        name="cmdr@host",
        agent=AgentInfo("echo", "1.2"),
        capabilities=("stream", "resume"),
        max_frame=1024,
        auth={"token": "t", "nested": {"n": [1, 2.5, None, True]}},
    ),
    Hello(agent=AgentInfo("bare")),
    SessionCreate(1),
    SessionCreate("abc", options={"cwd": "/tmp", "model": None, "n": 3}),
    SessionResume(2, "s1"),
    SessionResume(2, "s1", prompt=7, seq=3),
    SessionResume("r", "s1", prompt="p", seq=0),
    SessionDestroy(3, "s1"),
    Ack(4),
    Ack(4, {"session": "s1", "state": "idle"}),
    PromptSend(5, "s1", "hello, wörld ☃"),
    PromptSend(5, "s1", ""),
    PromptCancel(5),
    ResponseChunk(5, 0),
    ResponseChunk(5, 1, "text"),
    ResponseChunk("p", 2, "", kind="tool_call", data={"name": "ls", "args": ["-l"]}),
    ResponseComplete(5),
    ResponseComplete(5, chunks=3, data={"usage": {"tokens": 10}}),
    ResponseCancelled(5),
    ResponseCancelled(5, chunks=0),
    StateGet(6),
    StateGet(6, session="s1"),
    StateSubscribe(7),
    StateSubscribe(7, session="s1"),
    StateUpdate(7, "idle"),
    StateUpdate(7, "busy", {"s1": "busy", "s2": "idle"}),
    InputRequest(5, 0, "Proceed?"),
    InputRequest(5, 1, "Allow rm?", options=("yes", "no"), kind="permission"),
    InputReply(5, 1, "yes"),
    Ping(8),
    Ping(-(2**63)),
    Pong("eight"),
    Call(9, "unit.up", {"unit": "box"}),
    Call("ten", "status"),
    Error(None, "bad_message", "no type"),
    Error(9, "agent_error", "the agent crashed"),
]


def loads(payload: bytes) -> dict[str, Any]:
    obj = orjson.loads(payload)
    assert type(obj) is dict
    return obj


def payload(**fields: Any) -> bytes:
    return orjson.dumps(fields)


class TestRoundTrip:
    def test_examples_cover_every_type(self) -> None:
        """The examples include every message type."""
        assert {type(m) for m in EXAMPLES} == set(MESSAGE_TYPES.values())
        assert all(cls.TYPE == name for name, cls in MESSAGE_TYPES.items())

    @pytest.mark.parametrize("msg", EXAMPLES, ids=repr)
    def test_round_trip(self, msg: Message) -> None:
        """Every message decodes back to itself."""
        assert decode(encode(msg)) == msg

    @pytest.mark.parametrize("msg", EXAMPLES, ids=repr)
    def test_json_object_type_first(self, msg: Message) -> None:
        """The payload is a UTF-8 JSON object whose first key is `type`."""
        obj = loads(encode(msg))
        assert next(iter(obj)) == "type"
        assert obj["type"] == msg.TYPE

    @pytest.mark.parametrize("kind", [bytearray, memoryview])
    def test_buffer_kinds(self, kind: type) -> None:
        """decode takes a bytearray or a memoryview as well as bytes."""
        assert decode(kind(encode(Ping(1)))) == Ping(1)

    def test_wire_form(self) -> None:
        """A message's fields are its JSON keys, as PROTOCOL.md writes them."""
        assert loads(encode(PromptSend(1, "s", "hi"))) == {
            "type": "prompt.send",
            "id": 1,
            "session": "s",
            "text": "hi",
        }
        assert loads(encode(Error(None, "bad_frame", "m"))) == {
            "type": "error",
            "id": None,
            "code": "bad_frame",
            "message": "m",
        }
        assert loads(encode(Ack(1, {"session": "s", "state": "idle"}))) == {
            "type": "ack",
            "id": 1,
            "data": {"session": "s", "state": "idle"},
        }
        assert loads(encode(InputRequest(1, 0, "q", ("a", "b")))) == {
            "type": "input.request",
            "id": 1,
            "input": 0,
            "question": "q",
            "options": ["a", "b"],
        }


class TestOmitted:
    def test_hello_handshake_fields(self) -> None:
        """hello always carries id, protocol and role, even at their defaults."""
        assert loads(encode(Hello())) == {"type": "hello", "id": 0, "protocol": 1, "role": "cmdr"}

    def test_hello_agent(self) -> None:
        """A hello's agent is a nested object."""
        obj = loads(encode(Hello(role="unit", agent=AgentInfo("echo", "1"))))
        assert obj["agent"] == {"name": "echo", "version": "1"}

    def test_defaults_left_out(self) -> None:
        """A field at its default (None or empty) is left off the wire."""
        assert loads(encode(SessionResume(1, "s"))) == {
            "type": "session.resume",
            "id": 1,
            "session": "s",
        }
        assert loads(encode(Ack(1))) == {"type": "ack", "id": 1}
        assert loads(encode(StateGet(1))) == {"type": "state.get", "id": 1}
        assert loads(encode(ResponseComplete(1))) == {"type": "response.complete", "id": 1}

    def test_free_form_data_goes_out_as_it_is(self) -> None:
        """A reply's data is written as given: an attrs instance in it as its fields,
        a tuple as a list; what JSON cannot hold is refused, naming its kind."""
        info = AgentInfo("echo", "1")
        data = {"units": [{"unit": "u", "agent": info, "caps": ("a", "b")}], "n": None}
        assert loads(encode(Ack(1, data)))["data"] == {
            "units": [{"unit": "u", "agent": {"name": "echo", "version": "1"},
                       "caps": ["a", "b"]}],
            "n": None,
        }
        assert loads(encode(ResponseChunk(1, 0, kind="plan", data={"a": info})))["data"] == {
            "a": {"name": "echo", "version": "1"}}
        with pytest.raises(TypeError, match="not JSON serializable: set"):
            encode(Ack(1, {"x": {1, 2}}))

    def test_chunk_keeps_seq_and_text(self) -> None:
        """A chunk always carries seq and text; kind and data only when set."""
        assert loads(encode(ResponseChunk(1, 0))) == {
            "type": "response.chunk",
            "id": 1,
            "seq": 0,
            "text": "",
        }
        obj = loads(encode(ResponseChunk(1, 0, kind="plan")))
        assert obj["kind"] == "plan" and "data" not in obj

    def test_missing_optional_fields(self) -> None:
        """Optional fields left out decode to their defaults."""
        assert decode(payload(type="hello", id=0, protocol=1, role="cmdr")) == Hello()
        assert decode(payload(type="response.chunk", id=1, seq=0)) == ResponseChunk(1, 0, "")
        assert decode(payload(type="ack", id=1)) == Ack(1, {})
        assert decode(payload(type="state.update", id=1, state="idle")) == StateUpdate(1, "idle")

    def test_handshake_fields_are_required(self) -> None:
        """hello's id, protocol and role, and agent.version, must be on the wire."""
        for missing in ("id", "protocol", "role"):
            fields = {"id": 0, "protocol": 1, "role": "cmdr"}
            del fields[missing]
            with pytest.raises(RemoteProtocolError, match=rf"missing @ \$\.{missing}"):
                decode(payload(type="hello", **fields))
        with pytest.raises(RemoteProtocolError, match=r"missing @ \$\.agent\.version"):
            decode(payload(type="hello", id=0, protocol=1, role="unit", agent={"name": "x"}))
        assert b'"version":""' in encode(Hello(agent=AgentInfo("x")))

    def test_null_optional_fields(self) -> None:
        """null in an optional field is the same as leaving it out."""
        assert decode(
            payload(type="session.resume", id=1, session="s", prompt=None, seq=None)
        ) == SessionResume(1, "s")
        assert decode(
            payload(type="response.chunk", id=1, seq=0, kind=None, data=None)
        ) == ResponseChunk(1, 0)


class TestUnknownFields:
    def test_ignored(self) -> None:
        """Unknown fields are ignored."""
        assert decode(payload(type="ping", id=1, extra={"x": [1]}, more=None)) == Ping(1)

    def test_ignored_in_nested(self) -> None:
        """Unknown fields of a nested object are ignored too."""
        got = decode(
            payload(
                type="hello",
                id=0,
                protocol=1,
                role="cmdr",
                agent={"name": "a", "version": "", "future": 1},
            )
        )
        assert got == Hello(agent=AgentInfo("a"))

    def test_ignored_in_chunk(self) -> None:
        """Unknown fields of a chunk (the fast path) are ignored."""
        got = decode(payload(type="response.chunk", id=1, seq=0, text="t", extra=True))
        assert got == ResponseChunk(1, 0, "t")


#: (payload, code, request id, fragments the message must contain)
BAD: list[tuple[bytes, ErrorCode, Any, tuple[str, ...]]] = [
    (b"\xff\xfe{}", ErrorCode.BAD_FRAME, None, ("UTF-8",)),
    (b'{"type":"ping","id":"\xc3"}', ErrorCode.BAD_FRAME, None, ("UTF-8",)),
    (b"", ErrorCode.BAD_MESSAGE, None, ("not JSON",)),
    (b"{", ErrorCode.BAD_MESSAGE, None, ("not JSON",)),
    (b'{"type":"ping","id":1} x', ErrorCode.BAD_MESSAGE, None, ("not JSON",)),
    (b"[1, 2]", ErrorCode.BAD_MESSAGE, None, ("JSON object", "an array")),
    (b'"ping"', ErrorCode.BAD_MESSAGE, None, ("JSON object", "a string")),
    (b"null", ErrorCode.BAD_MESSAGE, None, ("JSON object", "null")),
    (b'{"id":3}', ErrorCode.BAD_MESSAGE, 3, ("no 'type'",)),
    (b'{"type":5,"id":"r"}', ErrorCode.BAD_MESSAGE, "r", ("'type'", "a string", "an integer")),
    (b'{"type":["ping"],"id":1}', ErrorCode.BAD_MESSAGE, 1, ("'type'", "an array")),
    (b'{"type":null}', ErrorCode.BAD_MESSAGE, None, ("'type'", "null")),
    (b'{"type":"nope","id":4}', ErrorCode.UNKNOWN_TYPE, 4, ("nope",)),
    (b'{"type":"Ping","id":4}', ErrorCode.UNKNOWN_TYPE, 4, ("Ping",)),
    # A string where an integer belongs.
    (
        b'{"type":"response.chunk","id":1,"seq":"5"}',
        ErrorCode.BAD_MESSAGE,
        1,
        ("response.chunk", "$.seq", "an integer", "a string"),
    ),
    (
        b'{"type":"hello","protocol":"1"}',
        ErrorCode.BAD_MESSAGE,
        None,
        ("hello", "$.protocol", "an integer", "a string"),
    ),
    # An integer where a string belongs.
    (
        b'{"type":"prompt.send","id":2,"session":"s","text":5}',
        ErrorCode.BAD_MESSAGE,
        2,
        ("prompt.send", "$.text", "a string", "an integer"),
    ),
    (
        b'{"type":"error","id":2,"code":404,"message":"m"}',
        ErrorCode.BAD_MESSAGE,
        2,
        ("error", "$.code", "a string", "an integer"),
    ),
    # true is not an integer.
    (
        b'{"type":"input.reply","id":2,"input":true,"text":"y"}',
        ErrorCode.BAD_MESSAGE,
        2,
        ("input.reply", "$.input", "an integer", "a boolean"),
    ),
    (
        b'{"type":"response.chunk","id":2,"seq":false}',
        ErrorCode.BAD_MESSAGE,
        2,
        ("response.chunk", "$.seq", "an integer", "a boolean"),
    ),
    # A float is not an integer, even a whole one.
    (
        b'{"type":"response.complete","id":2,"chunks":3.0}',
        ErrorCode.BAD_MESSAGE,
        2,
        ("response.complete", "$.chunks", "an integer", "a number"),
    ),
    (
        b'{"type":"session.resume","id":2,"session":"s","seq":1.5}',
        ErrorCode.BAD_MESSAGE,
        2,
        ("session.resume", "$.seq", "an integer"),
    ),
    # Request ids: an integer or a string, nothing else.
    (
        b'{"type":"ping","id":1.0}',
        ErrorCode.BAD_MESSAGE,
        None,
        ("ping", "$.id", "an integer or a string", "a number"),
    ),
    (
        b'{"type":"ping","id":true}',
        ErrorCode.BAD_MESSAGE,
        None,
        ("ping", "$.id", "an integer or a string", "a boolean"),
    ),
    (
        b'{"type":"ping","id":null}',
        ErrorCode.BAD_MESSAGE,
        None,
        ("ping", "$.id", "an integer or a string", "null"),
    ),
    (
        b'{"type":"error","id":{},"code":"c","message":"m"}',
        ErrorCode.BAD_MESSAGE,
        None,
        ("error", "$.id", "null", "an object"),
    ),
    (
        b'{"type":"session.resume","id":2,"session":"s","prompt":[7]}',
        ErrorCode.BAD_MESSAGE,
        2,
        ("session.resume", "$.prompt", "an array"),
    ),
    # A list where an object belongs, and the other way round.
    (
        b'{"type":"session.create","id":3,"options":[1]}',
        ErrorCode.BAD_MESSAGE,
        3,
        ("session.create", "$.options", "an object", "an array"),
    ),
    (
        b'{"type":"ack","id":3,"data":"s1"}',
        ErrorCode.BAD_MESSAGE,
        3,
        ("ack", "$.data", "an object", "a string"),
    ),
    (
        b'{"type":"hello","id":0,"protocol":1,"role":"cmdr","capabilities":{"stream":true}}',
        ErrorCode.BAD_MESSAGE,
        0,
        ("hello", "$.capabilities", "an array of strings", "an object"),
    ),
    # A string for a list of strings; a list holding a non-string.
    (
        b'{"type":"hello","id":0,"protocol":1,"role":"cmdr","capabilities":"stream"}',
        ErrorCode.BAD_MESSAGE,
        0,
        ("hello", "$.capabilities", "an array of strings", "a string"),
    ),
    (
        b'{"type":"input.request","id":4,"input":0,"question":"q","options":["a",1]}',
        ErrorCode.BAD_MESSAGE,
        4,
        ("input.request", "$.options", "an array of strings", "an integer"),
    ),
    (
        b'{"type":"state.update","id":4,"state":"idle","sessions":{"s":1}}',
        ErrorCode.BAD_MESSAGE,
        4,
        ("state.update", "$.sessions", "an object of strings"),
    ),
    (
        b'{"type":"state.update","id":4,"state":"idle","sessions":["s"]}',
        ErrorCode.BAD_MESSAGE,
        4,
        ("state.update", "$.sessions", "an object of strings", "an array"),
    ),
    # Missing required fields.
    (b'{"type":"ping"}', ErrorCode.BAD_MESSAGE, None, ("ping", "$.id", "missing")),
    (
        b'{"type":"prompt.send","id":"p","session":"s"}',
        ErrorCode.BAD_MESSAGE,
        "p",
        ("prompt.send", "$.text", "missing"),
    ),
    (
        b'{"type":"response.chunk","id":5,"text":"t"}',
        ErrorCode.BAD_MESSAGE,
        5,
        ("response.chunk", "$.seq", "missing"),
    ),
    (
        b'{"type":"error","id":5,"code":"internal"}',
        ErrorCode.BAD_MESSAGE,
        5,
        ("error", "$.message", "missing"),
    ),
    # A nested object of the wrong kind, or with a bad field.
    (
        b'{"type":"hello","id":0,"protocol":1,"role":"unit","agent":"echo"}',
        ErrorCode.BAD_MESSAGE,
        0,
        ("hello", "$.agent", "an object", "a string"),
    ),
    (
        b'{"type":"hello","id":0,"protocol":1,"role":"unit","agent":["echo"]}',
        ErrorCode.BAD_MESSAGE,
        0,
        ("hello", "$.agent", "an object", "an array"),
    ),
    (
        b'{"type":"hello","id":0,"protocol":1,"role":"unit","agent":{"name":1}}',
        ErrorCode.BAD_MESSAGE,
        0,
        ("hello", "$.agent.name", "a string", "an integer"),
    ),
    (
        b'{"type":"hello","id":"h","protocol":1,"role":"unit","agent":{}}',
        ErrorCode.BAD_MESSAGE,
        "h",
        ("hello", "$.agent.name", "missing"),
    ),
]


def _bad_id(case: tuple[bytes, ErrorCode, Any, tuple[str, ...]]) -> str:
    return case[0].decode("utf-8", "replace")[:60]


class TestBadInput:
    @pytest.mark.parametrize("case", BAD, ids=_bad_id)
    def test_refused(self, case: tuple[bytes, ErrorCode, Any, tuple[str, ...]]) -> None:
        """A bad payload raises RemoteProtocolError with its code, request id and a plain reason."""
        data, code, request_id, fragments = case
        with pytest.raises(RemoteProtocolError) as info:
            decode(data)
        exc = info.value
        assert exc.code is code
        assert exc.request_id == request_id
        assert type(exc.request_id) is type(request_id)
        for fragment in fragments:
            assert fragment in exc.message, (fragment, exc.message)

    def test_the_other_roles_members_are_ignored(self) -> None:
        """A controller's hello may carry a unit's `agent`, even a malformed one: ignored."""
        for agent in (b'"echo"', b'{"x":1}', b"null"):
            head = b'{"type":"hello","id":0,"protocol":1,"role":"cmdr","agent":'
            msg = decode(head + agent + b"}")
            assert isinstance(msg, Hello) and msg.role == "cmdr" and msg.agent is None

    def test_message_type_set(self) -> None:
        """A bad field names the message type in `.message_type`; a bad envelope does not."""
        with pytest.raises(RemoteProtocolError) as info:
            decode(b'{"type":"ping","id":1.5}')
        assert info.value.message_type == "ping"
        with pytest.raises(RemoteProtocolError) as info:
            decode(b'{"type":"nope"}')
        assert info.value.message_type is None

    def test_several_faults(self) -> None:
        """Every bad field of one message is named."""
        with pytest.raises(RemoteProtocolError) as info:
            decode(b'{"type":"prompt.send","id":1,"session":2,"text":null}')
        assert "$.session" in info.value.message
        assert "$.text" in info.value.message


class TestNoSilentConversion:
    @pytest.mark.parametrize(
        "obj",
        [
            {"type": "response.chunk", "id": 1, "seq": "5"},
            {"type": "response.chunk", "id": 1, "seq": 5.0},
            {"type": "response.chunk", "id": 1, "seq": 0, "text": 5},
            {"type": "response.chunk", "id": 1, "seq": 0, "kind": 1},
            {"type": "response.chunk", "id": 1, "seq": 0, "data": []},
            {"type": "response.chunk", "id": 1.0, "seq": 0},
            # The plain chunk's own fast path: each field checked there too.
            {"type": "response.chunk", "id": 1.0, "seq": 0, "text": "x"},
            {"type": "response.chunk", "id": True, "seq": 0, "text": "x"},
            {"type": "response.chunk", "id": None, "seq": 0, "text": "x"},
            {"type": "response.chunk", "id": 1, "seq": False, "text": "x"},
            {"type": "response.chunk", "id": 1, "seq": 0, "text": None},
            {"type": "hello", "protocol": "1"},
            {"type": "hello", "protocol": True},
            {"type": "hello", "max_frame": "1024"},
            {"type": "hello", "role": 1},
            {"type": "hello", "unit": 5},
            {"type": "input.reply", "id": 1, "input": "0", "text": "x"},
            {"type": "state.update", "id": 1, "state": 0},
            {"type": "prompt.send", "id": 1, "session": "s", "text": ["a"]},
            {"type": "session.resume", "id": 1, "session": "s", "seq": "3"},
        ],
        ids=repr,
    )
    def test_never_coerced(self, obj: dict[str, Any]) -> None:
        """A value of the wrong JSON kind is refused, never converted."""
        with pytest.raises(RemoteProtocolError) as info:
            decode(orjson.dumps(obj))
        assert info.value.code is ErrorCode.BAD_MESSAGE

    @pytest.mark.parametrize(
        "bad",
        [
            {"type": "response.chunk", "id": True, "seq": 2, "text": "x"},
            {"type": "response.chunk", "id": 1.0, "seq": 2, "text": "x"},
            {"type": "response.chunk", "id": "1", "seq": 2, "text": "x"},
            {"type": "response.chunk", "id": 1, "seq": 2.0, "text": "x"},
            {"type": "response.chunk", "id": 1, "seq": 2, "text": 7},
            {"type": "response.chunk", "id": 9, "seq": 0, "text": "x"},
            {"type": "response.chunk", "id": 1, "seq": 2, "text": "x", "kind": "plan"},
        ],
        ids=repr,
    )
    def test_a_run_of_chunks_stops_at_the_first_that_is_not_a_plain_chunk_in_flight(
        self, bad: dict[str, Any]
    ) -> None:
        """`decode_chunks` takes the plain chunks of prompts in flight (as their
        objects) and stops at anything else, even right after chunks of the same
        prompt: an id equal to theirs but of another kind, a field of the wrong
        kind, a prompt not in flight, a chunk with a kind."""
        good = [{"type": "response.chunk", "id": 1, "seq": n, "text": "x"} for n in range(2)]
        payloads = [orjson.dumps(o) for o in [*good, bad, *good]]
        out: list[Any] = []
        at, obj = decode_chunks(payloads, 0, out, {1: PromptSend}, PromptSend)
        assert (at, obj, out) == (2, bad, good)
        assert [chunk_of(o) for o in out] == [ResponseChunk(1, n, "x") for n in range(2)]

    def test_kinds_kept(self) -> None:
        """Integer and string ids stay what they were: 5 and "5" are different requests."""
        assert decode(payload(type="ping", id="5")).id == "5"
        assert decode(payload(type="ping", id=5)).id == 5
        assert decode(payload(type="ping", id="5")) != decode(payload(type="ping", id=5))

    def test_json_values_untouched(self) -> None:
        """Free-form objects come back exactly, value kinds included."""
        data = {"a": 1, "b": 1.0, "c": "1", "d": True, "e": None, "f": [1, "1"], "g": {}}
        got = decode(payload(type="ack", id=1, data=data))
        assert got.data == data
        assert [type(v) for v in got.data.values()] == [type(v) for v in data.values()]
