"""Asks permission before it "writes a file", then says what it was allowed.

Says `allowed: OPTION_ID`, `rejected: OPTION_ID` or `cancelled`. A prompt of
`twice` asks two times; one of `crash` asks, then exits (status 4) 0.3 s later,
before any answer.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from _base import BaseAgent, main, text_of
from acp import PromptResponse, start_tool_call
from acp.schema import PermissionOption, ToolCallUpdate

OPTIONS = [
    PermissionOption(option_id="allow-once", name="Allow", kind="allow_once"),
    PermissionOption(option_id="allow-always", name="Always allow", kind="allow_always"),
    PermissionOption(option_id="reject-once", name="Reject", kind="reject_once"),
]


class PermissionAgent(BaseAgent):
    name = "permission-agent"

    async def prompt(self, prompt: list[Any], session_id: str, **kwargs: Any) -> PromptResponse:
        text = text_of(prompt)
        times = 2 if text == "twice" else 1
        if text == "crash":
            asyncio.get_running_loop().call_later(0.3, os._exit, 4)
        for n in range(times):
            call = f"call-{n}"
            await self.conn.session_update(
                session_id, start_tool_call(call, "Write notes.txt", kind="edit", status="pending")
            )
            response = await self.conn.request_permission(
                session_id=session_id,
                tool_call=ToolCallUpdate(tool_call_id=call, title="Write notes.txt", kind="edit"),
                options=OPTIONS,
            )
            outcome = response.outcome
            if outcome.outcome == "selected":
                kind = next(o.kind for o in OPTIONS if o.option_id == outcome.option_id)
                verb = "allowed" if kind.startswith("allow") else "rejected"
                await self.say(session_id, f"{verb}: {outcome.option_id}\n")
            else:
                await self.say(session_id, "cancelled\n")
        return PromptResponse(stop_reason="end_turn")


if __name__ == "__main__":
    main(PermissionAgent())
