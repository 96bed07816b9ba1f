"""Usage and cost, as the agents report them: `usage` chunks, rolled up.

An adapter reports usage as a chunk of kind `usage` (PROTOCOL.md §4.8); it is
stored with the transcript like any chunk. Its `data` is read in any of the
shapes agents send (`normalize`): latis's own (`input_tokens`,
`output_tokens`, `cost`, `currency`, `context_used`, `context_size`,
`cumulative`), OpenAI's (`prompt_tokens`, `completion_tokens`), ACP's
`usage_update` (`used`, `size`, `cost: {amount, currency}`, a session total)
and the prompt response's `usage` (`inputTokens`, `outputTokens`, ...),
Claude Code's result (`usage`, `total_cost_usd`) and Codex's `turn.completed`
(`usage`).

`rollup` sums them by session, unit, agent, coordination or day. A total
reported cumulatively (ACP's cost) counts by its increase since the session's
last report. A session whose agent reported nothing is listed apart
(`unreported`): no number is invented for it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from latis_core._cmdr.state import StateDB

__all__ = ["GROUPS", "context_of", "normalize", "rollup", "session_context"]

#: What `rollup` groups by.
GROUPS = ("session", "unit", "agent", "coordination", "day")
_FIELDS = ("input_tokens", "output_tokens", "total_tokens", "cost")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def normalize(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """One usage report in latis's shape (keys absent where the agent said nothing)."""
    data = data or {}
    out: dict[str, Any] = {}
    inner = data.get("usage") if isinstance(data.get("usage"), dict) else data
    assert isinstance(inner, Mapping)
    pairs = {
        "input_tokens": ("input_tokens", "prompt_tokens", "inputTokens"),
        "output_tokens": ("output_tokens", "completion_tokens", "outputTokens"),
        "total_tokens": ("total_tokens", "totalTokens"),
    }
    for key, names in pairs.items():
        for name in names:
            found = _number(inner.get(name))
            if found is not None:
                out[key] = found
                break
    for name, key in (("cache_read_input_tokens", "cache_read_input_tokens"),
                      ("cache_creation_input_tokens", "cache_creation_input_tokens"),
                      ("cached_input_tokens", "cached_input_tokens"),
                      ("cachedReadTokens", "cache_read_input_tokens"),
                      ("cachedWriteTokens", "cache_creation_input_tokens")):
        found = _number(inner.get(name))
        if found is not None:
            out[key] = found
    cost = data.get("cost")
    if isinstance(cost, dict):  # ACP: {amount, currency}, the session's total so far
        amount = _number(cost.get("amount"))
        if amount is not None:
            out["cost"] = amount
            out["currency"] = str(cost.get("currency") or "USD")
            out["cumulative"] = True
    elif _number(cost) is not None:
        out["cost"] = _number(cost)
        out["currency"] = str(data.get("currency") or "USD")
    elif _number(data.get("total_cost_usd")) is not None:  # Claude Code's result
        out["cost"] = _number(data.get("total_cost_usd"))
        out["currency"] = "USD"
    if data.get("cumulative") is True:
        out["cumulative"] = True
    for key, names in (("context_used", ("context_used", "used")),
                       ("context_size", ("context_size", "size"))):
        for name in names:
            found = _number(data.get(name))
            if found is not None:
                out[key] = found
                break
    if "total_tokens" not in out and ("input_tokens" in out or "output_tokens" in out):
        out["total_tokens"] = out.get("input_tokens", 0.0) + out.get("output_tokens", 0.0)
    return out


def _key(by: str, row: Mapping[str, Any]) -> str | None:
    if by == "day":
        return time.strftime("%Y-%m-%d", time.gmtime(row["started_at"]))
    value = row[by]
    return None if value is None else str(value)


def rollup(state: StateDB, by: str = "session") -> dict[str, Any]:
    """Usage summed by `by` (one of `GROUPS`): `{"by", "rows", "unreported"}`.

    Each row: the group's `key`, `prompts` (how many ran), `reported` (how
    many had usage), the sums of `input_tokens`, `output_tokens`,
    `total_tokens` and `cost` (None where no report gave one), `currency`,
    and for sessions the last `context_used` / `context_size`.
    """
    if by not in GROUPS:
        raise ValueError(f"usage by {by!r}: expected one of {', '.join(GROUPS)}")
    with state._read() as db:
        prompts = db.execute(
            "SELECT p.id, p.session, u.name, u.config, c.coordination, p.started_at"
            " FROM prompts p JOIN sessions s ON s.id = p.session JOIN units u ON u.id = s.unit"
            " LEFT JOIN session_coordinations c ON c.session = p.session ORDER BY p.id"
        ).fetchall()
        chunks = db.execute(
            "SELECT prompt, data FROM chunks WHERE kind = 'usage' ORDER BY prompt, seq"
        ).fetchall()
    reports: dict[int, list[dict[str, Any]]] = {}
    for prompt, data in chunks:
        reports.setdefault(prompt, []).append(normalize(orjson.loads(data) if data else None))
    rows: dict[str | None, dict[str, Any]] = {}
    sessions: dict[str, dict[str, Any]] = {}
    last_total: dict[tuple[str, str], float] = {}
    for pid, session, unit, config, coordination, started_at in prompts:
        agent = str((orjson.loads(config) if config else {}).get("agent") or "?")
        info = {"session": session, "unit": unit, "agent": agent,
                "coordination": coordination, "started_at": started_at}
        seen = sessions.setdefault(session, {**info, "prompts": 0, "reported": 0})
        seen["prompts"] += 1
        key = _key(by, info)
        row = rows.setdefault(key, {"key": key, "prompts": 0, "reported": 0,
                                    **dict.fromkeys(_FIELDS), "currency": None})
        if by == "session":
            row.update(unit=unit, agent=agent)
        row["prompts"] += 1
        got = reports.get(pid)
        if not got:
            continue
        row["reported"] += 1
        seen["reported"] += 1
        for report in got:
            for field in _FIELDS:
                value = report.get(field)
                if value is None:
                    continue
                if report.get("cumulative") and field in ("cost", "total_tokens"):
                    previous = last_total.get((session, field), 0.0)
                    last_total[(session, field)] = value
                    value = max(0.0, value - previous)
                row[field] = (row[field] or 0.0) + value
            if report.get("currency"):
                row["currency"] = report["currency"]
            if by == "session":
                for field in ("context_used", "context_size"):
                    if field in report:
                        row[field] = report[field]
    unreported = [
        {k: s[k] for k in ("session", "unit", "agent", "prompts")}
        for s in sessions.values() if s["reported"] == 0
    ]
    return {"by": by, "rows": list(rows.values()), "unreported": unreported}


def context_of(state: StateDB, session: str) -> dict[str, float] | None:
    """The session's last reported context use (`context_used`, `context_size`), or None."""
    with state._lock:
        rows = state._db().execute(
            "SELECT c.data FROM chunks c JOIN prompts p ON p.id = c.prompt"
            " WHERE p.session = ? AND c.kind = 'usage' ORDER BY c.prompt DESC, c.seq DESC"
            " LIMIT 20",
            (session,),
        ).fetchall()
    for (data,) in rows:
        report = normalize(orjson.loads(data) if data else None)
        if "context_used" in report:
            return {k: report[k] for k in ("context_used", "context_size") if k in report}
    return None


#: The public name (`latis_core.session_context`).
session_context = context_of
