"""`latis inbox` (list, answer, watch, log) and `latis usage`: what the agents
ask and what they cost, across every unit and session."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

from cyclopts import App, Parameter

from ._cmdr import OK, USAGE
from ._run import run_with_cmdr

inbox_app = App(
    name="inbox",
    help="""What the agents ask, on every unit and session, oldest first.

For example:
  latis inbox
  latis inbox answer 12.0 allow
  latis inbox answer 14.0 "use the staging database"
  latis inbox watch
  latis inbox log --json""",
    help_format="plaintext",
)

#: Who answers, as recorded (`answered_by`).
_BY = "inbox"


def _ago(when: float | None) -> str:
    if when is None:
        return "-"
    seconds = max(0, int(time.time() - when))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _table(items: list[dict[str, Any]]) -> None:
    from ._console import print_table

    print_table(
        ("id", "unit", "session", "agent", "question", "options", "since", "prompt"),
        [(item["id"], item["unit"], item["session"], item["agent"], item["question"],
          ", ".join(item["options"]) or "(free text)", _ago(item["since"]), str(item["prompt"]))
         for item in items])


@inbox_app.default
def inbox(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """List the open questions and permission requests of every unit and session.

    For example:
      latis inbox
      latis inbox --json | jq '.[] | select(.kind == "permission") | .id'

    Args:
        json_output: print a JSON array (fields: PROTOCOL.md §15.1, `inbox.list`).
    """

    async def work(cmdr: Any) -> int:
        items = (await cmdr.inbox_list())["items"]
        if json_output:
            print(json.dumps(items, indent=2))
        elif not items:
            print("nothing waits for an answer", file=sys.stderr)
        else:
            _table(items)
        return OK

    return run_with_cmdr(work)


@inbox_app.command
def answer(
    id: str,
    text: str,
    *,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Answer a question: by option name, option id or number, yes/no, or free text.

    Answered once: if someone answered first (another inbox, the prompt's own
    CLI, the dashboard), this says who, when and what, and exits 1.

    For example:
      latis inbox answer 12.0 allow
      latis inbox answer 12.0 2
      latis inbox answer 14.0 "use the staging database"

    Args:
        id: the question's id (`latis inbox` shows it: PROMPT.INPUT, e.g. 12.0).
        text: the answer.
        json_output: print the result as JSON.
    """

    import re

    if not re.fullmatch(r"[0-9]+\.[0-9]+", id, re.ASCII):
        print(f"latis: {id!r} is not a question's id: they look like 12.0 "
              "(`latis inbox` lists the open ones)", file=sys.stderr)
        return USAGE
    if not text:
        print(f"latis: the answer to {id} is empty; nothing was sent", file=sys.stderr)
        return USAGE

    async def work(cmdr: Any) -> int:
        result = await cmdr.inbox_answer(id, text, by=_BY)
        if json_output:
            print(json.dumps(result))
        else:
            print(f"answered {id}", file=sys.stderr)
        return OK

    return run_with_cmdr(work)


