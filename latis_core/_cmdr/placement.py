"""Placement: which unit each agent of a coordination runs on, by capacity.

`--agents` names units, groups (`group:NAME`, `[groups]` in config) and
label selectors (`label:NAME`: the units whose `labels` hold NAME); each is
a fixed slot per unit. `--count N --from POOL` adds N slots that may go to
any unit of POOL (a group, a label selector, or units separated by commas).

The policy (`latis.placement`; `capacity` by default, `CapacityPolicy`):
a unit takes one more session when

- it holds fewer sessions than its `max_sessions` (the unit's own limit,
  reported by its probe, or its config's, whichever is smaller), and
- its machine has at least its `session_memory` (config) free, after the
  budgets of the sessions this placement already put there.

Slots are filled in order; a pool slot goes to the unit with the most room
(fewest sessions for its limit, then most memory free). All slots of a
coordination are placed at once under one lock (so two coordinations never
hold half of what each needs, and never both take the last room); until they
fit, the coordination waits, says why, and tries again every `RETRY` seconds.
A coordination that could never fit (its units' `max_sessions` in config add
up to fewer than its agents) is refused at once instead. Units that cannot be
probed (unreachable) are left out of pools; a fixed slot on one is placed
anyway and fails when its session is opened. When every
slot is a fixed unit without `max_sessions` or `session_memory` in config,
nothing is probed (a unit's own limit still holds: it refuses the session).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from latis_core._errors import LatisError
from latis_core._plugins.placement import UnitCapacity
from latis_core._plugins.registry import load_placement

if TYPE_CHECKING:
    from latis_core._cmdr.config import Config
    from latis_core._cmdr.controller import Controller

__all__ = [
    "RETRY",
    "CapacityPolicy",
    "format_size",
    "never_fits",
    "placed",
    "probe",
    "resolve_agents",
]

#: Seconds between placement attempts while a coordination waits.
RETRY = 0.5

#: One placement at a time per controller (see the module docstring).
_LOCKS: weakref.WeakKeyDictionary[Controller, trio.Lock] = weakref.WeakKeyDictionary()


def format_size(size: int) -> str:
    """Bytes as people read them: 2 GiB, 512 MiB."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} B"


def _selected(config: Config, spec: str) -> list[str]:
    if spec.startswith("group:"):
        name = spec.removeprefix("group:")
        if name not in config.groups:
            raise ValueError(f"no group {name!r} in config (groups: "
                             f"{', '.join(config.groups) or 'none'})")
        return list(config.groups[name])
    if spec.startswith("label:"):
        label = spec.removeprefix("label:")
        found = [n for n, u in config.units.items() if label in u.labels]
        if not found:
            raise ValueError(f"no unit has the label {label!r}")
        return found
    return [spec]


def resolve_agents(
    config: Config, agents: Sequence[str], count: int = 0, source: str | None = None
) -> tuple[list[str], list[tuple[str, ...]]]:
    """The agents' names (what their labels are made from) and each one's slot
    (the units it may go to).

    Raises:
        ValueError: an unknown group or label, `count` without `source`, or no agents.
    """
    names: list[str] = []
    slots: list[tuple[str, ...]] = []
    for spec in agents:
        for unit in _selected(config, spec):
            names.append(unit)
            slots.append((unit,))
    if count:
        if not source:
            raise ValueError("--count needs --from (a group, label:NAME, or units)")
        pool = (config.groups[source] if source in config.groups
                else _selected(config, source) if ":" in source
                else [u.strip() for u in source.split(",") if u.strip()])
        names.extend([source] * count)
        slots.extend([tuple(pool)] * count)
    if not slots:
        raise ValueError("coordinate needs at least one agent")
    return names, slots


def never_fits(config: Config, slots: Sequence[Sequence[str]]) -> str | None:
    """Why `slots` can never be placed at once by their units' `max_sessions` in config
    (every unit they may use declares one, and together they hold fewer), or None."""
    units = {unit for slot in slots for unit in slot}
    limits = [config.units[u].max_sessions if u in config.units else None for u in units]
    if not units or any(limit is None for limit in limits):
        return None
    room = sum(limit or 0 for limit in limits)
    if room >= len(slots):
        return None
    return (f"{len(slots)} agents can never run at once on {', '.join(sorted(units))}: "
            f"their max_sessions add up to {room}")


