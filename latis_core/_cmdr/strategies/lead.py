"""`lead`: one agent plans and splits the task; latis dispatches the sub-tasks; the lead
gives the final answer.

Options: `lead` (an agent's label; default the first agent named). The lead
gets the task and `INSTRUCTIONS`, which ask for a plan in this format, one
sub-task per line (other lines are ignored)::

    TASK <agent>: <the sub-task, on one line>

`<agent>` is one of the other agents' labels; an agent may get several
sub-tasks (they run in order on it; different agents work at once). A plan
that does not parse (no TASK line, a line without `:`, an unknown agent, a
sub-task for the lead itself) is sent back once with the parse error; if
the second plan does not parse either, the coordination fails with that
error. The results (each under its agent and sub-task; a failed one says
so) go back to the lead, whose reply is the final answer. No routing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

import trio

from latis_core._cmdr.strategies.common import check_agent, check_options
from latis_core._errors import StrategyFailed
from latis_core._plugins.strategy import Team

__all__ = ["INSTRUCTIONS", "Lead", "PlanError", "parse_plan"]

INSTRUCTIONS = """You lead this task. Split it into sub-tasks for these agents: {workers}.
Answer with your plan only, one sub-task per line, in exactly this format:

TASK <agent>: <the sub-task, on one line>

An agent may get several sub-tasks. You will get their results and then give the final answer."""
RETRY = "Your plan could not be read: {error}\n\n" + INSTRUCTIONS
RESULTS = "{task}\n\nThe results of the sub-tasks:\n\n{results}\n\nGive the final answer."

_LINE = re.compile(r"^\s*TASK\b\s*(.*)$")


class PlanError(ValueError):
    """A plan that does not parse (the message says where and why)."""


def parse_plan(plan: str, workers: Sequence[str]) -> list[tuple[str, str]]:
    """The (agent, sub-task) pairs of a plan, in order.

    Raises:
        PlanError: no TASK line, a line without `agent: sub-task`, an agent not in `workers`.
    """
    tasks = []
    for number, line in enumerate(plan.splitlines(), 1):
        match = _LINE.match(line)
        if match is None:
            continue
        agent, sep, text = match.group(1).partition(":")
        agent, text = agent.strip(), text.strip()
        if not sep or not agent or not text:
            raise PlanError(f"line {number}: expected 'TASK <agent>: <sub-task>', got {line!r}")
        if agent not in workers:
            raise PlanError(f"line {number}: {agent!r} is not one of the agents "
                            f"({', '.join(workers)})")
        tasks.append((agent, text))
    if not tasks:
        raise PlanError("no line 'TASK <agent>: <sub-task>' in the plan")
    return tasks


class Lead:
    """A lead plans; the others do the sub-tasks; the lead answers."""

    routes: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, str]) -> None:
        check_options("lead", options, ("lead",))
        self.lead = options.get("lead")

    def check(self, labels: Sequence[str]) -> None:
        """Refuse a `lead` that is not one of the agents, or a lead with no one to lead."""
        lead = self.lead or labels[0]
        check_agent("--lead", lead, labels)
        if not [label for label in labels if label != lead]:
            raise ValueError("the lead strategy needs at least one agent besides the lead")

    async def run(self, team: Team) -> str | None:
        """Plan (once more if it does not parse), dispatch, gather, answer."""
        lead = self.lead or team.labels[0]
        workers = [label for label in team.labels if label != lead]
        instructions = INSTRUCTIONS.format(workers=", ".join(workers))
        plan = await self._ask_lead(team, lead, f"{team.task}\n\n{instructions}", "plan")
        try:
            tasks = parse_plan(plan, workers)
        except PlanError as first:
            team.note(f"the plan of {lead} did not parse ({first}); sent back once")
            plan = await self._ask_lead(
                team, lead, RETRY.format(error=first, workers=", ".join(workers)), "plan again")
            try:
                tasks = parse_plan(plan, workers)
            except PlanError as second:
                raise StrategyFailed(f"the plan of {lead} did not parse twice: {second}") from None
        results: list[str | None] = [None] * len(tasks)

        async def work(agent: str) -> None:
            for index, (who, text) in enumerate(tasks):
                if who == agent:
                    results[index] = await team.ask(agent, text, step=f"sub-task {index + 1}")

        async with trio.open_nursery() as nursery:
            for agent in dict.fromkeys(who for who, _ in tasks):
                nursery.start_soon(work, agent)
        gathered = "\n\n".join(
            f"--- {who}: {text} ---\n"
            + (result.strip() if result is not None else "(failed: no result)")
            for (who, text), result in zip(tasks, results, strict=True))
        return await self._ask_lead(team, lead, RESULTS.format(task=team.task, results=gathered),
                                    "final")

    async def _ask_lead(self, team: Team, lead: str, text: str, step: str) -> str:
        reply = await team.ask(lead, text, step=step)
        if reply is None:
            raise StrategyFailed(f"the lead {lead} failed")
        return reply
