"""The library API: talk to a unit from a script or a notebook.

    async with latis_core.connect_local() as unit:
        session = await unit.create_session()
        async for chunk in session.prompt("hello there"):
            print(chunk.text, end="")

`connect` does the same over any `trio.abc.Stream`; `latis_core.blocking`
wraps all of it for code that is not async.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import trio
from trio.lowlevel import checkpoint, checkpoint_if_cancelled

from latis_core._errors import ConnectError, RemoteProtocolError
from latis_core._io.peer import (
    CANCEL_TIMEOUT,
    NOT_HERE,
    QUEUE_LIMIT,
    Peer,
    ReplyStream,
    open_peer,
)
from latis_core._plugins.registry import dialer_from_url
from latis_core._wire.auth import read_secret_file
from latis_core._wire.frames import DEFAULT_MAX_FRAME
from latis_core._wire.messages import (
    Ack,
    AgentInfo,
    Hello,
    InputReply,
    InputRequest,
    PromptSend,
    RequestId,
    ResponseCancelled,
    ResponseChunk,
    ResponseComplete,
    SessionCreate,
    SessionDestroy,
    SessionResume,
    StateGet,
    StateSubscribe,
    StateUpdate,
)

__all__ = [
    "PromptStream",
    "Session",
    "StateStream",
    "UnitClient",
    "connect",
]

#: Answers an agent's question: gets the request, returns the answer.
InputHandler = Callable[[InputRequest], Awaitable[str]]


class PromptStream(ReplyStream):
    """The answer to one prompt: `ResponseChunk`s, and `InputRequest`s when the
    agent asks something (answer with `reply`, or pass `on_input` to `prompt`).

    Iteration ends when the prompt completes or is cancelled (`outcome` says
    which); an `error` from the unit raises `RequestError`. Chunks are checked
    for gaps by their sequence numbers. Leaving early, or cancelling the task
    that iterates, cancels the prompt on the unit. (While chunks are here
    already, every 8th step of the iteration is a cancel point: a loop whose
    body never awaits sees a cancel up to 7 chunks on.)
    """

    __slots__ = ("_first_seq", "_next_seq", "_on_input", "pending")

    def __init__(
        self, peer: Peer, w: Any, on_input: InputHandler | None = None, first_seq: int = 0
    ) -> None:
        super().__init__(peer, w)
        self._on_input = on_input
        self._first_seq = self._next_seq = first_seq
        #: The question the agent waits on an answer to, if any.
        self.pending: InputRequest | None = None

    @property
    def outcome(self) -> str | None:
        """"complete" or "cancelled" once iteration has ended normally, else None."""
        final = self.final
        if type(final) is ResponseComplete:
            return "complete"
        if type(final) is ResponseCancelled:
            return "cancelled"
        return None

    async def __anext__(self) -> ResponseChunk | InputRequest:
        # A chunk that is here and comes next is handed over without an await:
        # every 8th is a cancel point, every 64th a schedule point (`_anext`). A
        # cancel check on each was a sixth of the reader's work a chunk.
        ev = self._next_here()
        if type(ev) is ResponseChunk and ev.seq == self._next_seq and self._count & 7:
            self._next_seq += 1
            return ev
        return await self._anext(ev)

    async def _anext(self, ev: Any) -> ResponseChunk | InputRequest:
        while True:
            if ev is not NOT_HERE:
                try:
                    await checkpoint_if_cancelled()
                except trio.Cancelled:
                    await self._cancel_and_wait()
                    raise
            else:
                try:
                    ev = await super().__anext__()
                except StopAsyncIteration:
                    self._check_count()
                    raise
            if type(ev) is ResponseChunk:
                if ev.seq != self._next_seq:
                    await self.aclose()
                    raise RemoteProtocolError(
                        f"chunk {ev.seq} of prompt {self.id!r} came after chunk "
                        f"{self._next_seq - 1}: chunks are missing",
                        request_id=self.id,
                    )
                self._next_seq += 1
                return ev
            self.pending = ev
            if self._on_input is None:
                return ev  # type: ignore[no-any-return]
            try:
                answer = await self._on_input(ev)
                if type(answer) is not str:
                    raise TypeError(f"on_input must return the answer as a str, got "
                                    f"{type(answer).__name__}")
            except BaseException:
                await self.aclose()  # nobody will answer: the prompt stops here
                raise
            await self.reply(answer)
            ev = self._next_here()

    def take_chunks(self, limit: int) -> list[ResponseChunk]:
        """Up to `limit` chunks that are here already, in order, without waiting
        (for a consumer that takes a batch at a time). It stops before a question,
        the end, or a gap in the chunks' sequence: the next `__anext__` takes
        those (and reports the gap)."""
        chunks: list[ResponseChunk] = self.take_ready(ResponseChunk, limit)
        seq = self._next_seq
        for i, chunk in enumerate(chunks):
            if chunk.seq != seq:
                self._w.events.extendleft(reversed(chunks[i:]))
                del chunks[i:]
                break
            seq += 1
        self._next_seq = seq
        return chunks

    def _check_count(self) -> None:
        sent = getattr(self.final, "chunks", None)
        if sent is not None and self._next_seq == self._first_seq >= sent:
            return  # picked up after its last chunk (`reattach(after=...)`): nothing missing
        if sent is not None and sent != self._next_seq:
            raise RemoteProtocolError(
                f"the unit sent {sent} chunks for prompt {self.id!r}, "
                f"{self._next_seq} arrived",
                request_id=self.id,
            )

    async def reply(self, text: str) -> None:
        """Answer the agent's pending question."""
        pending = self.pending
        if pending is None:
            raise RuntimeError("the agent has asked nothing that waits for an answer")
        if type(text) is not str:
            raise TypeError(f"an answer must be a str, got {type(text).__name__}")
        self.pending = None
        self.answer_nowait(pending.input, text)
        await checkpoint()

    def answer_nowait(self, number: int, text: str) -> None:
        """Answer question `number` of this prompt now, without waiting (for a
        controller that relays answers given elsewhere)."""
        if type(text) is not str:
            raise TypeError(f"an answer must be a str, got {type(text).__name__}")
        if self.pending is not None and self.pending.input == number:
            self.pending = None
        self._peer.send_nowait(InputReply(self.id, number, text))

    async def text(self) -> str:
        """Read the rest of the answer and return its text (plain chunks only).

        Raises:
            RuntimeError: the agent asked a question and no `on_input` was given.
        """
        parts = []
        async for ev in self:
            if isinstance(ev, InputRequest):
                await self.aclose()
                raise RuntimeError(
                    f"the agent asked {ev.question!r}: pass on_input to prompt() to answer"
                )
            if ev.kind is None:
                parts.append(ev.text)
        return "".join(parts)


