"""What `latis top` shows: its three tables' rows, from the daemon's answers."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["INBOX_COLUMNS", "SESSION_COLUMNS", "UNIT_COLUMNS", "Rows", "Table", "rows"]

#: The text of a prompt shown in a table, at most (characters).
PROMPT_WIDTH = 15

UNIT_COLUMNS = ("unit", "provisioner", "connection", "sessions", "load")
SESSION_COLUMNS = ("session", "unit", "agent", "state", "prompt", "elapsed", "context", "cost")
INBOX_COLUMNS = ("id", "unit", "session", "question", "options", "since")

#: A table's rows: (key, cells) each; the key is the unit, session or question id.
Table = list[tuple[str, tuple[str, ...]]]


class Rows:
    """The three tables, built from what the daemon said (parts it did not say: empty)."""

    def __init__(self) -> None:
        self.units: Table = []
        self.sessions: Table = []
        self.inbox: Table = []
        #: Session id -> its unit, state and the open question's id (for the keys).
        self.session_info: dict[str, dict[str, Any]] = {}
        #: Question id -> its inbox item.
        self.items: dict[str, dict[str, Any]] = {}

    def as_json(self) -> dict[str, Any]:
        """The tables as lists of objects (`latis top --json`)."""

        def objects(columns: Sequence[str], table: Table) -> list[dict[str, str]]:
            return [dict(zip(columns, cells, strict=True)) for _, cells in table]

        return {
            "units": objects(UNIT_COLUMNS, self.units),
            "sessions": objects(SESSION_COLUMNS, self.sessions),
            "inbox": objects(INBOX_COLUMNS, self.inbox),
        }


def rows(
    status: Mapping[str, Any] | None,
    inbox: Mapping[str, Any] | None,
    usage: Mapping[str, Any] | None,
    states: Mapping[str, str] | None = None,
    now: float | None = None,
) -> Rows:
    """The tables from `status`, `inbox.list` and `usage` (by session) answers.

    `states` (session -> state, from a live subscription) wins over the
    state `status` gave, which may be older.
    """
    now = time.time() if now is None else now
    states = states or {}
    out = Rows()
    spend = {row["key"]: row for row in (usage or {}).get("rows", []) if row.get("key")}
    for unit in (status or {}).get("units", []):
        name = unit["unit"]
        agent = (unit.get("agent") or {}).get("name") or "-"
        sessions = unit.get("sessions") or []
        live = [states.get(s["id"], s["state"]) for s in sessions]
        busy, waiting = live.count("busy"), live.count("waiting")
        load = ", ".join(
            part
            for part in (f"{busy} busy" if busy else "", f"{waiting} waiting" if waiting else "")
            if part
        )
        out.units.append(
            (
                name,
                (
                    name,
                    unit.get("provisioner") or "-",
                    _connection(unit),
                    str(len(sessions)),
                    load or "idle",
                ),
            )
        )
        for session, state in zip(sessions, live, strict=True):
            sid = session["id"]
            prompt = session.get("prompt") or {}
            running = state in ("busy", "waiting")
            context = session.get("context") or spend.get(sid) or {}
            out.sessions.append(
                (
                    sid,
                    (
                        sid,
                        name,
                        agent,
                        state,
                        _clip(prompt.get("text") or "-", PROMPT_WIDTH),
                        _elapsed(now - prompt["started_at"]) if running and prompt else "-",
                        _context(context),
                        _cost(spend.get(sid)),
                    ),
                )
            )
            out.session_info[sid] = {
                "unit": name,
                "state": state,
                "question": (session.get("question") or {}).get("id"),
            }
    for item in (inbox or {}).get("items", []):
        if item.get("state", "open") != "open":
            continue
        out.items[item["id"]] = item
        out.inbox.append(
            (
                item["id"],
                (
                    item["id"],
                    item["unit"],
                    item["session"],
                    _clip(item["question"], 60),
                    ", ".join(item.get("options") or []) or "(free text)",
                    _elapsed(now - item["since"]) if item.get("since") else "-",
                ),
            )
        )
        info = out.session_info.get(item["session"])
        if info is not None and info["question"] is None:
            info["question"] = item["id"]
    return out


def _connection(unit: Mapping[str, Any]) -> str:
    return "FAILED" if unit.get("connection") == "unreachable" else str(unit.get("connection"))


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _elapsed(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _count(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 1000:
        return f"{value / 1000:.0f}k"
    return f"{value:.0f}"


def _context(context: Mapping[str, Any]) -> str:
    used = context.get("context_used")
    if used is None:
        return "-"
    size = context.get("context_size")
    return _count(used) + (f"/{_count(size)}" if size else "")


def _cost(row: Mapping[str, Any] | None) -> str:
    if not row or row.get("cost") is None:
        return "-"
    currency = row.get("currency") or "USD"
    return f"${row['cost']:.4f}" if currency == "USD" else f"{row['cost']:.4f} {currency}"
