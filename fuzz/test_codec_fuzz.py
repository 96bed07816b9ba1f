"""Property tests of the codec: every message round-trips; bad payloads fail cleanly."""

from __future__ import annotations

from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from latis_core import AgentInfo, ErrorCode, RemoteProtocolError, RequestId, decode, encode
from latis_core._wire.messages import MESSAGE_TYPES

# orjson handles 64-bit integers; JSON has no NaN or infinity.
integers = st.integers(-(2**63), 2**63 - 1)
ids = st.one_of(integers, st.text(max_size=20))
texts = st.text(max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | integers | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(texts, json_values, max_size=5)
agents = st.builds(AgentInfo, texts, texts)

#: A strategy for each field type that appears in a message class.
FIELD_STRATEGIES: dict[Any, st.SearchStrategy[Any]] = {
    RequestId: ids,
    RequestId | None: st.none() | ids,
    str: texts,
    str | None: st.none() | texts,
    int: integers,
    int | None: st.none() | integers,
    float | None: st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False),
    tuple[str, ...]: st.lists(texts, max_size=4).map(tuple),
    dict[str, Any]: json_objects,
    dict[str, Any] | None: st.none() | json_objects,
    dict[str, str]: st.dictionaries(texts, texts, max_size=4),
    AgentInfo | None: st.none() | agents,
}


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    """Build instances of message class `cls` from its attrs fields."""
    attrs.resolve_types(cls)
    kwargs = {}
    for field in attrs.fields(cls):
        strategy = FIELD_STRATEGIES[field.type]
        if field.default is not attrs.NOTHING:
            # Leave optional fields at their default about half the time.
            default = field.default
            if isinstance(default, attrs.Factory):
                default = default.factory()
            strategy = st.just(default) | strategy
        kwargs[field.name] = strategy
    return st.fixed_dictionaries(kwargs).map(lambda kw: cls(**kw))


CLASSES = sorted(MESSAGE_TYPES.values(), key=lambda c: c.TYPE)
messages = st.one_of([message_strategy(cls) for cls in CLASSES])


def decode_or_refuse(payload: bytes) -> Any:
    """decode, turning a RemoteProtocolError into its value; any other exception escapes."""
    try:
        return decode(payload)
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        assert exc.message
        assert exc.request_id is None or type(exc.request_id) in (int, str)
        return exc


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.TYPE)
@given(data=st.data())
def test_round_trip(cls: type, data: st.DataObject) -> None:
    """Every message decodes to itself, and encodes back to the same bytes."""
    msg = data.draw(message_strategy(cls))
    payload = encode(msg)
    assert decode(payload) == msg
    # Byte equality also catches a silent change of kind (True and 1 compare equal).
    assert encode(decode(payload)) == payload
    obj = orjson.loads(payload)
    assert next(iter(obj)) == "type" and obj["type"] == cls.TYPE


@given(msg=messages, extra=json_objects)
def test_unknown_fields_ignored(msg: Any, extra: dict[str, Any]) -> None:
    """Fields a message does not have are ignored, whatever they hold."""
    obj = orjson.loads(encode(msg))
    names = {f.name for f in attrs.fields(type(msg))} | {"type"}
    obj.update({k: v for k, v in extra.items() if k not in names})
    assert decode(orjson.dumps(obj)) == msg


def random_objects() -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects with a plausible or random `type` and fields of any kind."""
    field_names = sorted({f.name for cls in CLASSES for f in attrs.fields(cls)} | {"type", "x"})
    return st.dictionaries(
        st.sampled_from(field_names) | texts,
        json_values | st.sampled_from(sorted(MESSAGE_TYPES)),
        max_size=8,
    ).flatmap(
        lambda obj: st.builds(
            lambda t: (
                {"type": t, **{k: v for k, v in obj.items() if k != "type"}}
                if t is not None
                else obj
            ),
            st.none() | st.sampled_from(sorted(MESSAGE_TYPES)) | json_values,
        )
    )


@given(random_objects())
def test_random_objects(obj: dict[str, Any]) -> None:
    """Random JSON objects decode to a message or raise RemoteProtocolError, never converted."""
    result = decode_or_refuse(orjson.dumps(obj))
    if isinstance(result, RemoteProtocolError):
        return
    assert result.TYPE == obj["type"]
    for field in attrs.fields(type(result)):
        if field.name not in obj:
            continue
        sent, got = obj[field.name], getattr(result, field.name)
        if type(sent) in (int, str, bool, float, type(None)):
            # A scalar is taken as it is or refused: never converted.
            assert type(got) is type(sent) and got == sent
    assert decode(encode(result)) == result


@given(json_values)
def test_random_json(value: Any) -> None:
    """Any JSON value decodes to a message or raises RemoteProtocolError."""
    decode_or_refuse(orjson.dumps(value))


@given(st.binary(max_size=200))
def test_random_bytes(payload: bytes) -> None:
    """Any bytes decode to a message or raise RemoteProtocolError."""
    decode_or_refuse(payload)


@given(messages, st.data())
def test_mutated_payload(msg: Any, data: st.DataObject) -> None:
    """A valid payload with bytes changed, dropped or added fails only with RemoteProtocolError."""
    payload = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(payload) - 1))
        op = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if op == "flip":
            payload[at] = data.draw(st.integers(0, 255))
        elif op == "drop":
            del payload[at]
        else:
            payload[at:at] = data.draw(st.sampled_from([b'"', b"{", b"}", b",", b"\\", b"\xff"]))
    decode_or_refuse(bytes(payload))


@given(messages, st.data())
def test_mutated_field(msg: Any, data: st.DataObject) -> None:
    """A field given a value of another kind is refused naming that field, or accepted as is."""
    obj = orjson.loads(encode(msg))
    fields = [f.name for f in attrs.fields(type(msg))]
    name = data.draw(st.sampled_from(fields))
    obj[name] = data.draw(json_values)
    result = decode_or_refuse(orjson.dumps(obj))
    if isinstance(result, RemoteProtocolError):
        assert result.code is ErrorCode.BAD_MESSAGE
        assert result.message_type == msg.TYPE
        assert result.message.startswith(f"{msg.TYPE}: ")
        assert f"$.{name}" in result.message
    else:
        assert type(result) is type(msg)
