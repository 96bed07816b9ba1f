"""Streams a plan, a thought, a tool call and its updates, a mode change, then text.

Right after session/new (outside any prompt) it also sends an
available_commands_update, which the unit must keep for the next prompt.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _base import BaseAgent, main
from acp import (
    NewSessionResponse,
    PromptResponse,
    plan_entry,
    start_tool_call,
    text_block,
    tool_content,
    update_agent_thought_text,
    update_plan,
    update_tool_call,
)
from acp.helpers import update_available_commands, update_current_mode
from acp.schema import AvailableCommand


class ToolsAgent(BaseAgent):
    name = "tools-agent"

    async def new_session(
        self, cwd: str, mcp_servers: Any = None, **kwargs: Any
    ) -> NewSessionResponse:
        response = await super().new_session(cwd, mcp_servers, **kwargs)
        sid = response.session_id

        async def later() -> None:
            await asyncio.sleep(0.05)
            await self.conn.session_update(
                sid,
                update_available_commands([AvailableCommand(name="test", description="run tests")]),
            )

        self._later = asyncio.ensure_future(later())
        return response

    async def prompt(self, prompt: list[Any], session_id: str, **kwargs: Any) -> PromptResponse:
        send = self.conn.session_update
        await send(
            session_id,
            update_plan([plan_entry("read the file"), plan_entry("answer", priority="low")]),
        )
        await send(session_id, update_agent_thought_text("Let me look."))
        await send(session_id, start_tool_call("t1", "Read README", kind="read", status="pending"))
        await send(session_id, update_tool_call("t1", status="in_progress"))
        await send(
            session_id,
            update_tool_call(
                "t1", status="completed", content=[tool_content(text_block("# latis"))]
            ),
        )
        await send(session_id, update_current_mode("code"))
        await self.say(session_id, "done")
        return PromptResponse(stop_reason="end_turn")


if __name__ == "__main__":
    main(ToolsAgent())
