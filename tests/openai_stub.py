"""A small OpenAI-compatible chat-completions server for tests, on loopback.

It speaks HTTP/1.1 by hand over `trio.serve_tcp` (keep-alive included) and
answers the way ollama, vLLM, llama.cpp and OpenAI do: server-sent events in
a chunked response, one event per write. Each test says how to answer with a
handler::

    async def answer(request: StubRequest, response: StubResponse) -> None:
        assert request.json()["model"] == "m"
        await response.start()                    # 200, text/event-stream, chunked
        for piece in ("Hel", "lo"):
            await response.chunk(content=piece)   # one chat.completion.chunk event
            await trio.sleep(0.01)
        await response.done()                     # data: [DONE], then the last chunk

    async with open_stub(answer) as stub:
        ...  # point a client at stub.base_url; stub.requests holds what came

The stub checks that each request is a chat-completions request (POST
.../chat/completions, a JSON body with `model`, `messages` and `stream`);
one that is not gets a 400 in OpenAI's error shape and is noted in
`stub.problems`. `StubRequest.disconnected` is set when the client closes
the connection before the answer ended; the handler is then cancelled, as
real servers stop generating.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import trio

__all__ = [
    "ClientGone",
    "OpenAIStub",
    "StubRequest",
    "StubResponse",
    "open_stub",
    "stream_text",
]

#: Bytes of a request head read at most.
HEAD_LIMIT = 64 * 1024


class ClientGone(Exception):
    """The client closed the connection while the stub was answering."""


class StubRequest:
    """One request the stub received."""

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        #: The request target, e.g. "/v1/chat/completions".
        self.target = target
        #: Header names in lower case.
        self.headers = headers
        self.body = body
        #: Set when the client closed the connection before the answer ended.
        self.disconnected = trio.Event()
        #: trio.current_time() when that was seen, else None.
        self.disconnected_at: float | None = None

    def __repr__(self) -> str:
        return f"<StubRequest {self.method} {self.target} {len(self.body)} bytes>"

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.json()["messages"]  # type: ignore[no-any-return]

    def _gone(self) -> None:
        if not self.disconnected.is_set():
            self.disconnected_at = trio.current_time()
            self.disconnected.set()


class StubResponse:
    """How a handler answers: a chunked stream of events, or a whole body."""

    def __init__(self, stream: trio.SocketStream, request: StubRequest) -> None:
        self._stream = stream
        self.request = request
        #: "new", "streaming", "ended" or "aborted".
        self.state = "new"
        self.keep_alive = request.headers.get("connection", "").lower() != "close"

    async def _send(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.request._gone()
            self.state = "aborted"
            raise ClientGone() from exc

    @staticmethod
    def _head(status: int, headers: Mapping[str, str]) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def start(
        self,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        content_type: str = "text/event-stream",
    ) -> None:
        """Send the status line and headers of a chunked response."""
        assert self.state == "new", f"the response was already {self.state}"
        self.state = "streaming"
        head = {
            "Content-Type": content_type,
            "Cache-Control": "no-cache",
            "Transfer-Encoding": "chunked",
            **(headers or {}),
        }
        await self._send(self._head(status, head))

    async def write(self, data: bytes | str) -> None:
        """Send `data` as one chunk of the body (one network write)."""
        if self.state == "new":
            await self.start()
        assert self.state == "streaming", f"the response is {self.state}"
        raw = data.encode() if isinstance(data, str) else data
        if raw:
            await self._send(b"%x\r\n%s\r\n" % (len(raw), raw))

    async def event(self, data: Any, *, event: str | None = None) -> None:
        """Send one server-sent event: `data: <JSON>` (a str is sent as it is)."""
        text = data if isinstance(data, str) else json.dumps(data)
        head = f"event: {event}\n" if event else ""
        await self.write(f"{head}data: {text}\n\n")

    async def chunk(
        self,
        content: str | None = None,
        *,
        reasoning: str | None = None,
        reasoning_field: str = "reasoning_content",
        tool_calls: list[dict[str, Any]] | None = None,
        finish_reason: str | None = None,
        usage: dict[str, Any] | None = None,
        role: str | None = None,
    ) -> None:
        """Send one `chat.completion.chunk` event, shaped like OpenAI's."""
        await self.event(
            completion_chunk(
                content,
                reasoning=reasoning,
                reasoning_field=reasoning_field,
                tool_calls=tool_calls,
                finish_reason=finish_reason,
                usage=usage,
                role=role,
            )
        )

    async def done(self) -> None:
        """Send `data: [DONE]` and end the response."""
        await self.write("data: [DONE]\n\n")
        await self.end()

    async def end(self) -> None:
        """End a chunked response (the zero-length chunk)."""
        if self.state == "new":
            await self.start()
        if self.state == "streaming":
            await self._send(b"0\r\n\r\n")
            self.state = "ended"

    async def json(
        self, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send a whole JSON response (with Content-Length)."""
        await self.body(json.dumps(obj).encode(), status, headers, "application/json")

    async def error(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send an error in OpenAI's shape: {"error": {"message": ..., "type": ...}}."""
        obj = {"error": {"message": message, "type": type, "param": None, "code": None}}
        await self.json(obj, status, headers)

    async def body(
        self,
        data: bytes,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        """Send a whole response with Content-Length."""
        assert self.state == "new", f"the response was already {self.state}"
        head = {"Content-Type": content_type, "Content-Length": str(len(data)), **(headers or {})}
        self.state = "streaming"
        await self._send(self._head(status, head) + data)
        self.state = "ended"

    async def abort(self) -> None:
        """Close the connection now, mid-answer."""
        self.state = "aborted"
        await self._stream.aclose()


Handler = Callable[[StubRequest, StubResponse], Awaitable[None]]


def completion_chunk(
    content: str | None = None,
    *,
    reasoning: str | None = None,
    reasoning_field: str = "reasoning_content",
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
    role: str | None = None,
) -> dict[str, Any]:
    """A `chat.completion.chunk` object as OpenAI streams them."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta[reasoning_field] = reasoning
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    chunk: dict[str, Any] = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "stub-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def stream_text(pieces: Iterable[str], *, delay: float = 0.01) -> Handler:
    """A handler that streams `pieces`, one content delta each, then stops."""
    pieces = list(pieces)

    async def handler(request: StubRequest, response: StubResponse) -> None:
        await response.start()
        await response.chunk(role="assistant", content="")
        for piece in pieces:
            await trio.sleep(delay)
            await response.chunk(content=piece)
        await response.chunk(finish_reason="stop")
        await response.done()

    return handler


class OpenAIStub:
    """The server: its address, the requests it got, and how it answers."""

    def __init__(self, handler: Handler | None = None) -> None:
        #: Answers each request that passes the checks; tests may replace it.
        self.handler: Handler = handler or stream_text(["Hello", " from", " the", " stub"])
        #: Every request received, in order.
        self.requests: list[StubRequest] = []
        #: Why requests were refused with 400, if any were.
        self.problems: list[str] = []
        self.port = 0
        self.connections = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---- HTTP -------------------------------------------------------------------------

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = bytearray()
        try:
            while True:
                request = await self._read_request(stream, buf)
                if request is None:
                    return
                self.requests.append(request)
                response = StubResponse(stream, request)
                await self._answer(stream, buf, request, response)
                if response.state != "ended" or not response.keep_alive:
                    return
        except ClientGone:
            return
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _receive(self, stream: trio.SocketStream) -> bytes:
        try:
            return await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def _read_request(
        self, stream: trio.SocketStream, buf: bytearray
    ) -> StubRequest | None:
        while b"\r\n\r\n" not in buf:
            if len(buf) > HEAD_LIMIT:
                raise AssertionError("the request head is too long")
            data = await self._receive(stream)
            if not data:
                assert not buf, f"the client left in the middle of a request head: {bytes(buf)!r}"
                return None
            buf += data
        end = buf.index(b"\r\n\r\n")
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        method, target, version = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        assert "transfer-encoding" not in headers, "a chunked request body (not expected)"
        length = int(headers.get("content-length", "0"))
        while len(buf) < length:
            data = await self._receive(stream)
            assert data, "the client left in the middle of a request body"
            buf += data
        body = bytes(buf[:length])
        del buf[:length]
        return StubRequest(method, target, headers, body)

    async def _answer(
        self,
        stream: trio.SocketStream,
        buf: bytearray,
        request: StubRequest,
        response: StubResponse,
    ) -> None:
        problem = self._check(request)
        if problem is not None:
            self.problems.append(problem)
            await response.error(400, f"stub: {problem}")
            return
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                # Anything the client sends while it waits is kept for the next
                # request; EOF means it left: stop answering, as servers do.
                while True:
                    data = await self._receive(stream)
                    if not data:
                        request._gone()
                        nursery.cancel_scope.cancel()
                        return
                    buf.extend(data)

            nursery.start_soon(watch)
            try:
                await self.handler(request, response)
                if response.state == "new":
                    await response.error(500, "stub: the handler sent no answer", type="server")
                elif response.state == "streaming":
                    await response.end()
            except ClientGone:
                pass
            nursery.cancel_scope.cancel()
        if request.disconnected.is_set():
            response.state = "aborted"

    @staticmethod
    def _check(request: StubRequest) -> str | None:
        if request.method != "POST":
            return f"expected POST, got {request.method}"
        if not request.target.split("?")[0].endswith("/chat/completions"):
            return f"expected .../chat/completions, got {request.target}"
        if "json" not in request.headers.get("content-type", ""):
            return f"expected a JSON body, got {request.headers.get('content-type')!r}"
        try:
            body = request.json()
        except ValueError:
            return "the body is not JSON"
        if not isinstance(body, dict):
            return "the body is not an object"
        if not isinstance(body.get("model"), str):
            return "no model"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "no messages"
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                return f"a message is not a chat message: {m!r}"
            if not isinstance(m.get("content"), str):
                return f"a message has no text content: {m!r}"
        if body.get("stream") is not True:
            return "expected stream: true"
        return None


@asynccontextmanager
async def open_stub(handler: Handler | None = None) -> AsyncIterator[OpenAIStub]:
    """Serve an `OpenAIStub` on 127.0.0.1 (a free port) for the block's duration."""
    stub = OpenAIStub(handler)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, stub.serve, 0, host="127.0.0.1")
        )
        stub.port = listeners[0].socket.getsockname()[1]
        try:
            yield stub
        finally:
            nursery.cancel_scope.cancel()
