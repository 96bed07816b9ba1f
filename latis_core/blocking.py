"""latis_core for code that is not async: scripts, REPLs, Jupyter notebooks.

    from latis_core import blocking

    with blocking.connect_local() as unit:
        session = unit.create_session()
        for chunk in session.prompt("hello there"):
            print(chunk.text, end="")

    with blocking.connect("tcp://gpu1:7447", token_file="~/.gpu1-token") as unit: ...

trio runs in a thread of its own (one per `with`), and every call here waits
for its result there. So it works in a thread where an asyncio loop already
runs, as in a notebook cell. Objects must be used from the thread that made
them (not from inside an async function on that loop).

Ctrl-C while a prompt streams cancels the prompt on the unit, then raises
KeyboardInterrupt: at once when it lands while the stream waits for the agent.
When it lands in your loop's own code (a slow loop body), the stream does not
see it: hold the stream in a `with` block, which cancels the prompt as it ends
(else the prompt runs on until the stream is garbage collected, and its session
stays busy meanwhile):

    with session.prompt("a long task") as stream:
        for chunk in stream:
            work_on(chunk)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, Self, TypeVar

import trio

from latis_core._io.client import PromptStream, Session, StateStream, UnitClient
from latis_core._io.client import connect as _connect
from latis_core._unit.local import connect_local as _connect_local
from latis_core._wire.messages import AgentInfo, Hello, InputRequest, ResponseChunk, StateUpdate

__all__ = [
    "BlockingPromptStream",
    "BlockingSession",
    "BlockingStateStream",
    "BlockingUnit",
    "Portal",
    "connect",
    "connect_local",
]

_T = TypeVar("_T")

#: Replies fetched from the trio thread in one hop, at most.
BATCH = 256


def _from_plain_thread(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`call(*args, **kwargs)`, from a thread that runs no trio loop.

    trio refuses a `from_thread` call made inside any trio run, and a thread can
    be inside one without knowing: once trio_asyncio is imported (the ssh
    transport does), `asyncio.run` in a notebook runs its loop on trio. The
    caller's thread blocks either way; here it blocks on a helper thread.
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return call(*args, **kwargs)
    box: list[Any] = []

    def hop() -> None:
        try:
            box.append((True, call(*args, **kwargs)))
        except BaseException as exc:  # handed back to the caller's thread
            box.append((False, exc))

    helper = threading.Thread(target=hop, name="latis-hop", daemon=True)
    helper.start()
    helper.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


#: Why a call after the end of its `with` block fails.
_CLOSED = "closed: the `with` block that opened this connection has ended"


class Portal:
    """A trio loop in a daemon thread, and calls into it that wait for the result."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="latis-trio", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the thread that waits
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, afn: Callable[..., Any], *args: Any) -> Any:
        """Run `await afn(*args)` in the trio thread; return its result.

        Raises:
            trio.ClosedResourceError: the loop has ended (the `with` block that
                opened what is used here has ended).
        """
        try:
            return _from_plain_thread(trio.from_thread.run, afn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise trio.ClosedResourceError(_CLOSED) from None

    def run_sync(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn(*args)` in the trio thread; return its result (raises as `run`)."""
        try:
            return _from_plain_thread(  # type: ignore[no-any-return]
                trio.from_thread.run_sync, fn, *args, trio_token=self._token
            )
        except trio.RunFinishedError:
            raise trio.ClosedResourceError(_CLOSED) from None

    @contextmanager
    def wrap(self, acm: AbstractAsyncContextManager[_T]) -> Iterator[_T]:
        """Enter `acm` in a task of the trio thread; exit it when the block ends."""
        value, leave, left, box = self.run(self._nursery.start, self._host, acm)
        try:
            yield value
        finally:
            self.run(self._leave, leave, left)
            if box:
                raise box[0]

    async def _host(
        self, acm: AbstractAsyncContextManager[_T], *, task_status: trio.TaskStatus[Any]
    ) -> None:
        leave, left = trio.Event(), trio.Event()
        box: list[Exception] = []
        started = False
        try:
            async with acm as value:
                task_status.started((value, leave, left, box))
                started = True
                await leave.wait()
        except Exception as exc:
            if not started:
                raise  # entering failed: `start` hands it to the thread entering the block
            # After started(), an error belongs to the thread leaving the block.
            box.append(exc)
        finally:
            left.set()

    @staticmethod
    async def _leave(leave: trio.Event, left: trio.Event) -> None:
        leave.set()
        await left.wait()

    def close(self) -> None:
        """Stop the loop and its thread (what still runs is cancelled)."""
        if self._thread.is_alive():
            try:
                self.run_sync(self._stop.set)
            except trio.RunFinishedError:
                pass
            self._thread.join()


class _Iterator:
    """Pulls an async reply stream from the trio thread, a batch per hop."""

    def __init__(self, portal: Portal, stream: Any) -> None:
        self._portal = portal
        self._stream = stream
        self._buffer: list[Any] = []
        self._done = False
        self._scope: trio.CancelScope | None = None
        self._fetched: trio.Event | None = None
        #: Set (in the trio thread) by a Ctrl-C: a fetch that starts after it
        #: takes nothing (see `_interrupt`).
        self._interrupted = False

    def __iter__(self) -> Self:
        return self

    def _next(self) -> Any:
        if not self._buffer:
            if self._done:
                raise StopIteration
            try:
                self._buffer, self._done = self._portal.run(self._fetch)
            except KeyboardInterrupt:
                self._interrupt()
                raise
            self._buffer.reverse()
            if not self._buffer:
                raise StopIteration
        return self._buffer.pop()

    async def _fetch(self) -> tuple[list[Any], bool]:
        if self._interrupted:
            return [], True
        stream = self._stream
        items: list[Any] = []
        self._fetched = trio.Event()
        try:
            with trio.CancelScope() as self._scope:
                try:
                    items.append(await stream.__anext__())
                    while stream.ready and len(items) < BATCH:
                        items.append(await stream.__anext__())
                except StopAsyncIteration:
                    return items, True
            return items, False
        finally:
            self._fetched.set()

    def _interrupt(self) -> None:
        # The call that was waiting is gone; cancel what it started (which
        # cancels the request on the other side) and wait until that is done.
        # The Ctrl-C may have come after the fetch was handed to the trio
        # thread and before it started there: then it must not start later,
        # beside the close below, and take the request's end that the close
        # waits for (the close then waited its whole bound, 5 s).
        def cancel() -> trio.Event | None:
            self._interrupted = True
            if self._scope is not None:
                self._scope.cancel()
            return self._fetched

        fetched = self._portal.run_sync(cancel)
        if fetched is not None:
            self._portal.run(fetched.wait)
        if not self._stream.done:
            # The fetch had finished before the interrupt: the request still runs.
            self._portal.run(self._stream.aclose)
        self._done = True

    def close(self) -> None:
        """Stop the request unless it has ended, and wait for its end."""
        if not self._done:
            self._done = True
            self._portal.run(self._stream.aclose)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlockingPromptStream(_Iterator):
    """The answer to one prompt: iterate for `ResponseChunk`s (and `InputRequest`s)."""

    _stream: PromptStream

    def __init__(
        self,
        portal: Portal,
        stream: PromptStream,
        on_input: Callable[[InputRequest], str] | None = None,
    ) -> None:
        super().__init__(portal, stream)
        self._on_input = on_input

    def __next__(self) -> ResponseChunk | InputRequest:
        while True:
            item = self._next()
            if type(item) is ResponseChunk or self._on_input is None:
                return item  # type: ignore[no-any-return]
            self.reply(self._on_input(item))

    @property
    def id(self) -> Any:
        """The prompt's request id."""
        return self._stream.id

    @property
    def outcome(self) -> str | None:
        """"complete" or "cancelled" once iteration has ended normally."""
        return self._stream.outcome

    @property
    def pending(self) -> InputRequest | None:
        """The question the agent waits on an answer to, if any."""
        return self._stream.pending

    def reply(self, text: str) -> None:
        """Answer the agent's pending question."""
        self._portal.run(self._stream.reply, text)

    def text(self) -> str:
        """Read the rest of the answer and return its text (plain chunks only)."""
        parts = []
        for item in self:
            if isinstance(item, InputRequest):
                self.close()
                raise RuntimeError(
                    f"the agent asked {item.question!r}: pass on_input to prompt() to answer"
                )
            if item.kind is None:
                parts.append(item.text)
        return "".join(parts)

    cancel = _Iterator.close


class BlockingStateStream(_Iterator):
    """State updates: a snapshot first, then one per change. `close()` unsubscribes."""

    def __next__(self) -> StateUpdate:
        return self._next()  # type: ignore[no-any-return]


class BlockingSession:
    """A session on a unit (see `latis_core.Session`)."""

    def __init__(self, portal: Portal, session: Session) -> None:
        self._portal = portal
        self._session = session

    def __repr__(self) -> str:
        return repr(self._session)

    @property
    def id(self) -> str:
        """The session id."""
        return self._session.id

    def prompt(
        self, text: str, *, on_input: Callable[[InputRequest], str] | None = None
    ) -> BlockingPromptStream:
        """Send `text`; return the stream of its answer.

        Args:
            on_input: called (in this thread) when the agent asks something;
                returns the answer. Without it the `InputRequest` is yielded.
        """
        stream = self._portal.run_sync(self._session.prompt, text)
        return BlockingPromptStream(self._portal, stream, on_input)

    def reattach(self, prompt_id: Any, *, after: int | None = None) -> BlockingPromptStream:
        """Pick up a prompt of this session again (see `Session.reattach`)."""
        stream = self._portal.run(lambda: self._session.reattach(prompt_id, after=after))
        return BlockingPromptStream(self._portal, stream)

    def state(self) -> str:
        """The session's state: idle, busy or waiting."""
        return self._portal.run(self._session.state)  # type: ignore[no-any-return]

    def destroy(self) -> None:
        """End the session."""
        self._portal.run(self._session.destroy)


class BlockingUnit:
    """A connection to a unit (see `latis_core.UnitClient`)."""

    def __init__(self, portal: Portal, unit: UnitClient) -> None:
        self._portal = portal
        self._unit = unit

    def __repr__(self) -> str:
        return repr(self._unit)

    @property
    def hello(self) -> Hello:
        """The unit's `hello`."""
        return self._unit.hello

    @property
    def name(self) -> str:
        """The unit's name."""
        return self._unit.name

    @property
    def agent(self) -> AgentInfo:
        """The agent behind the unit."""
        return self._unit.agent

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What the unit announced it can do."""
        return self._unit.capabilities

    def create_session(self, **options: Any) -> BlockingSession:
        """Open a new session; `options` go to the agent."""
        session = self._portal.run(lambda: self._unit.create_session(**options))
        return BlockingSession(self._portal, session)

    def resume_session(self, session_id: str) -> BlockingSession:
        """Return a handle to an existing session, checked with the unit."""
        session = self._portal.run(self._unit.resume_session, session_id)
        return BlockingSession(self._portal, session)

    def state(self, session: str | None = None) -> StateUpdate:
        """The unit's state and its sessions'."""
        return self._portal.run(self._unit.state, session)  # type: ignore[no-any-return]

    def subscribe(self, session: str | None = None) -> BlockingStateStream:
        """Follow state changes; close the stream to stop."""
        stream: StateStream = self._portal.run_sync(self._unit.subscribe, session)
        return BlockingStateStream(self._portal, stream)

    def ping(self) -> float:
        """A round trip to the unit, in seconds (from the trio thread)."""
        return self._portal.run(self._unit.ping)  # type: ignore[no-any-return]


@contextmanager
def connect_local(
    argv: Sequence[str] | None = None,
    *,
    agent: str = "echo",
    options: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Iterator[BlockingUnit]:
    """Start a unit as a child process and speak to it (see `latis_core.connect_local`)."""
    with _blocking(_connect_local(argv, agent=agent, options=options, **kwargs)) as unit:
        yield unit


@contextmanager
def connect(
    address: str,
    *,
    token_file: str | None = None,
    fingerprint: str | None = None,
    **kwargs: Any,
) -> Iterator[BlockingUnit]:
    """Dial a unit's address and speak to it (see `latis_core.connect`).

    `address` is what `latis connect` takes: `tcp://HOST:PORT`, `ssh://me@gpu1`,
    `unix:/path`, `ws://…`, `quic://…`, `local:COMMAND`.
    """
    with _blocking(
        _connect(address, token_file=token_file, fingerprint=fingerprint, **kwargs)
    ) as unit:
        yield unit


@contextmanager
def _blocking(acm: AbstractAsyncContextManager[UnitClient]) -> Iterator[BlockingUnit]:
    """Enter `acm` in a trio thread of its own; the unit it yields, blocking."""
    portal = Portal()
    try:
        with portal.wrap(acm) as unit:
            yield BlockingUnit(portal, unit)
    finally:
        portal.close()
