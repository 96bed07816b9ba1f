"""`Feed`: cmdr for `latis top`'s screen, which does not run on trio.

textual runs its own (asyncio) loop; latis talks to cmdr on trio. `Feed` keeps
one trio loop in a thread of its own (`latis_core.blocking.Portal`) with one
connection to cmdr and a nursery; the screen hands it work without waiting
(`TrioToken.run_sync_soon`), and every result comes back as an event through
`Feed.sink` (textual's `post_message`, which is thread-safe). Each call to the
daemon has a deadline: a slow unit or a stuck daemon leaves the screen as it
was, with a note saying what did not answer, and the keys keep working.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio

__all__ = ["Feed", "Sink", "open_feed"]

#: Who answers a question from here, as the inbox records it (`answered_by`).
BY = "top"
#: A chunk sequence past any prompt's: reattaching after it replays nothing.
NO_REPLAY = 2**31

#: What the feed hands the screen: (kind, data). Kinds: "status", "inbox", "usage",
#: "states" (session -> state), "stream" (the followed session's events), "note"
#: (a line for the user), "problem" (a call that failed or timed out).
Sink = Callable[[str, Any], None]


@asynccontextmanager
async def _connected() -> AsyncIterator[tuple[Any, Any, Any]]:
    from latis_core import open_daemon

    async with open_daemon() as cmdr, trio.open_nursery() as nursery:
        yield cmdr, nursery, trio.lowlevel.current_trio_token()
        nursery.cancel_scope.cancel()


@contextmanager
def open_feed(timeout: float = 5.0) -> Iterator[Feed]:
    """Connect to cmdr (starting it if needed) in a trio thread; yield the `Feed`.

    Raises:
        CmdrUnreachable: the daemon does not run and could not start.
    """
    from latis_core.blocking import Portal

    portal = Portal()
    try:
        with portal.wrap(_connected()) as (cmdr, nursery, token):
            yield Feed(portal, cmdr, nursery, token, timeout)
    finally:
        portal.close()


class Feed:
    """cmdr for a screen that is not on trio: ask without waiting, hear back through `sink`.

    Made by `open_feed`. Every method may be called from any thread and
    returns at once; the work runs as a task in the trio thread, each call to
    the daemon bounded by `timeout` seconds.
    """

    def __init__(self, portal: Any, cmdr: Any, nursery: Any, token: Any, timeout: float) -> None:
        self._portal = portal
        self._cmdr = cmdr
        self._nursery = nursery
        self._token = token
        self.timeout = timeout
        #: Where results go; set it before `start`.
        self.sink: Sink = lambda kind, data: None
        self._wanted = trio.Event()
        #: Set (and replaced) when a new connection replaces a lost one.
        self._reconnected = trio.Event()
        self._follow_scope: trio.CancelScope | None = None
        #: The session followed, and the stream of its prompt (to cancel it there).
        self._followed: tuple[str, Any] | None = None

    # ---- from the screen's thread ----------------------------------------------------------

    def check_config(self) -> str | None:
        """Tell cmdr which config this command reads (waits); the problem, if it serves another."""
        from .._run import check_config

        result: str | None = self._portal.run(check_config, self._cmdr)
        return result

    def start(self, refresh: float) -> None:
        """Read everything now and every `refresh` seconds; follow session states live."""
        self._spawn(self._refresher, refresh)
        self._spawn(self._watch)

    def request_refresh(self) -> None:
        """Read units, sessions, the inbox and usage again, soon."""
        self._token.run_sync_soon(lambda: self._wanted.set())

    def answer(self, item: str, text: str) -> None:
        """Answer inbox question `item` (`PROMPT.INPUT`)."""
        self._spawn(self._answer, item, text)

    def cancel(self, session: str) -> None:
        """Cancel the prompt session `session` runs, on its unit."""
        self._spawn(self._cancel, session)

    def follow(self, session: str | None, text: str | None = None) -> None:
        """Follow `session`'s prompts in the stream pane (None: stop following);
        with `text`, send it as a prompt first."""
        self._spawn(self._follow_start, session, text)

    def new_session(self, unit: str, text: str) -> None:
        """Open a session on `unit` (bringing it up), send `text`, follow it."""
        self._spawn(self._new_session, unit, text)

    # ---- in the trio thread -------------------------------------------------------------------

    def _spawn(self, afn: Callable[..., Any], *args: Any) -> None:
        async def guarded() -> None:
            try:
                await afn(*args)
            except Exception as exc:  # told on screen; the other tasks go on
                from .._failure import describe

                self.sink("problem", describe(exc)[0])

        self._token.run_sync_soon(self._nursery.start_soon, guarded)

    async def _call(self, what: str, afn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`await afn(...)` within the deadline; None (and a note) if it did not answer.

        The note goes out at the deadline: giving up on a call waits a while
        more (bounded) for the daemon to end it, which a stuck daemon never does.
        """
        call = trio.CancelScope()
        result: Any = None

        async def deadline() -> None:
            await trio.sleep(self.timeout)
            self.sink("problem", f"{what}: cmdr did not answer within {self.timeout:g} s")
            call.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deadline)
            with call:
                result = await afn(*args, **kwargs)
            nursery.cancel_scope.cancel()
        return None if call.cancelled_caught else result

    async def _refresher(self, refresh: float) -> None:
        while True:
            self._wanted = trio.Event()
            if self._cmdr.unit.peer.closed and not await self._reconnect():
                await trio.sleep(refresh)
                continue
            async with trio.open_nursery() as nursery:
                for kind, call in (
                    ("status", self._cmdr.status),
                    ("inbox", self._cmdr.inbox_list),
                    ("usage", self._cmdr.usage),
                ):
                    nursery.start_soon(self._read, kind, call)
            with trio.move_on_after(refresh):
                await self._wanted.wait()

    async def _read(self, kind: str, call: Callable[[], Any]) -> None:
        try:
            data = await self._call(kind, call)
        except Exception as exc:  # one part failing leaves the others
            from .._failure import describe

            self.sink("problem", f"{kind}: {describe(exc)[0]}")
            return
        if data is not None:
            self.sink(kind, data)

    async def _reconnect(self) -> bool:
        """A new connection to cmdr once the old one is lost (a daemon restart),
        held until the feed closes; whether there is one. Never starts cmdr:
        a daemon someone stopped stays stopped."""
        from latis_core import CmdrUnreachable, ConnectError, open_daemon

        async def hold(task_status: Any) -> None:
            async with open_daemon(autostart=False) as cmdr:
                task_status.started(cmdr)
                await trio.sleep_forever()

        try:
            with trio.fail_after(self.timeout):
                self._cmdr = await self._nursery.start(hold)
        except (CmdrUnreachable, ConnectError, OSError, trio.TooSlowError):
            self.sink("problem", "lost cmdr; trying again (latis daemon status)")
            return False
        self.sink("note", "connected to cmdr again")
        self._reconnected.set()
        self._reconnected = trio.Event()
        return True

    async def _watch(self) -> None:
        """Sessions' states as they change, from the daemon's memory (subscribed
        again on each new connection)."""
        while True:
            cmdr = self._cmdr
            try:
                async with cmdr.subscribe() as updates:
                    async for update in updates:
                        self.sink("states", dict(update.sessions))
                        self._wanted.set()
            except Exception:  # the connection is lost: the refresher makes another
                pass
            if self._cmdr is cmdr:
                await self._reconnected.wait()

    async def _answer(self, item: str, text: str) -> None:
        if (
            await self._call(f"answer {item}", self._cmdr.inbox_answer, item, text, by=BY)
            is not None
        ):
            self.sink("note", f"answered {item}")
        self._wanted.set()

    async def _cancel(self, session: str) -> None:
        followed = self._followed
        if followed is not None and followed[0] == session and not followed[1].done:
            followed[1].cancel_nowait()
        else:
            # Its prompt, picked up on a connection of our own and cancelled there
            # (the daemon cancels a prompt for whoever follows it).
            from latis_core import open_daemon

            with trio.move_on_after(self.timeout) as scope:
                async with open_daemon(autostart=False) as conn:
                    last = (await conn.session_get(session)).get("last_prompt")
                    if not last or last["state"] != "running":
                        self.sink("note", f"session {session} runs no prompt")
                        return
                    stream = await conn.session(session).reattach(last["id"], after=NO_REPLAY)
                    stream.cancel_nowait()
                    async for _ in stream:
                        pass
            if scope.cancelled_caught:
                self.sink(
                    "problem", f"cancel {session}: cmdr did not answer within {self.timeout:g} s"
                )
                return
        self.sink("note", f"cancelled the prompt of session {session}")
        self._wanted.set()

    async def _new_session(self, unit: str, text: str) -> None:
        self.sink("note", f"bringing unit {unit} up")
        # Provisioning may take minutes: its own, longer deadline.
        with trio.move_on_after(max(self.timeout, 300)):
            await self._cmdr.unit_up(unit)
            session = await self._cmdr.create_session(unit=unit)
            self.sink("note", f"session {session.id} on unit {unit}")
            self._wanted.set()
            await self._follow_start(session.id, text)
            return
        self.sink("problem", f"unit {unit} did not come up in time")

    async def _follow_start(self, session: str | None, text: str | None) -> None:
        if self._follow_scope is not None:
            self._follow_scope.cancel()
        self._follow_scope = None
        self._followed = None
        if session is not None:
            self._follow_scope = trio.CancelScope()
            self._nursery.start_soon(self._follow, session, text, self._follow_scope)

    async def _follow(self, session: str, text: str | None, scope: Any) -> None:
        """Stream `session`'s prompts to the sink, one after the other, on a
        connection of its own (leaving it stops following, not the prompt)."""
        from latis_core import InputRequest, open_daemon

        with scope:
            self.sink("following", session)
            try:
                async with open_daemon(autostart=False) as conn:
                    stream = conn.session(session).prompt(text) if text else None
                    seen: int | None = None
                    while True:
                        if stream is None:
                            stream, seen = await self._next_prompt(conn, session, seen)
                            if stream is None:
                                return
                        # Leaving (another session followed, quitting) stops following:
                        # the prompt runs on.
                        stream.detach()
                        if self._follow_scope is scope:
                            self._followed = (session, stream)
                        batch: list[Any] = []
                        async for event in stream:
                            if isinstance(event, InputRequest):
                                batch.append(("ask", event.question, list(event.options)))
                            elif event.kind is None:
                                batch.append(("text", event.text))
                            if not stream.ready:
                                self.sink("stream", (session, batch))
                                batch = []
                        self.sink("stream", (session, [*batch, ("end", stream.outcome)]))
                        # The prompt shown (ours has no daemon id here): wait for the next.
                        last = (await conn.session_get(session)).get("last_prompt")
                        seen = last["id"] if last else seen
                        stream = None
            except Exception as exc:
                from .._failure import describe

                self.sink("stream", (session, [("end", describe(exc)[0])]))

    async def _next_prompt(self, conn: Any, session: str, seen: int | None) -> tuple[Any, Any]:
        """The stream of `session`'s latest prompt once it is not `seen` (waiting
        for one); (None, None) when the session closes."""
        told = False
        found = None
        # Left before reattaching: the prompt's id may be the subscription's.
        async with conn.subscribe(session) as updates:
            async for update in updates:
                if update.sessions.get(session) == "closed":
                    self.sink("stream", (session, [("end", "the session closed")]))
                    return None, None
                last = (await conn.session_get(session)).get("last_prompt")
                if last and last["id"] != seen:
                    found = last["id"]
                    break
                if seen is None and not told:
                    self.sink("stream", (session, [("end", "no prompt yet")]))
                    told = True
        if found is None:
            return None, None
        self.sink("stream", (session, [("start", found)]))
        return await conn.session(session).reattach(found), found
