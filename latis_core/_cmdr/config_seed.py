"""The seed's vocabulary for a unit's connection, mapped to the canonical tables.

The seed writes

    [units.vm]
    connection.dial = { via = "tcp", address = "localhost:9000" }
    [units.cloud]
    connection.accept = { via = "websocket", address = "0.0.0.0:8443" }

which is read as `dial = { type = "tcp", host = "localhost", port = 9000 }` and
`accept = [{ type = "websocket", host = "0.0.0.0", port = 8443 }]`: `via` names
the transport (or an address scheme: `ws`, `wss`), `address` is what follows
the scheme in the transport's URL (`unix:` and `local:` take a path and a
command), and any other key is the transport's own option, as in the
canonical tables. `connection.accept` may be one table or an array of them.
"""

from __future__ import annotations

from typing import Any

import attrs

from latis_core._cmdr.config_convert import _kind
from latis_core._cmdr.config_lines import _Keys
from latis_core._plugins import registry as _registry

__all__ = ["CONNECTION_KEYS", "connection_tables", "spelled_table"]

#: The keys of a `connection` table.
CONNECTION_KEYS = ("dial", "accept")

#: Problems found: (where, under the unit, message).
Problems = list[tuple[_Keys, str]]


def spelled_table(kind: str, options: Any) -> dict[str, Any]:
    """A plugin table for `options` (a dialer or listener): its type and what is not a default."""
    table: dict[str, Any] = {"type": kind}
    for field in attrs.fields(type(options)):
        value = getattr(options, field.name)
        if value != field.default:
            table[field.name] = value
    return table


def _url(via: str, kind: str, address: str) -> str:
    """The transport's URL for `address` (`via` is kept when it is a scheme: `wss`)."""
    if kind in ("unix", "local"):
        return f"{kind}:{address}"
    if via in _registry.SCHEMES:
        scheme = via
    else:
        scheme = next((s for s, k in _registry.SCHEMES.items() if k == kind), kind)
    return f"{scheme}://{address}"


def _entry(value: object, at: _Keys, what: str, problems: Problems) -> dict[str, Any] | None:
    """One `{ via, address, ... }` table as a canonical plugin table (None if it is wrong)."""
    if type(value) is not dict:
        problems.append((at, f"expected a table with 'via' (and 'address'), got {_kind(value)}"))
        return None
    via = value.get("via")
    if type(via) is not str:
        got = "missing" if via is None else f"expected a string, got {_kind(via)}"
        problems.append((at + ("via",), f"{got} (the transport: one of "
                         f"{', '.join(_registry.transport_names())})"))
        return None
    kind = _registry.SCHEMES.get(via, via)
    rest = {k: v for k, v in value.items() if k not in ("via", "address")}
    table: dict[str, Any] = {"type": kind}
    address = value.get("address")
    if address is not None:
        if type(address) is not str:
            problems.append((at + ("address",), f"expected a string, got {_kind(address)}"))
            return None
        if kind in _registry.transport_names():
            parse = _registry.dialer_from_url if what == "dial" else _registry.listener_from_url
            try:
                _, options = parse(_url(via, kind, address))
            except (ValueError, ImportError, LookupError) as exc:
                problems.append((at + ("address",), str(exc)))
                return None
            table = spelled_table(kind, options)
    return table | rest


def connection_tables(value: object, at: _Keys) -> tuple[dict[str, Any], Problems]:
    """The unit keys (`dial`, `accept`) that a `connection` table stands for, and its problems.

    `at` is the path of the `connection` table (for where problems are).
    """
    problems: Problems = []
    if type(value) is not dict:
        problems.append((at, "expected a table: connection.dial = { via = ..., address = ... }"
                         " and/or connection.accept = { ... }"))
        return {}, problems
    out: dict[str, Any] = {}
    for key in value:
        if key not in CONNECTION_KEYS:
            problems.append((at + (key,), f"unknown key {key!r} (expected: dial, accept)"))
    if "dial" in value:
        dial = _entry(value["dial"], at + ("dial",), "dial", problems)
        if dial is not None:
            out["dial"] = dial
    if "accept" in value:
        entries = value["accept"]
        listed = entries if type(entries) is list else [entries]
        accept = []
        for index, entry in enumerate(listed):
            where = at + ("accept", index) if type(entries) is list else at + ("accept",)
            table = _entry(entry, where, "accept", problems)
            if table is not None:
                accept.append(table)
        out["accept"] = accept
    return out, problems
