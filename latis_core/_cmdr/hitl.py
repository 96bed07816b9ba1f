"""The human in the loop, the controller's half: questions into the inbox (or
answered by the approval policy), notifications, usage (mixed into `Controller`).

The prompt engine (`latis_core._cmdr.prompts`) calls two hooks: `_on_question`
when an agent asks something, `_on_prompt_end` when a prompt ends. Everything
else here is read by the daemon's `inbox.*` and `usage` methods.

A2A task states (for `--json`): a session `busy` is `working`, `waiting` is
`input-required`; a prompt `complete` is `completed`, `error` is `failed`,
`cancelled` is `canceled`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from latis_core._cmdr import inbox as _inbox
from latis_core._cmdr import usage as _usage
from latis_core._cmdr.a2a import a2a_state
from latis_core._cmdr.notifier import Notifier
from latis_core._cmdr.notify import NotifyConfig
from latis_core._cmdr.policy import choose_option, decide, facts_of
from latis_core._errors import AlreadyAnswered
from latis_core._wire.messages import InputRequest

if TYPE_CHECKING:
    import trio

    from latis_core._cmdr.config import Config
    from latis_core._cmdr.controller import UnitRuntime
    from latis_core._cmdr.prompts import PromptRecord
    from latis_core._cmdr.state import StateDB

__all__ = ["HumanLoop"]

log = logging.getLogger("latis.cmdr")

_T = TypeVar("_T")

class HumanLoop:
    """Inbox, approval policy, notifications and usage (mixed into `Controller`)."""

    # Provided by the controller.
    config: Config
    state: StateDB
    units: dict[str, UnitRuntime]
    _nursery: trio.Nursery

    if TYPE_CHECKING:

        async def db(self, fn: Callable[..., _T], *args: Any) -> _T: ...

        async def read(self, fn: Callable[..., _T], *args: Any) -> _T: ...

        @property
        def reads(self) -> StateDB: ...

        def _notify(self, sid: str, state: str) -> None: ...

    _notifiers: dict[NotifyConfig, Notifier]

    # ---- questions -------------------------------------------------------------------

    async def _on_question(self, record: PromptRecord, ev: InputRequest) -> bool:
        """Store a question; answer it by the policy, or by an answer given while
        the unit was away. True: it waits for a person (the session is `waiting`)."""
        rt = self.units.get(record.unit)
        agent = rt.config.agent if rt is not None else "?"
        item = await self.db(
            _inbox.record_question, self.state, record.id, ev.input, ev.question,
            list(ev.options), ev.kind, ev.data,
        )
        if item.answer is not None:
            # Answered while the unit was away (a daemon restart): say it again.
            if record.stream is not None:
                record.stream.answer_nowait(ev.input, item.answer)
            return False
        action, rule = decide(self.config.policy, facts_of(record.unit, agent, ev.kind, ev.data))
        if rule is not None and action in ("allow", "deny"):
            text = choose_option(action, ev.options)
            try:
                await self.db(_inbox.answer_question, self.state, record.id, ev.input, text,
                              f"rule {rule.name}", rule.name)
            except AlreadyAnswered:
                return False
            log.info("question %s.%d (unit %s) answered %r by rule %s",
                     record.id, ev.input, record.unit, text, rule.name)
            if record.stream is not None:
                record.stream.answer_nowait(ev.input, text)
            return False
        self._event("waiting", record, question=ev.question, input=ev.input)
        return True

    async def inbox_list(self, include_answered: bool = False) -> list[dict[str, Any]]:
        """The inbox's items, oldest first (open ones only, unless `include_answered`)."""
        items = await self.read(_inbox.inbox_items, self.reads, include_answered)
        out = []
        for item in items:
            entry = item.to_dict()
            entry["a2a_state"] = a2a_state(entry["state"])
            out.append(entry)
        return out

    # ---- notifications ---------------------------------------------------------------

    def _on_prompt_end(self, record: PromptRecord, end: dict[str, Any]) -> None:
        """A prompt ended: notify (complete, failed or cancelled)."""
        outcome = str(end.get("outcome"))
        event = {"complete": "complete", "cancelled": "cancelled"}.get(outcome, "failed")
        extra: dict[str, Any] = {}
        if event == "failed":
            extra["error"] = f"{end.get('code')}: {end.get('message')}"
        self._event(event, record, **extra)

    def _event(self, kind: str, record: PromptRecord, **extra: Any) -> None:
        rt = self.units.get(record.unit)
        config = rt.config.notify if rt is not None and rt.config.notify else self.config.notify
        if not config.enabled:
            return
        notifiers = self.__dict__.setdefault("_notifiers", {})
        notifier = notifiers.get(config)
        if notifier is None:
            notifier = notifiers[config] = Notifier(config)
            self._nursery.start_soon(notifier.run)
        notifier.add({
            "event": kind,
            "a2a_state": a2a_state({"waiting": "waiting"}.get(kind, kind)),
            "unit": record.unit,
            "session": record.session,
            "agent": rt.config.agent if rt is not None else "?",
            "prompt": record.id,
            "at": time.time(),
            **extra,
        })

    # ---- usage -----------------------------------------------------------------------

    async def usage(self, by: str = "session") -> dict[str, Any]:
        """Usage rolled up by `by` (latis_core._cmdr.usage.GROUPS)."""
        return await self.read(_usage.rollup, self.reads, by)

    async def context_of(self, session: str) -> dict[str, float] | None:
        """The session's last reported context use, or None."""
        return await self.read(_usage.context_of, self.reads, session)
