"""The controller (cmdr): units, their provisioners and connections, sessions, prompts.

`open_controller(config, state)` owns everything it starts: a task per
connected unit (holding its connection, reconnecting with backoff while the
unit should be up), and a task per running prompt (a *pump*) that reads the
unit's answer, writes it to state in batches, and publishes it to whoever
follows the prompt. A prompt belongs to the controller, not to the code that
started it: that code may stop following (a CLI that detaches) and come back
(`follow` replays what it missed from state, then goes on live).

Messages for a unit or a session go over that unit's live connection,
whichever way it was made. Leaving the controller's block stops its tasks;
units that run by themselves (a process, a container) keep running, and so
do their prompts: a controller that starts again re-attaches to them and
picks every running prompt up at the last chunk it stored.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import sqlite3
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from latis_core._cmdr.a2a import a2a_state
from latis_core._cmdr.config import Config, UnitConfig
from latis_core._cmdr.hitl import HumanLoop
from latis_core._cmdr.prompts import PromptEngine, PromptRecord
from latis_core._cmdr.state import ConnectionState, PromptRow, PromptState, StateDB, StateError
from latis_core._cmdr.writer import ChunkWriter
from latis_core._errors import (
    AuthRefused,
    ConnectError,
    ConnectionClosed,
    ErrorCode,
    LatisError,
    RequestError,
    UnitNotConnected,
)
from latis_core._io.client import Session, UnitClient, connect
from latis_core._os.paths import Paths
from latis_core._os.paths import paths as default_paths
from latis_core._plugins.provision import (
    FindsOrphans,
    MemoryResources,
    ProvisionContext,
    Provisioner,
    ProvisionError,
    Resources,
    Scales,
    TakesEnroller,
)
from latis_core._plugins.registry import dialer_from_url, load_provisioner
from latis_core._plugins.transport import Dialer
from latis_core._wire.messages import State

if TYPE_CHECKING:
    from latis_core._cmdr.coordinate import Coordination, CoordinationEvent, CoordinationSettings

__all__ = ["Controller", "PromptRecord", "UnitRuntime", "open_controller"]

log = logging.getLogger("latis.cmdr")

_T = TypeVar("_T")

#: Backoff between reconnection attempts, in seconds (doubling up to the last).
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: Seconds between progress lines while `up` waits for a unit to dial in.
PROGRESS_EVERY = 5.0

#: How much of a session's last prompt `status` shows (characters).
PROMPT_PREVIEW = 200
#: Prompt ids a controller takes from the state at a time (it numbers prompts in memory).
PROMPT_IDS = 1024
#: Seconds a read waits at most for the writes behind to be stored (`Controller.read`).
FLUSH_WAIT = 1.0
#: Seconds `down` and `destroy` wait for the unit's cancelled prompts to end.
STOP_WAIT = 5.0


@attrs.define(slots=True)
class OpenSession:
    """An open session as the controller holds it (the state follows behind)."""

    unit: str
    state: str = "idle"


@attrs.define(eq=False)
class UnitRuntime:
    """One unit as the controller holds it."""

    name: str
    config: UnitConfig
    provisioner: Provisioner | None
    dialer: Dialer | None
    #: "disconnected", "connecting", "connected" or "unreachable".
    state: str = ConnectionState.DISCONNECTED
    error: str | None = None
    client: UnitClient | None = None
    since: float = attrs.field(factory=time.time)
    #: How the live connection was made, when the unit dialed in.
    via: str | None = None
    #: Added by address (`latis connect URL`), not by config: a reload keeps it.
    keep: bool = False
    #: The unit whose provisioner made this one as a member of its group (`scale`).
    member_of: str | None = None
    _hearing: list[Callable[[str], None]] = attrs.field(factory=list)
    _stop: trio.Event | None = None
    _done: trio.Event | None = None
    _connected: trio.Event = attrs.field(factory=trio.Event)
    #: The scope of `_until_stopped_or_closed` while a task waits in it.
    _holding: trio.CancelScope | None = None

    def how(self) -> str:
        """How this unit is meant to be reached, for messages."""
        parts = []
        if self.provisioner is not None and self.config.provisioner is not None:
            parts.append(f"started by the {self.config.provisioner.type} provisioner")
        if self.dialer is not None:
            parts.append(f"dialed at {self.dialer.describe()}")
        for listener in self.config.accept:
            parts.append(f"dialing in on {listener.options.describe()}")  # type: ignore[attr-defined]
        return ", ".join(parts) or "no way configured"

    async def _until_stopped_or_closed(self, client: UnitClient) -> None:
        """Wait until `_set_stop` or the end of `client`'s connection, whichever
        comes first: one task and no nursery (a dial-in fleet holds thousands;
        a nursery of two waiting tasks cost ~6 KiB a unit)."""
        assert self._stop is not None
        if self._stop.is_set():
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope() as scope:
            self._holding = scope
            await client.peer.wait_closed()
        if self._holding is scope:  # (not a newer connection's)
            self._holding = None

    def _set_stop(self) -> None:
        """Ask the task that holds the connection to let it go (`down`)."""
        if self._stop is not None:
            self._stop.set()
        if self._holding is not None:
            self._holding.cancel()

    async def released(self) -> None:
        """Wait until no task holds a connection to the unit."""
        if self._done is not None:
            await self._done.wait()

    def tell(self, line: str) -> None:
        """A progress line of the unit's provisioner: to the log, and to whoever
        hears it now (`hearing`)."""
        log.info("unit %s: %s", self.name, line)
        for hear in list(self._hearing):
            hear(line)

    @contextmanager
    def hearing(self, say: Callable[[str], None]) -> Iterator[None]:
        """Pass the provisioner's progress lines to `say` while the block runs."""
        self._hearing.append(say)
        try:
            yield
        finally:
            self._hearing.remove(say)


