"""The placement interface: which unit each agent of a coordination runs on.

A placement policy is a class registered in the entry-point group
`latis.placement` (`capacity` is built in: `latis_core._cmdr.placement`),
built with no arguments. The controller probes every candidate unit (its
`state.update`'s `capacity`, merged with the unit's config) and asks
`place(slots, units)` for all agents of a coordination at once: a unit per
slot, or the reason they cannot all be placed now. Nothing is opened until
every slot has a unit, so two coordinations never hold half of what each
needs; while the answer is a reason, the coordination waits and says it
(`queued: no unit with 2 GiB free`), and the controller asks again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["PlacementPolicy", "UnitCapacity"]


@attrs.frozen
class UnitCapacity:
    """What one unit can take now, as probed, with its config's limits."""

    unit: str
    #: Sessions the unit holds now.
    sessions: int = 0
    #: The smaller of the unit's own limit and its config's (None: no limit).
    max_sessions: int | None = None
    #: Bytes of memory free on the unit's machine (None: not reported).
    memory_free: int | None = None
    memory_total: int | None = None
    cpus: int | None = None
    #: Bytes of free memory each new session needs (config; None: no budget).
    session_memory: int | None = None


@runtime_checkable
class PlacementPolicy(Protocol):
    """Chooses a unit for each agent (see the module docstring)."""

    def place(
        self, slots: Sequence[Sequence[str]], units: Mapping[str, UnitCapacity]
    ) -> list[str] | str:
        """A unit per slot (each slot lists the units it may go to, in order of
        preference), or why they cannot all be placed now (`queued: ...`)."""
        ...
