"""Reads and writes files and runs commands through the client; says the result.

One command per prompt (the rest are its words):
    read PATH [LINE LIMIT]    fs/read_text_file; says the content
    write PATH TEXT...        fs/write_text_file; says `written`
    run CWD COMMAND ARGS...   terminal/create (cwd CWD, `-` for none), wait_for_exit,
                              output, release; says `exit CODE: OUTPUT`
    kill COMMAND ARGS...      terminal/create, kill, wait_for_exit, release; says
                              the signal
    caps                      says the client capabilities from initialize
A request the client refuses makes it say `error: MESSAGE`.
"""

from __future__ import annotations

from typing import Any

from _base import BaseAgent, main, text_of
from acp import PromptResponse, RequestError


class FsAgent(BaseAgent):
    name = "fs-agent"

    async def prompt(self, prompt: list[Any], session_id: str, **kwargs: Any) -> PromptResponse:
        words = text_of(prompt).split(" ")
        conn = self.conn
        try:
            if words[0] == "read":
                line = int(words[2]) if len(words) > 2 else None
                limit = int(words[3]) if len(words) > 3 else None
                got = await conn.read_text_file(
                    path=words[1], session_id=session_id, line=line, limit=limit
                )
                await self.say(session_id, got.content)
            elif words[0] == "write":
                await conn.write_text_file(
                    path=words[1], content=" ".join(words[2:]), session_id=session_id
                )
                await self.say(session_id, "written")
            elif words[0] == "run":
                cwd = None if words[1] == "-" else words[1]
                term = await conn.create_terminal(
                    command=words[2], args=words[3:], cwd=cwd, session_id=session_id
                )
                tid = term.terminal_id
                status = await conn.wait_for_terminal_exit(session_id=session_id, terminal_id=tid)
                out = await conn.terminal_output(session_id=session_id, terminal_id=tid)
                await conn.release_terminal(session_id=session_id, terminal_id=tid)
                await self.say(session_id, f"exit {status.exit_code}: {out.output}")
            elif words[0] == "kill":
                term = await conn.create_terminal(
                    command=words[1], args=words[2:], session_id=session_id
                )
                tid = term.terminal_id
                await conn.kill_terminal(session_id=session_id, terminal_id=tid)
                status = await conn.wait_for_terminal_exit(session_id=session_id, terminal_id=tid)
                await conn.release_terminal(session_id=session_id, terminal_id=tid)
                await self.say(session_id, f"signal {status.signal}")
            elif words[0] == "caps":
                caps = self.client_capabilities
                await self.say(session_id, caps.model_dump_json(by_alias=True, exclude_none=True))
        except RequestError as exc:
            await self.say(session_id, f"error: {exc}")
        return PromptResponse(stop_reason="end_turn")


if __name__ == "__main__":
    main(FsAgent())
