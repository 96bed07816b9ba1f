"""`latis coordinate`: one task to several agents at once."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

from cyclopts import Parameter

from ._cmdr import ERROR, OK, USAGE
from ._run import run_with_cmdr


def coordinate(
    task: str,
    *,
    agents: Annotated[str, Parameter(name=["--agents", "-a"])],
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Give one task to several units' agents in parallel; show their answers; gather them.

    Each answer streams as it comes, line by line, prefixed with its unit.
    At the end every unit's whole answer is printed under its name (or, with
    --json, NDJSON events then one result object per unit).

    Examples
    --------
    ```
    latis coordinate --agents box,local "write a haiku about pipes"
    latis coordinate -a a,b,c --json "review this plan" | jq 'select(.type=="result")'
    ```

    Args:
        task: the task, sent to each agent as a prompt.
        agents: the units, separated by commas.
        json_output: NDJSON: chunk events, then a result per unit.
    """
    units = [u.strip() for u in agents.split(",") if u.strip()]
    if not units:
        print("latis: --agents needs at least one unit", file=sys.stderr)
        return USAGE

    async def work(cmdr: Any) -> int:
        from latis_core import agent_labels

        width = max(map(len, agent_labels(units)))
        answers: dict[str, list[str]] = {}
        lines: dict[str, str] = {}

        def show(event: Any) -> None:
            # The daemon runs the coordination; this only renders its events.
            if event.type == "chunk" and event.kind is None:
                answers.setdefault(event.agent, []).append(event.text)
            if json_output:
                print(json.dumps({"type": event.type, "unit": event.unit} | event.to_dict()),
                      flush=True)
                return
            if event.type == "chunk" and event.kind is None:
                line = lines.get(event.agent, "") + event.text
                while "\n" in line:
                    head, line = line.split("\n", 1)
                    print(f"[{event.agent:>{width}}] {head}", flush=True)
                lines[event.agent] = line
            elif event.type == "input":
                print(f"[{event.agent:>{width}}] asks: {event.text} "
                      f"(answer with: latis attach {event.session})", flush=True)
            elif event.type == "ended" and lines.get(event.agent):
                print(f"[{event.agent:>{width}}] {lines.pop(event.agent)}", flush=True)

        ended = await cmdr.coordinate(task, units, show)
        for event in ended:
            result = {"type": "result", "unit": event.unit, "agent": event.agent,
                      "session": event.session, "outcome": event.outcome,
                      "answer": "".join(answers.get(event.agent, []))}
            if event.error:
                result["error"] = event.error
            if json_output:
                print(json.dumps(result))
            else:
                outcome = event.outcome if not event.error else f"{event.outcome}: {event.error}"
                print(f"\n== {event.agent} ({outcome}) ==\n{result['answer']}")
        return OK if all(e.outcome == "complete" for e in ended) else ERROR

    return run_with_cmdr(work)
