"""`pipeline`: agents in the order named, each given the task and the previous output.

The first agent gets the task alone; each next one gets the task and the
output of the last agent that answered (an agent that fails is skipped: the
next one gets the output before it). The last output is the final answer.
No options; no routing (the order is the point).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from latis_core._cmdr.strategies.common import check_options
from latis_core._plugins.strategy import Team

__all__ = ["Pipeline"]

NEXT = "{task}\n\nThe previous agent ({previous}) produced:\n\n{output}\n\n" \
    "Continue from its output."


class Pipeline:
    """Each agent in turn works on the previous one's output."""

    routes: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, str]) -> None:
        check_options("pipeline", options, ())

    async def run(self, team: Team) -> str | None:
        """Run the stages in order; the last output is the answer."""
        output: str | None = None
        previous = ""
        for number, label in enumerate(team.labels, 1):
            text = team.task if output is None else NEXT.format(
                task=team.task, previous=previous, output=output.strip())
            reply = await team.ask(label, text, step=f"stage {number}")
            if reply is not None:
                output, previous = reply, label
        return output
