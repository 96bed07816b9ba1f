"""The codec: messages to JSON payloads and back, through one cattrs converter.

`encode` turns a message into a UTF-8 JSON object with its `type` first.
`decode` turns a payload into a message, or raises `RemoteProtocolError`
saying which message, which field and what was expected. The converter is
strict: a string is never turned into a number, nor a number into a string,
and JSON `true` is not an integer. Unknown fields are ignored.

The hottest message, `response.chunk`, has hand-written hooks registered on
the same converter (a generic hook costs ~2.5 µs a message; these ~0.5 µs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import cattrs
import orjson
from cattrs.errors import AttributeValidationNote
from cattrs.fns import identity
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from latis_core._errors import ErrorCode, RemoteProtocolError
from latis_core._wire.messages import (
    MESSAGE_TYPES,
    AgentInfo,
    Hello,
    Message,
    RequestId,
    ResponseChunk,
)

__all__ = [
    "chunk_of",
    "converter",
    "decode",
    "decode_chunks",
    "decode_object",
    "encode",
    "encode_chunk",
    "encode_text_chunk",
]

_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _kind(value: object) -> str:
    return _NAMES.get(type(value), type(value).__name__)


#: Fields sent (and required) even though the class gives them a default.
_ALWAYS_SENT: dict[type, tuple[str, ...]] = {
    AgentInfo: ("version",),  # before Hello, which holds one
    Hello: ("id", "protocol", "role"),
}


def _missing(cls: type, name: str) -> cattrs.ClassValidationError:
    # Shaped like cattrs' own errors, so the path to the field is reported.
    exc = KeyError(name)
    exc.__notes__ = [
        AttributeValidationNote(f"Structuring class {cls.__qualname__} @ attribute {name}",
                                name, Any)
    ]
    return cattrs.ClassValidationError(f"While structuring {cls.__name__}", [exc], cls)


class WrongKind(TypeError):
    """A JSON value of the wrong kind for its field."""

    def __init__(self, expected: str, value: object) -> None:
        super().__init__(f"expected {expected}, got {_kind(value)}")
        self.expected = expected
        self.value = value


def _strict(cls: type, expected: str) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        if type(value) is not cls:
            raise WrongKind(expected, value)
        return value

    return hook


def _float(value: Any, _: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise WrongKind("a number", value)


def _request_id(value: Any, _: Any) -> RequestId:
    if type(value) is int or type(value) is str:
        return value
    raise WrongKind("an integer or a string", value)


def _request_id_or_none(value: Any, _: Any) -> RequestId | None:
    if value is None or type(value) is int or type(value) is str:
        return value
    raise WrongKind("an integer, a string or null", value)


def _object(value: Any, _: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise WrongKind("an object", value)
    return value


def _string_map(value: Any, _: Any) -> dict[str, str]:
    if type(value) is not dict:
        raise WrongKind("an object of strings", value)
    for item in value.values():
        if type(item) is not str:
            raise WrongKind("an object of strings", item)
    return value


def _string_tuple(value: Any, _: Any) -> tuple[str, ...]:
    if type(value) is not list:
        raise WrongKind("an array of strings", value)
    for item in value:
        if type(item) is not str:
            raise WrongKind("an array of strings", item)
    return tuple(value)


def _equals(target: Any) -> Callable[[Any], bool]:
    return lambda candidate: bool(candidate == target)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(omit_if_default=True, detailed_validation=True)
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(bool, _strict(bool, "a boolean"))
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(RequestId, _request_id)
    conv.register_structure_hook(RequestId | None, _request_id_or_none)
    for generic, hook in (
        (dict[str, Any], _object),
        (dict[str, str], _string_map),
        (tuple[str, ...], _string_tuple),
    ):
        conv.register_structure_hook_func(_equals(generic), hook)
    conv.register_unstructure_hook_func(_equals(tuple[str, ...]), list)
    # Free-form data (a reply's `data`, a chunk's, a hello's `auth`) goes to orjson
    # as it is: it is JSON's own kinds already, and cattrs would walk every value of
    # it (a `status` of 10,000 units: 190 ms, against 5 ms for orjson). Anything
    # else in it (an attrs instance) is unstructured as orjson meets it (`_jsonable`).
    for free in (dict[str, Any], dict[str, Any] | None):
        conv.register_unstructure_hook_func(_equals(free), identity)

    # The structure hook of an attrs class indexes a dict: check it is one first.
    def attrs_hook_factory(cls: type) -> Callable[[Any, Any], Any]:
        inner: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, conv)
        # Fields with a default for our convenience that the wire must carry.
        required = _ALWAYS_SENT.get(cls, ())

        def hook(value: Any, _: Any) -> Any:
            if type(value) is not dict:
                raise WrongKind("an object", value)
            result = inner(value, cls)
            for name in required:
                if name not in value:
                    raise _missing(cls, name)
            return result

        return hook

    conv.register_structure_hook_factory(attrs.has, attrs_hook_factory)

    # Some fields are always on the wire, even at their defaults.
    for cls, names in _ALWAYS_SENT.items():
        keep: dict[str, Any] = {name: override(omit_if_default=False) for name in names}
        conv.register_unstructure_hook(
            cls, make_dict_unstructure_fn(cls, conv, _cattrs_omit_if_default=True, **keep)
        )
    conv.register_unstructure_hook(ResponseChunk, _unstructure_chunk)
    conv.register_structure_hook(ResponseChunk, _structure_chunk)
    return conv


def _jsonable(value: Any) -> Any:
    """orjson's `default`: an attrs instance in a message's free-form data, as
    cattrs unstructures it; anything else orjson cannot write is an error."""
    if attrs.has(type(value)):
        return _unstructure(value)
    raise TypeError(f"a {type(value).__name__} cannot go in a message")


def _unstructure_chunk(msg: ResponseChunk) -> dict[str, Any]:
    out: dict[str, Any] = {"id": msg.id, "seq": msg.seq, "text": msg.text}
    if msg.kind is not None:
        out["kind"] = msg.kind
    if msg.data is not None:
        out["data"] = msg.data
    return out


def _structure_chunk(value: Any, _: Any) -> ResponseChunk:
    # The fast path checks every field; anything odd goes to the generic hook,
    # which finds and names the fault.
    if type(value) is dict:
        id_ = value.get("id")
        seq = value.get("seq")
        text = value.get("text", "")
        kind = value.get("kind")
        data = value.get("data")
        if (
            (type(id_) is int or type(id_) is str)
            and type(seq) is int
            and type(text) is str
            and (kind is None or type(kind) is str)
            and (data is None or type(data) is dict)
        ):
            return ResponseChunk(id_, seq, text, kind, data)
    return _generic_chunk(value, ResponseChunk)


#: The one converter for messages (and, later, for config and state).
converter = _make_converter()
_generic_chunk = make_dict_structure_fn(ResponseChunk, converter)
_unstructure = converter.unstructure


class _Hooks(dict[str, tuple[type[Message], Callable[[Any, Any], Any]]]):
    """Each message type's structure hook, made on first use: making all twenty at
    import costs a short-lived process (the CLI) ~15 ms, and it needs three or four."""

    def __missing__(self, name: str) -> tuple[type[Message], Callable[[Any, Any], Any]]:
        cls = MESSAGE_TYPES[name]  # KeyError: not a type of this protocol
        self[name] = entry = (cls, converter.get_structure_hook(cls))
        return entry


_hooks = _Hooks()


#: A hello's members that belong to the other role: ignored, whatever their shape
#: (PROTOCOL.md 4.1), so a controller's `"agent": {"x": 1}` is not a fault.
_OTHER_ROLE = {"cmdr": ("unit", "agent"), "unit": ("name",)}


def _hello_hook(inner: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def hook(value: Any, cls: Any) -> Any:
        try:
            return inner(value, cls)
        except Exception:
            # Read again without the other role's members: a fault there is no fault.
            role = value.get("role") if type(value) is dict else None
            other = _OTHER_ROLE.get(role) if type(role) is str else None
            if not other or not any(key in value for key in other):
                raise
            return inner({k: v for k, v in value.items() if k not in other}, cls)

    return hook


_hooks["hello"] = (Hello, _hello_hook(converter.get_structure_hook(Hello)))
_dumps = orjson.dumps
_new = object.__new__
_loads = orjson.loads
#: No id at all (`decode_chunks` before its first chunk).
_NONE: Any = object()


def encode(msg: Message) -> bytes:
    """Return the JSON payload of `msg`, `type` first."""
    if type(msg) is ResponseChunk:
        return encode_chunk(msg)
    out = {"type": msg.TYPE}
    out.update(_unstructure(msg))
    return _dumps(out, default=_jsonable)


def encode_chunk(msg: ResponseChunk) -> bytes:
    """`encode` for the hottest message (what its registered hook does, inline)."""
    if msg.kind is None and msg.data is None:
        return encode_text_chunk(msg.id, msg.seq, msg.text)
    out: dict[str, Any] = {"type": "response.chunk"}
    out.update(_unstructure_chunk(msg))
    return _dumps(out, default=_jsonable)


def encode_text_chunk(rid: RequestId, seq: int, text: str) -> bytes:
    """`encode(ResponseChunk(rid, seq, text))`, without making the message."""
    return _dumps({"type": "response.chunk", "id": rid, "seq": seq, "text": text})


def decode(payload: bytes | bytearray | memoryview) -> Message:
    """Return the message in `payload`.

    Raises:
        RemoteProtocolError: `bad_frame` (not UTF-8), `bad_message` (not JSON,
            not an object, no `type`, a field of the wrong kind) or
            `unknown_type`, with the request id when one could be read.
    """
    try:
        obj = _loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _undecodable(payload, exc) from None
    return decode_object(obj)


def decode_object(obj: Any) -> Message:
    """`decode` for a payload already parsed as JSON (`obj`); raises as `decode`."""
    if type(obj) is not dict:
        raise RemoteProtocolError(f"a message must be a JSON object, got {_kind(obj)}")
    name: Any = obj.get("type")
    if name == "response.chunk" and len(obj) == 4:
        # The hottest message, a plain chunk (type, id, seq, text), checked here;
        # any other shape goes the general way, which names the fault.
        id_ = obj.get("id")
        if (
            (type(id_) is int or type(id_) is str)
            and type(obj.get("seq")) is int
            and type(obj.get("text")) is str
        ):
            return chunk_of(obj)
    try:
        cls, hook = _hooks[name]
    except (KeyError, TypeError):
        raise _untyped(obj) from None
    try:
        return hook(obj, cls)  # type: ignore[no-any-return]
    except Exception as exc:  # every structuring failure, by design
        raise _invalid(cls.TYPE, obj, exc) from None


def decode_chunks(
    payloads: Sequence[bytes], at: int, out: list[Any], prompts: Mapping[Any, object], kind: object
) -> tuple[int, Any]:
    """Decode `payloads` from index `at` into `out` while each is a plain chunk
    of a request that `prompts` maps to `kind` (a prompt in flight): what a
    reader of a stream gets most, in one call, not a `decode` call a chunk.

    Each goes to `out` as its JSON object, checked: a dict that the garbage
    collector does not track (a read's chunks may wait in a queue by the
    thousand; as messages, they made it work for each). `chunk_of` makes the
    message.

    Returns the index of the first payload that is something else (or
    `len(payloads)`), and that payload parsed as JSON if it parsed (for
    `decode_object`), else None (`decode` it to learn what is wrong).
    """
    loads = _loads
    append = out.append
    # The id last found in flight: a run of one prompt's chunks is looked up
    # once (nothing in this call can end it: a chunk is never a final reply).
    known: Any = _NONE
    for i in range(at, len(payloads)):
        try:
            obj = loads(payloads[i])
        except orjson.JSONDecodeError:
            return i, None
        if type(obj) is dict and len(obj) == 4 and obj.get("type") == "response.chunk":
            id_ = obj.get("id")
            if (
                (type(id_) is int or type(id_) is str)
                and (id_ == known or prompts.get(id_) is kind)
                and type(obj.get("seq")) is int
                and type(obj.get("text")) is str
            ):
                known = id_
                append(obj)
                continue
        return i, obj
    return len(payloads), None


def chunk_of(obj: dict[str, Any]) -> ResponseChunk:
    """The `ResponseChunk` of a plain chunk's JSON object (`type`, `id`, `seq`,
    `text`), its members checked already (`decode_chunks`)."""
    # Its fields set here, not by a call of the class: ~0.1 µs less a chunk
    # (every field is set: a chunk made so compares equal to one made the
    # usual way, which the codec's round-trip tests check).
    chunk = _new(ResponseChunk)
    chunk.id = obj["id"]
    chunk.seq = obj["seq"]
    chunk.text = obj["text"]
    chunk.kind = chunk.data = None
    return chunk


def _request_id_of(obj: dict[str, Any]) -> RequestId | None:
    rid = obj.get("id")
    return rid if type(rid) is int or type(rid) is str else None


def _undecodable(payload: bytes | bytearray | memoryview, exc: Exception) -> RemoteProtocolError:
    try:
        bytes(payload).decode("utf-8")
    except UnicodeDecodeError as uexc:
        return RemoteProtocolError(
            f"payload is not UTF-8 text (bad byte at offset {uexc.start})", ErrorCode.BAD_FRAME
        )
    return RemoteProtocolError(f"payload is not JSON: {exc}")


def _untyped(obj: dict[str, Any]) -> RemoteProtocolError:
    rid = _request_id_of(obj)
    if "type" not in obj:
        return RemoteProtocolError("message has no 'type' field", request_id=rid)
    name = obj["type"]
    if type(name) is not str:
        return RemoteProtocolError(
            f"field 'type' must be a string, got {_kind(name)}", request_id=rid
        )
    return RemoteProtocolError(
        f"unknown message type {name!r}", ErrorCode.UNKNOWN_TYPE, request_id=rid
    )


def _describe(exc: BaseException, _type: Any = None) -> str:
    if isinstance(exc, WrongKind):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field missing"
    return f"invalid value ({exc})"


def _invalid(name: str, obj: dict[str, Any], exc: Exception) -> RemoteProtocolError:
    if isinstance(exc, cattrs.BaseValidationError):
        problems = cattrs.transform_error(exc, path="$", format_exception=_describe)
    else:
        problems = [_describe(exc)]
    return RemoteProtocolError(
        f"{name}: " + "; ".join(problems), request_id=_request_id_of(obj), message_type=name
    )
