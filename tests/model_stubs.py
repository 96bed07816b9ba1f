"""Model-API stubs on loopback, for running the real agent CLIs offline.

One small trio HTTP/1.1 server answers what Claude Code and Codex ask of their
model APIs (../shared/RECIPES.md, "Real agent CLIs, offline"):

- Anthropic: `HEAD /`, `POST /v1/messages` (streamed as server-sent events:
  `message_start`, `content_block_start`, `content_block_delta`...,
  `content_block_stop`, `message_delta`, `message_stop`; or one JSON message
  when `stream` is false) and `POST /v1/messages/count_tokens`.
- OpenAI Responses: `POST /v1/responses`, streamed as codex expects
  (`response.created` ... `response.output_text.delta`... `response.completed`
  with usage).

What it answers is scripted by the user's prompt (the last text of the
request's last user message, the agents' own wrappers such as
`<system-reminder>` left out), so one stub serves every turn of a conversation:

- `stub:fail` anywhere in it: an API error (HTTP 400 with the API's error body,
  whose message contains `FAIL_MESSAGE`). 400 is not retried by either CLI.
- `stub:slow`: a long answer, one text delta every `slow_delay` seconds (for
  cancelling mid-stream; the stub notes when the client hangs up).
- `stub:tool` (Anthropic only): a `tool_use` block calling the Bash tool with
  `TOOL_COMMAND`; the turn after it (whose user message carries the
  `tool_result`) is answered `Tool result: ...` or `Tool refused: ...`.
- `stub:ask` (Anthropic only, when the request offers the AskUserQuestion
  tool): a `tool_use` block asking `ASK_INPUT`'s question; the turn after it
  is answered as after `stub:tool`.
- anything else: `Stub heard: WORD.` in several deltas, WORD being the prompt's
  last word, so a test can tell the answer came from here.

Every request is kept in `ModelStub.requests` (method, path, parsed body, the
prompt found in it, how the answer went). Standalone on purpose: the driver
imports it inside a network namespace, and `python tests/model_stubs.py` serves
one for trying an agent by hand.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import signal
import sys
import time
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

__all__ = ["ASK_INPUT", "FAIL_MESSAGE", "TOOL_COMMAND", "ModelStub", "Recorded"]

#: In the error the stub returns for `stub:fail`.
FAIL_MESSAGE = "stub model failure on purpose"
#: What `stub:tool` asks the Bash tool to run (in the agent's working directory).
TOOL_COMMAND = "echo stub-tool-ran | tee stub-tool.txt"
#: What `stub:ask` asks with Claude Code's AskUserQuestion tool.
ASK_INPUT = {
    "questions": [
        {
            "question": "Which colour should the stub use?",
            "header": "Colour",
            "options": [
                {"label": "Red", "description": "warm"},
                {"label": "Blue", "description": "cool"},
            ],
            "multiSelect": False,
        }
    ]
}

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
_ids = itertools.count(1)


@dataclass(eq=False)
class Recorded:
    """One request the stub got, and how it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any = None
    #: "anthropic", "openai" or None (anything else).
    api: str | None = None
    #: The last text of the request's last user message, "" if none (what
    #: the stub's answer depends on).
    prompt: str = ""
    #: Every text the user said in the conversation the request carries.
    history: list[str] = field(default_factory=list)
    #: Tool results the request carries back (text, and whether an error).
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    #: What the stub answered: "text", "slow", "tool_use", "error", "json", ...
    answer: str = ""
    status: int = 0
    #: Server-sent events written.
    events: int = 0
    #: The client hung up before the answer was complete.
    disconnected: bool = False
    started: float = 0.0
    ended: float = 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (no body, no headers but the user agent)."""
        d = asdict(self)
        body = d.pop("body")
        d["headers"] = {k: v for k, v in self.headers.items() if k == "user-agent"}
        if isinstance(body, dict):
            d["model"] = body.get("model")
            d["stream"] = body.get("stream")
            # The conversation so far: how many messages (Anthropic) or input items (OpenAI).
            history = body.get("messages", body.get("input"))
            d["messages"] = len(history) if isinstance(history, list) else None
        d["prompt"] = self.prompt[-300:]
        d["history"] = [t[:100] for t in self.history[-20:]]
        return d


class ModelStub:
    """The stub server. `async with trio.open_nursery() as n: port = await n.start(stub.serve)`."""

    def __init__(
        self,
        *,
        slow_delay: float = 0.2,
        slow_events: int = 300,
        model: str = "claude-stub-1",
    ) -> None:
        self.slow_delay = slow_delay
        self.slow_events = slow_events
        self.model = model
        self.requests: list[Recorded] = []
        self.port = 0
        #: Set whenever a request arrives, ends or streams an event (`wait_request`).
        self._arrived = trio.Event()

    # -- serving -----------------------------------------------------------

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1 (a free port), report the port, serve until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.port)

    def api_requests(self, api: str) -> list[Recorded]:
        """The requests that reached `api` ("anthropic" or "openai")."""
        return [r for r in self.requests if r.api == api]

    async def wait_request(self, predicate: Any, timeout: float = 30.0) -> Recorded:
        """Wait for a request matching `predicate(record)`; return it."""
        with trio.fail_after(timeout):
            while True:
                for r in self.requests:
                    if predicate(r):
                        return r
                self._arrived = trio.Event()
                await self._arrived.wait()

    async def _connection(self, stream: trio.SocketStream) -> None:
        reader = _Reader(stream)
        try:
            while True:
                request = await reader.request()
                if request is None:
                    return
                method, path, headers, raw = request
                rec = Recorded(method, path, headers, started=time.monotonic())
                rec.body = _parse_body(raw, headers)
                self.requests.append(rec)
                self._arrived.set()
                try:
                    keep = await self._answer(stream, rec)
                finally:
                    rec.ended = time.monotonic()
                    self._arrived.set()
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, _BadRequest):
            return
        finally:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    async def _answer(self, stream: trio.SocketStream, rec: Recorded) -> bool:
        path = rec.path.split("?", 1)[0].rstrip("/")
        if rec.method == "HEAD":
            rec.answer = "head"
            rec.status = 200
            await _send(stream, 200, b"", "text/plain", head_only=True)
            return True
        if rec.method == "POST" and path == "/v1/messages/count_tokens":
            rec.api = "anthropic"
            rec.answer = "json"
            await _send_json(stream, rec, 200, {"input_tokens": 42})
            return True
        if rec.method == "POST" and path == "/v1/messages":
            rec.api = "anthropic"
            return await self._anthropic(stream, rec)
        if rec.method == "POST" and path == "/v1/responses":
            rec.api = "openai"
            return await self._openai(stream, rec)
        rec.answer = "not_found"
        await _send_json(stream, rec, 404, {"error": {"message": f"stub: no {rec.method} {path}"}})
        return True

    # -- Anthropic Messages API --------------------------------------------

    async def _anthropic(self, stream: trio.SocketStream, rec: Recorded) -> bool:
        body = rec.body if isinstance(rec.body, dict) else {}
        rec.prompt, rec.history, rec.tool_results = _anthropic_prompt(body)
        prompt = rec.prompt
        if "stub:fail" in prompt:
            rec.answer = "error"
            error = {"type": "invalid_request_error", "message": FAIL_MESSAGE}
            await _send_json(stream, rec, 400, {"type": "error", "error": error})
            return True
        model = body.get("model") or self.model
        blocks: list[dict[str, Any]]  # content blocks: {"type": "text", "parts": [...]}, tool_use
        delay = 0.0
        stop = "end_turn"
        if rec.tool_results:
            result = rec.tool_results[-1]
            verb = "refused" if result["is_error"] else "result"
            text = f"Tool {verb}: {result['text'].strip()[:200]}"
            blocks = [{"type": "text", "parts": _split(text)}]
            rec.answer = "text"
        elif "stub:slow" in prompt:
            blocks = [{"type": "text", "parts": [f"tick {i} " for i in range(self.slow_events)]}]
            delay = self.slow_delay
            rec.answer = "slow"
        elif "stub:tool" in prompt and _offers(body, "Bash"):
            tool_input = {"command": TOOL_COMMAND, "description": "Run the stub's command"}
            blocks = _tool_use("I will run a command.", "Bash", tool_input)
            stop = rec.answer = "tool_use"
        elif "stub:ask" in prompt and _offers(body, "AskUserQuestion"):
            blocks = _tool_use("I will ask you.", "AskUserQuestion", ASK_INPUT)
            stop = rec.answer = "tool_use"
        else:
            blocks = [{"type": "text", "parts": _split(_echo(prompt))}]
            rec.answer = "text"
        if not body.get("stream"):
            content = []
            for b in blocks:
                if b["type"] == "text":
                    content.append({"type": "text", "text": "".join(b["parts"])})
                else:
                    content.append({k: b[k] for k in ("type", "id", "name", "input")})
            message = _anthropic_message(model, content, stop)
            await _send_json(stream, rec, 200, message)
            return True
        await _start_sse(stream)
        rec.status = 200
        return await self._sse(stream, rec, _anthropic_events(model, blocks, stop), delay)

    # -- OpenAI Responses API ----------------------------------------------

    async def _openai(self, stream: trio.SocketStream, rec: Recorded) -> bool:
        body = rec.body if isinstance(rec.body, dict) else {}
        rec.prompt, rec.history, rec.tool_results = _openai_prompt(body)
        prompt = rec.prompt
        if "stub:fail" in prompt:
            rec.answer = "error"
            error = {
                "message": FAIL_MESSAGE,
                "type": "invalid_request_error",
                "param": None,
                "code": "stub_failure",
            }
            await _send_json(stream, rec, 400, {"error": error})
            return True
        delay = 0.0
        if "stub:slow" in prompt:
            parts = [f"tick {i} " for i in range(self.slow_events)]
            delay = self.slow_delay
            rec.answer = "slow"
        else:
            parts = _split(_echo(prompt))
            rec.answer = "text"
        await _start_sse(stream)
        rec.status = 200
        events = _openai_events(body.get("model") or "gpt-stub", parts)
        return await self._sse(stream, rec, events, delay)

    async def _sse(
        self,
        stream: trio.SocketStream,
        rec: Recorded,
        events: Iterable[tuple[str, dict[str, Any]]],
        delay: float,
    ) -> bool:
        try:
            for name, data in events:
                if delay and name.endswith("delta"):
                    await trio.sleep(delay)
                payload = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                await stream.send_all(b"%x\r\n%b\r\n" % (len(payload), payload))
                rec.events += 1
                self._arrived.set()
            await stream.send_all(b"0\r\n\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            rec.disconnected = True
            return False
        return True


# -- what the user said ----------------------------------------------------


def _is_wrapper(text: str) -> bool:
    """Context the agents add to the user's turn (reminders, environment, instructions)."""
    t = text.lstrip()
    return t.startswith(
        (
            "<system-reminder>",
            "<environment_context>",
            "<user_instructions>",
            "# AGENTS.md",
            "<permissions instructions>",
            "<turn_aborted>",
            "<command-",
        )
    )


