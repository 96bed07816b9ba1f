"""Starts to answer, writes its last words to stderr, then exits with status 3."""

from __future__ import annotations

import os
import sys
from typing import Any

from _base import BaseAgent, main
from acp import PromptResponse


class CrashAgent(BaseAgent):
    name = "crash-agent"

    async def prompt(self, prompt: list[Any], session_id: str, **kwargs: Any) -> PromptResponse:
        await self.say(session_id, "starting ")
        print("loading the model", file=sys.stderr)
        print("fatal: the model server went away", file=sys.stderr, flush=True)
        os._exit(3)


if __name__ == "__main__":
    main(CrashAgent())
