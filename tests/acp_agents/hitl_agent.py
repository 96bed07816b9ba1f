"""Asks what a person (or cmdr's approval policy) decides, and reports its usage.

Prompts with a meaning of their own (anything else is said back):
    run COMMAND     asks permission to run COMMAND (an `execute` tool call whose
                    rawInput carries the command); says `ran: COMMAND` when
                    allowed, `refused: COMMAND` when rejected, `cancelled`
    edit PATH       asks permission to edit PATH (an `edit` tool call whose
                    location is PATH); says `edited: PATH` or `refused: PATH`
    usage           says `counted`, sends a `usage_update` (context used and size,
                    the session's cost so far: USAGE_COST more each time) and ends
                    the turn with its tokens (PromptResponse.usage: USAGE_IN in,
                    USAGE_OUT out)
    elicit          asks for a branch and a count (`elicitation/create`, form mode)
                    and says `accept {...}`, `decline` or `cancel` (and writes it
                    to elicited.txt in the session's working directory)
    choose          asks to pick a colour, or to write another (a form shaped as
                    claude-agent-acp renders Claude's AskUserQuestion: a `oneOf`
                    of titled options, and a free-text "Other" field); says the same
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _base import BaseAgent, main, text_of
from acp import PromptResponse, start_tool_call
from acp.schema import (
    Cost,
    ElicitationFormSessionMode,
    ElicitationSchema,
    PermissionOption,
    ToolCallLocation,
    ToolCallUpdate,
    Usage,
    UsageUpdate,
)

OPTIONS = [
    PermissionOption(option_id="allow-once", name="Allow", kind="allow_once"),
    PermissionOption(option_id="reject-once", name="Reject", kind="reject_once"),
]
#: What each `usage` prompt reports.
USAGE_IN, USAGE_OUT, USAGE_COST, CONTEXT_SIZE = 1200, 300, 0.0125, 200000


class HitlAgent(BaseAgent):
    name = "hitl-agent"

    def __init__(self) -> None:
        super().__init__()
        self.turns: dict[str, int] = {}

    async def prompt(self, prompt: list[Any], session_id: str, **kwargs: Any) -> PromptResponse:
        verb, _, rest = text_of(prompt).partition(" ")
        if verb == "run":
            await self.ask(
                session_id, "execute", f"Run {rest}", rest, "ran", raw_input={"command": rest}
            )
        elif verb == "edit":
            await self.ask(
                session_id,
                "edit",
                f"Edit {rest}",
                rest,
                "edited",
                locations=[ToolCallLocation(path=rest)],
            )
        elif verb == "usage":
            return await self.usage(session_id)
        elif verb == "elicit":
            await self.elicit(
                session_id,
                {
                    "branch": {"type": "string", "description": "the branch to deploy"},
                    "count": {"type": "integer", "description": "how many replicas"},
                },
                "Which branch, and how many replicas?",
                ["branch"],
            )
        elif verb == "choose":
            await self.elicit(
                session_id,
                {
                    "colour": {
                        "type": "string",
                        "title": "Colour",
                        "oneOf": [
                            {"const": "Red", "title": "Red — warm"},
                            {"const": "Blue", "title": "Blue — cool"},
                        ],
                    },
                    "colour_custom": {"type": "string", "title": "Other"},
                },
                "Which colour?",
            )
        else:
            await self.say(session_id, text_of(prompt))
        return PromptResponse(stop_reason="end_turn")

    async def ask(
        self, session_id: str, kind: Any, title: str, what: str, done: str, **details: Any
    ) -> None:
        call = f"call-{kind}"
        await self.conn.session_update(
            session_id, start_tool_call(call, title, kind=kind, status="pending")
        )
        response = await self.conn.request_permission(
            session_id=session_id,
            tool_call=ToolCallUpdate(tool_call_id=call, title=title, kind=kind, **details),
            options=OPTIONS,
        )
        outcome = response.outcome
        if outcome.outcome != "selected":
            await self.say(session_id, "cancelled")
        elif outcome.option_id == "allow-once":
            await self.say(session_id, f"{done}: {what}")
        else:
            await self.say(session_id, f"refused: {what}")

    async def usage(self, session_id: str) -> PromptResponse:
        turn = self.turns[session_id] = self.turns.get(session_id, 0) + 1
        await self.say(session_id, "counted")
        await self.conn.session_update(
            session_id,
            UsageUpdate(
                session_update="usage_update",
                used=(USAGE_IN + USAGE_OUT) * turn,
                size=CONTEXT_SIZE,
                cost=Cost(amount=round(USAGE_COST * turn, 6), currency="USD"),
            ),
        )
        return PromptResponse(
            stop_reason="end_turn",
            usage=Usage(
                input_tokens=USAGE_IN,
                output_tokens=USAGE_OUT,
                total_tokens=USAGE_IN + USAGE_OUT,
            ),
        )

    async def elicit(
        self,
        session_id: str,
        properties: dict[str, Any],
        message: str,
        required: list[str] | None = None,
    ) -> None:
        schema = ElicitationSchema(properties=properties, required=required)
        response = await self.conn.create_elicitation(
            message,
            ElicitationFormSessionMode(session_id=session_id, requested_schema=schema),
        )
        content = getattr(response, "content", None)
        said = (
            response.action
            if content is None
            else (f"{response.action} {json.dumps(content, sort_keys=True)}")
        )
        # Also in the working directory: a cancelled prompt streams nothing more.
        with (Path(self.cwds[session_id]) / "elicited.txt").open("a") as f:
            f.write(said + "\n")
        await self.say(session_id, said)


if __name__ == "__main__":
    main(HitlAgent())