def _texts(content: Any, kinds: tuple[str, ...]) -> list[str]:
    """The user's own texts in a message's content (the agents' wrappers left out)."""
    if isinstance(content, str):
        return [] if _is_wrapper(content) else [content]
    return [
        block.get("text", "")
        for block in content or []
        if isinstance(block, dict)
        and block.get("type") in kinds
        and not _is_wrapper(block.get("text", ""))
    ]


def _anthropic_prompt(body: dict[str, Any]) -> tuple[str, list[str], list[dict[str, Any]]]:
    """(the last text of the last user message, all user texts, its tool results)."""
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    history = [t for m in users for t in _texts(m.get("content"), ("text",))]
    if not users:
        return "", history, []
    content = users[-1].get("content")
    results = []
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                inner = "".join(b.get("text", "") for b in inner if isinstance(b, dict))
            results.append({"text": str(inner or ""), "is_error": bool(block.get("is_error"))})
    last = _texts(content, ("text",))
    return (last[-1].strip() if last else ""), history, results


def _openai_prompt(body: dict[str, Any]) -> tuple[str, list[str], list[dict[str, Any]]]:
    """(the last text of the last user message, all user texts, tool outputs after it)."""
    items = body.get("input")
    if isinstance(items, str):
        return items, [items], []
    kinds = ("input_text", "text")
    users = [
        i for i in items or [] if i.get("type", "message") == "message" and i.get("role") == "user"
    ]
    history = [t for i in users for t in _texts(i.get("content"), kinds)]
    results = []
    for item in reversed(items or []):
        if item.get("type") == "function_call_output":
            results.insert(0, {"text": str(item.get("output")), "is_error": False})
        if item in users:
            break
    last = _texts(users[-1].get("content"), kinds) if users else []
    return (last[-1].strip() if last else ""), history, results


