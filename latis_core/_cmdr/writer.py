"""The chunk writer: one task that stores every prompt's chunks, many at a time.

Chunks flow first, disk follows. A prompt's pump publishes a chunk to its
followers as soon as it arrives and hands it to the writer (`put`, no wait);
the writer takes everything pending from all prompts and stores it in one
transaction (one hop to the worker thread): `DELAY` seconds after the first
chunk of a batch arrived, at once when `BATCH` rows are pending. Under load,
batches are at least `INTERVAL` apart: a batch's commit writes every page it
touched, so 100 streams' chunks cost the disk and the CPU ~3 times more in
batches of 50 rows than in batches of 500.
The controller's hot path writes behind too (`behind`: a session opened, a
prompt started or ended, a session's state), without waiting: those writes
run first in the batch's transaction (a prompt's row before its chunks), its
ends and closes after the chunks. What must wait for its result goes through
`call`, and runs in the same hop after them: one thread hop per batch for
everything. `flush` waits until what was written behind is stored (the
controller's reads do, so that they see the controller's own writes), and
`when_stored` runs a callback then (a prompt leaves memory once its end is
on disk).
`room` holds a pump back while more than `LIMIT` rows wait (the daemon's memory
and what a crash can lose stay bounded). A batch the disk refuses (full, locked
past the busy timeout) stays pending, ahead of what comes next, and is tried
again with a growing pause: it is never dropped while the controller runs.

The durability contract (docs/design.md): what a follower was shown may not
be on disk yet; a daemon that dies loses at most what was pending (at most
`INTERVAL` seconds of it), and the controller that starts next asks the unit to
replay from the last stored seq.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from latis_core._cmdr.state import Behind, StateDB

if TYPE_CHECKING:
    from latis_core._cmdr.prompts import PromptRecord
    from latis_core._wire.messages import ResponseChunk

__all__ = ["BATCH", "DELAY", "INTERVAL", "LIMIT", "RETRY_MAX", "ChunkWriter"]

_T = TypeVar("_T")

log = logging.getLogger("latis.cmdr")

#: Seconds the first chunk after a quiet spell waits before its batch is written.
DELAY = 0.005
#: Seconds at least from one batch's start to the next's, unless one is full
#: or awaited (`flush`, `call`): a chunk waits at most this long under load.
INTERVAL = 0.05
#: Rows that make a batch full: written at once, without waiting for `DELAY`.
BATCH = 4096
#: Rows pending at most: a pump waits (`room`) while more are.
LIMIT = 4 * BATCH
#: Seconds at most between two attempts to store a batch the disk refused.
RETRY_MAX = 1.0


class ChunkWriter:
    """Group-commits the chunks of all running prompts and the writes made
    behind (one per controller)."""

    def __init__(
        self,
        state: StateDB,
        run_write: Callable[[Callable[[], Any]], Awaitable[Any]],
        *,
        delay: float = DELAY,
        interval: float = INTERVAL,
        batch: int = BATCH,
        limit: int = LIMIT,
    ) -> None:
        self.state = state
        self._run_write = run_write
        self.delay = delay
        self.interval = interval
        #: When the last batch started (trio's clock).
        self._last = -math.inf
        self.batch = batch
        self.limit = limit
        self._pending: dict[PromptRecord, list[ResponseChunk]] = {}
        #: Writes behind: before the chunks (rows they need), after them (ends).
        self._before: list[Behind] = []
        self._after: list[Behind] = []
        #: Callbacks to run once the writes queued before them are stored.
        self._then: list[Callable[[], object]] = []
        #: Other writes waiting for the next hop, each with the box its result goes in.
        self._ops: list[tuple[Callable[[], Any], list[tuple[bool, Any]]]] = []
        self._count = 0
        #: Rows of the batch being written (not stored yet either).
        self._writing = 0
        #: Writes behind queued, and stored, since the start (for `flush`).
        self._queued = 0
        self._stored = 0
        self._wake = trio.Event()
        self._urgent = trio.Event()
        self._written = trio.Event()
        #: True while `run` runs (until then, and after, `call` hops by itself).
        self.running = False
        #: Transactions and rows written, for benchmarks and logs.
        self.transactions = 0
        self.rows = 0
        #: Batches the disk refused in a row (each is tried again, none is dropped).
        self.failures = 0

    @property
    def pending(self) -> int:
        """Rows handed over and not stored yet (the batch being written included)."""
        return self._count + self._writing

    def put(self, record: PromptRecord, chunks: list[ResponseChunk]) -> None:
        """Queue `chunks` of `record` for the next batch (never waits): the chunks
        themselves, as its followers were shown them (no row made for each; the
        list is the writer's from now on)."""
        if not chunks:
            return
        queued = self._pending.get(record)
        if queued is None:
            self._pending[record] = chunks
        else:
            queued.extend(chunks)
        self._count += len(chunks)
        self._wake.set()
        if self._count >= self.batch:
            self._urgent.set()

    def behind(self, write: Behind) -> None:
        """Queue a write for the next batch (never waits; `StateDB.write_behind`
        says which there are). Ends and closes go after the batch's chunks."""
        (self._after if write[0] in _AFTER_CHUNKS else self._before).append(write)
        self._queued += 1
        self._wake.set()

    def post(self, fn: Callable[[], object], what: str) -> None:
        """Run the state write `fn` in the next batch's hop, after the chunks,
        without waiting for it (`what` names it in the log if it fails)."""
        self._ops.append((fn, _Logged(what)))
        self._queued += 1
        self._wake.set()

    def when_stored(self, fn: Callable[[], object]) -> None:
        """Call `fn` (in trio) once everything queued so far is stored."""
        if not (self._before or self._after or self._pending or self._ops):
            fn()
            return
        self._then.append(fn)

    async def flush(self) -> None:
        """Wait until the writes queued behind so far are stored."""
        target = self._queued
        if self._stored >= target:
            await trio.lowlevel.checkpoint()
            return
        if not self.running:
            await self._write_batch(final=True)
            return
        while self._stored < target:
            self._urgent.set()
            await self._written.wait()

    @property
    def has_room(self) -> bool:
        """Whether `room` would not wait now."""
        return self._count + self._writing <= self.limit

    async def room(self) -> None:
        """Wait while more rows are pending than `LIMIT` (backpressure on the pumps)."""
        while self._count + self._writing > self.limit:
            self._urgent.set()
            await self._written.wait()

    async def call(self, fn: Callable[[], _T]) -> _T:
        """Run the state write `fn` in the next batch's hop (after its chunks); its result."""
        box: list[tuple[bool, Any]] = []
        if self.running:
            self._ops.append((fn, box))
            self._wake.set()
            self._urgent.set()
            while not box:
                await self._written.wait()
        else:  # the writer stopped (the controller is stopping): a hop of its own
            self._ops.append((fn, box))
            await self._write_batch(final=True)
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    async def run(self) -> None:
        """Write batches until cancelled; then write what is still pending, once."""
        self.running = True
        try:
            while True:
                await self._wake.wait()
                if not self._urgent.is_set():
                    wait = max(self.delay, self._last + self.interval - trio.current_time())
                    with trio.move_on_after(wait):
                        await self._urgent.wait()
                self._last = trio.current_time()
                if not await self._write_batch():
                    # The disk refused the batch: it is pending again; give the
                    # disk a moment (the pumps wait in `room` meanwhile).
                    await trio.sleep(min(RETRY_MAX, self.delay * 2**self.failures))
        finally:
            self.running = False
            if self._pending or self._ops or self._before or self._after:
                await self._write_batch(final=True)

    async def _write_batch(self, *, final: bool = False) -> bool:
        """Store what is pending in one hop; False if it could not be stored (then
        it is all pending again, ahead of what came meanwhile, unless `final`:
        then the other writes run anyway and the unit keeps the chunks for the
        next controller's replay)."""
        self._wake = trio.Event()
        self._urgent = trio.Event()
        taken, self._pending = self._pending, {}
        count, self._count = self._count, 0
        self._writing += count
        ops, self._ops = self._ops, []
        before, self._before = _by_kind(_coalesced(self._before, self._after)), []
        after, self._after = _by_kind(self._after), []
        then, self._then = self._then, []
        queued = self._queued
        batches = [(record.id, rows) for record, rows in taken.items()]
        # Shielded: a batch taken is a batch written (or handed back), and every
        # caller hears back, even when the controller stops meanwhile.
        with trio.CancelScope(shield=True):
            failed, problems = await self._run_write(
                functools.partial(self._work, batches, before, after, ops, final))
        self._writing -= count
        for problem in problems:
            log.error("could not store %s", problem)
        if failed is not None and not final:
            if not self.failures:
                log.error(
                    "could not store %d chunks and %d other writes (will try again; the "
                    "prompts wait): %s", count, len(before) + len(after) + len(ops), failed,
                )
            self.failures += 1
            for record, rows in taken.items():  # back in front of what came meanwhile
                newer = self._pending.get(record)
                self._pending[record] = rows + newer if newer else rows
            self._count += count
            self._ops[:0] = ops
            self._before[:0] = before
            self._after[:0] = after
            self._then[:0] = then
            self._wake.set()
            self._urgent.set()
        else:
            if failed is not None:
                log.error(
                    "could not store %d chunks as the controller stopped (their units "
                    "keep them for the next one's replay): %s",
                    count,
                    failed,
                )
            elif self.failures:
                log.warning("stored %d chunks after %d failed attempts", count, self.failures)
                self.failures = 0
            self.transactions += 1
            self.rows += count
            self._stored = max(self._stored, queued)
            if failed is None:
                for record, rows in taken.items():
                    record.stored(rows[-1].seq)
            for fn in then:
                fn()
        written, self._written = self._written, trio.Event()
        written.set()
        return failed is None or final

    def _work(
        self,
        batches: list[tuple[int, list[ResponseChunk]]],
        before: list[Behind],
        after: list[Behind],
        ops: list[tuple[Callable[[], Any], list[tuple[bool, Any]]]],
        final: bool,
    ) -> tuple[Exception | None, list[str]]:
        """(In the worker thread) the writes behind that the chunks need, the
        chunks, the ends and closes, then the writes that wait for a result,
        all in one transaction (each of those in a savepoint of its own).
        Returns why the batch could not be stored (then none of it is, unless
        `final`: then only the chunks are missing), and the writes behind the
        schema refused."""
        try:
            with self.state.batch():
                problems = self.state.write_behind(before) if before else []
                failed: Exception | None = None
                if batches:
                    try:
                        self.state.add_chunk_batches(batches)
                    except Exception as exc:  # noqa: BLE001 (tried again, or reported)
                        if not final:
                            raise
                        failed = exc
                if after:
                    problems += self.state.write_behind(after)
                for fn, box in ops:
                    try:
                        box.append((True, fn()))
                    except Exception as exc:  # noqa: BLE001 (raised again in `call`)
                        box.append((False, exc))
                return failed, problems
        except Exception as exc:  # noqa: BLE001 (the transaction failed: none of it is stored)
            for _, box in ops:
                box.clear()
            if final:
                for _, box in ops:
                    box.append((False, exc))
            return exc, []


class _Logged(list[tuple[bool, Any]]):
    """The box of a posted write: nobody waits for it, so a failure is logged."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def append(self, result: tuple[bool, Any]) -> None:
        ok, value = result
        if not ok:
            log.error("could not store %s: %s", self.what, value)


def _coalesced(before: list[Behind], after: list[Behind]) -> list[Behind]:
    """`before` without the session states that a later one in the batch, or the
    session's close, makes moot (a prompt's busy and idle in one batch: one write)."""
    last: dict[str, int] = {}
    for i, (kind, values) in enumerate(before):
        if kind == "state":
            last[values[1]] = i
    if not last:
        return before
    for kind, values in after:
        if kind == "close":
            last[values[1]] = -1
    return [write for i, write in enumerate(before)
            if write[0] != "state" or last[write[1][1]] == i]


def _by_kind(writes: list[Behind]) -> list[Behind]:
    """`writes` with the writes of each kind together (in order within a kind),
    so that each kind is one statement (`StateDB.write_behind`), not one per write:
    100 agents interleave a session, a prompt and a state each.

    Safe because a kind only needs writes of the kinds before it: sessions, then
    prompts (their session is in), then states (one per session left by
    `_coalesced`); ends, then closes (a close after its prompts' ends leaves
    them as they ended, which is what their followers were shown).
    """
    return sorted(writes, key=lambda write: _KIND_ORDER[write[0]])


#: Writes behind that go after the batch's chunks (they count them, or end a prompt).
_AFTER_CHUNKS = frozenset({"end", "close"})
#: The order `_by_kind` puts the kinds in.
_KIND_ORDER = {"session": 0, "prompt": 1, "state": 2, "end": 3, "close": 4}