@inbox_app.command
def watch(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """Follow the inbox live: each question as it opens, and when it is answered.

    Prints one line per change (NDJSON with --json: `{"event": "open"|"answered"|
    "ended", "item": {...}}`; `ended`: its prompt ended without an answer) until Ctrl-C.

    For example:
      latis inbox watch
      latis inbox watch --json | jq -r 'select(.event == "open") | .item.question'

    Args:
        json_output: print NDJSON, one change a line.
    """

    async def work(cmdr: Any) -> int:
        known: dict[str, dict[str, Any]] = {}

        async def refresh(first: bool) -> None:
            items = (await cmdr.inbox_list(all=True))["items"]
            for item in items:
                before = known.get(item["id"])
                known[item["id"]] = item
                if before is not None and before["state"] == item["state"]:
                    continue
                event = item["state"]
                if first and event != "open":
                    continue  # history: `latis inbox log` shows the answered
                if json_output:
                    print(json.dumps({"event": event, "item": item}), flush=True)
                elif event == "open":
                    options = ", ".join(item["options"]) or "free text"
                    print(f"{item['id']}  {item['unit']}/{item['session']}  asks: "
                          f"{item['question']}  [{options}]", flush=True)
                elif event == "ended":
                    print(f"{item['id']}  ended unanswered (its prompt ended)", flush=True)
                else:
                    print(f"{item['id']}  answered by {item['answered_by']}: "
                          f"{item['answer']}", flush=True)

        await refresh(True)
        async with cmdr.subscribe() as updates:
            async for _update in updates:
                await refresh(False)
        return OK

    return run_with_cmdr(work)


@inbox_app.command
def log(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """Answered questions, oldest first: who answered (a person, or `rule NAME` of
    the approval policy), when, and what.

    For example:
      latis inbox log
      latis inbox log --json | jq '.[] | select(.rule != null)'

    Args:
        json_output: print a JSON array.
    """

    async def work(cmdr: Any) -> int:
        items = [i for i in (await cmdr.inbox_list(all=True))["items"]
                 if i["state"] == "answered"]
        if json_output:
            print(json.dumps(items, indent=2))
            return OK
        from ._console import print_table

        print_table(("id", "unit", "session", "question", "answer", "by", "when"),
                    [(item["id"], item["unit"], item["session"], item["question"],
                      str(item["answer"]), str(item["answered_by"]), _ago(item["answered_at"]))
                     for item in items])
        return OK

    return run_with_cmdr(work)


#: Sessions whose agent reported no usage listed one per line, at most; more: per agent.
UNREPORTED_LINES = 5


def usage(
    *,
    by: str = "session",
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Tokens and cost as the agents report them, by session, unit, agent,
    coordination or day. Agents that report nothing are listed apart: no number
    is made up.

    For example:
      latis usage
      latis usage --by day
      latis usage --by unit --json

    Args:
        by: session, unit, agent, coordination or day.
        json_output: print a JSON object ({by, rows, unreported}).
    """
    if by not in ("session", "unit", "agent", "coordination", "day"):
        print(f"latis: --by {by!r}: expected session, unit, agent, coordination or day",
              file=sys.stderr)
        return USAGE

    async def work(cmdr: Any) -> int:
        data = await cmdr.usage(by=by)
        if json_output:
            print(json.dumps(data, indent=2))
            return OK
        from ._console import print_table

        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:,.0f}"

        def cost(row: dict[str, Any]) -> str:
            if row["cost"] is None:
                return "-"
            return f"{row['cost']:.4f} {row['currency'] or ''}".strip()

        print_table((by, "prompts", "reported", "input", "output", "cost"),
                    [(str(row["key"] or "-"), str(row["prompts"]), str(row["reported"]),
                      num(row["input_tokens"]), num(row["output_tokens"]), cost(row))
                     for row in data["rows"]])
        silent = data["unreported"]
        if len(silent) <= UNREPORTED_LINES:
            for s in silent:
                print(f"session {s['session']} ({s['unit']}, agent {s['agent']}): its agent "
                      f"reported no usage for its {s['prompts']} prompt(s)", file=sys.stderr)
            return OK
        # Many: a line per agent, not per session (`--json` lists each).
        agents: dict[str, list[dict[str, Any]]] = {}
        for s in silent:
            agents.setdefault(str(s["agent"]), []).append(s)
        for agent, sessions in sorted(agents.items()):
            units = sorted({str(s["unit"]) for s in sessions})
            print(f"agent {agent} reported no usage for {sum(s['prompts'] for s in sessions)} "
                  f"prompt(s) in {len(sessions)} session(s) (units: {', '.join(units)}; "
                  "`latis usage --json` lists them)", file=sys.stderr)
        return OK

    return run_with_cmdr(work)
