"""Coordination: one task, several agents working together, their events as they come.

`coordinate` opens a session per agent (an agent named twice gets two
sessions, told apart by its label: `fast`, `fast#2`) and hands a `Team` to
the chosen strategy (`latis.strategies`: `parallel`, `pipeline`, `roundtable`,
`lead`; see `latis_core._plugins.strategy`). Every prompt runs in the
controller, so it is stored and can be followed like any other.

Events go to `on_event` in the order they happen: `started` (the agent's
session), `prompt` (what the agent received, from whom, at which step),
`chunk`s, `input` when an agent asks something (the prompt waits for an
answer from elsewhere: `latis attach`), `reply` (one prompt's end), `state`
(the agent's A2A task state: queued, working, input-required, completed,
failed, canceled), `note`s, one `ended` per agent, and last `final`. Each
carries the seconds since the coordination began (`elapsed`).

Faults: an agent whose prompt fails, whose unit disconnects or that runs
past `agent_timeout` is reported (`ended`, failed) and left out; the others
go on. `require` (`all`, `any` or a number) says how many agents must end
well; once that cannot happen any more the rest is cancelled (their `ended`
says cancelled, with the shortfall) and the coordination fails. `timeout`
bounds the whole coordination: past it every prompt is cancelled and so is
the coordination (outcome "cancelled", error "timed out after N s").
Cancelling the coordination (Ctrl-C in the CLI) cancels every prompt it
started and waits, bounded, for their ends.

Routing: in strategies whose `routes` is true, a reply line `@label text`
sends `text` (and the lines after it, up to the next `@label`) to that agent
as `Message from SENDER: text`; its reply may route on. A chain is cut after
`max_hops` deliveries (a `note` says so), so two agents cannot loop.
"""

from __future__ import annotations

import functools
import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from latis_core._cmdr.placement import never_fits, placed, resolve_agents
from latis_core._errors import LatisError, StrategyFailed, error_code
from latis_core._plugins.registry import load_placement, load_strategy

if TYPE_CHECKING:
    from latis_core._cmdr.controller import Controller
    from latis_core._plugins.strategy import Strategy

__all__ = [
    "CANCEL_WAIT",
    "Coordination",
    "CoordinationEvent",
    "CoordinationSettings",
    "addressed",
    "agent_labels",
    "check",
    "coordinate",
    "new_coordination_id",
    "parse_require",
]

#: How long a cancelled coordination waits for its prompts' ends, in seconds.
CANCEL_WAIT = 5.0
#: Seconds a coordination's sessions wait to close behind its answer: long enough
#: for the answer to reach its caller before every unit is woken to close one.
CLOSE_BEHIND_AFTER = 0.005


@attrs.frozen
class CoordinationEvent:
    """Something that happened in a coordination (to one agent, or to all)."""

    #: started, prompt, chunk, input, reply, state, note, ended or final.
    type: str
    #: The agent's label (its unit, with `#N` when the unit is named again).
    agent: str = ""
    unit: str = ""
    session: str | None = None
    text: str = ""
    #: (reply, ended, final) "complete", "cancelled" or "error".
    outcome: str | None = None
    #: (reply, ended, final with an error) what failed.
    error: str | None = None
    #: (chunk) the chunk's kind, None for plain text.
    kind: str | None = None
    #: The agent's A2A task state after this event.
    state: str | None = None
    #: (prompt, reply) the strategy's step: "answer", "round 2", "plan", "route".
    step: str | None = None
    #: (prompt) where the text comes from: "task", or the label of the agent
    #: whose message was routed.
    source: str | None = None
    #: (prompt, reply, input) the prompt's id in the controller (`latis attach`).
    prompt: int | None = None
    #: Seconds since the coordination began.
    elapsed: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data (members that are unset are left out)."""
        # (By hand, not attrs.asdict: an event per step of every agent.)
        return {name: value for name in _EVENT_FIELDS
                if (value := getattr(self, name)) is not None and value != ""}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoordinationEvent:
        """Read an event written by `to_dict` (unknown members are ignored)."""
        names = {a.name for a in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_EVENT_FIELDS = tuple(a.name for a in attrs.fields(CoordinationEvent))


@attrs.frozen
class CoordinationSettings:
    """How a coordination runs, besides its strategy's own options."""

    #: The strategy's name in `latis.strategies`.
    strategy: str = "parallel"
    #: The strategy's options (`merge_with`, `rounds`, `final`, `lead`).
    options: Mapping[str, str] = attrs.field(factory=dict)
    #: "all", "any", or how many agents must end well.
    require: str = "all"
    #: Seconds for the whole coordination (None: no bound).
    timeout: float | None = None
    #: Seconds for each prompt of an agent (None: no bound).
    agent_timeout: float | None = None
    #: Routed messages in one chain before it is cut.
    max_hops: int = 3
    #: Agents placed by capacity on the units of `source` (`--count N --from POOL`).
    count: int = 0
    #: A group, `label:NAME`, or units separated by commas.
    source: str | None = None
    #: The placement policy's name in `latis.placement`.
    placement: str = "capacity"


