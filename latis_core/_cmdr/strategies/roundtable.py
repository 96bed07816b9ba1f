"""`roundtable`: N rounds; in each, every agent sees the task and all answers of the last.

Options: `rounds` (default 2); `final` (an agent's label): after the last
round that agent gets the task and the last round's answers and gives the
final answer. Without `final`, the last round's answers (each under its
agent's name) are the final answer. Agents that fail drop out of later
rounds. Replies may address another agent (`@label ...`) and are routed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from latis_core._cmdr.strategies.common import answers_block, check_agent, check_options
from latis_core._errors import StrategyFailed
from latis_core._plugins.strategy import Team

__all__ = ["Roundtable"]

ROUND = "{task}\n\nRound {number} of {rounds}. The answers of the last round:\n\n{answers}\n\n" \
    "Give your answer again, improved by what the others said."
FINAL = "{task}\n\nThe answers of the last round:\n\n{answers}\n\nGive the final answer."


class Roundtable:
    """Rounds in which everyone reads everyone's last answer."""

    routes: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, str]) -> None:
        check_options("roundtable", options, ("rounds", "final"))
        try:
            self.rounds = int(options.get("rounds", "2"))
        except ValueError:
            raise ValueError(f"roundtable: rounds must be a number, not "
                             f"{options['rounds']!r}") from None
        if self.rounds < 1:
            raise ValueError("roundtable: rounds must be at least 1")
        self.final = options.get("final")

    def check(self, labels: Sequence[str]) -> None:
        """Refuse a `final` that is not one of the agents."""
        if self.final is not None:
            check_agent("--final", self.final, labels)

    async def run(self, team: Team) -> str | None:
        """Run the rounds; then the final answer."""
        answers: dict[str, str] = {}
        for number in range(1, self.rounds + 1):
            if number == 1:
                prompts = {label: team.task for label in team.alive()}
            else:
                text = ROUND.format(task=team.task, number=number, rounds=self.rounds,
                                    answers=answers_block(answers))
                prompts = {label: text for label in team.alive()}
            answers = await team.ask_each(prompts, step=f"round {number}")
        if self.final is None:
            return answers_block(answers)
        final = await team.ask(self.final, FINAL.format(task=team.task,
                                                        answers=answers_block(answers)),
                               step="final")
        if final is None:
            raise StrategyFailed(f"the final agent {self.final} failed")
        return final