class StateStream(ReplyStream):
    """`StateUpdate`s: a snapshot first, then one per change. Leave it to unsubscribe."""

    __slots__ = ()


class Session:
    """A session on a unit: send it prompts."""

    def __init__(self, unit: UnitClient, session_id: str, state: str | None = None) -> None:
        self.unit = unit
        #: The session id the unit gave.
        self.id = session_id
        #: Its state when this handle was made.
        self.initial_state = state

    def __repr__(self) -> str:
        return f"<Session {self.id} on {self.unit.name}>"

    def prompt(self, text: str, *, on_input: InputHandler | None = None) -> PromptStream:
        """Send `text`; return the stream of its answer.

        Args:
            text: the prompt.
            on_input: called when the agent asks something; returns the answer.
                Without it the `InputRequest` is yielded, for `reply`.
        """
        if type(text) is not str:
            raise TypeError(f"a prompt's text must be a str, got {type(text).__name__}")
        peer = self.unit.peer
        msg = PromptSend(peer.next_id(), self.id, text)
        return PromptStream(peer, peer._start(msg), on_input)

    async def reattach(
        self,
        prompt_id: RequestId,
        *,
        after: int | None = None,
        on_input: InputHandler | None = None,
    ) -> PromptStream:
        """Pick up prompt `prompt_id` of this session again (after a reconnect).

        The unit sends its chunks after seq `after` (all with None), then the
        rest as it comes, or its end if it has finished.
        """
        peer = self.unit.peer
        rid = peer.next_id()
        if rid == prompt_id:
            rid = peer.next_id()
        w = peer._expect(prompt_id)
        try:
            await peer.request(SessionResume(rid, self.id, prompt_id, after))
        except BaseException:
            peer._abandon(w, cancel=False)
            raise
        return PromptStream(peer, w, on_input, 0 if after is None else after + 1)

    async def state(self) -> str:
        """Return the session's state: idle, busy or waiting."""
        update = await self.unit.state(self.id)
        return update.sessions[self.id]

    async def destroy(self) -> None:
        """End the session (cancelling its prompt, if one runs)."""
        peer = self.unit.peer
        await peer.request(SessionDestroy(peer.next_id(), self.id))


