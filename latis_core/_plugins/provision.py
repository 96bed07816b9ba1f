"""The provisioner interface: how units are created, started, stopped and destroyed.

A provisioner manages the life of one unit (a process, a container, a VM, a
cloud instance) and nothing else: reaching the unit is a transport's job. Every
method is idempotent (`start` on a running unit does nothing, `destroy` of a
unit that is gone does nothing), and whatever the provisioner makes (a pid, a
container id, an instance id) it records in `Resources`, so that a controller
that restarts finds it again.

Built-in provisioners and plugins register in the entry-point group
`latis.provisioners`; each is a class with an attrs `Options` class (its
config table) and a constructor `(options, context)`.

What the controller uses when a provisioner has it (each optional):

- `progress`, an attribute: set to a `Callable[[str], None]` while the
  controller's `up` (or `down`, `destroy`, `scale`) runs, for the lines the
  CLI shows as it waits;
- `wait`, an attribute (True by default): `latis unit up --no-wait` sets it
  False around `start`, which then returns once the platform took the request
  instead of once the unit is ready;
- `set_enroller(enroller)` (`TakesEnroller`): for units that dial home, the
  controller's way to enroll a unit (`DialIns.enroll`);
- `orphans(units)` (`FindsOrphans`): what the provisioner's kind made for units
  not among `units`, for `latis unit list`; `orphan_scope`, a class attribute,
  names the options that say where it looks (one look per distinct value);
- `member_units(n)` and `scale(n)` (`Scales`): a labelled group of units, for
  `latis unit scale`.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs
import trio

from latis_core._errors import ProvisionError
from latis_core._plugins.transport import Dialer

__all__ = [
    "Enroller",
    "FindsOrphans",
    "MemoryResources",
    "OneAtATime",
    "ProvisionContext",
    "ProvisionError",
    "ProvisionState",
    "ProvisionStatus",
    "Provisioner",
    "Resources",
    "Scales",
    "TakesEnroller",
]

#: `(unit, address) -> {"urls": [...], "secret": LINE, ...}`: `DialIns.enroll`.
Enroller = Callable[[str, "str | None"], Awaitable[Mapping[str, Any]]]


class ProvisionState(enum.StrEnum):
    """Where a provisioned unit is in its life."""

    #: Nothing exists (never created, or destroyed).
    ABSENT = "absent"
    #: Created, not running (a container created, a process not yet started).
    CREATED = "created"
    #: Running.
    RUNNING = "running"
    #: Was running, is not now (stopped, or exited).
    STOPPED = "stopped"


@attrs.frozen
class ProvisionStatus:
    """What `Provisioner.status` found."""

    state: ProvisionState
    #: A short human detail: "pid 4242", "container 3f2a…, exited (137)".
    detail: str = ""


class Resources(Protocol):
    """Where a provisioner records what it made, for one unit (kept in state)."""

    def get(self, kind: str) -> str | None:
        """The value recorded under `kind` ("pid", "container"), or None."""
        ...

    def set(self, kind: str, value: str) -> None:
        """Record `value` under `kind` (replacing any)."""
        ...

    def clear(self) -> None:
        """Forget everything recorded for this unit."""
        ...


class MemoryResources:
    """`Resources` in a dict: for tests and for units that need no state."""

    def __init__(self, initial: Mapping[str, str] | None = None) -> None:
        self.values: dict[str, str] = dict(initial or {})

    def get(self, kind: str) -> str | None:
        return self.values.get(kind)

    def set(self, kind: str, value: str) -> None:
        self.values[kind] = value

    def clear(self) -> None:
        self.values.clear()


@attrs.frozen
class ProvisionContext:
    """What the controller gives a provisioner about the unit it manages.

    Attributes:
        unit: the unit's name.
        agent: the agent the unit runs (`latis-unit --agent`).
        agent_options: the agent's options (`-o KEY=VALUE`).
        run_dir: a private directory (mode 0700) for this unit's sockets.
        log_dir: where the unit's log file goes.
        resources: where to record what is made.
        agent_command: the agent's own command line (after `--`), if its adapter runs one.
    """

    unit: str
    agent: str
    agent_options: Mapping[str, str]
    run_dir: Path
    log_dir: Path
    resources: Resources
    agent_command: tuple[str, ...] = ()

    def unit_args(self, listen: str) -> list[str]:
        """The arguments of `latis-unit` for this unit, listening on `listen`."""
        args = ["--listen", listen, "--name", self.unit, "--agent", self.agent]
        for key, value in self.agent_options.items():
            args += ["-o", f"{key}={value}"]
        if self.agent_command:
            args += ["--", *self.agent_command]
        return args

    def ensure_run_dir(self) -> Path:
        """Create `run_dir` (0700) if needed and return it."""
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.run_dir, 0o700)
        return self.run_dir


@runtime_checkable
class Provisioner(Protocol):
    """Manages the life of one unit. Every method is idempotent.

    Errors are `ProvisionError` with a message that names the unit and says
    what failed (and the tool's own message, for CLI-driven back ends).
    """

    #: The attrs class of this provisioner's options (its config table).
    Options: ClassVar[type]

    async def create(self) -> None:
        """Make the unit exist, not necessarily running."""

    async def start(self) -> None:
        """Make the unit run (creating it first if needed); return once it can be dialed."""

    async def stop(self) -> None:
        """Stop the unit; keep what `start` needs to start it again."""

    async def destroy(self) -> None:
        """Stop the unit and remove everything it had; forget its resources."""

    async def status(self) -> ProvisionStatus:
        """Look at the unit now."""
        ...

    def dialer(self) -> Dialer | None:
        """How to reach the unit this provisioner runs, if it knows (else None)."""
        ...


@runtime_checkable
class TakesEnroller(Protocol):
    """A provisioner whose units dial home, enrolled by the controller."""

    def set_enroller(self, enroller: Enroller | None) -> None:
        """Take the controller's way to enroll a unit (used when a new machine is made)."""


@runtime_checkable
class FindsOrphans(Protocol):
    """A provisioner that finds what its kind made for units that are not in config."""

    async def orphans(self, units: Iterable[str]) -> Sequence[Any]:
        """What was made for units not among `units`: objects with `unit`, `detail`
        and, where known, `resource`, `state` and `pid`."""
        ...


@runtime_checkable
class Scales(Protocol):
    """A provisioner of a labelled group of units (member 0 is its own unit)."""

    def member_units(self, replicas: int | None = None) -> list[str]:
        """The members' unit names for `replicas` (default: the current count)."""
        ...

    async def scale(self, replicas: int) -> list[str]:
        """Make the group `replicas` units; return the members' unit names."""
        ...


class OneAtATime:
    """A base for provisioners: `create`, `start`, `stop` and `destroy` run one
    at a time (two `start`s at once give one unit). Subclasses write
    `_create`, `_start`, `_stop` and `_destroy`, and call `super().__init__()`.
    """

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def _create(self) -> None:
        raise NotImplementedError

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    async def _destroy(self) -> None:
        raise NotImplementedError

    async def create(self) -> None:
        """Make the unit exist, not running (idempotent)."""
        async with self._lock:
            await self._create()

    async def start(self) -> None:
        """Make the unit run, creating it first if needed; return once it can be dialed."""
        async with self._lock:
            await self._start()

    async def stop(self) -> None:
        """Stop the unit; keep what `start` needs (idempotent)."""
        async with self._lock:
            await self._stop()

    async def destroy(self) -> None:
        """Stop the unit, remove all it had and forget its resources (idempotent)."""
        async with self._lock:
            await self._destroy()
