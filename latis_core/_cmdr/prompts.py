"""The prompt engine: prompts belong to the controller, not to whoever sent them.

A task per running prompt (a *pump*) reads the unit's answer, writes it to state
in batches, and publishes it to whoever follows the prompt. Followers read by
sequence number: what is still in memory (a window of `WINDOW` events) at once,
anything older from state, so no follower holds a prompt back and nothing is
buffered per follower. After a restart or a reconnect, running prompts are
re-attached at the last chunk stored (`session.resume` with `prompt` and `seq`).

`PromptEngine` is the controller's half that does this; `Controller` (units,
connections, sessions) inherits it and provides the state, units and nursery it
works with.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from latis_core._cmdr.inbox import answer_question, check_answer, get_item
from latis_core._cmdr.state import PromptState, dumps_id
from latis_core._errors import ConnectionClosed, ErrorCode, LatisError, RequestError
from latis_core._io.client import PromptStream, Session, UnitClient
from latis_core._wire.messages import InputRequest, ResponseChunk

if TYPE_CHECKING:
    from latis_core._cmdr.config import Config
    from latis_core._cmdr.controller import OpenSession, UnitRuntime
    from latis_core._cmdr.state import StateDB
    from latis_core._cmdr.writer import ChunkWriter

__all__ = ["WINDOW", "PromptEngine", "PromptRecord"]

log = logging.getLogger("latis.cmdr")

_T = TypeVar("_T")

#: Events of a running prompt kept in memory for followers; older ones come from state.
WINDOW = 4096
#: Seconds between two looks at a provisioner while a unit's prompts wait for
#: it: soon at first (a killed process is seen gone within milliseconds), then
#: every `LOST_POLL[-1]`.
LOST_POLL = (0.01, 0.02, 0.05, 0.1, 0.25)


@attrs.define(eq=False)
class PromptRecord:
    """A prompt the controller runs, and what it has produced so far."""

    id: int
    session: str
    unit: str
    text: str
    request_id: Any
    #: The chunks, questions and end, in order: (kind, payload) with kind
    #: "chunk" (a ResponseChunk), "input" (an InputRequest) or "end" (a dict).
    events: list[tuple[str, Any]] = attrs.field(factory=list)
    #: Index in the whole event sequence of events[0] (older ones were dropped).
    first: int = 0
    #: Chunks stored in state: the next seq.
    next_seq: int = 0
    #: The last seq received from the unit (published; maybe not stored yet).
    received: int = -1
    end: dict[str, Any] | None = None
    stream: PromptStream | None = None
    #: The scope of the pump reading `stream` (cancelled when the unit is lost).
    scope: trio.CancelScope | None = None
    #: A re-attach is under way (one at a time).
    resuming: bool = False
    #: Why its unit's connection is gone, until the prompt is picked up again.
    lost: str | None = None
    #: Set at the next publish or loss: made when a follower waits (`when_changed`).
    changed: trio.Event | None = None
    #: Followers told of each publish as it happens (`listen`), None while none is.
    listeners: list[Callable[[list[tuple[str, Any]]], bool]] | None = None

    def publish(self, new: list[tuple[str, Any]]) -> None:
        self.events.extend(new)
        self._trim()
        if self.listeners:
            # Called in the publisher's task: a listener that returns False is done.
            self.listeners = [listener for listener in self.listeners
                              if _told(listener, new, self.id)]
        self.wake()

    @property
    def whole(self) -> bool:
        """Its events in memory are all it has had: none dropped from the window,
        none only in state (a prompt picked up after a restart starts at the last
        chunk stored). A follower can then take them from here alone."""
        return self.first == 0 and _window_seq(self) == 0

    def listen(self, listener: Callable[[list[tuple[str, Any]]], bool]) -> None:
        """Call `listener` with each batch of events published from now on, until it
        returns False (or `unlisten`). It runs in the publisher's task and must not
        block: a follower that writes to a connection without waiting for a task hop
        (the daemon's clients)."""
        self.listeners = [*(self.listeners or ()), listener]

    def unlisten(self, listener: Callable[[list[tuple[str, Any]]], bool]) -> None:
        """Stop calling `listener` (nothing if it was not listening)."""
        if self.listeners and listener in self.listeners:
            self.listeners = [other for other in self.listeners if other is not listener]

    def when_changed(self) -> trio.Event:
        """An event set when it next publishes or is `lost`: what a follower waits on."""
        if self.changed is None:
            self.changed = trio.Event()
        return self.changed

    def wake(self) -> None:
        """Wake its followers (new events, or it was `lost`). With none waiting
        (the daemon's clients listen instead), no event is made at all."""
        changed, self.changed = self.changed, None
        if changed is not None:
            changed.set()

    def stored(self, seq: int) -> None:
        """Chunks up to `seq` are in state (the writer says so)."""
        if seq >= self.next_seq:
            self.next_seq = seq + 1
        self._trim()

    def _trim(self) -> None:
        # Only what state holds leaves the window: a follower that falls
        # behind it reads the rest from state, so nothing may be missing there.
        over = len(self.events) - WINDOW
        if over <= 0:
            return
        drop = 0
        stored = self.next_seq
        events = self.events
        while drop < over:
            kind, payload = events[drop]
            if kind == "chunk" and payload.seq >= stored:
                break
            drop += 1
        if drop:
            del events[:drop]
            self.first += drop


def _told(listener: Callable[[list[tuple[str, Any]]], bool],
          new: list[tuple[str, Any]], prompt_id: int) -> bool:
    """Give `new` to `listener`; whether it listens on. A listener that fails is
    dropped (logged): the prompt and its other followers go on."""
    try:
        return listener(new)
    except Exception:
        log.exception("prompt %s: a follower failed; it is dropped", prompt_id)
        return False


class PromptEngine:
    """Running, following, cancelling and answering prompts (mixed into `Controller`)."""

    # Provided by the controller.
    prompts: dict[int, PromptRecord]
    state: StateDB
    config: Config
    writer: ChunkWriter
    #: Units whose detached prompts are being watched (`_watch`).
    _watching: set[str]
    #: Per unit: held while its prompts are being picked up.
    _reattaching: dict[str, trio.Lock]
    units: dict[str, UnitRuntime]
    sessions: dict[str, OpenSession]
    _nursery: trio.Nursery

    if TYPE_CHECKING:

        async def db(self, fn: Callable[..., _T], *args: Any) -> _T: ...

        async def read(self, fn: Callable[..., _T], *args: Any) -> _T: ...

        @property
        def reads(self) -> StateDB: ...

        def _client(self, rt: UnitRuntime) -> UnitClient: ...

        async def session_unit(self, sid: str) -> UnitRuntime: ...

        def _set_session(self, sid: str, state: str) -> None: ...

        async def _new_prompt_id(self) -> int: ...

        def _prompt_id_nowait(self) -> int | None: ...

        def _notify(self, sid: str, state: str) -> None: ...

        async def _reattach_for(self, sid: str) -> None: ...

        async def _on_question(self, record: PromptRecord, ev: InputRequest) -> bool: ...

        def _on_prompt_end(self, record: PromptRecord, end: dict[str, Any]) -> None: ...

        async def up(
            self, name: str, progress: Callable[[str], None] | None = None
        ) -> UnitRuntime: ...

    async def start_prompt(self, sid: str, text: str) -> PromptRecord:
        """Send a prompt; the controller runs it until its end, whoever follows it.

        Raises:
            RequestError: (session_busy) the session runs a prompt already (one at
                a time: the unit would refuse it); (unknown_session) no such session.
        """
        rt = await self.session_unit(sid)
        if rt.client is None or rt.client.peer.closed:
            await self.up(rt.name)  # (its sessions are resumed: this one may be gone)
            if sid not in self.sessions:
                raise RequestError(ErrorCode.UNKNOWN_SESSION.value, lost_with_unit(sid, rt.name))
        return self._send_prompt(rt, sid, text, await self._new_prompt_id())

    def start_prompt_nowait(self, sid: str, text: str) -> PromptRecord | None:
        """`start_prompt` when nothing needs a wait: the session held, its unit
        connected, a prompt id at hand (the usual case). None otherwise, and
        nothing is sent: the caller then awaits `start_prompt`."""
        held = self.sessions.get(sid)
        rt = None if held is None else self.units.get(held.unit)
        if rt is None or rt.client is None or rt.client.peer.closed:
            return None
        prompt_id = self._prompt_id_nowait()
        if prompt_id is None:
            return None
        return self._send_prompt(rt, sid, text, prompt_id)

    def _send_prompt(self, rt: UnitRuntime, sid: str, text: str, prompt_id: int) -> PromptRecord:
        held = self.sessions.get(sid)
        if held is not None and held.state in ("busy", "waiting"):
            # Refused here, not by the unit: its refusal would be this session's
            # latest prompt, an error that hides the one still running.
            raise RequestError(ErrorCode.SESSION_BUSY.value, self._busy(sid))
        client = self._client(rt)
        # Numbered in memory and written behind (its row goes in before its
        # first chunk's, in the writer's next batch): nothing waits for the disk.
        stream = Session(client, sid).prompt(text)
        stream.detach()  # the prompt belongs to the unit until it ends, not to this task
        self.writer.behind(
            ("prompt", (prompt_id, sid, dumps_id(stream.id), text, self.state.now())))
        record = PromptRecord(prompt_id, sid, rt.name, text, stream.id, stream=stream)
        self.prompts[prompt_id] = record
        self._set_session(sid, "busy")
        self._nursery.start_soon(self._pump, record, stream)
        return record

    def _busy(self, sid: str) -> str:
        """Why a prompt to session `sid` is refused: the prompt it runs, and what to do."""
        running = [r for r in self.prompts.values() if r.session == sid and r.end is None]
        if not running:
            return f"session {sid!r} runs a prompt (one at a time): wait for its end"
        record = running[-1]
        asked = [p for kind, p in record.events if kind == "input"]
        if self.sessions[sid].state == "waiting" and asked:
            return (f"session {sid!r} waits for an answer to prompt {record.id}'s question "
                    f"({asked[-1].question!r}): answer it with `latis inbox answer "
                    f"{record.id}.{asked[-1].input} ANSWER` or `latis attach {sid}`")
        return (f"session {sid!r} is busy with prompt {record.id} (one prompt at a time): "
                f"follow it with `latis attach {sid}`, or start another session "
                "(`latis prompt --new`)")

    async def _pump(self, record: PromptRecord, stream: PromptStream) -> None:
        record.scope = scope = trio.CancelScope()
        # The last chunks, when the end came with them (a short answer): published
        # with the end, so that a follower gets one write, not two.
        held: list[tuple[str, Any]] = []
        writer = self.writer

        def take() -> None:
            # In the task that read them, while this one waits in `__anext__`
            # (`ReplyStream.on_ready`): chunks alone, the writer with room. A
            # question, the end, or a full writer wake this task instead.
            if writer.has_room:
                chunks = stream.take_chunks(4095)
                if chunks:
                    self._take_chunks(record, chunks, None)

        with scope:
            stream.on_ready(take)
            try:
                while True:
                    try:
                        first = await stream.__anext__()
                    except StopAsyncIteration:
                        break
                    # What came with it, in one call: not an `__anext__` a chunk.
                    batch = [first, *stream.take_chunks(4095)]
                    await self._take(record, batch, held if stream.ending else None)
                chunks = getattr(stream.final, "chunks", None)
                end = {"outcome": stream.outcome or "complete",
                       "chunks": record.received + 1 if chunks is None else chunks}
                self._finish(record, end, held)
            except RequestError as exc:
                self._finish(record, _request_end(record, exc), held)
            except ConnectionClosed:
                # The unit's connection dropped: the prompt goes on there, and a
                # reconnection picks it up after the last chunk received. If
                # none comes within the bound, the prompt ends `unit_lost`.
                log.info("prompt %s: connection to unit %s lost", record.id, record.unit)
                if record.stream is stream:
                    record.stream = None
                    record.lost = f"unit {record.unit} disconnected"
                    record.wake()
                    self._watch_unit(record.unit)
            except LatisError as exc:
                self._finish(record, _error_end(record, "internal", str(exc)), held)
            finally:
                stream.on_ready(None)
                if held and record.end is None:  # (stopped before the end they came with)
                    record.publish(held)

    async def _take(
        self, record: PromptRecord, batch: list[Any], held: list[tuple[str, Any]] | None = None
    ) -> None:
        """Publish `batch` and hand its chunks to the writer; given `held`, its last
        events go there instead, for the caller to publish with the end."""
        published: list[tuple[str, Any]] = []
        if type(batch[0]) is InputRequest:
            # A question comes first in its batch (the chunks after it follow).
            # The inbox's hook (latis_core._cmdr.hitl), in the writer's hop after
            # the chunks before it: stored, maybe answered by the approval
            # policy; else a person is asked.
            question, batch = batch[0], batch[1:]
            if await self._on_question(record, question):
                self._set_session(record.session, "waiting")
                published.append(("input", question))
        self._take_chunks(record, batch, held, published)
        await self.writer.room()

    def _take_chunks(
        self,
        record: PromptRecord,
        batch: list[ResponseChunk],
        held: list[tuple[str, Any]] | None,
        published: list[tuple[str, Any]] | None = None,
    ) -> None:
        """Publish chunks (after `published`, if given) and hand them to the writer;
        given `held`, they go there instead, for the caller to publish with the end."""
        # Followers first, state after: chunks are published at once and
        # handed to the writer, which stores them in its next batch. In order
        # and without a gap (the stream checks), in one pass each. A prefix
        # received already is shown once (a resume asks for what follows the
        # last one received, so this is a guard, not a path).
        if batch and batch[0].seq <= record.received:
            batch = batch[record.received + 1 - batch[0].seq:]
        if batch:
            record.received = batch[-1].seq
        events = [("chunk", ev) for ev in batch]
        if published:
            events = published + events
        self.writer.put(record, batch)
        if held is None:
            record.publish(events)
        else:
            held += events

    def _finish(
        self, record: PromptRecord, end: dict[str, Any], held: Sequence[tuple[str, Any]] = ()
    ) -> None:
        # (Not a checkpoint: the pump's last step, and no yield to give up for it.)
        if record.end is not None:
            if held:
                record.publish(list(held))
            return
        error = None
        if end["outcome"] == "error":
            error = f"{end.get('code')}: {end.get('message')}"
        outcome = {"complete": PromptState.COMPLETE, "cancelled": PromptState.CANCELLED}.get(
            end["outcome"], PromptState.ERROR
        )
        record.end = end
        record.stream = None
        # Followers first (a daemon's client gets the end written to it here), the
        # bookkeeping after: nothing runs between them, so a follower's next
        # prompt still finds the session idle.
        record.publish([*held, ("end", end)])
        # Written behind, after the prompt's last chunks (the same batch or a
        # later one): followers learn the end now, the disk within a batch.
        self.writer.behind(("end", (outcome.value, self.state.now(), end.get("chunks", 0),
                                    error, record.id)))
        self._set_session(record.session, "idle")  # (unless it closed meanwhile)
        self._on_prompt_end(record, end)  # the inbox's hook: notifications
        # Held until its end is stored: a follower that comes later reads it all there.
        self.writer.when_stored(functools.partial(self.prompts.pop, record.id, None))

    # ---- a unit lost -----------------------------------------------------------------------

    def _watch_unit(self, name: str) -> None:
        """Start watching `name`'s detached prompts (once per unit at a time)."""
        if name in self._watching:
            return
        self._watching.add(name)
        self._nursery.start_soon(self._watch, name)

    async def _watch(self, name: str) -> None:
        """End the unit's detached prompts `unit_lost` unless it comes back in time.

        The bound is `[daemon] unit_lost_after`; the provisioner's view ends
        them sooner when it sees the unit gone (its process exited).
        """
        try:
            bound = self.config.daemon.unit_lost_after
            rt = self.units.get(name)
            why = f"no connection to it for {bound:g} s"
            polls = 0
            gone = None
            with trio.move_on_after(bound):
                while self._detached(name):
                    pause = LOST_POLL[min(polls, len(LOST_POLL) - 1)]
                    polls += 1
                    client = rt.client if rt is not None else None
                    if rt is not None and client is not None and not client.peer.closed:
                        # Connected again before this prompt's pump saw the old
                        # connection end: pick it up on the new one.
                        await self._reattach_prompts(rt, client)
                        await trio.sleep(pause)
                        continue
                    gone = await self._provisioner_says_gone(rt)
                    if gone is not None:
                        why = gone
                        break
                    await trio.sleep(pause)
            if gone is not None:
                # Its process is gone: every prompt of it is lost, at once (those whose
                # pump has not yet seen the connection end too: one burst, not several).
                await self.unit_lost(name, why)
            elif self._detached(name):
                await self.unit_lost(name, why, detached_only=True)
        finally:
            self._watching.discard(name)

    def _detached(self, name: str) -> list[PromptRecord]:
        return [r for r in self.prompts.values()
                if r.unit == name and r.stream is None and r.end is None]

    async def _provisioner_says_gone(self, rt: UnitRuntime | None) -> str | None:
        if rt is None or rt.provisioner is None:
            await trio.lowlevel.checkpoint()
            return None
        try:
            found = await rt.provisioner.status()
        except Exception:  # noqa: BLE001 (a provisioner that cannot tell knows nothing sooner)
            return None
        if found.state.value == "running":
            return None
        return f"its provisioner reports it {found.state.value}" + (
            f" ({found.detail})" if found.detail else "")

    async def unit_lost(self, name: str, why: str, *, detached_only: bool = False) -> int:
        """End every running prompt on unit `name` with a `unit_lost` error, now.

        For whoever learns first that the unit is gone (a heartbeat, the
        provisioner, the link): every follower gets the error. Returns the
        number of prompts ended.
        """
        ended = 0
        for record in [r for r in self.prompts.values() if r.unit == name and r.end is None]:
            if detached_only and record.stream is not None:
                continue
            if record.scope is not None:
                record.scope.cancel()
            message = _lost(name, why, record.received + 1)
            log.warning("prompt %s: %s", record.id, message)
            self._finish(record, _error_end(record, ErrorCode.UNIT_LOST.value, message))
            ended += 1
        await trio.lowlevel.checkpoint()
        return ended

    async def cancel(self, prompt_id: int) -> None:
        """Cancel a running prompt on its unit (its pump sees the end)."""
        record = self.prompts.get(prompt_id)
        await trio.lowlevel.checkpoint()
        if record is None or record.stream is None:
            return
        rt = self.units[record.unit]
        if rt.client is not None:
            record.stream.cancel_nowait()

    # ---- answering: the one path (inbox, attach, a prompt's CLI, the dashboard) ----

    async def answer(self, prompt_id: int, number: int, text: str, by: str = "cli") -> None:
        """Answer question `number` of a running prompt, once.

        The answer is stored first (the first one counts), then sent to the
        unit; a unit that is away gets it when it asks again on re-attach.

        Raises:
            AlreadyAnswered: someone answered first (the message says who, when).
            RequestError: (unknown_request) no such question in a running prompt.
        """
        prompt = await self.read(self.reads.get_prompt, prompt_id)
        item = await self.read(get_item, self.reads, prompt_id, number)
        if prompt is None or item is None:
            raise RequestError(ErrorCode.UNKNOWN_REQUEST.value,
                               f"no question {prompt_id}.{number} in the inbox")
        if item.answer is None and prompt.state != PromptState.RUNNING:
            raise RequestError(ErrorCode.UNKNOWN_REQUEST.value,
                               f"prompt {prompt_id} ended ({prompt.state}) before an answer")
        text = check_answer(item, text)
        await self.db(answer_question, self.state, prompt_id, number, text, by)
        record = self.prompts.get(prompt_id)
        if record is not None and record.stream is not None:
            record.stream.answer_nowait(number, text)
        self._set_session(prompt.session, "busy")

    async def follow(self, prompt_id: int, after: int = -1) -> AsyncIterator[tuple[str, Any]]:
        """The prompt's events after chunk `after`: from state first, then live, to its end.

        Yields ("chunk", ResponseChunk), ("input", InputRequest) and last
        ("end", dict). Never holds the prompt back: a follower that falls
        behind the in-memory window reads what it missed from state.
        """
        async for batch in self.follow_batches(prompt_id, after):
            for event in batch:
                yield event

    async def follow_batches(
        self, prompt_id: int, after: int = -1, *, lost: bool = False,
        start: int | None = None,
    ) -> AsyncGenerator[list[tuple[str, Any]], None]:
        """`follow`, the events that came together in one list (one wake for
        all of them: for followers that take many at a time).

        With `lost`, a ("lost", why) event also says when the unit's connection
        is gone (the controller waits for it to come back; the follower may not).
        With `start`, a follower that was given the prompt's first `start` events
        (the last chunk among them `after`) goes on from there, its questions not
        given twice (unless it fell more than the window behind: then the
        questions still open come from state, as for a new follower).
        """
        told = False  # of the loss
        seq = after
        # The next event to read, counted from the prompt's start.
        index: int | None = start
        # Open questions come from state on a first look behind the window.
        fresh = True
        while True:
            record = self.prompts.get(prompt_id)
            if record is None:
                async for batch in self._replay(prompt_id, seq):
                    for kind, payload in batch:
                        if kind == "chunk":
                            seq = payload.seq
                    yield batch
                    if batch[-1][0] == "end":
                        return
                if prompt_id not in self.prompts:
                    return
                continue
            if index is None or index < record.first:
                # Behind the window: the chunks before it come from state.
                window = _window_seq(record)
                out: list[tuple[str, Any]] = []
                from_state = 0
                if seq + 1 < window:
                    for row in await self.read(self.reads.chunks, prompt_id, seq):
                        if row.seq >= window:
                            break
                        seq = row.seq
                        out.append(("chunk", _chunk(record.request_id, row)))
                    from_state = len(out)
                    if fresh:
                        for pending in await self.read(self.reads.pending_inputs, prompt_id):
                            out.append(("input", _question(record.request_id, pending)))
                fresh = False
                if not from_state or seq + 1 >= _window_seq(record):
                    # Caught up with the window (the read's wait may have moved it on:
                    # then the chunks between come from state too, next time round).
                    index = record.first
                if out:
                    yield out
                continue
            fresh = False
            changed = record.when_changed()
            new = record.events[index - record.first :]
            index += len(new)
            out = []
            for event in new:  # (the record's own pairs: none made again)
                kind, payload = event
                if kind == "chunk":
                    if payload.seq > seq:
                        seq = payload.seq
                        out.append(event)
                else:
                    out.append(event)
                    if kind == "end":
                        yield out
                        return
            if lost and record.lost is not None and not told:
                told = True
                out.append(("lost", record.lost))
            if out:
                yield out
            await changed.wait()

    async def _replay(
        self, prompt_id: int, seq: int
    ) -> AsyncIterator[list[tuple[str, Any]]]:
        """A prompt that does not run here: its stored chunks, then its end."""
        since: float | None = None  # since when its unit could not be reached
        while True:
            prompt = await self.read(self.reads.get_prompt, prompt_id)
            if prompt is None:
                raise RequestError(ErrorCode.UNKNOWN_REQUEST.value, f"no prompt {prompt_id}")
            chunks = [("chunk", _chunk(prompt.request_id, row))
                      for row in await self.read(self.reads.chunks, prompt_id, seq)]
            if chunks:
                seq = chunks[-1][1].seq
            if prompt.state != PromptState.RUNNING:
                yield [*chunks, ("end", _end_of(prompt))]
                return
            if chunks:
                yield chunks
            if prompt_id in self.prompts:
                return  # re-attached meanwhile: the caller follows it live
            # Running on a unit we are not attached to: attach (which picks
            # the prompt up), or look again soon; not past the bound.
            await self._reattach_for(prompt.session)
            if prompt_id not in self.prompts:
                now = trio.current_time()
                since = now if since is None else since
                bound = self.config.daemon.unit_lost_after
                if now - since >= bound:
                    await self._lose_stored(prompt, f"not reachable for {bound:g} s")
                    continue
                await trio.sleep(0.2)

    async def _lose_stored(self, prompt: Any, why: str) -> None:
        """End a stored running prompt that no controller runs with `unit_lost`."""
        row = await self.read(self.reads.get_session, prompt.session)
        unit = row.unit if row is not None else "?"
        chunks = await self.read(self.reads.last_seq, prompt.id) + 1
        message = _lost(unit, why, chunks)
        await self.db(self.state.end_prompt, prompt.id, PromptState.ERROR, chunks,
                      f"{ErrorCode.UNIT_LOST.value}: {message}")
        self._set_session(prompt.session, "idle")

    async def _reattach_prompts(self, rt: UnitRuntime, client: UnitClient) -> None:
        """Pick up the unit's running prompts where each left off.

        A prompt this controller still holds (its connection was cut) resumes
        after the last chunk it received, into the same record, so followers
        go on without a gap or a duplicate. One it does not hold (it ran under
        a controller that stopped) resumes after the last chunk stored.
        """
        # One pick-up at a time per unit: a reattached prompt keeps its old
        # request id, and a resume in flight under that same id (chosen for
        # another prompt by a concurrent pick-up) would take its answer.
        lock = self._reattaching.setdefault(rt.name, trio.Lock())
        async with lock:
            await self._reattach_locked(rt, client)

    async def _reattach_locked(self, rt: UnitRuntime, client: UnitClient) -> None:
        for record in [r for r in self.prompts.values()
                       if r.unit == rt.name and r.stream is None and r.end is None]:
            await self._resume(record, client, record.received)
        for prompt in await self.read(self.reads.running_prompts):
            session = await self.read(self.reads.get_session, prompt.session)
            if session is None or session.unit != rt.name or prompt.id in self.prompts:
                continue
            last = await self.read(self.reads.last_seq, prompt.id)
            record = PromptRecord(
                prompt.id, prompt.session, rt.name, prompt.text, prompt.request_id,
                next_seq=last + 1, received=last,
            )
            self.prompts[prompt.id] = record
            await self._resume(record, client, last)

    async def _resume(self, record: PromptRecord, client: UnitClient, last: int) -> None:
        if record.resuming or record.stream is not None or record.end is not None:
            return  # picked up meanwhile (a restore and a watcher both try)
        record.resuming = True
        try:
            stream = await Session(client, record.session).reattach(
                record.request_id, after=last if last >= 0 else None
            )
        except RequestError as exc:
            record.resuming = False
            self._finish(record, _request_end(record, exc))
            return
        except ConnectionClosed:
            record.resuming = False
            self._watch_unit(record.unit)  # cut again at once: the next connection tries
            return
        except LatisError as exc:  # a bug of ours: the prompt ends, it does not hang
            record.resuming = False
            self._finish(record, _error_end(record, "internal", str(exc)))
            return
        record.resuming = False
        stream.detach()
        record.stream = stream
        record.lost = None
        self._nursery.start_soon(self._pump, record, stream)


def _window_seq(record: PromptRecord) -> int:
    """The seq of the first chunk still in memory (or the next one, if none is)."""
    for kind, payload in record.events:
        if kind == "chunk":
            return int(payload.seq)
    return record.next_seq


def lost_with_unit(sid: str, unit: str) -> str:
    """What to say of a session its unit did not have when it came back."""
    return (f"session {sid!r} was lost when unit {unit!r} came back (its agent could not "
            f"resume it; its transcript stays: latis session show {sid})")


def _lost(unit: str, why: str, chunks: int) -> str:
    """The message of `unit_lost`: which unit, what was seen, what to do."""
    return (f"unit {unit!r} was lost ({why}) after {chunks} chunks of the prompt: see "
            f"`latis status`, bring it back with `latis unit up {unit}` and send the prompt "
            "again")


def _error_end(record: PromptRecord, code: str, message: str) -> dict[str, Any]:
    return {"outcome": "error", "code": code, "message": message, "chunks": record.received + 1}


def _request_end(record: PromptRecord, exc: RequestError) -> dict[str, Any]:
    """The end of a prompt its unit answered with an error (a lost replay said so)."""
    message = exc.message
    if exc.code == ErrorCode.LIMIT_REACHED:
        message = (f"the unit no longer keeps what prompt {record.id} sent after chunk "
                   f"{record.received} (the cut outlasted its replay limit; the chunks "
                   f"are lost): {exc.message}")
    return _error_end(record, str(exc.code), message)


def _chunk(request_id: Any, row: Any) -> ResponseChunk:
    return ResponseChunk(request_id, row.seq, row.text, row.kind, row.data)


def _question(request_id: Any, row: Any) -> InputRequest:
    return InputRequest(request_id, row.number, row.question, tuple(row.options or ()), row.kind)


def _end_of(prompt: Any) -> dict[str, Any]:
    end: dict[str, Any] = {"outcome": prompt.state, "chunks": prompt.chunks or 0}
    if prompt.state == PromptState.ERROR and prompt.error:
        code, _, message = prompt.error.partition(": ")
        end.update(code=code, message=message)
    return end