async def probe(controller: Controller, unit: str) -> UnitCapacity | None:
    """The unit's capacity (bringing it up if needed), or None if it cannot be reached."""
    try:
        rt = controller.unit(unit)
        if rt.client is None or rt.client.peer.closed:
            await controller.up(unit)
        client = rt.client
        if client is None:
            return None
        update = await client.state()
    except (LatisError, LookupError, OSError):
        return None
    reported = update.capacity or {}
    limits = [n for n in (reported.get("max_sessions"), rt.config.max_sessions)
              if isinstance(n, int)]
    return UnitCapacity(
        unit, sessions=int(reported.get("sessions", len(update.sessions))),
        max_sessions=min(limits) if limits else None,
        memory_free=reported.get("memory_free"), memory_total=reported.get("memory_total"),
        cpus=reported.get("cpus"), session_memory=rt.config.session_memory,
    )


class CapacityPolicy:
    """The built-in policy: room by sessions and memory (see the module docstring)."""

    def place(
        self, slots: Sequence[Sequence[str]], units: Mapping[str, UnitCapacity]
    ) -> list[str] | str:
        """A unit per slot, or why not."""
        sessions = {name: cap.sessions for name, cap in units.items()}
        free = {name: cap.memory_free for name, cap in units.items()}
        chosen: list[str] = []
        for slot in slots:
            fits, why = [], []
            for name in slot:
                cap = units.get(name)
                if cap is None:
                    if len(slot) == 1:  # a fixed unit that cannot be probed: let it fail
                        fits.append((0.0, 0, name))
                    continue
                if cap.max_sessions is not None and sessions[name] >= cap.max_sessions:
                    why.append(f"{name} holds its max_sessions ({cap.max_sessions})")
                    continue
                memory = free[name]
                if cap.session_memory is not None and memory is not None \
                        and memory < cap.session_memory:
                    why.append(f"{name} has {format_size(memory)} free")
                    continue
                load = sessions[name] / cap.max_sessions if cap.max_sessions else 0.0
                fits.append((load, -(memory or 0), name))
            if not fits:
                return _reason(slot, units, why)
            name = min(fits)[2]
            chosen.append(name)
            sessions[name] = sessions.get(name, 0) + 1
            cap = units.get(name)
            if cap is not None and cap.session_memory is not None and free[name] is not None:
                free[name] = int(free[name] or 0) - cap.session_memory
        return chosen


def _reason(slot: Sequence[str], units: Mapping[str, UnitCapacity], why: list[str]) -> str:
    budgets = {units[n].session_memory for n in slot if n in units} - {None}
    if why and all("free" in w for w in why) and len(budgets) == 1:
        [budget] = budgets
        return f"queued: no unit with {format_size(int(budget or 0))} free ({'; '.join(why)})"
    if not why:
        return f"queued: no unit of {', '.join(slot)} can be reached"
    return f"queued: no unit has room ({'; '.join(why)})"


def _unlimited(controller: Controller, unit: str) -> bool:
    rt = controller.units.get(unit)
    return rt is None or (rt.config.max_sessions is None and rt.config.session_memory is None)


async def _probe_all(controller: Controller, units: set[str]) -> dict[str, UnitCapacity]:
    found: dict[str, UnitCapacity] = {}

    async def one(unit: str) -> None:
        cap = await probe(controller, unit)
        if cap is not None:
            found[unit] = cap

    async with trio.open_nursery() as nursery:
        for unit in sorted(units):
            nursery.start_soon(one, unit)
    return found


@asynccontextmanager
async def placed(
    controller: Controller,
    slots: Sequence[Sequence[str]],
    policy_name: str,
    on_wait: Callable[[str], None],
) -> AsyncIterator[tuple[list[str], bool]]:
    """Wait until every slot has a unit (saying why while it waits); yield the
    units, and whether the placement lock is held: then the block opens every
    session before it ends (they count in the next placement). Nothing is held
    when every slot is one unit with no limit in config.

    Raises:
        ValueError: no such placement policy.
    """
    try:
        policy = load_placement(policy_name)()
    except LookupError as exc:
        raise ValueError(str(exc.args[0])) from None
    lock = _LOCKS.setdefault(controller, trio.Lock())
    if all(len(slot) == 1 and _unlimited(controller, slot[0]) for slot in slots):
        # No choice to make and no limit in config: nothing to probe, nothing
        # to hold. (A unit's own max_sessions still holds: it refuses the
        # session, limit_reached.)
        yield [slot[0] for slot in slots], False
        return
    said = None
    while True:
        async with lock:
            found = await _probe_all(controller, {unit for slot in slots for unit in slot})
            answer = policy.place(slots, found)
            if not isinstance(answer, str):
                yield answer, True
                return
        headline = answer.split(" (")[0]  # the details (memory free) change all the time
        if headline != said:
            on_wait(answer)
            said = headline
        await trio.sleep(RETRY)
