"""What the test agents share: a base `acp.Agent` and `main` to run one over stdio.

Each agent is a script run as its own process with `sys.executable`; this
directory is on its `sys.path` (the script's own folder), so `import _base`
works. They use the real ACP SDK (`agent-client-protocol`), the asyncio side.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from acp import (
    Agent,
    InitializeResponse,
    NewSessionResponse,
    run_agent,
    update_agent_message_text,
)
from acp.interfaces import Client
from acp.schema import AgentCapabilities, Implementation

_ids = itertools.count(1)


class BaseAgent(Agent):
    """Answers initialize and session/new; `say` streams one text chunk."""

    name = "base"
    load = False

    def __init__(self) -> None:
        self.cwds: dict[str, str] = {}
        self.client_capabilities: Any = None

    def on_connect(self, conn: Client) -> None:
        self.conn = conn

    async def initialize(
        self,
        protocol_version: int,
        client_capabilities: Any = None,
        client_info: Any = None,
        **kwargs: Any,
    ) -> InitializeResponse:
        self.client_capabilities = client_capabilities
        return InitializeResponse(
            protocol_version=protocol_version,
            agent_capabilities=AgentCapabilities(load_session=self.load),
            agent_info=Implementation(name=self.name, version="1.0"),
        )

    async def new_session(
        self, cwd: str, mcp_servers: Any = None, **kwargs: Any
    ) -> NewSessionResponse:
        sid = f"{self.name}-{next(_ids)}"
        self.cwds[sid] = cwd
        return NewSessionResponse(session_id=sid)

    async def say(self, session_id: str, text: str) -> None:
        await self.conn.session_update(session_id, update_agent_message_text(text))


def text_of(prompt: list[Any]) -> str:
    """The text of a prompt's content blocks."""
    return "".join(getattr(block, "text", "") or "" for block in prompt)


def main(agent: Agent) -> None:
    asyncio.run(run_agent(agent))
