"""How a failed request is reported to a client: `error_code`, the one mapping."""

from __future__ import annotations

from latis_core import ErrorCode, RequestError
from latis_core._errors import error_code


def test_a_failure_wrapped_by_nurseries_is_reported_as_itself() -> None:
    """A failure that crossed nurseries reaches the user as its own code and message,
    not as "ExceptionGroup: Exceptions from Trio nursery"."""
    refused = RequestError(ErrorCode.BAD_MESSAGE.value, "web: port 1: in use")
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [refused])])
    assert error_code(nested) == ("bad_message", "web: port 1: in use")
    assert error_code(ExceptionGroup("g", [KeyError("no unit 'x'")])) == (
        "unknown_unit", "no unit 'x'")
    assert error_code(ExceptionGroup("g", [OverflowError("port must be 0-65535")])) == (
        "internal", "OverflowError: port must be 0-65535")
    two = ExceptionGroup("two", [ValueError("a"), ValueError("b")])
    assert error_code(two)[0] == "internal"
