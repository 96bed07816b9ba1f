"""`format=claude-stream-json`: Claude Code's JSON lines read as chunks."""

from __future__ import annotations

from typing import Any

import orjson

from latis_core._plugins.agent import Reply

#: In a JSON-lines format, a line longer than this is not parsed (it is passed on as text).
JSON_LINE_LIMIT = 32 * 1024 * 1024


async def json_line(reply: Reply, line: str) -> dict[str, Any] | None:
    """The JSON object on `line`; a line that is not one is sent as text (None)."""
    try:
        event = orjson.loads(line) if len(line) < JSON_LINE_LIMIT else None
    except orjson.JSONDecodeError:
        event = None
    if not isinstance(event, dict):
        if line.strip():
            await reply.send(line)
        return None
    return event


class _ClaudeStream:
    """Claude Code's stream-json output, as chunks.

    What `claude -p --output-format stream-json --verbose` prints, one JSON
    object a line: with `--include-partial-messages`, `stream_event` lines
    carry the model's text deltas (each a text chunk); `assistant` lines carry
    whole messages, whose `tool_use` blocks become `tool_call` chunks (text:
    the tool's name; data: id, name, input) and whose text blocks are sent
    when no deltas came; the `result` line's tokens and cost become a `usage`
    chunk; a `result` line with `is_error` makes the prompt fail with its text.
    Other lines (system, user, tool results, the final result's text)
    are not sent; a line that is not JSON is sent as text.
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        #: Whether text came as deltas (then whole messages' text is a repeat).
        self.deltas = False
        #: The error that the result line reported, if any.
        self.error: str | None = None

    async def line(self, line: str) -> None:
        event = await json_line(self.reply, line)
        if event is None:
            return
        kind = event.get("type")
        if kind == "stream_event":
            inner = event.get("event")
            if isinstance(inner, dict) and inner.get("type") == "content_block_delta":
                delta = inner.get("delta")
                if isinstance(delta, dict) and delta.get("type") == "text_delta":
                    self.deltas = True
                    text = delta.get("text")
                    if isinstance(text, str) and text:
                        await self.reply.send(text)
        elif kind == "assistant":
            message = event.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            for block in content if isinstance(content, list) else ():
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "tool_use":
                    name = str(block.get("name") or "")
                    data = {"id": block.get("id"), "name": name, "input": block.get("input")}
                    parent = event.get("parent_tool_use_id")
                    if parent:
                        data["parent"] = parent
                    await self.reply.send(name, kind="tool_call", data=data)
                elif block.get("type") == "text" and not self.deltas:
                    text = block.get("text")
                    if isinstance(text, str) and text:
                        await self.reply.send(text)
        elif kind == "result":
            await self._usage(event)
        if kind == "result" and event.get("is_error"):
            said = event.get("result") or event.get("errors") or event.get("subtype")
            self.error = str(said or "an error")

    async def _usage(self, event: dict[str, object]) -> None:
        """The result line's tokens (`usage`) and cost (`total_cost_usd`), as reported."""
        usage = event.get("usage")
        data: dict[str, object] = {}
        if isinstance(usage, dict):
            data["usage"] = usage
        if isinstance(event.get("total_cost_usd"), int | float):
            data["total_cost_usd"] = event["total_cost_usd"]
        if isinstance(event.get("modelUsage"), dict):
            data["model_usage"] = event["modelUsage"]
        if data:
            await self.reply.send(kind="usage", data=data)