def _echo(prompt: str) -> str:
    words = re.findall(r"[\w:-]+", prompt)
    return f"Stub heard: {words[-1] if words else 'nothing'}."


def _split(text: str) -> list[str]:
    """Cut a reply into several deltas, as a model streams it."""
    return re.findall(r"\S+\s*", text) or [text]


# -- wire formats ------------------------------------------------------------


def _offers(body: dict[str, Any], tool: str) -> bool:
    """Whether an Anthropic request offers the model `tool`."""
    return any(t.get("name") == tool for t in body.get("tools", []))


def _tool_use(text: str, name: str, tool_input: dict[str, Any]) -> list[dict[str, Any]]:
    """A text block, then a `tool_use` block calling `name` with `tool_input`."""
    return [
        {"type": "text", "parts": [text]},
        {"type": "tool_use", "id": f"toolu_stub{next(_ids)}", "name": name, "input": tool_input},
    ]


def _anthropic_message(model: str, content: list[dict[str, Any]], stop: str) -> dict[str, Any]:
    return {
        "id": f"msg_stub{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "output_tokens": 8,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _anthropic_events(
    model: str, blocks: list[dict[str, Any]], stop: str
) -> Iterable[tuple[str, dict[str, Any]]]:
    start = _anthropic_message(model, [], stop)
    start["stop_reason"] = None
    start["usage"]["output_tokens"] = 1
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for part in block["parts"]:
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": part},
                    },
                )
        else:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {
                        "type": "tool_use",
                        "id": block["id"],
                        "name": block["name"],
                        "input": {},
                    },
                },
            )
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {
                        "type": "input_json_delta",
                        "partial_json": json.dumps(block["input"]),
                    },
                },
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 8},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def _openai_events(model: str, parts: list[str]) -> Iterable[tuple[str, dict[str, Any]]]:
    rid, mid = f"resp_stub{next(_ids)}", f"msg_stub{next(_ids)}"
    seq = itertools.count()
    response = {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": model,
        "output": [],
        "usage": None,
    }
    text = "".join(parts)
    done_part = {"type": "output_text", "text": text, "annotations": []}
    item = {
        "id": mid,
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    where = {"item_id": mid, "output_index": 0, "content_index": 0}

    def event(name: str, **data: Any) -> tuple[str, dict[str, Any]]:
        return name, {"type": name, "sequence_number": next(seq), **data}

    yield event("response.created", response=response)
    yield event("response.in_progress", response=response)
    yield event("response.output_item.added", output_index=0, item=item)
    yield event(
        "response.content_part.added",
        **where,
        part={"type": "output_text", "text": "", "annotations": []},
    )
    for part in parts:
        yield event("response.output_text.delta", **where, delta=part)
    yield event("response.output_text.done", **where, text=text)
    yield event("response.content_part.done", **where, part=done_part)
    done_item = {**item, "status": "completed", "content": [done_part]}
    yield event("response.output_item.done", output_index=0, item=done_item)
    completed = {
        **response,
        "status": "completed",
        "output": [done_item],
        "usage": {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(parts),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 12 + len(parts),
        },
    }
    yield event("response.completed", response=completed)


# -- HTTP/1.1 ----------------------------------------------------------------


class _BadRequest(Exception):
    pass


class _Reader:
    """Reads HTTP/1.1 requests (Content-Length or chunked bodies) off a stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        self.buf += data
        return True

    async def _until(self, sep: bytes, limit: int) -> bytes | None:
        while (i := self.buf.find(sep)) < 0:
            if len(self.buf) > limit:
                raise _BadRequest("head too long")
            if not await self._fill():
                if self.buf:
                    raise _BadRequest("truncated")
                return None
        out = bytes(self.buf[:i])
        del self.buf[: i + len(sep)]
        return out

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise _BadRequest("truncated body")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        head = await self._until(b"\r\n\r\n", _MAX_HEAD)
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, path, _version = lines[0].split(" ", 2)
        except ValueError:
            raise _BadRequest(lines[0]) from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                size_line = await self._until(b"\r\n", _MAX_HEAD)
                if size_line is None:
                    raise _BadRequest("truncated chunk")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while await self._until(b"\r\n", _MAX_HEAD):  # trailers
                        pass
                    break
                body += await self._exactly(size)
                await self._exactly(2)
                if len(body) > _MAX_BODY:
                    raise _BadRequest("body too long")
            return method, path, headers, bytes(body)
        length = int(headers.get("content-length") or 0)
        if length > _MAX_BODY:
            raise _BadRequest("body too long")
        return method, path, headers, await self._exactly(length)


def _parse_body(raw: bytes, headers: dict[str, str]) -> Any:
    if not raw:
        return None
    encoding = headers.get("content-encoding", "").lower()
    try:
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        elif encoding == "zstd":
            return {"undecoded": "zstd", "bytes": len(raw)}
        return json.loads(raw)
    except (ValueError, OSError, zlib.error):
        return {"undecoded": encoding or "not json", "bytes": len(raw)}


async def _send(
    stream: trio.SocketStream, status: int, body: bytes, ctype: str, *, head_only: bool = False
) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Status")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nrequest-id: req_stub{next(_ids)}\r\n\r\n"
    ).encode()
    await stream.send_all(head if head_only else head + body)


async def _send_json(stream: trio.SocketStream, rec: Recorded, status: int, obj: Any) -> None:
    rec.status = status
    await _send(stream, status, json.dumps(obj).encode(), "application/json")


async def _start_sse(stream: trio.SocketStream) -> None:
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\nrequest-id: req_stub%d\r\n\r\n" % next(_ids)
    )


async def _main() -> None:
    stub = ModelStub()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(stub.serve)
        print(f"model stub on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
        finally:
            for r in stub.requests:
                print(json.dumps(r.summary()), file=sys.stderr)


if __name__ == "__main__":
    try:
        trio.run(_main)
    except KeyboardInterrupt:
        pass
