"""The strict converter config is structured with, and how its errors read.

`_STRICT` is the wire codec's converter made strict: unknown keys are errors,
an array is never read from a string, every value's kind is checked.
`_faults` turns a structuring error into (key path, message) pairs, each
message saying what was expected and what was found (`_kind`: TOML's words).
"""

from __future__ import annotations

import difflib
import enum
import functools
import os
import types
import typing
from collections import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from latis_core._cmdr.config_lines import _Keys
from latis_core._wire.codec import converter as _wire_converter

_KINDS: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "a table",
}


def _kind(value: object) -> str:
    """What TOML calls `value`'s kind."""
    if type(value) is float:
        return "a float"  # beside "expected an integer", "a number" would confuse
    return _KINDS.get(type(value), "a date or time")


class _Wrong(TypeError):
    """A value of the wrong kind (or not among the allowed ones)."""

    def __init__(self, expected: str, value: object, found: str | None = None) -> None:
        super().__init__(f"expected {expected}, got {found or _kind(value)}")


def _expected(t: Any) -> str:
    """How to say what a value of type `t` must be."""
    if t in _KINDS:
        return _KINDS[t]
    origin = typing.get_origin(t) or t
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if isinstance(origin, type):
        if issubclass(origin, enum.Enum):
            return "one of " + ", ".join(repr(m.value) for m in origin)
        if issubclass(origin, Mapping) or attrs.has(origin):
            return "a table"
        if issubclass(origin, list | tuple | set | frozenset | Sequence):
            return "an array"
        if issubclass(origin, os.PathLike):
            return "a string"
    return getattr(t, "__name__", str(t))


def _enum(t: type[enum.Enum], value: object) -> enum.Enum:
    try:
        return t(value)
    except ValueError:
        raise _Wrong(_expected(t), value, repr(value)) from None


def _scalar(cls: type) -> Callable[[Any, Any], Any]:
    expected = _KINDS[cls]

    def hook(value: Any, t: Any) -> Any:
        if type(value) is not cls:
            raise _Wrong(expected, value)
        if t is not cls and isinstance(t, type) and issubclass(t, enum.Enum):
            return _enum(t, value)  # a str or int enum lands here (its MRO has str, int)
        return value

    return hook


def _float(value: Any, _: Any) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    raise _Wrong("a number", value)


def _path(value: Any, _: Any) -> Path:
    if type(value) is not str:
        raise _Wrong("a string", value)
    return Path(value)


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


#: What a sequence type is built as, from the list TOML gives.
_BUILD: dict[Any, Callable[[list[Any]], Any]] = {
    list: list,
    tuple: tuple,
    set: set,
    frozenset: frozenset,
    abc.Sequence: tuple,
    abc.MutableSequence: list,
    abc.Set: frozenset,
    abc.MutableSet: set,
}


def _is_sequence(t: Any) -> bool:
    origin = typing.get_origin(t) or t
    if origin is tuple:
        args = typing.get_args(t)
        return not args or (len(args) == 2 and args[1] is Ellipsis)  # homogeneous only
    return origin in _BUILD


def _is_mapping(t: Any) -> bool:
    return (typing.get_origin(t) or t) in (dict, abc.Mapping, abc.MutableMapping)


def _is_literal(t: Any) -> bool:
    return typing.get_origin(t) is Literal


def _is_enum(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, enum.Enum)


def _note(exc: Exception, index: int | str, t: Any) -> Exception:
    exc.add_note(IterableValidationNote(f"at {index!r}", index, t))
    return exc