class Controller(HumanLoop, PromptEngine):
    """Units, sessions and prompts. Made by `open_controller`."""

    def __init__(
        self, config: Config, state: StateDB, paths: Paths, nursery: trio.Nursery
    ) -> None:
        self.config = config
        self.state = state
        self.paths = paths
        self._nursery = nursery
        #: Where `run_behind` runs work: waited for before the controller stops.
        self._behind = nursery
        self._db_limiter = trio.CapacityLimiter(1)
        self._reads: StateDB | None = None
        self.units: dict[str, UnitRuntime] = {}
        self.prompts: dict[int, PromptRecord] = {}
        #: The open sessions, oldest first: what `session_unit` and `status` read
        #: (the state's rows are written behind, `ChunkWriter.behind`).
        self.sessions: dict[str, OpenSession] = {
            row.id: OpenSession(row.unit, str(row.state)) for row in state.list_sessions()
        }
        #: How many open sessions are in each state (the daemon's overall state
        #: without a scan).
        self.session_counts: collections.Counter[str] = collections.Counter(
            held.state for held in self.sessions.values())
        #: Prompt ids taken from the state and not used yet.
        self._ids = range(0)
        self._ids_lock = trio.Lock()
        self._watching: set[str] = set()
        self._reattaching: dict[str, trio.Lock] = {}
        #: Stores every prompt's chunks, many at a time (started with the controller).
        self.writer = ChunkWriter(state, self._hop)
        self._state_listeners: list[Callable[[str, str], None]] = []
        self._unit_listeners: list[Callable[[UnitRuntime], None]] = []
        self.units.update(self._runtimes(config.units.items()))
        for rt in list(self.units.values()):
            self._add_members(rt)
        from latis_core._cmdr.dialin import DialIns

        #: cmdr's listeners, for units that dial in.
        self.dialins = DialIns(self)

    # ---- state: writes in a worker thread, reads inline --------------------------------

    async def db(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a state method that writes, in the writer's next hop to the worker thread.

        Writes group-commit: whatever is pending when the writer wakes (chunks
        of every prompt, then these calls in order) goes in one thread hop.
        """
        return await self.writer.call(functools.partial(fn, *args))

    async def _hop(self, work: Callable[[], _T]) -> _T:
        return await trio.to_thread.run_sync(work, limiter=self._db_limiter)

    @property
    def reads(self) -> StateDB:
        """A read-only connection to the state, for `read`."""
        if self._reads is None:
            self._reads = StateDB.open_readonly(self.state.path)
        return self._reads

    async def read(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a state method that only reads (of `reads`), right here.

        What this controller wrote behind is stored first (`ChunkWriter.flush`:
        a read sees the controller's own writes), waiting at most `FLUSH_WAIT`
        seconds: while the disk refuses writes (the log says so), reads go on
        with what is stored. A read takes microseconds, less than a hop to a
        thread (~70 µs), and in WAL mode a reader never waits for the writer:
        the loop never blocks behind a write.
        """
        with trio.move_on_after(FLUSH_WAIT):
            await self.writer.flush()
        return fn(*args)

    async def flush(self) -> None:
        """Wait until what this controller wrote behind is in the state file.

        The state follows the controller by at most one batch (milliseconds):
        a prompt's end reaches its followers before the disk. Reads through
        the controller wait for it by themselves; code that reads the state
        file directly right after an end (a script, a test) calls this first.
        """
        await self.writer.call(lambda: None)  # a batch: everything queued before it

    async def _new_prompt_id(self) -> int:
        """The next prompt's id, numbered in memory (from a block taken from the state)."""
        if not self._ids:
            async with self._ids_lock:
                if not self._ids:
                    self._ids = await self.db(self.state.reserve_prompt_ids, PROMPT_IDS)
        prompt_id = self._prompt_id_nowait()
        assert prompt_id is not None  # (nothing ran since the block was checked)
        return prompt_id

    def _prompt_id_nowait(self) -> int | None:
        """The next prompt's id, or None when the block in hand is used up."""
        ids = self._ids
        if not ids:
            return None
        self._ids = ids[1:]
        return ids.start

    # ---- units ------------------------------------------------------------------------

    def _runtime(self, name: str, unit_config: UnitConfig) -> UnitRuntime:
        return self._runtimes([(name, unit_config)])[name]

    def _runtimes(self, units: Iterable[tuple[str, UnitConfig]]) -> dict[str, UnitRuntime]:
        """The units' runtimes, each known to state from the start (status lists it,
        its resources have a home): stored in one transaction (a fleet's config
        of 10,000 units, at cmdr's start or a reload)."""
        units = list(units)
        self.state.upsert_units([
            (name, unit_config.provisioner.type if unit_config.provisioner else None,
             _describe_config(unit_config))
            for name, unit_config in units
        ])
        return {name: self._new_runtime(name, unit_config) for name, unit_config in units}

    def _new_runtime(self, name: str, unit_config: UnitConfig) -> UnitRuntime:
        provisioner = None
        if unit_config.provisioner is not None:
            provisioner = self._provisioner(name, unit_config, self.state.resources(name))
        dialer: Dialer | None = None
        if unit_config.dial is not None:
            dialer = unit_config.dial.options  # type: ignore[assignment]  # a DIALER
            if getattr(dialer, "command", "") is None:
                # `local` with no command: the unit the provisioner runs.
                dialer = provisioner.dialer() if provisioner is not None else None
        rt = UnitRuntime(name, unit_config, provisioner, dialer)
        if provisioner is not None and hasattr(provisioner, "progress"):
            provisioner.progress = rt.tell
        return rt

    def _provisioner(
        self, name: str, unit_config: UnitConfig, resources: Resources
    ) -> Provisioner:
        """The provisioner of unit `name` (it has one), with the controller's enroller
        when its units dial home (unless its options name `connect` and `secret_file`)."""
        assert unit_config.provisioner is not None
        cls = load_provisioner(unit_config.provisioner.type)
        context = ProvisionContext(
            unit=name,
            agent=unit_config.agent,
            agent_options=dict(unit_config.agent_options),
            agent_command=unit_config.agent_command,
            run_dir=self.paths.units_dir / name,
            log_dir=self.paths.log_dir,
            resources=resources,
        )
        options = unit_config.provisioner.options
        provisioner: Provisioner = cls(options, context)
        if isinstance(provisioner, TakesEnroller) and not (
            getattr(options, "connect", None) and getattr(options, "secret_file", None)
        ):
            provisioner.set_enroller(self._enroll)
        return provisioner

    async def _enroll(self, unit: str, address: str | None) -> Mapping[str, Any]:
        """A provisioner's enroller: a fresh enrollment of `unit` (see `DialIns.enroll`)."""
        return await self.dialins.enroll(unit, address)

    # ---- groups (a provisioner that scales) ---------------------------------------------

    def _add_members(self, rt: UnitRuntime, members: Sequence[str] | None = None) -> None:
        """Make the members of `rt`'s group units (the group's config, with no
        provisioner of their own: their pods dial in on the group's listeners), so
        that they can be enrolled, dial in and take sessions. `members` defaults to
        the group's current ones; a unit of config by a member's name stays as it is."""
        if rt.provisioner is None or not isinstance(rt.provisioner, Scales):
            return  # (most have none: a protocol's isinstance is slow, 10,000 times)
        if members is None:
            members = rt.provisioner.member_units()
        for member in members:
            if member == rt.name or member in self.units:
                continue
            member_config = attrs.evolve(rt.config, name=member, provisioner=None, dial=None,
                                         line=None)
            self.units[member] = member_rt = self._runtime(member, member_config)
            member_rt.member_of = rt.name

    def _members_of(self, group: str) -> list[UnitRuntime]:
        return [rt for rt in self.units.values() if rt.member_of == group]

    async def _drop_members(self, group: str, keep: Collection[str] = ()) -> list[str]:
        """Forget the members of `group` not in `keep` (their pods are gone): their
        connections end, their sessions close, their enrollments retire."""
        gone = [rt for rt in self._members_of(group) if rt.name not in keep]
        for rt in gone:
            await self._forget(rt)
            del self.units[rt.name]
        return [rt.name for rt in gone]

    async def scale(
        self, name: str, replicas: int, progress: Callable[[str], None] | None = None
    ) -> list[str]:
        """Make unit `name`'s group `replicas` units (a provisioner that scales: kubernetes).

        New members become units (see `_add_members`) before their pods are made;
        removed ones are forgotten. Returns the members' names. Does not wait for the
        new members to dial in.

        Raises:
            LookupError: no such unit.
            ValueError: its provisioner makes one unit only, or `replicas` < 0.
        """
        rt = self.unit(name)
        provisioner = rt.provisioner
        if not isinstance(provisioner, Scales):
            kind = rt.config.provisioner.type if rt.config.provisioner else "none"
            raise ValueError(f"unit {name!r} cannot scale: its provisioner ({kind}) runs one "
                             "unit (the kubernetes provisioner scales)")
        if replicas < 0:
            raise ValueError(f"cannot scale unit {name!r} to {replicas} units")
        self._add_members(rt, provisioner.member_units(replicas))
        with rt.hearing(progress or (lambda _: None)):
            members = await provisioner.scale(replicas)
        await self._drop_members(name, members)
        if name not in members:
            await self._disconnect(rt)
        return members

    async def reload(self, config: Config) -> dict[str, list[str]]:
        """Take a new config: add its new units, update those not connected, stop
        (provisioned) or disconnect (the others) the units it no longer names, and
        start the listeners it names that do not run yet.

        Units added by address (`add_address`) are not config's: they stay.
        Returns the names of the units `added` and `removed`, those `kept` as they
        were because they are connected (a change applies to a unit not connected),
        and `notes` on the listeners (one that does not listen, one no unit names).
        """
        added = []
        changed = []
        kept = []
        for name, unit_config in config.units.items():
            rt = self.units.get(name)
            if rt is None or rt.keep or rt.member_of is not None:
                added.append(name)
            elif rt.config == unit_config:
                continue
            elif rt.client is not None:
                kept.append(name)
                continue
            changed.append((name, unit_config))
        self.units.update(self._runtimes(changed))
        for name in config.units:
            self._add_members(self.units[name])
        # (A member stays as long as its group is in config.)
        removed = [n for n, rt in self.units.items() if n not in config.units and not rt.keep
                   and rt.member_of not in config.units]
        for name in removed:
            try:
                await self.down(name)
            except (LatisError, ProvisionError, OSError) as exc:
                log.warning("unit %s, removed from config, did not stop: %s", name, exc)
            del self.units[name]
        self.config = config
        await self.dialins.start(self._nursery)
        notes = self.dialins.problems([*added, *(name for name, _ in changed)])
        return {"added": added, "removed": removed, "kept": kept, "notes": notes}

    def add_address(
        self, address: str, name: str | None = None, token_file: str | None = None
    ) -> str:
        """Add a unit reached at `address` for this run only.

        `address` is any dialer's URL: `tcp://HOST:PORT?fingerprint=…`,
        `unix:PATH`, `ws://…`, `wss://…`, `quic://…`, `ssh://USER@HOST`,
        `container://NAME`, `local:COMMAND`. Returns the unit's name (given,
        or made from the address).

        The same address again (a retry) is the unit it made the first time. A
        name in config, or a connected unit's, is not taken over.

        Raises:
            ValueError: the address is not one latis knows how to dial, or the
                name is not a unit name or is taken.
            ImportError: its transport's optional dependencies are missing.
        """
        from latis_core._cmdr.config import _UNIT_NAME, PluginConfig

        kind, dialer = dialer_from_url(address)
        table = {"url": address} | ({"token_file": token_file} if token_file else {})
        for known, rt in self.units.items():
            dial = rt.config.dial
            if rt.keep and dial is not None and dial.table.get("url") == address and (
                    name in (None, known)):
                if dial.token_file != token_file and rt.state != ConnectionState.CONNECTED:
                    # A retry with (another) token file: the next dial uses it.
                    dial = attrs.evolve(dial, table=table, token_file=token_file)
                    rt.config = attrs.evolve(rt.config, dial=dial)
                return known
        if name is not None and not _UNIT_NAME.fullmatch(name):
            raise ValueError(f"bad unit name {name!r}: expected lower-case letters, digits, "
                             "'_', '.' and '-', starting with a letter or a digit")
        if name is not None and name in self.units:
            taken = self.units[name]
            where = "added by address" if taken.keep else "in config"
            raise ValueError(f"unit {name!r} exists already ({where}: {taken.how()}): give "
                             f"another --name (`latis unit rm {name}` takes it out)")
        unit_name = name or next(f"{kind}-{n}" for n in itertools.count(1)
                                 if f"{kind}-{n}" not in self.units)
        unit_config = UnitConfig(
            name=unit_name,
            dial=PluginConfig(type=kind, options=dialer, table=table, token_file=token_file),
        )
        self.units[unit_name] = rt = self._runtime(unit_name, unit_config)
        rt.keep = True
        return unit_name

    def unit(self, name: str) -> UnitRuntime:
        """The unit called `name`.

        Raises:
            LookupError: no such unit in config (the message lists those there are).
        """
        try:
            return self.units[name]
        except KeyError:
            raise LookupError(
                f"no unit {name!r} in config (units: {', '.join(sorted(self.units))})"
            ) from None

    async def up(
        self, name: str, progress: Callable[[str], None] | None = None, *, wait: bool = True
    ) -> UnitRuntime:
        """Provision the unit if it has a provisioner, start it, and connect to it.

        `progress` hears each step, the provisioner's own lines too. With `wait`
        False (`latis unit up --no-wait`), return once the provisioner's platform
        took the request (a provisioner with a `wait` attribute does not wait for
        its unit to be ready; see `latis_core._plugins.provision`), without
        connecting or waiting for the unit to dial in.
        """
        rt = self.unit(name)
        say = progress or (lambda _: None)
        if (
            rt.state == ConnectionState.CONNECTED
            and rt.client is not None
            and not rt.client.peer.closed
        ):
            return rt
        if rt.provisioner is not None and rt.config.provisioner is not None:
            say(f"starting unit {name!r} ({rt.config.provisioner.type})")
            self._add_members(rt)
            try:
                with rt.hearing(say), _not_waiting(rt.provisioner, not wait):
                    await rt.provisioner.start()
            except ProvisionError as exc:
                await self._set_connection(rt, ConnectionState.UNREACHABLE, str(exc))
                raise
            if rt.dialer is None:
                rt.dialer = rt.provisioner.dialer()
        if not wait:
            say(f"unit {name!r} started; not waiting for it to be ready")
            return rt
        if rt.dialer is None:
            await self._wait_dial_in(rt, say)
            return rt
        say(f"connecting to unit {name!r} ({rt.dialer.describe()})")
        await self._connect(rt)
        say(f"unit {name!r} is up")
        return rt

    async def _wait_dial_in(self, rt: UnitRuntime, say: Callable[[str], None]) -> None:
        """Wait for a unit that dials in (only if its provisioner just started it)."""
        if rt.config.accept and rt.provisioner is not None:
            limit = self.config.daemon.dial_in_timeout
            say(f"waiting for unit {rt.name!r} to dial in (up to {limit:g} s)")
            start = trio.current_time()
            with trio.move_on_after(limit):
                while rt.client is None or rt.client.peer.closed:
                    with trio.move_on_after(PROGRESS_EVERY):
                        await rt._connected.wait()
                    if rt.client is None:
                        say(f"waiting for unit {rt.name!r} to dial in: "
                            f"{trio.current_time() - start:.0f} s")
            if rt.client is None or rt.client.peer.closed:
                raise UnitNotConnected(
                    f"unit {rt.name!r} did not dial in within {limit:g} s ({rt.how()}; "
                    f"[daemon] dial_in_timeout); its provisioner says: "
                    f"{await _provision_state(rt.provisioner)}")
        if rt.client is None or rt.client.peer.closed:
            hint = (f": run on it the line `latis unit enroll {rt.name}` prints"
                    if rt.config.accept else "")
            raise UnitNotConnected(f"unit {rt.name!r} has not dialed in ({rt.how()}){hint}")
        say(f"unit {rt.name!r} is up")

    async def attach(self, rt: UnitRuntime, client: UnitClient, via: str) -> None:
        """Hold a connection the unit made (it dialed in) until it ends or `down`."""
        rt._stop = trio.Event()
        rt._done = done = trio.Event()
        rt.client = client
        rt.via = via
        try:
            await self._set_connection(rt, ConnectionState.CONNECTED)
            await self._restore(rt, client)
            rt._connected.set()
            await rt._until_stopped_or_closed(client)
        finally:
            rt.client = None
            rt._connected = trio.Event()
            with trio.CancelScope(shield=True):
                if client.peer.closed and not rt._stop.is_set():
                    await self._lost(rt, client)
                else:
                    await self._set_connection(rt, ConnectionState.DISCONNECTED)
            rt.via = None
            done.set()

    async def _connect(self, rt: UnitRuntime) -> None:
        if rt._done is not None and not rt._done.is_set():
            # A connection task exists (maybe reconnecting): wait for it.
            await _wait_connected(rt, self.config.daemon.handshake_timeout * 2)
            return
        rt._stop = trio.Event()
        rt._done = trio.Event()
        rt._connected = trio.Event()
        first: list[BaseException] = []
        await self._nursery.start(self._hold, rt, first)
        if first:
            raise first[0]

    async def _hold(
        self, rt: UnitRuntime, first: list[BaseException], *, task_status: Any
    ) -> None:
        """Hold the unit's connection until `down`; reconnect if it drops."""
        assert rt._stop is not None and rt._done is not None
        attempt = 0
        started = False
        try:
            while not rt._stop.is_set():
                if rt.state != ConnectionState.UNREACHABLE:
                    # (An unreachable unit stays so, with its reason, until it answers.)
                    await self._set_connection(rt, ConnectionState.CONNECTING)
                try:
                    assert rt.dialer is not None
                    token = _token(rt)
                    beat, beat_timeout = self.config.daemon.heartbeat_of(rt.config)
                    async with rt.dialer.connect() as stream, connect(
                        stream,
                        name="cmdr",
                        label=f"unit {rt.name!r}",
                        handshake_timeout=self.config.daemon.handshake_timeout,
                        keepalive=beat,
                        keepalive_timeout=beat_timeout,
                        token=token,
                    ) as client:
                        rt.client = client
                        attempt = 0
                        await self._set_connection(rt, ConnectionState.CONNECTED)
                        await self._restore(rt, client)
                        rt._connected.set()
                        if not started:
                            started = True
                            task_status.started()
                        await rt._until_stopped_or_closed(client)
                        if not rt._stop.is_set():
                            await self._lost(rt, client)
                except (ConnectError, ConnectionClosed, OSError, RequestError) as exc:
                    message = str(exc)
                    log.warning("unit %s: %s", rt.name, message)
                    rt.client = None
                    await self._set_connection(rt, ConnectionState.UNREACHABLE, message)
                    if not started:
                        # (A failed proof stays one: `unauthorized`, exit 4 in the CLI.)
                        failed = AuthRefused if isinstance(exc, AuthRefused) else UnitNotConnected
                        first.append(failed(f"unit {rt.name!r} ({rt.how()}): {message}"))
                        started = True
                        task_status.started()
                        return
                finally:
                    rt.client = None
                    rt._connected = trio.Event()
                if rt._stop.is_set():
                    break
                # The connection dropped while the unit should be up: try again
                # (first starting it again, if so configured and it is gone).
                await self._restart_if_gone(rt)
                delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
                attempt += 1
                with trio.move_on_after(delay):
                    await rt._stop.wait()
        finally:
            rt.client = None
            # Only `down` records "disconnected": when the controller itself
            # stops, the state keeps saying the unit was up, so that the next
            # controller re-attaches to it.
            if rt._stop.is_set() and rt.state != ConnectionState.UNREACHABLE:
                with trio.CancelScope(shield=True):
                    await self._set_connection(rt, ConnectionState.DISCONNECTED)
            rt._done.set()

    async def _lost(self, rt: UnitRuntime, client: UnitClient) -> None:
        """The unit's connection ended on its own (it broke, or went silent): unreachable."""
        why = client.peer.why_closed or "the connection ended"
        log.warning("unit %s: connection lost: %s", rt.name, why)
        await self._set_connection(rt, ConnectionState.UNREACHABLE, why)

    async def _restart_if_gone(self, rt: UnitRuntime) -> None:
        """(`[daemon] restart_lost_units`) Start the unit again if its provisioner saw it gone."""
        if not self.config.daemon.restart_lost_units or rt.provisioner is None:
            return
        gone = await self._provisioner_says_gone(rt)
        if gone is None:
            return
        log.warning("unit %s: %s; starting it again", rt.name, gone)
        # Its prompts died with it (and their replay log): they end now, not
        # `unknown_session` when the new process does not know their session.
        await self.unit_lost(rt.name, gone)
        try:
            await rt.provisioner.start()
        except ProvisionError as exc:
            log.warning("unit %s could not start again: %s", rt.name, exc)

    async def _set_connection(self, rt: UnitRuntime, state: str, error: str | None = None) -> None:
        rt.state = state
        rt.error = error
        rt.since = time.time()
        transport = rt.via or (rt.dialer.describe() if rt.dialer is not None else "")
        await self.db(self.state.set_connection, rt.name, state, transport, error)
        for listener in list(self._unit_listeners):
            listener(rt)

    async def down(self, name: str, progress: Callable[[str], None] | None = None) -> None:
        """Disconnect from the unit and stop it (if it has a provisioner; a group's
        members stop with it)."""
        rt = self.unit(name)
        await self._cancel_prompts_on(name)
        await self._disconnect(rt)
        for member in self._members_of(name):
            await self._disconnect(member)
        if rt.provisioner is not None:
            with rt.hearing(progress or (lambda _: None)):
                await rt.provisioner.stop()

    async def _cancel_prompts_on(self, name: str) -> None:
        """Cancel the prompts running on unit `name` (and its group's members) and wait,
        bounded, for their ends: a unit taken down on purpose ends them `cancelled`,
        not `unit_lost` (whose message says to bring the unit back)."""
        names = {name, *(member.name for member in self._members_of(name))}
        running = [r for r in self.prompts.values() if r.unit in names and r.end is None]
        for record in running:
            await self.cancel(record.id)
        with trio.move_on_after(STOP_WAIT):
            for record in running:
                while record.end is None:
                    await record.when_changed().wait()

    async def _disconnect(self, rt: UnitRuntime) -> None:
        rt._set_stop()
        if rt._done is not None:
            await rt._done.wait()
        await self._set_connection(rt, ConnectionState.DISCONNECTED)

    async def destroy(self, name: str, progress: Callable[[str], None] | None = None) -> None:
        """Disconnect, destroy what the provisioner made, and forget the unit's state
        (a group's members too).

        The unit stays in config: it starts a new life (a new state row, no
        resources), so `up` works again at once.
        """
        rt = self.unit(name)
        _not_a_member(rt, "destroy")
        await self._cancel_prompts_on(name)
        with rt.hearing(progress or (lambda _: None)):
            await self._forget(rt)
        await self._drop_members(name)
        self.units[name] = self._runtime(name, rt.config)
        self.units[name].keep = rt.keep
        self._add_members(self.units[name])

    async def remove(self, name: str) -> None:
        """Destroy the unit (see `destroy`) and drop it: the controller no longer knows it.

        A unit only the state knows (taken out of config by hand, so already
        stopped) is forgotten there.

        Raises:
            LookupError: neither config nor state knows the unit.
        """
        if name not in self.units:
            row = await self.read(self.reads.get_unit, name)
            if row is None:
                if not await self._destroy_orphans(name):
                    self.unit(name)  # raises, listing the units there are
                return
            rt = self._from_state(name, row.config)
            if rt is not None:
                # Destroy what its provisioner made, from the config state kept.
                await self._forget(rt)
                return
            for sid in [s.id for s in await self.read(self.reads.list_sessions, name)]:
                self._notify(sid, State.CLOSED.value)
            await self.db(self.state.mark_unit_destroyed, name)
            return
        _not_a_member(self.units[name], "remove")
        await self._forget(self.units[name])
        await self._drop_members(name)
        del self.units[name]

    def _stored_config(self, name: str, stored: Mapping[str, Any]) -> UnitConfig | None:
        """The config of unit `name` as the state recorded it (`_describe_config`);
        None if it no longer reads."""
        import tomli_w

        from latis_core._cmdr.config import ConfigError, parse_config

        table = {key: value for key, value in stored.items() if value}
        try:
            return parse_config(tomli_w.dumps({"units": {name: table}})).units[name]
        except (ConfigError, KeyError, LookupError, TypeError, ValueError) as exc:
            log.warning("unit %s: its recorded config does not read (%s)", name, exc)
            return None

    # ---- orphans -------------------------------------------------------------------------

    async def _orphan_finders(self) -> dict[tuple[str, str], tuple[UnitConfig, FindsOrphans]]:
        """One provisioner per place where orphans may be (per kind and `orphan_scope`),
        from the units of config and those only the state knows."""
        configs = [rt.config for rt in self.units.values() if rt.config.provisioner]
        for row in await self.read(self.reads.list_units):
            if row.name not in self.units and row.config.get("provisioner"):
                stored = self._stored_config(row.name, row.config)
                if stored is not None and stored.provisioner is not None:
                    configs.append(stored)
        finders: dict[tuple[str, str], tuple[UnitConfig, FindsOrphans]] = {}
        for unit_config in configs:
            plugin = unit_config.provisioner
            assert plugin is not None
            try:
                cls = load_provisioner(plugin.type)
            except (LookupError, ImportError):
                continue
            scope = getattr(cls, "orphan_scope", None)
            where = plugin.table if scope is None else {
                key: getattr(plugin.options, key, None) for key in scope}
            key = (plugin.type, json.dumps(where, sort_keys=True, default=str))
            if key in finders:
                continue
            provisioner = self._provisioner(unit_config.name, unit_config, MemoryResources())
            if isinstance(provisioner, FindsOrphans):
                finders[key] = (unit_config, provisioner)
        return finders

    async def orphans(self) -> dict[str, Any]:
        """What provisioners made for units this controller does not know (no longer
        in config, and not only in its state either), found by their tag, label or
        name: `latis unit list`. Each place is looked at once, all at once.

        Returns `orphans` (each: `unit`, `provisioner`, `resource`, `state`,
        `detail`) and `errors` (where looking failed, and why).
        """
        known = set(self.units)
        found: list[dict[str, Any]] = []
        errors: list[str] = []

        async def look(kind: str, finder: FindsOrphans) -> None:
            try:
                for orphan in await finder.orphans(known):
                    found.append(_orphan_row(kind, orphan))
            except (ProvisionError, OSError) as exc:
                errors.append(f"{kind}: {exc}")

        async with trio.open_nursery() as nursery:
            for (kind, _), (_, finder) in (await self._orphan_finders()).items():
                nursery.start_soon(look, kind, finder)
        found.sort(key=lambda row: (row["unit"], row["provisioner"], row["resource"]))
        return {"orphans": found, "errors": sorted(errors)}

    async def _destroy_orphans(self, name: str) -> bool:
        """Destroy what provisioners made for `name`, a unit neither config nor state
        knows (an orphan): with a provisioner for `name` made from the options of the
        unit whose place it was found in. Whether there was any."""
        known = set(self.units)
        destroyed = False
        for (kind, _), (unit_config, finder) in (await self._orphan_finders()).items():
            mine = [o for o in await finder.orphans(known) if o.unit == name]
            if not mine:
                continue
            pids = [pid for o in mine if (pid := getattr(o, "pid", None)) is not None]
            for seed in [{"pid": str(pid)} for pid in pids] or [{}]:
                provisioner = self._provisioner(name, unit_config, MemoryResources(seed))
                log.warning("destroying the orphan %s (%s) of unit %s", kind, seed or "", name)
                try:
                    await provisioner.destroy()
                finally:
                    close = getattr(provisioner, "aclose", None)
                    if close is not None:
                        await close()  # (a libvirt connection)
            destroyed = True
        return destroyed

    def _from_state(self, name: str, stored: Mapping[str, Any]) -> UnitRuntime | None:
        """A runtime for a unit only the state knows, from the config it recorded
        (`_describe_config`); None if that config no longer reads."""
        unit_config = self._stored_config(name, stored)
        if unit_config is None:
            return None
        try:
            return self._runtime(name, unit_config)
        except (LookupError, TypeError, ValueError) as exc:
            log.warning("unit %s: its recorded provisioner does not load (%s); forgetting it",
                        name, exc)
            return None

    async def _forget(self, rt: UnitRuntime) -> None:
        await self._disconnect(rt)
        if rt.provisioner is not None:
            await rt.provisioner.destroy()
        for sid in [s.id for s in await self.read(self.reads.list_sessions, rt.name)]:
            self._close_session(sid)
        await self.db(self.state.mark_unit_destroyed, rt.name)

    async def reconnect_known(self) -> None:
        """Connect again to the units that were connected when the last controller stopped.

        All at once: a fleet comes back in the time of its slowest unit.
        """

        async def again(name: str) -> None:
            try:
                await self.up(name)
            except (LatisError, ProvisionError, OSError) as exc:
                log.warning("could not re-attach to unit %s: %s", name, exc)

        # One query for all (a fleet of 10,000 units: not a read each).
        overview = await self.read(self.reads.unit_overview)
        known = {row[1]: row[3] for row in overview}
        async with trio.open_nursery() as nursery:
            for rt in list(self.units.values()):
                if known.get(rt.name) in (ConnectionState.CONNECTED, ConnectionState.CONNECTING):
                    nursery.start_soon(again, rt.name)

    async def status(self) -> list[dict[str, Any]]:
        """What runs where: one entry per unit.

        The sessions come from memory and their last prompts from one query:
        the cost grows with the units and sessions shown, not per query.
        """
        last = await self.read(self.reads.last_prompts)
        by_unit: dict[str, list[tuple[str, str]]] = {}
        for sid, held in self.sessions.items():
            by_unit.setdefault(held.unit, []).append((sid, held.state))
        out = []
        for rt in self.units.values():
            entry: dict[str, Any] = {
                "unit": rt.name,
                "provisioner": rt.config.provisioner.type if rt.config.provisioner else None,
                "connection": rt.state,
                "how": rt.how(),
                "error": rt.error,
                "since": rt.since,
            }
            if rt.member_of is not None:
                entry["member_of"] = rt.member_of
            if rt.provisioner is not None:
                try:
                    found = await rt.provisioner.status()
                    entry["provision"] = found.state.value
                    entry["provision_detail"] = found.detail
                except (ProvisionError, OSError) as exc:
                    entry["provision"] = "unknown"
                    entry["provision_detail"] = str(exc)
            if rt.client is not None:
                entry["agent"] = {"name": rt.client.agent.name, "version": rt.client.agent.version}
                entry["capabilities"] = list(rt.client.capabilities)
            entry["sessions"] = [await self._session_status(sid, state, last.get(sid))
                                 for sid, state in by_unit.get(rt.name, ())]
            out.append(entry)
        return out

    async def _session_status(
        self, sid: str, state: str, last: PromptRow | None
    ) -> dict[str, Any]:
        """A session in `status`: its state (and A2A's), context use while it
        works or waits, the question it waits on, and its last prompt."""
        entry: dict[str, Any] = {"id": sid, "state": state, "a2a_state": a2a_state(state)}
        if state in ("busy", "waiting"):
            entry["context"] = await self.context_of(sid)
        if last is not None:
            # What it works on (or last did): `latis top` and the dashboard show it.
            entry["prompt"] = {"id": last.id, "text": last.text[:PROMPT_PREVIEW],
                               "state": str(last.state), "started_at": last.started_at,
                               "ended_at": last.ended_at}
        if state == "waiting" and last is not None:
            pending = await self.read(self.reads.pending_inputs, last.id)
            if pending:
                entry["question"] = {"id": f"{last.id}.{pending[0].number}",
                                     "question": pending[0].question,
                                     "since": pending[0].asked_at}
        return entry

    def _client(self, rt: UnitRuntime) -> UnitClient:
        client = rt.client
        if client is None or client.peer.closed:
            raise UnitNotConnected(
                f"unit {rt.name!r} is not connected ({rt.how()}; state: {rt.state}"
                + (f", {rt.error}" if rt.error else "")
                + f"): run `latis unit up {rt.name}`"
            )
        return client

    # ---- sessions -------------------------------------------------------------------

    async def create_session(
        self, unit: str, options: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Open a session on `unit` (bringing the unit up first if needed)."""
        rt = self.unit(unit)
        if rt.client is None or rt.client.peer.closed:
            await self.up(unit)
        session = await self._client(rt).create_session(**dict(options or {}))
        self._hold_session(session.id, unit, "idle")
        self.writer.behind(("session", (session.id, "idle", self.state.now(), unit)))
        self._notify(session.id, "idle")
        return {"session": session.id, "unit": unit, "state": "idle"}

    async def coordinate(
        self,
        task: str,
        units: Sequence[str],
        on_event: Callable[[CoordinationEvent], None] = lambda event: None,
        settings: CoordinationSettings | None = None,
        coordination_id: str | None = None,
    ) -> Coordination:
        """Run `task` over the units' agents, each in a session of its own, with a strategy.

        `on_event` sees every event as it comes (`started`, `prompt`, `chunk`,
        `input`, `reply`, `state`, `note`, `ended`, `final`); `settings` picks
        the strategy (`parallel` by default), `require` and the timeouts. The
        coordination is stored (`coordinations`). See `latis_core._cmdr.coordinate`.
        """
        from latis_core._cmdr.coordinate import coordinate

        return await coordinate(self, task, units, on_event, settings, coordination_id)

    async def session_unit(self, sid: str) -> UnitRuntime:
        """The unit a session lives on.

        Raises:
            RequestError: (unknown_session) no open session has that id.
        """
        held = self.sessions.get(sid)
        if held is None:
            # Not opened through this controller (written to the state by
            # another hand): the state knows, and the controller holds it now.
            row = await self.read(self.reads.get_session, sid)
            if row is not None and row.state == "closed":
                raise RequestError(ErrorCode.UNKNOWN_SESSION.value, _closed(sid))
            if row is None:
                raise RequestError(ErrorCode.UNKNOWN_SESSION.value, f"no session {sid!r}")
            held = self._hold_session(sid, row.unit, str(row.state))
        rt = self.units.get(held.unit)
        if rt is None:
            raise RequestError(ErrorCode.UNKNOWN_SESSION.value, f"no session {sid!r}")
        return rt

    def run_behind(self, fn: Callable[[], Awaitable[object]]) -> None:
        """Run `fn` in the controller: work its caller need not wait for (a
        coordination's sessions closing after its answer). A controller that
        stops waits for it first (with its units still connected and its
        writer still storing); `fn` bounds itself."""
        self._behind.start_soon(fn)

    async def destroy_session(self, sid: str) -> None:
        """End a session (cancelling its prompt, if one runs)."""
        rt = await self.session_unit(sid)
        try:
            await Session(self._client(rt), sid).destroy()
        except RequestError as exc:
            if exc.code != ErrorCode.UNKNOWN_SESSION:
                raise
        self._close_session(sid)

    def _hold_session(self, sid: str, unit: str, state: str) -> OpenSession:
        """Hold an open session (and count it)."""
        held = self.sessions[sid] = OpenSession(unit, state)
        self.session_counts[state] += 1
        return held

    def _set_session(self, sid: str, state: str) -> None:
        """The session's state changed: kept in memory, written behind, told."""
        held = self.sessions.get(sid)
        if held is None:
            return  # closed meanwhile: it stays closed
        self.session_counts[held.state] -= 1
        self.session_counts[state] += 1
        held.state = state
        self.writer.behind(("state", (state, sid)))
        self._notify(sid, state)

    def _close_session(self, sid: str) -> None:
        """The session ended (its running prompts are stored as cancelled)."""
        held = self.sessions.pop(sid, None)
        if held is not None:
            self.session_counts[held.state] -= 1
        self.writer.behind(("close", (self.state.now(), sid)))
        self._notify(sid, State.CLOSED.value)

    def _notify(self, sid: str, state: str) -> None:
        for listener in list(self._state_listeners):
            listener(sid, state)

    def add_state_listener(self, listener: Callable[[str, str], None]) -> Callable[[], None]:
        """Call `listener(session, state)` at every session state change; returns a remover."""
        self._state_listeners.append(listener)
        return lambda: self._state_listeners.remove(listener)

    def add_unit_listener(self, listener: Callable[[UnitRuntime], None]) -> Callable[[], None]:
        """Call `listener(unit)` at every change of a unit's connection; returns a remover."""
        self._unit_listeners.append(listener)
        return lambda: self._unit_listeners.remove(listener)

    # ---- after a restart ------------------------------------------------------------------

    async def _restore(self, rt: UnitRuntime, client: UnitClient) -> None:
        """Resume the unit's open sessions and re-attach its running prompts."""
        for row in await self.read(self.reads.list_sessions, rt.name):
            try:
                await client.resume_session(row.id)
            except RequestError as exc:
                log.warning("session %s on unit %s is gone: %s", row.id, rt.name, exc)
                await self._lose_session(row.id, f"the unit lost the session: {exc.message}")
        await self._reattach_prompts(rt, client)

    async def _reattach_for(self, sid: str) -> None:
        row = await self.read(self.reads.get_session, sid)
        if row is None or row.unit not in self.units:
            return
        rt = self.units[row.unit]
        if rt.client is not None and not rt.client.peer.closed:
            return
        try:
            await self.up(rt.name)
        except (LatisError, ProvisionError, OSError) as exc:
            log.warning("could not re-attach to unit %s: %s", rt.name, exc)

    async def _lose_session(self, sid: str, why: str) -> None:
        for record in [r for r in self.prompts.values() if r.session == sid and r.end is None]:
            if record.scope is not None:
                record.scope.cancel()
            self._finish(record, {
                "outcome": "error", "code": ErrorCode.UNKNOWN_SESSION.value,
                "message": why, "chunks": record.received + 1})
        for prompt in await self.read(self.reads.prompts, sid):
            if prompt.state == PromptState.RUNNING:
                stored = await self.read(self.reads.last_seq, prompt.id) + 1
                await self.db(
                    self.state.end_prompt,
                    prompt.id,
                    PromptState.ERROR,
                    stored,
                    f"unknown_session: {why}",
                )
        self._close_session(sid)


def _describe_config(config: UnitConfig) -> dict[str, Any]:
    return {
        "agent": config.agent,
        "agent_options": dict(config.agent_options),
        "provisioner": config.provisioner.table | {"type": config.provisioner.type}
        if config.provisioner else None,
        "dial": config.dial.table | {"type": config.dial.type} if config.dial else None,
        "accept": [a.table | {"type": a.type} for a in config.accept],
    }


def _not_a_member(rt: UnitRuntime, verb: str) -> None:
    """Refuse to `verb` a member of a group: its group's provisioner owns its pod."""
    if rt.member_of is not None:
        raise RequestError(
            ErrorCode.BAD_MESSAGE.value,
            f"unit {rt.name!r} is a member of unit {rt.member_of!r}'s group: to {verb} it, "
            f"scale the group down (`latis unit scale {rt.member_of} N`)",
        )


def _orphan_row(kind: str, orphan: Any) -> dict[str, Any]:
    """An orphan as `orphans` lists it, whatever the provisioner's record of it."""
    pid = getattr(orphan, "pid", None)
    return {
        "unit": orphan.unit,
        "provisioner": kind,
        "resource": getattr(orphan, "resource", None) or (f"pid {pid}" if pid else ""),
        "state": getattr(orphan, "state", None) or ("running" if pid else ""),
        "detail": orphan.detail,
    }


async def _provision_state(provisioner: Provisioner) -> str:
    """What the provisioner sees of its unit now, in words (for a timeout's message)."""
    try:
        found = await provisioner.status()
    except (ProvisionError, OSError) as exc:
        return str(exc)
    return found.state.value + (f", {found.detail}" if found.detail else "")


@contextmanager
def _not_waiting(provisioner: Provisioner, no_wait: bool) -> Iterator[None]:
    """With `no_wait`, set the provisioner's `wait` (if it has one) False for the block."""
    if not no_wait or not hasattr(provisioner, "wait"):
        yield
        return
    provisioner.wait = False
    try:
        yield
    finally:
        provisioner.wait = True


def _closed(sid: str) -> str:
    """What to say of a session that was closed (its transcript stays)."""
    return (f"session {sid!r} is closed (its transcript stays: latis session show {sid}); "
            "`latis prompt --new` opens another")


def _token(rt: UnitRuntime) -> bytes | None:
    """The token the unit asks cmdr to prove, from its dial table's token_file."""
    dial = rt.config.dial
    if dial is None or dial.token_file is None:
        return None
    from latis_core._wire.auth import read_secret_file

    try:
        return read_secret_file(dial.token_file)
    except ValueError as exc:
        raise ConnectError(str(exc)) from exc


async def _wait_connected(rt: UnitRuntime, limit: float) -> None:
    with trio.move_on_after(limit):
        await rt._connected.wait()
    if rt.client is None:
        raise UnitNotConnected(
            f"unit {rt.name!r} is not connected ({rt.how()}; state: {rt.state}"
            + (f", {rt.error}" if rt.error else "") + ")"
        )


@asynccontextmanager
async def open_controller(
    config: Config, state: StateDB, *, paths: Paths | None = None
) -> AsyncIterator[Controller]:
    """Run a controller over `config` and `state`; leaving stops its tasks.

    Units with a provisioner keep running after the block; their prompts too.
    """
    from latis_core._util import unwrap_group

    with unwrap_group():
        # The writer stops last: the tasks' own last writes as they are cancelled
        # (10,000 dial-in units each recording their connection's end) still
        # go in its batches, not in a thread hop each.
        async with trio.open_nursery() as last:
            async with trio.open_nursery() as nursery:
                controller = Controller(config, state, paths or default_paths(), nursery)
                last.start_soon(controller.writer.run)
                await controller.dialins.start(nursery)
                try:
                    async with trio.open_nursery() as behind:
                        controller._behind = behind
                        yield controller
                finally:
                    nursery.cancel_scope.cancel()
                    if controller._reads is not None:
                        controller._reads.close()
            last.cancel_scope.cancel()
    try:  # (after the writer's last batch) the ids not used, for the next controller
        state.release_prompt_ids(controller._ids)
    except (StateError, sqlite3.Error) as exc:
        log.warning("could not give back unused prompt ids: %s", exc)
