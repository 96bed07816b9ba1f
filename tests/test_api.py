"""The daemon's methods are named once: the spec, the daemon's table and the client agree."""

from __future__ import annotations

import inspect

import pytest

from latis_core import DaemonClient
from latis_core._cmdr import methods
from latis_core._cmdr.api import METHODS, Method, check_params


def test_every_method_has_a_spec_a_handler_and_a_client_method() -> None:
    """Each `Method` is in the spec table, the daemon's table, and on `DaemonClient`."""
    assert set(METHODS) == set(Method)
    assert set(methods.HANDLERS) == set(Method)
    for method in Method:
        wrapper = getattr(DaemonClient, method.value.replace(".", "_"), None)
        assert inspect.iscoroutinefunction(wrapper), method


def test_the_protocol_documents_every_method() -> None:
    """PROTOCOL.md's method table names every daemon method."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "PROTOCOL.md").read_text()
    missing = [m.value for m in Method if f"`{m.value}`" not in text]
    assert missing == []


@pytest.mark.parametrize(
    ("method", "params", "problem"),
    [
        (Method.UNIT_UP, {}, "params.unit: required"),
        (Method.UNIT_UP, {"unit": 3}, "params.unit: expected a string"),
        (Method.UNIT_UP, {"unit": "a", "force": True}, "params.force: unit.up takes no such"),
        (Method.COORDINATE, {"task": "t", "agents": "a,b"}, "params.agents: expected a list"),
        (Method.STATUS, {}, None),
        # JSON writes 3600 for 3600.0: a whole number is a number (but true is not).
        (Method.SESSION_PRUNE, {"idle": 3600}, None),
        (Method.SESSION_PRUNE, {"idle": 0.5}, None),
        (Method.SESSION_PRUNE, {"idle": True}, "params.idle: expected a number"),
        (Method.COORDINATION_LIST, {"limit": True}, "params.limit: expected an integer"),
        (Method.COORDINATION_LIST, {"limit": 2.0}, "params.limit: expected an integer"),
        (Method.COORDINATION_LIST, {"limit": 10**23}, "params.limit: expected an integer"),
        (Method.COORDINATE, {"task": "t", "agents": ["a"], "timeout": 30}, None),
        (Method.INBOX_LIST, {"all": 1}, "params.all: expected true or false"),
    ],
)
def test_params_are_checked_against_the_spec(
    method: Method, params: dict[str, object], problem: str | None
) -> None:
    """A call's parameters are refused with the parameter's path and what was expected."""
    found = check_params(method, params)
    assert (found is None) if problem is None else (found or "").startswith(problem)


async def test_the_client_refuses_bad_params_before_sending() -> None:
    """`DaemonClient.call` raises ValueError for parameters the method does not take."""
    with pytest.raises(ValueError, match="params.unit: required"):
        await DaemonClient(None).call(Method.UNIT_UP)  # type: ignore[arg-type]
