"""`format=codex-json`: Codex's `codex exec --json` events read as chunks."""

from __future__ import annotations

from latis_agents.command.claude_stream import json_line

from latis_core._plugins.agent import Reply

__all__ = ["_CodexStream"]


class _CodexStream:
    """`codex exec --json` output, as chunks.

    One JSON event a line: a completed `agent_message` item is the answer's
    text; other completed items (commands run, file changes, reasoning, MCP
    calls) become chunks of their item type with the item as data;
    `turn.completed` carries the turn's `usage`, sent as a `usage` chunk;
    `turn.failed` and `error` make the prompt fail with their message. A
    line that is not JSON is sent as text.
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        #: The error the events reported, if any.
        self.error: str | None = None

    async def line(self, line: str) -> None:
        event = await json_line(self.reply, line)
        if event is None:
            return
        kind = event.get("type")
        if kind == "item.completed":
            item = event.get("item")
            if not isinstance(item, dict):
                return
            item_type = item.get("type") or item.get("item_type")
            text = item.get("text")
            if item_type in ("agent_message", "assistant_message") and isinstance(text, str):
                await self.reply.send(text)
            elif isinstance(item_type, str):
                await self.reply.send(kind=item_type, data=item)
        elif kind == "turn.completed":
            usage = event.get("usage")
            if isinstance(usage, dict):
                await self.reply.send(kind="usage", data={"usage": usage})
        elif kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            self.error = str(message or "the turn failed")
        elif kind == "error":
            self.error = str(event.get("message") or "an error")