class UnitClient:
    """A connection to one unit. Made by `connect` or `connect_local`."""

    def __init__(self, peer: Peer) -> None:
        #: The multiplexed connection underneath.
        self.peer = peer

    def __repr__(self) -> str:
        return f"<UnitClient {self.name} ({self.agent.name})>"

    @property
    def hello(self) -> Hello:
        """The unit's `hello`."""
        return self.peer.remote

    @property
    def name(self) -> str:
        """The unit's name."""
        return self.hello.unit or ""

    @property
    def agent(self) -> AgentInfo:
        """The agent behind the unit."""
        return self.hello.agent or AgentInfo("unknown")

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What the unit announced it can do."""
        return self.hello.capabilities

    async def create_session(self, **options: Any) -> Session:
        """Open a new session; `options` go to the agent."""
        peer = self.peer
        ack = await peer.request(SessionCreate(peer.next_id(), options or None))
        assert isinstance(ack, Ack)
        return Session(self, ack.data["session"], ack.data.get("state"))

    async def resume_session(self, session_id: str) -> Session:
        """Return a handle to an existing session, checked with the unit."""
        peer = self.peer
        ack = await peer.request(SessionResume(peer.next_id(), session_id))
        assert isinstance(ack, Ack)
        return Session(self, session_id, ack.data.get("state"))

    async def state(self, session: str | None = None) -> StateUpdate:
        """Return the unit's state and its sessions' (or one session's)."""
        peer = self.peer
        update = await peer.request(StateGet(peer.next_id(), session))
        assert isinstance(update, StateUpdate)
        return update

    def subscribe(self, session: str | None = None) -> StateStream:
        """Follow state changes of the unit (or of one session)."""
        peer = self.peer
        return StateStream(peer, peer._start(StateSubscribe(peer.next_id(), session)))

    async def ping(self) -> float:
        """Return a round trip to the unit, in seconds."""
        return await self.peer.ping()

    async def aclose(self) -> None:
        """Close the connection now (leaving `connect`'s block does it too)."""
        await self.peer.aclose()


def _read_token(token_file: str | os.PathLike[str]) -> bytes:
    """The token in `token_file` (`~` expanded; refused if others may read it)."""
    return read_secret_file(os.path.expanduser(os.fspath(token_file)))


def _with_fingerprint(url: str, fingerprint: str | None) -> str:
    """`url` with `?fingerprint=` added (a fingerprint given apart from the URL)."""
    if fingerprint is None:
        return url
    if "fingerprint=" in url:
        raise ValueError("the fingerprint is given twice: in the URL and as an argument")
    return f"{url}{'&' if '?' in url else '?'}{urlencode({'fingerprint': fingerprint})}"


@asynccontextmanager
async def connect(
    stream: trio.abc.Stream | str,
    *,
    token_file: str | os.PathLike[str] | None = None,
    fingerprint: str | None = None,
    name: str | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    handshake_timeout: float = 10.0,
    keepalive: float | None = None,
    keepalive_timeout: float = 10.0,
    queue_limit: int = QUEUE_LIMIT,
    cancel_timeout: float = CANCEL_TIMEOUT,
    label: str = "unit",
    token: bytes | None = None,
) -> AsyncIterator[UnitClient]:
    """Speak to the unit at the other end of `stream` (closed on exit).

    `stream` may be an address, as `latis connect` takes it: `tcp://HOST:PORT`,
    `ssh://me@gpu1`, `unix:/path`, `ws://…`, `quic://…`, `local:COMMAND`
    (any dialer's URL); it is dialed first, and closed on exit.

        async with latis_core.connect("tcp://gpu1:7447", token_file="~/.t") as unit: ...

    Args:
        stream: any byte stream to a unit, or a unit's address.
        token_file: (with an address) a file holding the unit's token (as
            `latis connect --token-file`); `token` gives the token itself.
        fingerprint: (with an address) the pin of the unit's TLS certificate,
            `sha256:HEX` (the URL's `?fingerprint=` is the same).
        name: this controller's name, sent in `hello`.
        max_frame: the largest payload we accept.
        handshake_timeout: seconds to wait for the unit's `hello`.
        keepalive: seconds of silence before a `ping`, or None.
        keepalive_timeout: seconds without an answer before the unit counts as gone.
        queue_limit: replies queued per request before reading pauses.
        cancel_timeout: seconds a cancelled prompt waits for its end.
        label: names the unit in error messages.
        token: the unit's token, for a unit that asks for proof of it
            (`latis-unit --token-file`); it proves the token back.

    Raises:
        ConnectError: the handshake failed, or a proof of identity did.
    """
    if token is not None and not isinstance(token, (bytes, bytearray)):
        raise TypeError(f"token must be bytes (the token file's contents; token_file=PATH "
                        f"reads one), got {type(token).__name__}")
    options: dict[str, Any] = dict(
        hello=Hello(name=name),
        max_frame=max_frame,
        handshake_timeout=handshake_timeout,
        keepalive=keepalive,
        keepalive_timeout=keepalive_timeout,
        queue_limit=queue_limit,
        cancel_timeout=cancel_timeout,
        token=token,
    )
    if not isinstance(stream, str):
        if token_file is not None or fingerprint is not None:
            raise TypeError("token_file and fingerprint go with an address, not a stream")
        # (No exit stack: an idle connection holds what it needs, ~1 KiB less.)
        async with open_peer(stream, label=label, **options) as peer:
            yield UnitClient(peer)
        return
    if token is None and token_file is not None:
        options["token"] = _read_token(token_file)
    _, dialer = dialer_from_url(_with_fingerprint(stream, fingerprint))
    entered = False
    try:
        async with dialer.connect() as link, open_peer(
            link, label=stream if label == "unit" else label, **options
        ) as peer:
            entered = True
            yield UnitClient(peer)
    except ConnectError as exc:
        if entered or getattr(dialer, "uses_tls", True) or "during the handshake" not in str(exc):
            raise
        # Clear text to a unit that speaks TLS: it hangs up on our hello.
        raise ConnectError(f"{exc} (a unit that listens with --tls needs its pin in the "
                           "address: ?fingerprint=sha256:..., as latis-unit prints it)") from exc
