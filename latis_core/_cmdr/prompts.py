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

import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from latis_core._cmdr.state import PromptState
from latis_core._errors import ConnectionClosed, ErrorCode, LatisError, RequestError
from latis_core._io.client import PromptStream, Session, UnitClient
from latis_core._wire.messages import InputRequest, ResponseChunk

if TYPE_CHECKING:
    from latis_core._cmdr.controller import UnitRuntime
    from latis_core._cmdr.state import StateDB

__all__ = ["WINDOW", "PromptEngine", "PromptRecord"]

log = logging.getLogger("latis.cmdr")

_T = TypeVar("_T")

#: Events of a running prompt kept in memory for followers; older ones come from state.
WINDOW = 4096


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
    end: dict[str, Any] | None = None
    stream: PromptStream | None = None
    changed: trio.Event = attrs.field(factory=trio.Event)

    def publish(self, new: list[tuple[str, Any]]) -> None:
        self.events.extend(new)
        if len(self.events) > WINDOW:
            drop = len(self.events) - WINDOW
            del self.events[:drop]
            self.first += drop
        changed, self.changed = self.changed, trio.Event()
        changed.set()


class PromptEngine:
    """Running, following, cancelling and answering prompts (mixed into `Controller`)."""

    # Provided by the controller.
    prompts: dict[int, PromptRecord]
    state: StateDB
    units: dict[str, UnitRuntime]
    _nursery: trio.Nursery

    if TYPE_CHECKING:

        async def db(self, fn: Callable[..., _T], *args: Any) -> _T: ...

        async def read(self, fn: Callable[..., _T], *args: Any) -> _T: ...

        @property
        def reads(self) -> StateDB: ...

        def _client(self, rt: UnitRuntime) -> UnitClient: ...

        async def session_unit(self, sid: str) -> UnitRuntime: ...

        async def _set_session(self, sid: str, state: str) -> None: ...

        def _notify(self, sid: str, state: str) -> None: ...

        async def _reattach_for(self, sid: str) -> None: ...

        async def up(
            self, name: str, progress: Callable[[str], None] | None = None
        ) -> UnitRuntime: ...

    async def start_prompt(self, sid: str, text: str) -> PromptRecord:
        """Send a prompt; the controller runs it until its end, whoever follows it."""
        rt = await self.session_unit(sid)
        if rt.client is None or rt.client.peer.closed:
            await self.up(rt.name)
        client = self._client(rt)
        stream = Session(client, sid).prompt(text)
        stream.detach()  # the prompt belongs to the unit until it ends, not to this task
        state = self.state

        def store() -> int:  # one hop to the worker thread, not two
            prompt_id = state.add_prompt(sid, text, stream.id)
            state.set_session_state(sid, "busy")
            return prompt_id

        prompt_id = await self.db(store)
        self._notify(sid, "busy")
        record = PromptRecord(prompt_id, sid, rt.name, text, stream.id, stream=stream)
        self.prompts[prompt_id] = record
        self._nursery.start_soon(self._pump, record)
        return record

    async def _pump(self, record: PromptRecord) -> None:
        stream = record.stream
        assert stream is not None
        try:
            while True:
                try:
                    first = await stream.__anext__()
                except StopAsyncIteration:
                    break
                batch = [first]
                while stream.ready and len(batch) < 4096 and not stream.done:
                    try:
                        batch.append(await stream.__anext__())
                    except StopAsyncIteration:
                        break
                await self._take(record, batch)
                if stream.final is not None:
                    break
            chunks = getattr(stream.final, "chunks", None)
            end = {"outcome": stream.outcome or "complete",
                   "chunks": record.next_seq if chunks is None else chunks}
            await self._finish(record, end)
        except RequestError as exc:
            await self._finish(
                record,
                {"outcome": "error", "code": str(exc.code), "message": exc.message,
                 "chunks": record.next_seq},
            )
        except ConnectionClosed:
            # The unit's connection dropped: the prompt goes on there; a
            # reconnection re-attaches it at the last stored chunk.
            log.info("prompt %s: connection to unit %s lost", record.id, record.unit)
            record.stream = None
        except LatisError as exc:
            await self._finish(
                record,
                {"outcome": "error", "code": "internal", "message": str(exc),
                 "chunks": record.next_seq},
            )

    async def _take(self, record: PromptRecord, batch: list[Any]) -> None:
        rows = []
        published: list[tuple[str, Any]] = []
        for ev in batch:
            if type(ev) is ResponseChunk:
                rows.append((ev.seq, ev.text, ev.kind, ev.data))
                published.append(("chunk", ev))
            elif type(ev) is InputRequest:
                if rows:
                    await self.db(self.state.add_chunks, record.id, rows)
                    record.next_seq = rows[-1][0] + 1
                    rows = []
                await self.db(
                    self.state.add_input,
                    record.id,
                    ev.input,
                    ev.question,
                    list(ev.options),
                    ev.kind,
                )
                await self._set_session(record.session, "waiting")
                published.append(("input", ev))
        if rows:
            await self.db(self.state.add_chunks, record.id, rows)
            record.next_seq = rows[-1][0] + 1
        record.publish(published)

    async def _finish(self, record: PromptRecord, end: dict[str, Any]) -> None:
        error = None
        if end["outcome"] == "error":
            error = f"{end.get('code')}: {end.get('message')}"
        outcome = {"complete": PromptState.COMPLETE, "cancelled": PromptState.CANCELLED}.get(
            end["outcome"], PromptState.ERROR
        )
        state = self.state

        def store() -> bool:  # one hop to the worker thread, not three
            state.end_prompt(record.id, outcome, end.get("chunks", 0), error)
            row = state.get_session(record.session)
            if row is None or row.state == "closed":
                return False
            state.set_session_state(record.session, "idle")
            return True

        with trio.CancelScope(shield=True):
            if await self.db(store):
                self._notify(record.session, "idle")
        record.end = end
        record.stream = None
        record.publish([("end", end)])
        self.prompts.pop(record.id, None)

    async def cancel(self, prompt_id: int) -> None:
        """Cancel a running prompt on its unit (its pump sees the end)."""
        record = self.prompts.get(prompt_id)
        await trio.lowlevel.checkpoint()
        if record is None or record.stream is None:
            return
        rt = self.units[record.unit]
        if rt.client is not None:
            record.stream.cancel_nowait()

    async def answer(self, prompt_id: int, number: int, text: str) -> None:
        """Answer question `number` of a running prompt."""
        record = self.prompts.get(prompt_id)
        if record is None or record.stream is None:
            raise RequestError(
                ErrorCode.UNKNOWN_REQUEST.value, f"prompt {prompt_id} is not running"
            )
        self._client(self.units[record.unit])  # raises when the unit is not connected
        record.stream.answer_nowait(number, text)
        await self.db(self.state.answer_input, prompt_id, number, text)
        await self._set_session(record.session, "busy")

    async def follow(self, prompt_id: int, after: int = -1) -> AsyncIterator[tuple[str, Any]]:
        """The prompt's events after chunk `after`: from state first, then live, to its end.

        Yields ("chunk", ResponseChunk), ("input", InputRequest) and last
        ("end", dict). Never holds the prompt back: a follower that falls
        behind the in-memory window reads what it missed from state.
        """
        seq = after
        index: int | None = None  # the next event to read, counted from the prompt's start
        while True:
            record = self.prompts.get(prompt_id)
            if record is None:
                async for event in self._replay(prompt_id, seq):
                    if event[0] == "chunk":
                        seq = event[1].seq
                    yield event
                    if event[0] == "end":
                        return
                if prompt_id not in self.prompts:
                    return
                continue
            if index is None or index < record.first:
                # Behind the window: the chunks before it come from state.
                window = _window_seq(record)
                if seq + 1 < window:
                    for row in await self.read(self.reads.chunks, prompt_id, seq):
                        if row.seq >= window:
                            break
                        seq = row.seq
                        yield ("chunk", _chunk(record.request_id, row))
                    if index is None:
                        for pending in await self.read(self.reads.pending_inputs, prompt_id):
                            yield ("input", _question(record.request_id, pending))
                index = record.first
                continue
            changed = record.changed
            for kind, payload in record.events[index - record.first :]:
                index += 1
                if kind == "chunk":
                    if payload.seq > seq:
                        seq = payload.seq
                        yield ("chunk", payload)
                else:
                    yield (kind, payload)
                    if kind == "end":
                        return
            await changed.wait()

    async def _replay(self, prompt_id: int, seq: int) -> AsyncIterator[tuple[str, Any]]:
        """A prompt that does not run here: its stored chunks, then its end."""
        while True:
            prompt = await self.read(self.reads.get_prompt, prompt_id)
            if prompt is None:
                raise RequestError(ErrorCode.UNKNOWN_REQUEST.value, f"no prompt {prompt_id}")
            for row in await self.read(self.reads.chunks, prompt_id, seq):
                seq = row.seq
                yield ("chunk", _chunk(prompt.request_id, row))
            if prompt.state != PromptState.RUNNING:
                yield ("end", _end_of(prompt))
                return
            if prompt_id in self.prompts:
                return  # re-attached meanwhile: the caller follows it live
            # Running on a unit we are not attached to: attach (which picks
            # the prompt up), or look again soon.
            await self._reattach_for(prompt.session)
            if prompt_id not in self.prompts:
                await trio.sleep(0.2)

    async def _reattach_prompts(self, rt: UnitRuntime, client: UnitClient) -> None:
        """Re-attach the unit's running prompts at the last chunk stored for each."""
        for prompt in await self.read(self.reads.running_prompts):
            session = await self.read(self.reads.get_session, prompt.session)
            if session is None or session.unit != rt.name or prompt.id in self.prompts:
                continue
            last = await self.read(self.reads.last_seq, prompt.id)
            record = PromptRecord(
                prompt.id, prompt.session, rt.name, prompt.text, prompt.request_id,
                next_seq=last + 1,
            )
            try:
                record.stream = await Session(client, prompt.session).reattach(
                    prompt.request_id, after=last if last >= 0 else None
                )
                record.stream.detach()
            except RequestError as exc:
                await self._finish(
                    record,
                    {"outcome": "error", "code": str(exc.code), "message": exc.message,
                     "chunks": last + 1},
                )
                continue
            self.prompts[prompt.id] = record
            self._nursery.start_soon(self._pump, record)


def _window_seq(record: PromptRecord) -> int:
    """The seq of the first chunk still in memory (or the next one, if none is)."""
    for kind, payload in record.events:
        if kind == "chunk":
            return int(payload.seq)
    return record.next_seq


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
