"""Streams `tickN ` every 50 ms for 10 s, unless cancelled; records what it saw.

    slow_agent.py RECORD [--stubborn]

RECORD gets one JSON line per event: {"event": "prompt"}, {"event": "cancel"},
{"event": "stopped", "sent": N, "cancelled": bool}. A prompt of `pid` says the
pids of this process and of a child it started in its process group (a
`sleep`). With --stubborn it ignores SIGTERM and stays after its stdin ends,
so only SIGKILL ends it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from _base import BaseAgent, main, text_of
from acp import PromptResponse

RECORD = sys.argv[1]
STUBBORN = "--stubborn" in sys.argv


def record(**event: Any) -> None:
    with open(RECORD, "a") as f:
        f.write(json.dumps(event) + "\n")


class SlowAgent(BaseAgent):
    name = "slow-agent"

    def __init__(self) -> None:
        super().__init__()
        self.cancelled: set[str] = set()
        self.child: asyncio.subprocess.Process | None = None

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        record(event="cancel", session=session_id)
        self.cancelled.add(session_id)

    async def prompt(self, prompt: list[Any], session_id: str, **kwargs: Any) -> PromptResponse:
        if text_of(prompt) == "pid":
            self.child = await asyncio.create_subprocess_exec("sleep", "60")
            await self.say(session_id, f"{os.getpid()} {self.child.pid}")
            return PromptResponse(stop_reason="end_turn")
        self.cancelled.discard(session_id)
        record(event="prompt", session=session_id)
        sent = 0
        for i in range(200):
            if session_id in self.cancelled:
                break
            await self.say(session_id, f"tick{i} ")
            sent += 1
            await asyncio.sleep(0.05)
        cancelled = session_id in self.cancelled
        record(event="stopped", sent=sent, cancelled=cancelled)
        return PromptResponse(stop_reason="cancelled" if cancelled else "end_turn")


if __name__ == "__main__":
    if STUBBORN:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    main(SlowAgent())
    if STUBBORN:
        time.sleep(3600)
