"""Echoes each prompt back, one agent_message_chunk per word; loads sessions.

Prompts with a meaning of their own:
    fail: MESSAGE   answer with a JSON-RPC error (code -32001) with MESSAGE
    boom: MESSAGE   raise RuntimeError(MESSAGE) (the SDK answers "Internal error")
    pid             say this process's pid
    cwd             say the session's working directory
    history         say how many prompts the session has had, and whether it was loaded

With --persist, each session's history is kept in <cwd>/.echo-sessions/<id>.json,
so that another process of this agent can load it (session/load).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from _base import BaseAgent, main, text_of
from acp import LoadSessionResponse, PromptResponse, RequestError, update_user_message_text

PERSIST = "--persist" in sys.argv


class EchoAgent(BaseAgent):
    name = "echo-agent"
    load = True

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[str]] = {}
        self.loaded: set[str] = set()

    def _file(self, cwd: str, session_id: str) -> Path:
        return Path(cwd) / ".echo-sessions" / f"{session_id}.json"

    def _save(self, session_id: str) -> None:
        if PERSIST:
            path = self._file(self.cwds[session_id], session_id)
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(self.history[session_id]))

    async def load_session(
        self, cwd: str, session_id: str, mcp_servers: Any = None, **kwargs: Any
    ) -> LoadSessionResponse:
        if session_id not in self.history:
            path = self._file(cwd, session_id)
            if not PERSIST or not path.exists():
                raise RequestError.resource_not_found(session_id)
            self.history[session_id] = json.loads(path.read_text())
        self.cwds[session_id] = cwd
        self.loaded.add(session_id)
        for text in self.history[session_id]:  # the replay session/load calls for
            await self.conn.session_update(session_id, update_user_message_text(text))
            await self.say(session_id, text)
        return LoadSessionResponse()

    async def prompt(self, prompt: list[Any], session_id: str, **kwargs: Any) -> PromptResponse:
        text = text_of(prompt)
        if text.startswith("fail: "):
            raise RequestError(-32001, text.removeprefix("fail: "))
        if text.startswith("boom: "):
            raise RuntimeError(text.removeprefix("boom: "))
        history = self.history.setdefault(session_id, [])
        if text == "pid":
            await self.say(session_id, str(os.getpid()))
        elif text == "cwd":
            await self.say(session_id, self.cwds[session_id])
        elif text == "history":
            loaded = "loaded" if session_id in self.loaded else "new"
            await self.say(session_id, f"{len(history)} prompts, {loaded}")
        else:
            words = text.split()
            for i, word in enumerate(words):
                await self.say(session_id, word if i == len(words) - 1 else word + " ")
        history.append(text)
        self._save(session_id)
        return PromptResponse(stop_reason="end_turn")


if __name__ == "__main__":
    main(EchoAgent())
