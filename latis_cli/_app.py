"""The `latis` app. Command modules import nothing heavy at the top, so `--help` stays fast."""

from __future__ import annotations

from cyclopts import App

from latis_core._version import __version__

from ._agents import list_agents
from ._prompt import prompt

app = App(
    name="latis",
    help_format="markdown",
    help="A control plane for AI agents that run anywhere.",
    version=__version__,
    help_epilogue="Docs: README.md and PROTOCOL.md in the latis repository.",
)
app.command(prompt, name="prompt")
agents = App(name="agents", help="The agent adapters a unit can run.", help_format="markdown")
agents.command(list_agents, name="list")
app.command(agents)
