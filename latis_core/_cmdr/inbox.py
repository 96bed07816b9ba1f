"""The inbox: every question the agents ask, kept in state until someone answers.

A question (`input.request`) is stored when it arrives (`record_question`),
with the unit, session and agent it comes from. It is answered once
(`answer_question`): the first answer is stored with who gave it (`by`: a
person's CLI, the dashboard, or `rule NAME` for the approval policy) and when;
a second answer gets `AlreadyAnswered`, naming the first. So the inbox, a
running prompt's CLI, `attach` and the dashboard all see one answer.

Items are identified by `PROMPT.INPUT` (the daemon's prompt id, the
question's number in it), e.g. `"12.0"`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson

from latis_core._cmdr.state import StateDB, StateError
from latis_core._errors import AlreadyAnswered, ErrorCode, RequestError

__all__ = [
    "AlreadyAnswered",
    "InboxItem",
    "answer_question",
    "check_answer",
    "get_item",
    "inbox_items",
    "parse_item_id",
    "record_question",
]


@attrs.frozen
class InboxItem:
    """One question of an agent, open or answered (`inbox.list`'s items)."""

    prompt: int
    input: int
    unit: str
    session: str
    agent: str
    question: str
    options: tuple[str, ...]
    kind: str | None
    since: float
    answer: str | None
    answered_by: str | None
    answered_at: float | None
    rule: str | None
    data: dict[str, Any] | None
    #: The state of the question's prompt (`running` while it can be answered).
    prompt_state: str = "running"

    @property
    def id(self) -> str:
        return f"{self.prompt}.{self.input}"

    @property
    def state(self) -> str:
        """`open`, `answered`, or `ended` (its prompt ended before an answer)."""
        if self.answer is not None:
            return "answered"
        return "open" if self.prompt_state == "running" else "ended"

    def to_dict(self) -> dict[str, Any]:
        """The item as `inbox.list` sends it (PROTOCOL.md §15.1)."""
        out: dict[str, Any] = {
            "id": self.id,
            "unit": self.unit,
            "session": self.session,
            "agent": self.agent,
            "prompt": self.prompt,
            "input": self.input,
            "question": self.question,
            "options": list(self.options),
            "kind": self.kind,
            "since": self.since,
            "state": self.state,
            "answered_by": self.answered_by,
            "answered_at": self.answered_at,
            "answer": self.answer,
        }
        if self.rule is not None:
            out["rule"] = self.rule
        if self.data:
            out["details"] = self.data
        return out


def parse_item_id(item: str) -> tuple[int, int]:
    """(prompt, input) from an item id `PROMPT.INPUT`.

    Raises:
        ValueError: not an item id.
    """
    if not _ITEM_ID.fullmatch(item):
        raise ValueError(f"{item!r} is not an inbox item id (they look like 12.0)")
    prompt, _, number = item.partition(".")
    return int(prompt), int(number)


#: PROMPT.INPUT: ASCII digits, of a size SQLite's integers hold.
_ITEM_ID = re.compile(r"[0-9]{1,18}\.[0-9]{1,9}")


_SELECT = (
    "SELECT i.prompt, i.number, u.name, s.id, u.config, i.question, i.options, i.kind,"
    " i.asked_at, i.answer, i.answered_by, i.answered_at, i.rule, i.data, p.state"
    " FROM inputs i JOIN prompts p ON p.id = i.prompt JOIN sessions s ON s.id = p.session"
    " JOIN units u ON u.id = s.unit"
)


def _item(row: Sequence[Any]) -> InboxItem:
    (prompt, number, unit, session, config, question, options, kind, since, answer, by, at,
     rule, data, prompt_state) = row
    agent = orjson.loads(config).get("agent") if config else None
    return InboxItem(
        prompt, number, unit, session, str(agent or "?"), question,
        tuple(orjson.loads(options)), kind, since, answer, by, at, rule,
        None if data is None else orjson.loads(data), prompt_state,
    )


def inbox_items(state: StateDB, include_answered: bool = False) -> list[InboxItem]:
    """Questions of running prompts still open (or, with `include_answered`,
    every question ever asked), oldest first."""
    where = "" if include_answered else " WHERE i.answer IS NULL AND p.state = 'running'"
    with state._lock:
        rows = state._db().execute(f"{_SELECT}{where} ORDER BY i.asked_at, i.prompt, i.number")
        return [_item(row) for row in rows.fetchall()]


def get_item(state: StateDB, prompt: int, number: int) -> InboxItem | None:
    """One question, or None."""
    with state._lock:
        row = state._db().execute(
            f"{_SELECT} WHERE i.prompt = ? AND i.number = ?", (prompt, number)
        ).fetchone()
    return None if row is None else _item(row)


def record_question(
    state: StateDB,
    prompt: int,
    number: int,
    question: str,
    options: Sequence[str],
    kind: str | None,
    data: Mapping[str, Any] | None = None,
) -> InboxItem:
    """Store a question (asked again after a re-attach, the first record stays,
    with its answer if it has one); return it as it is now stored."""
    state.add_input(prompt, number, question, options, kind)
    if data:
        with state._write() as db:
            db.execute(
                "UPDATE inputs SET data = ? WHERE prompt = ? AND number = ? AND data IS NULL",
                (orjson.dumps(dict(data)).decode(), prompt, number),
            )
    item = get_item(state, prompt, number)
    assert item is not None
    return item


def answer_question(
    state: StateDB, prompt: int, number: int, text: str, by: str, rule: str | None = None
) -> InboxItem:
    """Answer a question once; return it answered.

    Raises:
        AlreadyAnswered: someone answered it first (the message says who, when).
        StateError: no such question.
    """
    now = state._clock()
    with state._write() as db:
        cursor = db.execute(
            "UPDATE inputs SET answer = ?, answered_at = ?, answered_by = ?, rule = ?"
            " WHERE prompt = ? AND number = ? AND answer IS NULL",
            (text, now, by, rule, prompt, number),
        )
        done = cursor.rowcount == 1
    item = get_item(state, prompt, number)
    if item is None:
        raise StateError(f"no question {prompt}.{number} in the inbox")
    if not done:
        raise AlreadyAnswered(
            f"question {item.id} was already answered by {item.answered_by or 'someone'}"
            f" at {_when(item.answered_at)}: {item.answer!r}"
        )
    return item


_YES_NO = frozenset({"y", "yes", "allow", "ok", "approve", "n", "no", "deny", "reject"})


def check_answer(item: InboxItem, text: str) -> str:
    """The answer to send for `text`: for a permission, one of the options
    (by name, by id, or by number from 1), or yes/no; free text otherwise.

    Raises:
        RequestError: (bad_message) a permission answer that is none of these.
    """
    if item.kind != "permission" or not item.options:
        return text
    folded = text.strip().casefold()
    for option in item.options:
        if option.casefold() == folded:
            return option
    ids = (item.data or {}).get("option_ids")
    if isinstance(ids, list) and any(str(i).casefold() == folded for i in ids):
        return text.strip()
    if folded.isdigit() and 1 <= int(folded) <= len(item.options):
        return item.options[int(folded) - 1]
    if folded in _YES_NO:
        return text.strip()
    raise RequestError(
        ErrorCode.BAD_MESSAGE.value,
        f"question {item.id} takes one of: {', '.join(item.options)} (or its number, or yes/no)",
    )


def _when(at: float | None) -> str:
    if at is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
