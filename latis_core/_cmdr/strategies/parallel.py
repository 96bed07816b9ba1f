"""`parallel`: the same task to every agent at once; their answers gathered.

Options: `merge_with` (an agent's label): once all have answered, that agent
gets the task and every answer and is asked to merge them; its reply is the
final answer. Without it there is no final answer: each agent's stands.
Replies may address another agent (`@label ...`) and are routed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from latis_core._cmdr.strategies.common import answers_block, check_agent, check_options
from latis_core._errors import StrategyFailed
from latis_core._plugins.strategy import Team

__all__ = ["Parallel"]

MERGE = "{task}\n\nThese are the answers of {count} agents:\n\n{answers}\n\n" \
    "Merge them into one answer."


class Parallel:
    """Every agent answers the task at once; optionally one merges the answers."""

    routes: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, str]) -> None:
        check_options("parallel", options, ("merge_with",))
        self.merge_with = options.get("merge_with")

    def check(self, labels: Sequence[str]) -> None:
        """Refuse a `merge_with` that is not one of the agents."""
        if self.merge_with is not None:
            check_agent("--merge-with", self.merge_with, labels)

    async def run(self, team: Team) -> str | None:
        """Ask everyone; then, with `merge_with`, ask that agent to merge."""
        answers = await team.ask_each({label: team.task for label in team.alive()},
                                      step="answer")
        if self.merge_with is None:
            return None
        text = MERGE.format(task=team.task, count=len(answers), answers=answers_block(answers))
        merged = await team.ask(self.merge_with, text, step="merge")
        if merged is None:
            raise StrategyFailed(f"the merging agent {self.merge_with} failed")
        return merged