def _make_strict() -> cattrs.Converter:
    conv = _wire_converter.copy(forbid_extra_keys=True, detailed_validation=True)
    for cls in (str, int, bool):
        conv.register_structure_hook(cls, _scalar(cls))
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(Path, _path)

    def sequence(t: Any) -> Callable[[Any, Any], Any]:
        args = typing.get_args(t)
        item_type = args[0] if args else Any
        origin = typing.get_origin(t) or t
        build: Callable[[list[Any]], Any] = _BUILD.get(origin, tuple)
        expected = "an array" + (" of strings" if item_type is str else "")

        def hook(value: Any, _: Any) -> Any:
            if type(value) is not list:
                raise _Wrong(expected, value)
            item = conv.get_structure_hook(item_type)
            out, errors = [], []
            for index, element in enumerate(value):
                try:
                    out.append(item(element, item_type))
                except Exception as exc:
                    errors.append(_note(exc, index, item_type))
            if errors:
                raise IterableValidationError(f"While structuring {t!r}", errors, t)
            return build(out)

        return hook

    def mapping(t: Any) -> Callable[[Any, Any], Any]:
        args = typing.get_args(t)
        value_type = args[1] if len(args) == 2 else Any
        expected = "a table" + (" of strings" if value_type is str else "")

        def hook(value: Any, _: Any) -> Any:
            if type(value) is not dict:
                raise _Wrong(expected, value)
            item = conv.get_structure_hook(value_type)
            out, errors = {}, []
            for key, element in value.items():
                try:
                    out[key] = item(element, value_type)
                except Exception as exc:
                    errors.append(_note(exc, key, value_type))
            if errors:
                raise IterableValidationError(f"While structuring {t!r}", errors, t)
            return out

        return hook

    def union(t: Any) -> Callable[[Any, Any], Any]:
        members = [a for a in typing.get_args(t) if a is not type(None)]
        if len(members) == 1:  # `X | None`: TOML has no null, so it is X
            return conv.get_structure_hook(members[0])
        expected = " or ".join(dict.fromkeys(_expected(m) for m in members))

        def hook(value: Any, _: Any) -> Any:
            for member in members:
                try:
                    return conv.structure(value, member)
                except Exception:
                    continue
            raise _Wrong(expected, value)

        return hook

    def literal(t: Any) -> Callable[[Any, Any], Any]:
        allowed = typing.get_args(t)

        def hook(value: Any, _: Any) -> Any:
            if value in allowed and type(value) in {type(a) for a in allowed}:
                return value
            raise _Wrong(_expected(t), value, repr(value))

        return hook

    def attrs_class(cls: type) -> Callable[[Any, Any], Any]:
        inner: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, conv)  # strict: conv's

        def hook(value: Any, _: Any) -> Any:
            if type(value) is not dict:
                raise _Wrong("a table", value)
            return inner(value, cls)

        return hook

    # Registered last, checked first.
    conv.register_structure_hook_factory(_is_sequence, sequence)
    conv.register_structure_hook_factory(_is_mapping, mapping)
    conv.register_structure_hook_factory(_is_union, union)
    conv.register_structure_hook_factory(_is_literal, literal)
    conv.register_structure_hook_factory(_is_enum, lambda t: lambda v, _: _enum(t, v))
    conv.register_structure_hook_factory(attrs.has, attrs_class)
    return conv


#: The converter for config: the wire's, made strict (unknown keys are errors,
#: an array is never read from a string, every value is checked).
_STRICT = _make_strict()


def _unknown(what: str, key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown {what} (did you mean {close[0]!r}?)"
    return f"unknown {what} (known: {', '.join(sorted(known)) or 'none'})"


def _faults(exc: BaseException, at: _Keys = ()) -> Iterator[tuple[_Keys, str]]:
    """Each fault in a structuring error: where (keys from the table) and what."""
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        for key in sorted(exc.extra_fields):
            yield at + (key,), _unknown("option", key, known)
    elif isinstance(exc, ClassValidationError):
        named, other = exc.group_exceptions()
        for sub, note in named:
            yield from _faults(sub, at + (note.name,))
        for sub in other:
            yield from _faults(sub, at)
    elif isinstance(exc, IterableValidationError):
        indexed, rest = exc.group_exceptions()
        for sub, inote in indexed:
            yield from _faults(sub, at + (inote.index,))
        for sub in rest:
            yield from _faults(sub, at)
    elif isinstance(exc, KeyError):
        yield at, "required option missing"
    elif isinstance(exc, _Wrong):
        yield at, str(exc)
    else:
        yield at, f"invalid value ({exc})"


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _from_text(t: Any, text: str) -> Any:
    """`text` read as type `t` (int, float, bool, or an optional of one); unchanged if not."""
    if _is_union(t):
        for arm in typing.get_args(t):
            if arm is not type(None):
                value = _from_text(arm, text)
                if value is not text:
                    return value
        return text
    lowered = text.strip().lower()
    if t is bool:
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        return text
    if t is int:
        try:
            return int(lowered, 0) if lowered[:2] in ("0x", "0o", "0b") else int(lowered)
        except ValueError:
            return text
    if t is float:
        try:
            return float(lowered)
        except ValueError:
            return text
    return text


@functools.cache
def _field_types(cls: Any) -> dict[str, Any]:
    """Each field of the attrs class `cls` and its type, resolved once per class
    (`get_type_hints` costs more than reading a unit's table)."""
    types_ = typing.get_type_hints(cls)
    return {f.name: types_.get(f.name, f.type) for f in attrs.fields(cls)}


def typed_text(cls: Any, table: Mapping[str, Any]) -> dict[str, Any]:
    """`table` with each string given for a number or boolean field of `cls` converted.

    Options typed on a command line (`--dial-option port=1`, `--set ready_timeout=5`,
    a URL's query) arrive as text; the schema says what they are. Text that does
    not read as the field's type is left as it is, for the converter to report.
    """
    if not attrs.has(cls):
        return dict(table)
    out = dict(table)
    if not any(isinstance(value, str) for value in table.values()):
        return out
    fields = _field_types(cls)
    for key, value in table.items():
        t = fields.get(key) or fields.get(key.replace("-", "_"))
        if isinstance(value, str) and t is not None:
            out[key] = _from_text(t, value)
    return out
