"""`latis top`: every unit, session and waiting question on one screen, live.

The screen itself is `_top_ui` (textual, imported only when it is shown).
This module holds what does not need textual: the command, the plain output
when stdout is not a terminal, the rows every view shows, and `Feed`, the
bridge to the daemon.

textual runs its own (asyncio) loop; latis talks to cmdr on trio. `Feed` keeps
one trio loop in a thread of its own (`latis_core.blocking.Portal`) with one
connection to cmdr and a nursery; the screen hands it work without waiting
(`TrioToken.run_sync_soon`), and every result comes back as an event through
`Feed.sink` (textual's `post_message`, which is thread-safe). Each call to the
daemon has a deadline: a slow unit or a stuck daemon leaves the screen as it
was, with a note saying what did not answer, and the keys keep working.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any

from cyclopts import Parameter

from ._cmdr import ERROR, INTERRUPTED, OK, USAGE

__all__ = ["Feed", "Rows", "open_feed", "rows", "top"]

#: Who answers a question from here, as the inbox records it (`answered_by`).
BY = "top"
#: The text of a prompt shown in a table, at most (characters).
PROMPT_WIDTH = 15
#: A chunk sequence past any prompt's: reattaching after it replays nothing.
NO_REPLAY = 2**31


# ---- the command ---------------------------------------------------------------------------


def top(
    *,
    once: bool = False,
    timeout: float = 5.0,
    refresh: float = 2.0,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """The fleet on one screen: units, sessions, the inbox and one session's stream, live.

    Keys (shown at the bottom): `/` filter, `enter` open (follow a session's
    stream; answer an inbox question), `a` answer, `c` cancel the session's
    prompt, `n` a new prompt (to the session, or a new session on the unit),
    `tab` the next pane, `escape` back, `q` quit.

    Not on a terminal (a pipe, a file, `watch`), or with --once, it prints the
    three tables once and exits, like `latis status`. Every call to the daemon
    has a deadline (--timeout): a unit or daemon that does not answer leaves
    the screen as it was, with a note, and never freezes it.

    For example:
      latis top
      latis top --once
      latis top --json | jq '.sessions[] | select(.state == "waiting")'

    Args:
        once: print the tables once and exit, even on a terminal.
        timeout: seconds each call to the daemon may take.
        refresh: seconds between two reads of units, sessions and the inbox
            (besides a read at each change of a session's state).
        json_output: print the units, sessions and inbox once as JSON.
    """
    if timeout <= 0 or refresh <= 0:
        print("latis: --timeout and --refresh take seconds > 0", file=sys.stderr)
        return USAGE
    if once or json_output or not (sys.stdout.isatty() and sys.stdin.isatty()):
        return _print_once(timeout, json_output)
    from ._failure import report

    try:
        with open_feed(timeout) as feed:
            problem = feed.check_config()
            if problem is not None:
                print(problem, file=sys.stderr)
                return ERROR
            from ._top_ui import TopApp

            TopApp(feed, refresh=refresh).run()
        return OK
    except KeyboardInterrupt:
        return INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 (every failure ends here, as a message)
        return report(exc)


def _print_once(timeout: float, as_json: bool) -> int:
    from ._run import run_with_cmdr

    async def work(cmdr: Any) -> int:
        import trio

        parts: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            for name, call in (
                ("status", cmdr.status),
                ("inbox", cmdr.inbox_list),
                ("usage", cmdr.usage),
            ):
                nursery.start_soon(_bounded_into, parts, name, call, timeout)
        for name, value in parts.items():
            if isinstance(value, BaseException):
                from ._failure import describe

                print(f"latis: {name}: {describe(value)[0]}", file=sys.stderr)
        found = rows(_ok(parts.get("status")), _ok(parts.get("inbox")), _ok(parts.get("usage")))
        if as_json:
            print(json.dumps(found.as_json(), indent=2))
        else:
            _print_tables(found)
        return OK if all(not isinstance(v, BaseException) for v in parts.values()) else ERROR

    return run_with_cmdr(work)


async def _bounded_into(
    parts: dict[str, Any], name: str, call: Callable[[], Any], seconds: float
) -> None:
    import trio

    try:
        with trio.fail_after(seconds):
            parts[name] = await call()
    except trio.TooSlowError:
        parts[name] = TimeoutError(f"cmdr did not answer within {seconds:g} s")
    except Exception as exc:  # reported with the others, the rest still shows
        parts[name] = exc


def _ok(value: Any) -> Any:
    return None if isinstance(value, BaseException) else value


def _print_tables(found: Rows) -> None:
    from ._console import print_table

    if not found.units:
        print(
            "no units yet: latis prompt \"hello\" brings up the built-in unit 'local'",
            file=sys.stderr,
        )
    else:
        print_table(UNIT_COLUMNS, [cells for _, cells in found.units])
    if found.sessions:
        print()
        print_table(SESSION_COLUMNS, [cells for _, cells in found.sessions])
    if found.inbox:
        print()
        print_table(INBOX_COLUMNS, [cells for _, cells in found.inbox])
    else:
        print("nothing waits for an answer", file=sys.stderr)


# ---- what each view shows ------------------------------------------------------------------

UNIT_COLUMNS = ("unit", "provisioner", "connection", "sessions", "load")
SESSION_COLUMNS = ("session", "unit", "agent", "state", "prompt", "elapsed", "context", "cost")
INBOX_COLUMNS = ("id", "unit", "session", "question", "options", "since")

#: A table's rows: (key, cells) each; the key is the unit, session or question id.
Table = list[tuple[str, tuple[str, ...]]]


class Rows:
    """The three tables, built from what the daemon said (parts it did not say: empty)."""

    def __init__(self) -> None:
        self.units: Table = []
        self.sessions: Table = []
        self.inbox: Table = []
        #: Session id -> its unit, state and the open question's id (for the keys).
        self.session_info: dict[str, dict[str, Any]] = {}
        #: Question id -> its inbox item.
        self.items: dict[str, dict[str, Any]] = {}

    def as_json(self) -> dict[str, Any]:
        """The tables as lists of objects (`latis top --json`)."""

        def objects(columns: Sequence[str], table: Table) -> list[dict[str, str]]:
            return [dict(zip(columns, cells, strict=True)) for _, cells in table]

        return {
            "units": objects(UNIT_COLUMNS, self.units),
            "sessions": objects(SESSION_COLUMNS, self.sessions),
            "inbox": objects(INBOX_COLUMNS, self.inbox),
        }


def rows(
    status: Mapping[str, Any] | None,
    inbox: Mapping[str, Any] | None,
    usage: Mapping[str, Any] | None,
    states: Mapping[str, str] | None = None,
    now: float | None = None,
) -> Rows:
    """The tables from `status`, `inbox.list` and `usage` (by session) answers.

    `states` (session -> state, from a live subscription) wins over the
    state `status` gave, which may be older.
    """
    now = time.time() if now is None else now
    states = states or {}
    out = Rows()
    spend = {row["key"]: row for row in (usage or {}).get("rows", []) if row.get("key")}
    for unit in (status or {}).get("units", []):
        name = unit["unit"]
        agent = (unit.get("agent") or {}).get("name") or "-"
        sessions = unit.get("sessions") or []
        live = [states.get(s["id"], s["state"]) for s in sessions]
        busy, waiting = live.count("busy"), live.count("waiting")
        load = ", ".join(
            part
            for part in (f"{busy} busy" if busy else "", f"{waiting} waiting" if waiting else "")
            if part
        )
        out.units.append(
            (
                name,
                (
                    name,
                    unit.get("provisioner") or "-",
                    _connection(unit),
                    str(len(sessions)),
                    load or "idle",
                ),
            )
        )
        for session, state in zip(sessions, live, strict=True):
            sid = session["id"]
            prompt = session.get("prompt") or {}
            running = state in ("busy", "waiting")
            context = session.get("context") or spend.get(sid) or {}
            out.sessions.append(
                (
                    sid,
                    (
                        sid,
                        name,
                        agent,
                        state,
                        _clip(prompt.get("text") or "-", PROMPT_WIDTH),
                        _elapsed(now - prompt["started_at"]) if running and prompt else "-",
                        _context(context),
                        _cost(spend.get(sid)),
                    ),
                )
            )
            out.session_info[sid] = {
                "unit": name,
                "state": state,
                "question": (session.get("question") or {}).get("id"),
            }
    for item in (inbox or {}).get("items", []):
        if item.get("state", "open") != "open":
            continue
        out.items[item["id"]] = item
        out.inbox.append(
            (
                item["id"],
                (
                    item["id"],
                    item["unit"],
                    item["session"],
                    _clip(item["question"], 60),
                    ", ".join(item.get("options") or []) or "(free text)",
                    _elapsed(now - item["since"]) if item.get("since") else "-",
                ),
            )
        )
        info = out.session_info.get(item["session"])
        if info is not None and info["question"] is None:
            info["question"] = item["id"]
    return out


def _connection(unit: Mapping[str, Any]) -> str:
    return "FAILED" if unit.get("connection") == "unreachable" else str(unit.get("connection"))


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _elapsed(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _count(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 1000:
        return f"{value / 1000:.0f}k"
    return f"{value:.0f}"


def _context(context: Mapping[str, Any]) -> str:
    used = context.get("context_used")
    if used is None:
        return "-"
    size = context.get("context_size")
    return _count(used) + (f"/{_count(size)}" if size else "")


def _cost(row: Mapping[str, Any] | None) -> str:
    if not row or row.get("cost") is None:
        return "-"
    currency = row.get("currency") or "USD"
    return f"${row['cost']:.4f}" if currency == "USD" else f"{row['cost']:.4f} {currency}"


# ---- the bridge to the daemon -----------------------------------------------------------------

#: What the feed hands the screen: (kind, data). Kinds: "status", "inbox", "usage",
#: "states" (session -> state), "stream" (the followed session's events), "note"
#: (a line for the user), "problem" (a call that failed or timed out).
Sink = Callable[[str, Any], None]


@asynccontextmanager
async def _connected() -> AsyncIterator[tuple[Any, Any, Any]]:
    import trio

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
        import trio

        self._portal = portal
        self._cmdr = cmdr
        self._nursery = nursery
        self._token = token
        self.timeout = timeout
        #: Where results go; set it before `start`.
        self.sink: Sink = lambda kind, data: None
        self._wanted = trio.Event()
        self._follow_scope: trio.CancelScope | None = None
        #: The session followed, and the stream of its prompt (to cancel it there).
        self._followed: tuple[str, Any] | None = None

    # ---- from the screen's thread ----------------------------------------------------------

    def check_config(self) -> str | None:
        """Tell cmdr which config this command reads (waits); the problem, if it serves another."""
        from ._run import check_config

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
                from ._failure import describe

                self.sink("problem", describe(exc)[0])

        self._token.run_sync_soon(self._nursery.start_soon, guarded)

    async def _call(self, what: str, afn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`await afn(...)` within the deadline; None (and a note) if it did not answer."""
        import trio

        with trio.move_on_after(self.timeout):
            return await afn(*args, **kwargs)
        self.sink("problem", f"{what}: cmdr did not answer within {self.timeout:g} s")
        return None

    async def _refresher(self, refresh: float) -> None:
        import trio

        while True:
            self._wanted = trio.Event()
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
            from ._failure import describe

            self.sink("problem", f"{kind}: {describe(exc)[0]}")
            return
        if data is not None:
            self.sink(kind, data)

    async def _watch(self) -> None:
        async with self._cmdr.subscribe() as updates:
            async for update in updates:
                self.sink("states", dict(update.sessions))
                self._wanted.set()

    async def _answer(self, item: str, text: str) -> None:
        if (
            await self._call(f"answer {item}", self._cmdr.inbox_answer, item, text, by=BY)
            is not None
        ):
            self.sink("note", f"answered {item}")
        self._wanted.set()

    async def _cancel(self, session: str) -> None:
        import trio

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
        import trio

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
        import trio

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
                from ._failure import describe

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