@attrs.frozen
class Coordination:
    """How a coordination ended."""

    id: str
    #: "complete", "error" or "cancelled".
    outcome: str
    #: The final answer, when the strategy makes one.
    final: str | None
    #: Each agent's `ended` event, in the order named.
    agents: list[CoordinationEvent]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (the daemon's `coordinate` result)."""
        out: dict[str, Any] = {"id": self.id, "outcome": self.outcome,
                               "agents": [e.to_dict() for e in self.agents]}
        if self.final is not None:
            out["final"] = self.final
        if self.error:
            out["error"] = self.error
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Coordination:
        """Read what `to_dict` wrote."""
        return cls(str(data.get("id", "")), str(data.get("outcome", "error")),
                   data.get("final"),
                   [CoordinationEvent.from_dict(e) for e in data.get("agents", [])],
                   data.get("error"))


def agent_labels(units: Sequence[str]) -> list[str]:
    """A label per entry: the unit's name, with `#N` from its second mention on."""
    seen: dict[str, int] = {}
    labels = []
    for unit in units:
        seen[unit] = seen.get(unit, 0) + 1
        labels.append(unit if seen[unit] == 1 else f"{unit}#{seen[unit]}")
    return labels


def parse_require(require: str, agents: int) -> int:
    """How many of `agents` must end well for `require` (`all`, `any`, or N).

    Raises:
        ValueError: `require` is none of those, or N is not between 1 and `agents`.
    """
    if require == "all":
        return agents
    if require == "any":
        return 1
    try:
        needed = int(require)
    except ValueError:
        raise ValueError(f"require must be all, any or a number, not {require!r}") from None
    if not 1 <= needed <= agents:
        count = "1 agent" if agents == 1 else f"{agents} agents"
        raise ValueError(f"require {needed}: the task has {count} (require 1 to {agents}, "
                         "any or all)")
    return needed


_ADDRESS = re.compile(r"^\s*@(\S+?)[:,]?(?:\s+|$)(.*)$")


def addressed(reply: str, labels: Sequence[str], sender: str) -> list[tuple[str, str]]:
    """The messages of `reply` addressed to other agents: (label, text), in order.

    A line `@label text` starts a message; the lines after it belong to it,
    up to the next such line. Unknown labels and the sender itself are not
    addresses (the line stays part of whatever came before).
    """
    out: list[tuple[str, list[str]]] = []
    for line in reply.splitlines():
        match = _ADDRESS.match(line)
        if match and match.group(1) in labels and match.group(1) != sender:
            out.append((match.group(1), [match.group(2)]))
        elif out:
            out[-1][1].append(line)
    return [(label, "\n".join(lines).strip()) for label, lines in out]


@attrs.define(eq=False)
class _Agent:
    label: str
    unit: str
    session: str | None = None
    lock: trio.Lock = attrs.Factory(trio.Lock)
    #: Why it failed, once it has.
    failed: str | None = None
    outcome: str = "complete"
    state: str = "queued"
    #: Set once its session is open (or could not be).
    opened: trio.Event = attrs.Factory(trio.Event)
    #: Its session is being opened (or was).
    opening: bool = False
    #: A prompt was asked of it before its session was being opened: its first
    #: prompt opens it, in the asking task (`_Team.open_all`).
    asked: bool = False


class _Team:
    """The `Team` a strategy drives (see `latis_core._plugins.strategy.Team`)."""

    def __init__(
        self,
        controller: Controller,
        task: str,
        units: Sequence[str],
        settings: CoordinationSettings,
        routes: bool,
        emit: Callable[[CoordinationEvent], None],
        id: str = "",
    ) -> None:
        self.controller = controller
        #: The coordination's id (its sessions are tagged with it, for usage).
        self.id = id
        self.task = task
        self.labels: Sequence[str] = agent_labels(units)
        self.agents = {label: _Agent(label, unit)
                       for label, unit in zip(self.labels, units, strict=True)}
        self.settings = settings
        self.routes = routes
        self.needed = parse_require(settings.require, len(units))
        self._emit = emit
        self.running: dict[int, _Agent] = {}
        #: Cancelled once `require` cannot be met any more.
        self.doomed = trio.CancelScope()
        self.started = trio.current_time()

    def event(self, type: str, agent: _Agent | None = None, **fields: Any) -> None:
        elapsed = round(trio.current_time() - self.started, 3)
        if agent is None:
            self._emit(CoordinationEvent(type, elapsed=elapsed, **fields))
        else:
            self._emit(CoordinationEvent(type, agent.label, agent.unit, agent.session,
                                         state=agent.state, elapsed=elapsed, **fields))

    def set_state(self, agent: _Agent, state: str) -> None:
        if agent.state != state:
            agent.state = state
            self.event("state", agent)

    def alive(self) -> list[str]:
        return [label for label in self.labels if self.agents[label].failed is None]

    def note(self, text: str) -> None:
        self.event("note", text=text)

    def fail(self, agent: _Agent, error: str, outcome: str = "error") -> None:
        if agent.failed is not None:
            return
        agent.failed, agent.outcome = error, outcome
        agent.state = "canceled" if outcome == "cancelled" else "failed"
        self.event("ended", agent, outcome=outcome, error=error)
        if len(self.alive()) < self.needed:
            self.doomed.cancel()

    def shortfall(self) -> str:
        """Why `require` is not met: how many agents failed."""
        failed = len(self.labels) - len(self.alive())
        return f"{failed} of {len(self.labels)} agents failed (require {self.settings.require})"

    def queued(self, reason: str) -> None:
        """Placement waits: say why, for every agent."""
        self.note(reason)
        for agent in self.agents.values():
            self.event("state", agent, text=reason)

    async def close(self, after: float = 0) -> None:
        """Close every session this coordination opened (frees the units' room),
        `after` seconds from now (shielded: a coordination being cancelled closes them)."""
        with trio.CancelScope(shield=True):
            if after:
                await trio.sleep(after)
            with trio.move_on_after(CANCEL_WAIT):
                for agent in self.agents.values():
                    # (An open still under way: then closed too. Only those are
                    # awaited: a wait is a pass of the scheduler, even when set.)
                    if agent.opening and not agent.opened.is_set():
                        await agent.opened.wait()
                async with trio.open_nursery() as nursery:
                    for agent in self.agents.values():
                        if agent.session is not None:
                            nursery.start_soon(self._close, agent.session)

    async def _close(self, session: str) -> None:
        try:
            await self.controller.destroy_session(session)
        except (LatisError, LookupError, OSError):
            pass  # a unit that went away took its sessions with it

    async def open(self, agent: _Agent) -> None:
        agent.opening = True
        try:
            created = await self.controller.create_session(agent.unit)
        except (LatisError, LookupError, OSError) as exc:
            self.fail(agent, error_code(exc)[1])
            return
        finally:
            agent.opened.set()
        agent.session = str(created["session"])
        self.event("started", agent)

    async def open_all(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open every agent's session at once (an agent's first prompt waits for its
        own, not for all of them).

        An agent the strategy asks at once (parallel, roundtable, the first of a
        pipeline) opens its session in the asking task instead, and is prompted
        there: waking that task from an opening one costs each agent a pass of the
        scheduler, which with a hundred agents on a busy loop is a tenth of the
        whole task. The strategy starts when this one says it has started; two
        passes later its first asks have marked their agents (`asked`). (Were it
        slower, its agents would be opened here, and their prompts would wait for
        that as before: only the hop is lost.)
        """
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
            for agent in self.agents.values():
                if not (agent.asked or agent.opening):
                    nursery.start_soon(self.open, agent)

    async def ask(self, label: str, text: str, *, step: str = "") -> str | None:
        if label in self.agents:
            self.agents[label].asked = True  # (before any checkpoint: see `open_all`)
        return await self._ask(label, text, step, "task", 0)

    async def ask_each(self, prompts: Mapping[str, str], *, step: str = "") -> dict[str, str]:
        for label in prompts:
            if label in self.agents:
                self.agents[label].asked = True
        replies: dict[str, str] = {}

        async def one(label: str, text: str) -> None:
            reply = await self.ask(label, text, step=step)
            if reply is not None:
                replies[label] = reply

        async with trio.open_nursery() as nursery:
            for label, text in prompts.items():
                nursery.start_soon(one, label, text)
        return {label: replies[label] for label in prompts if label in replies}

    async def _ask(self, label: str, text: str, step: str, source: str, hops: int) -> str | None:
        agent = self.agents[label]
        # One prompt at a time per session, in the order asked (the lock is
        # fair: taken before the session is open, the task comes first).
        async with agent.lock:
            if agent.opening:
                await agent.opened.wait()
            else:
                await self.open(agent)
            if agent.failed is not None or agent.session is None:
                return None
            reply = await self._prompt(agent, text, step, source)
        if reply is not None and self.routes:
            await self._route(label, reply, hops)
        return reply

    async def _route(self, sender: str, reply: str, hops: int) -> None:
        for target, message in addressed(reply, self.labels, sender):
            if hops >= self.settings.max_hops:
                self.note(f"hop bound reached ({self.settings.max_hops}): "
                          f"{sender}'s message to @{target} was not delivered")
                continue
            await self._ask(target, f"Message from {sender}: {message}", "route", sender,
                            hops + 1)

    async def _prompt(self, agent: _Agent, text: str, step: str, source: str) -> str | None:
        assert agent.session is not None
        controller = self.controller
        try:
            record = await controller.start_prompt(agent.session, text)
        except (LatisError, LookupError, OSError) as exc:
            self.fail(agent, error_code(exc)[1])
            return None
        self.running[record.id] = agent
        agent.state = "working"
        self.event("prompt", agent, text=text, step=step, source=source, prompt=record.id)
        parts: list[str] = []
        outcome, error = "error", None
        limit = self.settings.agent_timeout

        def chunks(run: list[Any]) -> None:
            # The chunks of one kind that came together: one event (the live
            # view prints text, not chunk boundaries; an event each would cost
            # more than the chunks themselves).
            self.set_state(agent, "working")
            text = "".join(chunk.text for chunk in run)
            if run[0].kind is None:
                parts.append(text)
            self.event("chunk", agent, text=text, kind=run[0].kind, prompt=record.id)

        async def pump() -> None:
            nonlocal outcome, error
            # `lost`: the controller would wait for the unit to come back and
            # resume the prompt; a coordination reports the agent instead.
            async for batch in controller.follow_batches(record.id, lost=True):
                run: list[Any] = []
                for kind, payload in batch:
                    if kind == "chunk":
                        if run and run[0].kind != payload.kind:
                            chunks(run)
                            run = []
                        run.append(payload)
                        continue
                    if run:
                        chunks(run)
                        run = []
                    if kind == "input":
                        agent.state = "input-required"
                        self.event("input", agent, text=payload.question, prompt=record.id)
                    elif kind == "lost":
                        error = payload
                        await controller.cancel(record.id)
                        return
                    else:
                        outcome = {"complete": "complete", "cancelled": "cancelled"}.get(
                            payload.get("outcome"), "error")
                        if outcome == "error":
                            error = f"{payload.get('code')}: {payload.get('message')}"
                if run:
                    chunks(run)

        try:
            if limit is None:
                await pump()  # (no scope: one per agent's prompt is a cost of its own)
            else:
                with trio.move_on_after(limit) as scope:
                    await pump()
                if scope.cancelled_caught:
                    await self._stop(record.id)
                    outcome, error = "error", f"timed out after {limit:g} s"
        except (LatisError, LookupError, OSError) as exc:
            outcome, error = "error", error_code(exc)[1]
        # Only now: a prompt cancelled with the coordination stays listed for `stop_all`.
        self.running.pop(record.id, None)
        reply = "".join(parts)
        self.event("reply", agent, text=reply, step=step, outcome=outcome, error=error,
                   prompt=record.id)
        if outcome != "complete":
            self.fail(agent, error or "cancelled", outcome)
            return None
        agent.state = "queued"  # until its next prompt
        return reply

    async def _stop(self, prompt_id: int) -> None:
        """Cancel one prompt and wait, bounded, for its end."""
        await self.controller.cancel(prompt_id)
        with trio.move_on_after(CANCEL_WAIT):
            async for _ in self.controller.follow(prompt_id):
                pass

    async def stop_all(self) -> None:
        """Cancel every prompt still running (on every unit) and wait, bounded, for their ends."""
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for prompt_id in list(self.running):
                    nursery.start_soon(self._stop, prompt_id)


def new_coordination_id() -> str:
    """A fresh coordination id (`co-` and 8 hex digits)."""
    return "co-" + secrets.token_hex(4)


def check(
    controller: Controller, units: Sequence[str], settings: CoordinationSettings
) -> tuple[Strategy, list[str], list[tuple[str, ...]]]:
    """Check a coordination before it starts: its strategy (built), the agents'
    names and each one's slot (see `latis_core._cmdr.placement.resolve_agents`).

    Raises:
        ValueError: no agents, an unknown unit, strategy, placement policy or group, a
            bad option (one that names an agent not there too), `require`, timeout,
            hop bound or count.
    """
    for what, value in (("timeout", settings.timeout),
                        ("agent timeout", settings.agent_timeout)):
        if value is not None and not value > 0:  # (NaN too)
            raise ValueError(f"the {what} must be more than 0 seconds, not {value:g}")
    for what, number in (("max hops", settings.max_hops), ("count", settings.count)):
        if number < 0:
            raise ValueError(f"the {what} must be 0 or more, not {number}")
    try:
        strategy_class = load_strategy(settings.strategy)
        load_placement(settings.placement)
    except LookupError as exc:
        raise ValueError(str(exc.args[0])) from None
    strategy: Strategy = strategy_class(settings.options)  # refuses options it does not take
    names, slots = resolve_agents(controller.config, units, settings.count, settings.source)
    unknown = sorted({unit for slot in slots for unit in slot} - set(controller.units))
    if unknown:
        raise ValueError(f"no unit {unknown[0]!r} (units: {', '.join(sorted(controller.units))})")
    check_labels = getattr(strategy, "check", None)
    if check_labels is not None:
        check_labels(agent_labels(names))
    parse_require(settings.require, len(names))
    never = never_fits(controller.config, slots)
    if never is not None:
        raise ValueError(never)
    return strategy, names, slots


async def coordinate(
    controller: Controller,
    task: str,
    units: Sequence[str],
    on_event: Callable[[CoordinationEvent], None] = lambda event: None,
    settings: CoordinationSettings | None = None,
    coordination_id: str | None = None,
) -> Coordination:
    """Run `task` over the units' agents with `settings.strategy`; see the module docstring.

    Raises:
        ValueError: no agents, an unknown strategy or placement policy, a bad option or
            `require` (`check`).
    """
    settings = settings or CoordinationSettings()
    strategy, names, slots = check(controller, units, settings)
    units = names
    coordination_id = coordination_id or new_coordination_id()
    record = _Record(controller, coordination_id)

    def emit(event: CoordinationEvent) -> None:
        record.event(event)
        on_event(event)

    team = _Team(controller, task, units, settings, bool(strategy.routes), emit,
                 coordination_id)
    outcome, error, final = "complete", None, None
    limit = settings.timeout
    # Stored by the record's first write, beside the agents' first steps (not before them).
    record.row = (task, settings.strategy, _settings_dict(settings), list(units))
    # Its sessions close after its answer (in the controller's nursery), unless
    # it was placed by capacity (the next task counts on the room they free)
    # or it is being cancelled (then they close, bounded, before it returns).
    close_behind = False
    async with trio.open_nursery() as keeper:
        keeper.start_soon(record.keep)
        try:
            with trio.move_on_after(math.inf if limit is None else limit) as whole:
                with team.doomed:
                    async with placed(controller, slots, settings.placement,
                                      team.queued) as (chosen, holding):
                        close_behind = not holding
                        for agent, unit in zip(team.agents.values(), chosen, strict=True):
                            agent.unit = unit
                        # (In the keeper: `close` waits, bounded, for every open.)
                        await keeper.start(team.open_all)
                        if holding:
                            # Placed by capacity: the placement holds until
                            # every session is open (they count in the next one).
                            for agent in team.agents.values():
                                if not agent.opened.is_set():
                                    await agent.opened.wait()
                    final = await strategy.run(team)
            if whole.cancelled_caught:  # timed out: cancelled by its bound (exit 3)
                outcome, error = "cancelled", f"timed out after {limit:g} s"
            elif team.doomed.cancelled_caught:  # the agents still working were cancelled
                outcome, error = "error", team.shortfall()
        except StrategyFailed as exc:
            outcome, error = "error", str(exc)
        except BaseException:
            outcome, error = "cancelled", "cancelled"
            close_behind = False
            raise
        finally:
            await team.stop_all()
            if close_behind:
                controller.run_behind(functools.partial(team.close, CLOSE_BEHIND_AFTER))
            else:
                await team.close()
            try:  # (an `on_event` that raises here must not keep the record open)
                for agent in team.agents.values():
                    if agent.failed is None:
                        if outcome == "complete":
                            agent.state = "completed"
                            team.event("ended", agent, outcome="complete")
                        else:
                            team.fail(agent, error or "cancelled", "cancelled")
                if outcome == "complete" and len(team.alive()) < team.needed:
                    outcome, error = "error", team.shortfall()
                if outcome != "complete":
                    final = None
                team.event("final", text=final or "", outcome=outcome, error=error)
            finally:
                result = Coordination(
                    coordination_id, outcome, final,
                    [_ended(agent) for agent in team.agents.values()], error)
                record.finish(result)
                keeper.cancel_scope.cancel()
    return result


def _settings_dict(settings: CoordinationSettings) -> dict[str, Any]:
    return {k: v for k, v in attrs.asdict(settings).items() if k != "strategy"}


class _Record:
    """Stores a coordination (its row with its first write) and its events (all but
    chunks) as they come, in batches; and tags the sessions it opened with its id
    (for `latis usage --by coordination`), in the same writes."""

    def __init__(self, controller: Controller, id: str) -> None:
        self.controller = controller
        self.id = id
        #: (task, strategy, settings, units) until the row is stored.
        self.row: tuple[str, str, dict[str, Any], list[str]] | None = None
        #: Events not stored yet (made JSON-ready when they are: off the agents' way).
        self.pending: list[CoordinationEvent] = []
        self.stored = 0
        #: Sessions opened and not tagged yet.
        self.sessions: list[str] = []

    def event(self, event: CoordinationEvent) -> None:
        if event.type != "chunk":  # chunks are in the prompts' own transcripts
            self.pending.append(event)
            if event.type == "started" and event.session is not None:
                self.sessions.append(event.session)

    def flush(self, end: Coordination | None = None) -> None:
        """Store the events pending (and with `end`, how it ended), in one write
        behind (the controller's reads see it; nothing here waits for the disk)."""
        state = self.controller.state
        batch, self.pending = self.pending, []
        sessions, self.sessions = self.sessions, []
        first = self.stored
        row, self.row = self.row, None
        self.stored += len(batch)

        def store() -> None:
            if row is not None:
                state.add_coordination(self.id, *row)
            if batch:
                state.add_coordination_events(self.id, first, [e.to_dict() for e in batch])
            if sessions:
                state.tag_sessions(sessions, self.id)
            if end is not None:
                state.end_coordination(self.id, end.outcome, end.final, end.error)

        if row is not None or batch or end is not None:
            self.controller.writer.post(store, f"coordination {self.id}")

    async def keep(self) -> None:
        while True:
            self.flush()
            await trio.sleep(0.2)

    def finish(self, result: Coordination) -> None:
        self.flush(result)


def _ended(agent: _Agent) -> CoordinationEvent:
    return CoordinationEvent(
        "ended", agent.label, agent.unit, agent.session, outcome=agent.outcome,
        error=agent.failed, state=agent.state)
