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
        import trio

        from ._cmdr import call

        for unit in units:
            await call(cmdr, "unit.up", unit=unit)
        sessions = {unit: await cmdr.create_session(unit=unit) for unit in units}
        answers: dict[str, list[str]] = {unit: [] for unit in units}
        outcomes: dict[str, str] = {}
        width = max(map(len, units))

        async def one(unit: str) -> None:
            stream = sessions[unit].prompt(task)
            line = ""
            try:
                async for event in stream:
                    text = getattr(event, "text", "")
                    answers[unit].append(text)
                    if json_output:
                        print(json.dumps({"type": "chunk", "unit": unit, "text": text}),
                              flush=True)
                        continue
                    line += text
                    while "\n" in line:
                        head, line = line.split("\n", 1)
                        print(f"[{unit:>{width}}] {head}", flush=True)
                outcomes[unit] = stream.outcome or "complete"
            except Exception as exc:  # one agent failing must not stop the others
                outcomes[unit] = f"error: {exc}"
            if line and not json_output:
                print(f"[{unit:>{width}}] {line}", flush=True)

        async with trio.open_nursery() as nursery:
            for unit in units:
                nursery.start_soon(one, unit)
        for unit in units:
            result = {"type": "result", "unit": unit, "session": sessions[unit].id,
                      "outcome": outcomes.get(unit), "answer": "".join(answers[unit])}
            if json_output:
                print(json.dumps(result))
            else:
                print(f"\n== {unit} ({result['outcome']}) ==\n{result['answer']}")
        return OK if all(o == "complete" for o in outcomes.values()) else ERROR

    return run_with_cmdr(work)
