"""`latis coordinate` (several agents on one task, with a strategy) and `latis coordination`
(the stored ones). The daemon runs the coordination; this renders its events."""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Annotated, Any

from cyclopts import App, Parameter

from ._cmdr import CANCELLED, ERROR, INTERRUPTED, OK, USAGE
from ._console import fail, print_json
from ._run import run_with_cmdr

#: A2A task states, as shown.
_MARK = {"queued": "·", "working": "…", "input-required": "?", "completed": "✓",
         "failed": "✗", "canceled": "⊘"}


def coordinate(
    task: str,
    *,
    agents: Annotated[str, Parameter(name=["--agents", "-a"])] = "",
    count: Annotated[int, Parameter(name="--count")] = 0,
    from_: Annotated[str | None, Parameter(name="--from")] = None,
    placement: Annotated[str, Parameter(name="--placement")] = "capacity",
    strategy: Annotated[str, Parameter(name=["--strategy", "-s"])] = "parallel",
    merge_with: Annotated[str | None, Parameter(name="--merge-with")] = None,
    rounds: Annotated[int | None, Parameter(name="--rounds")] = None,
    final: Annotated[str | None, Parameter(name="--final")] = None,
    lead: Annotated[str | None, Parameter(name="--lead")] = None,
    option: Annotated[tuple[str, ...], Parameter(name=["--option", "-o"])] = (),
    require: Annotated[str, Parameter(name="--require")] = "all",
    timeout: Annotated[float | None, Parameter(name="--timeout")] = None,
    agent_timeout: Annotated[float | None, Parameter(name="--agent-timeout")] = None,
    max_hops: Annotated[int, Parameter(name="--max-hops")] = 3,
    detach: Annotated[bool, Parameter(name="--detach", negative="")] = False,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Give one task to several units' agents, working together by a strategy.

    Strategies: parallel (everyone at once; --merge-with AGENT merges the
    answers), pipeline (in order, each gets the previous output), roundtable
    (--rounds N, each round sees all answers of the last; --final AGENT
    answers last), lead (--lead AGENT plans sub-tasks, the others do them, the
    lead answers). A unit named twice is two agents (`fast`, `fast#2`). In
    parallel and roundtable a reply line `@AGENT text` is sent to that agent
    (at most --max-hops in a chain).

    Placement: --agents also takes `group:NAME` (config's [groups]) and
    `label:NAME` (units whose `labels` hold NAME); `--count N --from POOL`
    adds N agents placed by capacity on POOL's units. A unit takes a session
    while it holds fewer than its `max_sessions` and has its `session_memory`
    free; until every agent fits, the task waits and says why.

    Every agent's stream shows as it comes: one panel per agent on a terminal,
    lines prefixed with the agent otherwise, NDJSON events with --json. An
    agent's question waits for an answer from `latis attach SESSION`. Ctrl-C
    cancels every running prompt on every unit and exits 130.

    For example:
      latis coordinate -a box,local "write a haiku about pipes"
      latis coordinate -a a,b,c --merge-with a "review this plan"
      latis coordinate -a a,b -s roundtable --rounds 3 --final a "design the API"
      latis coordinate -a lead,w,w -s lead --require any --agent-timeout 600 "port the tests"
      latis coordinate -a a,b --json "x" | jq 'select(.type=="final")'
      latis coordinate --count 8 --from pool --merge-with pool "find the bug"
      latis coordinate -a group:reviewers --strategy roundtable "review PR 12"
      latis coordinate -a a,b --detach "a long task"; latis coordination follow ID

    Args:
        task: the task.
        agents: units, group:NAME, label:NAME, by commas (a unit twice: two agents).
        count: that many agents placed by capacity on the units of --from.
        from_: a group, label:NAME, or units separated by commas.
        placement: the placement policy (latis.placement; default capacity).
        strategy: parallel, pipeline, roundtable, lead, or an installed one.
        merge_with: (parallel) the agent that merges the answers.
        rounds: (roundtable) how many rounds (default 2).
        final: (roundtable) the agent that gives the final answer.
        lead: (lead) the agent that plans (default the first).
        option: a strategy option KEY=VALUE (for strategies of plugins).
        require: all, any, or how many agents must succeed for the task to succeed.
        timeout: seconds for the whole task.
        agent_timeout: seconds for each prompt of an agent.
        max_hops: routed messages in one chain, at most.
        detach: print its id at once; it runs on (latis coordination follow ID).
        json_output: NDJSON: every event, then the result.
    """
    units = [u.strip() for u in agents.split(",") if u.strip()]
    if not units and not count:
        fail("name the agents: --agents UNIT,group:NAME,label:NAME and/or --count N --from POOL")
        return USAGE
    if count and not from_:
        fail("--count needs --from (a group, label:NAME, or units separated by commas)")
        return USAGE
    options: dict[str, str] = {}
    for item in option:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--option {item!r}: expected KEY=VALUE")
            return USAGE
        options[key] = value
    named: dict[str, object] = {"merge_with": merge_with, "rounds": rounds, "final": final,
                                "lead": lead}
    for key, given in named.items():
        if given is not None:
            options[key] = str(given)

    async def work(cmdr: Any) -> int:
        import latis_core

        settings = latis_core.CoordinationSettings(
            strategy=strategy, options=options, require=require, timeout=timeout,
            agent_timeout=agent_timeout, max_hops=max_hops, count=count, source=from_,
            placement=placement)
        if detach:
            try:
                started = await cmdr.coordinate(task, units, lambda event: None, settings,
                                                detach=True)
            except latis_core.RequestError as exc:
                return _refused(exc)
            if json_output:
                print(json.dumps({"id": started.id, "outcome": started.outcome}))
            else:
                print(started.id)
                print(f"latis: follow it with: latis coordination follow {started.id}",
                      file=sys.stderr)
            return OK
        names = list(units) + [from_ or ""] * count  # group: and label: widen it (see _LineView)
        return await _watch(
            _view(names, json_output),
            lambda on_event: cmdr.coordinate(task, units, on_event, settings))

    return run_with_cmdr(work)


def _view(names: list[str], json_output: bool) -> Any:
    if json_output:
        return _JsonView()
    return _PanelView(names) if sys.stdout.isatty() else _LineView(names)


async def _watch(view: Any, call: Any) -> int:
    """Render `call(on_event)` (a coordination) with `view`; Ctrl-C cancels it: the
    daemon then cancels every prompt it started (exit 130)."""
    import trio

    import latis_core

    result: Any = None
    interrupted = False
    with view:  # around the nursery: its tasks run until the block's end
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                nonlocal result
                try:
                    result = await call(view.event)
                except ValueError as exc:  # refused before sending
                    fail(str(exc))
                except latis_core.RequestError as exc:  # refused by the daemon
                    _refused(exc)
                nursery.cancel_scope.cancel()

            async def on_sigint() -> None:
                nonlocal interrupted
                with trio.open_signal_receiver(signal.SIGINT) as signals:
                    async for _ in signals:
                        interrupted = True
                        print("latis: interrupted: cancelling every running prompt…",
                              file=sys.stderr, flush=True)
                        nursery.cancel_scope.cancel()  # the call cancels; the daemon stops all
                        return

            async def tick() -> None:  # elapsed times move between events too
                while True:
                    await trio.sleep(0.5)
                    view.tick()

            nursery.start_soon(on_sigint)
            nursery.start_soon(tick)
            nursery.start_soon(run)
    if interrupted:
        return INTERRUPTED
    if result is None:
        return USAGE
    view.result(result)
    return {"complete": OK, "cancelled": CANCELLED}.get(result.outcome, ERROR)


def _refused(exc: Any) -> int:
    """A coordination the daemon refused before it started (an unknown strategy, group
    or placement policy, a bad `--require`): a usage error. Anything else goes on up."""
    if str(exc.code) != "bad_message":
        raise exc
    fail(exc.message)
    return USAGE


class _JsonView:
    """NDJSON: every event as it comes, then the result."""

    def tick(self) -> None:
        pass

    def __enter__(self) -> _JsonView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def event(self, event: Any) -> None:
        print(json.dumps(event.to_dict()), flush=True)

    def result(self, result: Any) -> None:
        print(json.dumps({"type": "result"} | result.to_dict()), flush=True)


class _LineView:
    """Lines prefixed with the agent, as they complete; state changes; the result."""

    def __init__(self, units: list[str]) -> None:
        import latis_core

        self.width = max(map(len, latis_core.agent_labels(units or [""])))
        self.lines: dict[str, str] = {}
        #: Each agent's last reply, for the summary at the end.
        self.answers: dict[str, str] = {}

    def tick(self) -> None:
        pass

    def __enter__(self) -> _LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        # Interrupted (or the daemon lost) mid-line: what came is printed, not dropped.
        for agent in list(self.lines):
            self.flush(agent)

    def say(self, agent: str, text: str) -> None:
        print(f"[{agent:>{self.width}}] {text}", flush=True)

    def flush(self, agent: str) -> None:
        if self.lines.get(agent):
            self.say(agent, self.lines.pop(agent))

    def event(self, event: Any) -> None:
        agent = event.agent
        self.width = max(self.width, len(agent))  # group: and label: name agents late
        if event.type == "chunk" and event.kind is None:
            line = self.lines.get(agent, "") + event.text
            while "\n" in line:
                head, line = line.split("\n", 1)
                self.say(agent, head)
            self.lines[agent] = line
        elif event.type == "prompt":
            self.flush(agent)
            origin = f" from {event.source}" if event.source not in (None, "task") else ""
            print(f"[{agent:>{self.width}}] -- {event.step or 'prompt'}{origin} "
                  f"(prompt {event.prompt}) --", file=sys.stderr, flush=True)
        elif event.type == "input":
            self.flush(agent)
            self.say(agent, f"asks: {event.text} (answer with: latis attach {event.session})")
        elif event.type == "reply":
            self.flush(agent)
            if event.outcome == "complete":
                self.answers[agent] = event.text
        elif event.type == "ended":
            self.flush(agent)
            what = event.outcome + (f": {event.error}" if event.error else "")
            print(f"[{agent:>{self.width}}] {_MARK.get(event.state or '', '')} {what} "
                  f"({event.elapsed or 0:.1f} s)", file=sys.stderr, flush=True)
        elif event.type == "note":
            print(f"latis: {event.text}", file=sys.stderr, flush=True)

    def result(self, result: Any) -> None:
        for ended in result.agents:
            outcome = ended.outcome + (f": {ended.error}" if ended.error else "")
            print(f"\n== {ended.agent} ({outcome}) ==\n"
                  f"{self.answers.get(ended.agent, '').rstrip()}")
        if result.final is not None:
            print(f"\n== final answer ==\n{result.final.rstrip()}")
        if result.outcome != "complete":
            fail(f"coordination {result.id} {result.outcome}: {result.error} "
                 f"(latis coordination show {result.id})")


class _PanelView(_LineView):
    """On a terminal: one panel per agent (its state, elapsed time, the tail of its stream)."""

    def __init__(self, units: list[str]) -> None:
        super().__init__(units)
        import latis_core

        self.labels = [a for a in latis_core.agent_labels(units) if a and ":" not in a]
        self.text: dict[str, str] = dict.fromkeys(self.labels, "")
        self.state: dict[str, str] = dict.fromkeys(self.labels, "queued")
        self.started = time.monotonic()
        self.since: dict[str, float] = {}
        #: When each agent ended: its clock stops there.
        self.until: dict[str, float] = {}
        self.live: Any = None

    def __enter__(self) -> _PanelView:
        from rich.live import Live

        from ._console import out

        # Refreshed by us, at each event (no refresh thread: trio runs this one).
        self.live = Live(self.render(), console=out(), auto_refresh=False, transient=False,
                         redirect_stdout=False, redirect_stderr=False)
        self.live.__enter__()
        return self

    def tick(self) -> None:
        self.live.update(self.render(), refresh=True)

    def __exit__(self, *exc: object) -> None:
        self.live.update(self.render(), refresh=True)
        self.live.__exit__(None, None, None)

    def render(self) -> Any:
        from rich.columns import Columns
        from rich.panel import Panel

        panels = []
        now = time.monotonic()
        for label in self.labels:
            tail = "\n".join(self.text[label].splitlines()[-8:])
            elapsed = self.until.get(label, now) - self.since.get(label, self.started)
            state = self.state[label]
            panels.append(Panel(tail or " ", title=f"{label} {_MARK.get(state, '')} {state}",
                                subtitle=f"{elapsed:.1f} s", width=48, height=11))
        return Columns(panels)

    def event(self, event: Any) -> None:
        if event.type == "reply" and event.outcome == "complete":
            self.answers[event.agent] = event.text
        if event.agent and event.agent not in self.state:  # group: and label: name agents late
            self.labels.append(event.agent)
            self.text[event.agent] = ""
            self.state[event.agent] = "queued"
        if event.agent in self.state:
            if event.state:
                self.state[event.agent] = event.state
            if event.type == "started":
                self.since[event.agent] = time.monotonic()
            elif event.type == "chunk" and event.kind is None:
                self.text[event.agent] += event.text
            elif event.type == "prompt":
                self.text[event.agent] += f"\n-- {event.step} --\n"
            elif event.type == "input":
                self.text[event.agent] += (f"\n? {event.text} "
                                           f"(latis attach {event.session})\n")
            elif event.type == "ended":
                self.until[event.agent] = time.monotonic()
                if event.error:
                    self.text[event.agent] += f"\n{event.outcome}: {event.error}"
        elif event.type == "note":
            self.live.console.print(f"latis: {event.text}")
        self.live.update(self.render(), refresh=True)


coordination_app = App(name="coordination", help="Stored coordinations: list, show.")


@coordination_app.command(name="list")
def coordination_list(
    *,
    limit: int = 20,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """The latest coordinations, newest first.

    For example:
      latis coordination list
      latis coordination list --json | jq '.[0].id'

    Args:
        limit: how many.
        json_output: JSON data.
    """

    async def work(cmdr: Any) -> int:
        rows = (await cmdr.coordination_list(limit))["coordinations"]
        if json_output:
            print_json(rows)
            return OK
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["started_at"]))
            task = row["task"].splitlines()[0][:50] if row["task"] else ""
            print(f"{row['id']}  {when}  {row['strategy']:<10} {row['state']:<9} "
                  f"{','.join(row['units'])}  {task}")
        return OK

    return run_with_cmdr(work)


@coordination_app.command(name="show")
def coordination_show(
    id: str,
    *,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """One coordination: task, strategy, placement, each agent's prompts and replies, timing.

    For example:
      latis coordination show co-1a2b3c4d
      latis coordination show co-1a2b3c4d --json | jq '.events[] | select(.type=="reply")'

    Args:
        id: the coordination's id (from `latis coordination list`).
        json_output: JSON data.
    """

    async def work(cmdr: Any) -> int:
        row = await cmdr.coordination_get(id)
        if json_output:
            print_json(row)
            return OK
        took = (f"{row['ended_at'] - row['started_at']:.1f} s" if row["ended_at"]
                else "running")
        print(f"{row['id']}: {row['strategy']} over {', '.join(row['units'])}: "
              f"{row['state']} ({took})")
        if row["error"]:
            print(f"error: {row['error']}")
        print(f"task: {row['task']}")
        for event in row["events"]:
            at = f"{event.get('elapsed', 0):7.2f}s"
            agent = event.get("agent", "")
            if event["type"] == "started":
                print(f"{at} {agent}: on unit {event.get('unit')}, session {event.get('session')}")
            elif event["type"] == "prompt":
                print(f"{at} {agent} <- {event.get('step')} ({event.get('source')}): "
                      f"{_short(event.get('text', ''))}")
            elif event["type"] == "reply":
                print(f"{at} {agent} -> {event.get('outcome')}: {_short(event.get('text', ''))}")
            elif event["type"] in ("ended", "note", "input"):
                print(f"{at} {agent or 'latis'} {event['type']}: "
                      f"{event.get('outcome') or event.get('text', '')} "
                      f"{event.get('error') or ''}".rstrip())
        if row["final"] is not None:
            print(f"\n== final answer ==\n{row['final']}")
        return OK if row["state"] in ("complete", "running") else ERROR

    return run_with_cmdr(work)


@coordination_app.command(name="follow")
def coordination_follow(
    id: str,
    *,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Follow a coordination (one started with --detach): its events from the start, then
    live, to its end. Ctrl-C stops following; the coordination runs on.

    For example:
      latis coordination follow co-1a2b3c4d
      latis coordination follow co-1a2b3c4d --json | jq 'select(.type=="final")'

    Args:
        id: the coordination's id (printed by --detach, or `latis coordination list`).
        json_output: NDJSON: every event, then the result.
    """

    async def work(cmdr: Any) -> int:
        return await _watch(_view([], json_output),
                            lambda on_event: cmdr.coordination_follow(id, on_event))

    return run_with_cmdr(work)


def _short(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
