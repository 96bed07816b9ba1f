"""The dashboard's Starlette application: the page, its files, the JSON API v1.

Every request first passes `auth.check` (the `_Guard` middleware): nothing,
not even a static file, is served without the token. The API (docs/web.md):

- `/api/v1/call/METHOD`: the daemon's own method table (`latis_core._cmdr.api`
  names the methods, `latis_core._cmdr.daemon` handles them): POST with the
  parameters as a JSON object; GET with them in the query, for the methods
  that change nothing. The answer is the method's result (the `ack`'s data).
- `/api/v1/events`: server-sent events from the controller (`events.Hub`).
- sessions and prompts, the protocol's own messages (`session.create`,
  `prompt.send`, `prompt.cancel`, `session.destroy`, `session.resume` with a
  prompt) as routes, calling what the daemon's message handlers call.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import orjson
import trio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from latis_core._cmdr.api import INT_BOUND, METHODS, Method, check_params
from latis_core._cmdr.web.auth import check
from latis_core._cmdr.web.events import Hub, sse
from latis_core._errors import ErrorCode, LatisError, RequestError, error_code
from latis_core._version import __version__
from latis_core._wire.messages import ResponseChunk

if TYPE_CHECKING:
    from latis_core._cmdr.daemon import Daemon
    from latis_core._cmdr.methods import Caller
    from latis_core._cmdr.web.server import WebServer

__all__ = ["API_VERSION", "READ_ONLY", "create_app"]

log = logging.getLogger("latis.web")

#: The API's version, in its paths (`/api/v1/...`).
API_VERSION = 1
#: Methods that change nothing: these may also be called with GET.
READ_ONLY = frozenset(
    {
        Method.STATUS,
        Method.UNIT_PENDING,
        Method.AGENTS_LIST,
        Method.SESSION_GET,
        Method.COORDINATION_LIST,
        Method.COORDINATION_GET,
        Method.INBOX_LIST,
        Method.USAGE,
    }
)
#: The HTTP status of each error code (others: 500 for `internal`, else 409).
STATUS = {
    ErrorCode.BAD_MESSAGE: 400,
    ErrorCode.UNKNOWN_TYPE: 404,
    ErrorCode.UNKNOWN_UNIT: 404,
    ErrorCode.UNKNOWN_SESSION: 404,
    ErrorCode.UNKNOWN_REQUEST: 404,
    ErrorCode.UNREACHABLE: 502,
    ErrorCode.PROVISION_FAILED: 502,
    ErrorCode.INTERNAL: 500,
    ErrorCode.FRAME_TOO_LARGE: 413,
}
#: A request's body: at most this many bytes (a prompt's frame, and room for
#: its JSON), in at most this many seconds.
BODY_LIMIT = 16 * 1024 * 1024 + 64 * 1024
BODY_TIMEOUT = 30.0
#: Seconds between answering `web.stop` through the dashboard and stopping it.
STOP_AFTER = 0.2
#: An error's message is cut here (it may quote what was sent).
MESSAGE_LIMIT = 2000

#: The page's files: name -> media type.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: Sent with every answer: no framing, no sniffing, no referrer (the URL may hold
#: the token), scripts and styles from this origin only, nothing cached.
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_SSE_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _error(code: str, message: str, status: int | None = None) -> Response:
    if status is None:
        status = STATUS.get(code, 409)  # type: ignore[call-overload]
    if len(message) > MESSAGE_LIMIT:  # (it may quote what the client sent, all of it)
        message = message[:MESSAGE_LIMIT] + "…"
    return _json({"error": {"code": code, "message": message}}, status)


def _failure(exc: Exception) -> Response:
    if isinstance(exc, ClientDisconnect):
        return Response(status_code=400)  # nobody to read it: not a failure of ours
    code, message = error_code(exc)
    if code == ErrorCode.INTERNAL and not isinstance(exc, LatisError):
        log.exception("a web request failed")
    return _error(code, message)


async def _not_found(request: Request, exc: Exception) -> Response:
    """404 and 405 in the API's JSON form (Starlette's are plain text)."""
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return _error("method_not_allowed",
                      f"{request.method} is not served at {request.url.path}", 405)
    return _error("not_found", f"nothing is served at {request.url.path} (docs/web.md)", 404)


class _Guard:
    """The middleware: `auth.check` for every HTTP request, security headers on
    every answer. It reads the server's keys at each request (a new token counts
    at once)."""

    def __init__(self, app: ASGIApp, server: WebServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        keys = self.server.keys
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        query = scope.get("query_string", b"").decode("latin-1")
        decision = (
            check(keys, scope["method"], scope["path"], query, headers)
            if keys is not None
            else None
        )
        if decision is None or decision.status:
            status = decision.status if decision is not None else 503
            reason = decision.reason if decision is not None else "starting"
            if scope["path"].startswith("/api/"):
                code = {401: "unauthorized", 421: "misdirected"}.get(status, "forbidden")
                response = _error(code, reason, status)
            else:
                response = Response(
                    _refusal(status, reason), status, media_type="text/html; charset=utf-8"
                )
            if status == 401:
                response.headers["www-authenticate"] = 'Bearer realm="latis"'
            await response(scope, receive, secured)
            return
        if decision.login:
            # The token leaves the URL (and the history): a cookie holds the proof.
            assert keys is not None
            # (The rest of the query stays: `…/transcript?prompts=1&token=T`.)
            rest = urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
                              if k != "token"])
            response = Response(
                status_code=303,
                headers={"location": scope["path"] + (f"?{rest}" if rest else ""),
                         "set-cookie": keys.set_cookie()},
            )
            await response(scope, receive, secured)
            return
        await self.app(scope, receive, secured)


def _refusal(status: int, reason: str) -> bytes:
    """The page a refused browser sees: the reason, nothing of the fleet."""
    import html

    return (
        "<!doctype html><meta charset=utf-8><title>latis</title>"
        f"<h1>{status}</h1><p>{html.escape(reason)}</p>"
        "<p>Open the URL <code>latis web</code> prints (it carries the token).</p>"
    ).encode()


class _Caller:
    """The web API's side of a daemon method: what the handlers use of a client."""

    def __init__(self, daemon: Daemon, on_chunk: Callable[[ResponseChunk], None]) -> None:
        self.daemon = daemon
        self.ctl = daemon.controller
        self._on_chunk = on_chunk

    def send(self, message: Any) -> None:
        if type(message) is ResponseChunk:
            self._on_chunk(message)

    cork = send


def _caller(
    daemon: Daemon, on_chunk: Callable[[ResponseChunk], None] = lambda _: None
) -> Caller:
    """The web API's `Caller` of the daemon's methods: progress goes to `on_chunk`."""
    return _Caller(daemon, on_chunk)


def _typed(method: Method, query: dict[str, str]) -> dict[str, Any]:
    """Query parameters as the method's kinds (`?all=true`, `?limit=5`)."""
    kinds = METHODS[method].kinds
    params: dict[str, Any] = {}
    for name, text in query.items():
        kind = kinds.get(name, str)
        if kind is bool:
            params[name] = text.lower() in ("1", "true", "yes", "on")
        elif kind in (int, float):
            try:
                params[name] = kind(text)
            except ValueError:
                params[name] = text  # refused by check_params, with the parameter's path
        else:
            params[name] = text
    return params


async def _body(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > BODY_LIMIT:
        raise _too_large()
    raw = bytearray()
    with trio.move_on_after(BODY_TIMEOUT) as late:
        async for part in request.stream():
            raw += part
            if len(raw) > BODY_LIMIT:
                raise _too_large()
    if late.cancelled_caught:
        raise RequestError(ErrorCode.BAD_MESSAGE.value,
                           f"the body did not arrive within {BODY_TIMEOUT:g} s")
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError(ErrorCode.BAD_MESSAGE.value, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise RequestError(ErrorCode.BAD_MESSAGE.value, "the body is not a JSON object")
    return data


def _too_large() -> RequestError:
    return RequestError(ErrorCode.FRAME_TOO_LARGE.value,
                        f"the body is over {BODY_LIMIT} bytes (a prompt is at most 16 MiB)")


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RequestError(ErrorCode.BAD_MESSAGE.value, f"{name}: required (a string)")
    return value


def _sse(stream: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)


def create_app(daemon: Daemon, server: WebServer, hub: Hub) -> ASGIApp:
    """The dashboard's application for `daemon`, guarded by `server`'s keys."""
    ctl = daemon.controller
    static = importlib.resources.files("latis_core._cmdr.web") / "static"
    files = {name: (static / name).read_bytes() for name in FILES}

    async def page(request: Request) -> Response:
        return Response(files["index.html"], media_type=FILES["index.html"])

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:
            return Response(b"not found", 404, media_type="text/plain")
        return Response(files[name], media_type=FILES[name])

    async def hello(request: Request) -> Response:
        assert server.keys is not None
        return _json(
            {
                "api": API_VERSION,
                "version": __version__,
                "pid": os.getpid(),
                "csrf": server.keys.csrf,
                "seq": hub.seq,
            }
        )

    async def methods(request: Request) -> Response:
        return _json(
            {
                "methods": [
                    {
                        "method": m.value,
                        "required": list(spec.required),
                        "optional": list(spec.optional),
                        "streams": spec.streams,
                        "read_only": m in READ_ONLY,
                    }
                    for m, spec in METHODS.items()
                ]
            }
        )

    async def call(request: Request) -> Response:
        try:
            method = Method(request.path_params["method"])
        except ValueError:
            return _error(
                ErrorCode.UNKNOWN_TYPE.value,
                f"no method {request.path_params['method']!r} (GET /api/v1/methods)",
            )
        try:
            if request.method == "GET":
                if method not in READ_ONLY:
                    return _error(
                        ErrorCode.BAD_MESSAGE.value, f"{method} changes things: POST it", 405
                    )
                params = _typed(method, dict(request.query_params))
            else:
                params = await _body(request)
            problem = check_params(method, params)
            if problem is not None:
                return _error(ErrorCode.BAD_MESSAGE.value, problem)
            if METHODS[method].streams and "text/event-stream" in request.headers.get("accept", ""):
                return _sse(_streamed(method, params))
            if method == Method.WEB_STOP:
                # Asked of this server: it stops after this answer, not under it.
                assert daemon.nursery is not None
                daemon.nursery.start_soon(_stop_after_answer, params)
                return _json({"stopped": True})
            seq = hub.seq
            result = await daemon.call(_caller(daemon), method, 0, params)
        except Exception as exc:
            return _failure(exc)
        if method == Method.STATUS:
            # The event the snapshot includes: a page applies only later ones.
            result = {**result, "seq": seq}
        return _json(result)

    async def _stop_after_answer(params: dict[str, Any]) -> None:
        await trio.sleep(STOP_AFTER)
        try:
            await daemon.call(_caller(daemon), Method.WEB_STOP, 0, params)
        except Exception:  # (in the daemon's nursery: a failure must not end the daemon)
            log.exception("the dashboard could not stop")

    async def _streamed(method: Method, params: dict[str, Any]) -> AsyncIterator[bytes]:
        # Unbounded: a method's progress is short, and none of it may be lost.
        send, receive = trio.open_memory_channel[bytes](math.inf)

        def chunk(message: ResponseChunk) -> None:
            data = {
                "seq": message.seq,
                "kind": message.kind,
                "text": message.text,
                "data": message.data,
            }
            # (Its client gone, the stream ended: what the method still says is dropped.)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait(sse("chunk", data, message.seq))

        scope = trio.CancelScope()

        async def run() -> None:
            with scope, contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                async with send:
                    try:
                        result = await daemon.call(_caller(daemon, chunk), method, 0, params)
                        last = sse("result", result)
                    except Exception as exc:
                        code, message = error_code(exc)
                        last = sse("error", {"code": code, "message": message})
                    send.send_nowait(last)

        # The method runs in the daemon's nursery, not in one of this generator's: a
        # generator that yields inside a nursery is left suspended when its client
        # goes away, and the method never learnt it was cancelled (a coordination
        # stayed `running` in its record). Whatever ends the stream cancels it here.
        assert daemon.nursery is not None  # (the dashboard itself runs in it)
        daemon.nursery.start_soon(run)
        try:
            async with receive:
                async for data in receive:
                    yield data
        finally:
            scope.cancel()

    async def events(request: Request) -> Response:
        return _sse(hub.stream())

    async def new_session(request: Request) -> Response:
        try:
            body = await _body(request)
            options = body.get("options") or {}
            if not isinstance(options, dict):
                raise RequestError(ErrorCode.BAD_MESSAGE.value, "options: expected an object")
            unit = body.get("unit", "local")
            if not isinstance(unit, str) or not unit:
                raise RequestError(ErrorCode.BAD_MESSAGE.value, "unit: expected a unit's name")
            data = await daemon.new_session(unit, options)
        except Exception as exc:
            return _failure(exc)
        return _json(data, 201)

    async def transcript(request: Request) -> Response:
        sid = request.path_params["session"]
        try:
            last = int(request.query_params.get("prompts", "20"))
            row = await ctl.read(ctl.reads.get_session, sid)
            if row is None:
                raise RequestError(ErrorCode.UNKNOWN_SESSION.value, f"no session {sid!r}")
            entries = await ctl.read(ctl.reads.transcript, sid)
        except ValueError:
            return _error(ErrorCode.BAD_MESSAGE.value, "prompts: expected a whole number")
        except Exception as exc:
            return _failure(exc)
        shown = entries[-last:] if last > 0 else []
        return _json(
            {
                "session": sid,
                "unit": row.unit,
                "state": row.state,
                "prompts": [
                    {
                        "id": e.prompt.id,
                        "text": e.prompt.text,
                        "state": e.prompt.state,
                        "started_at": e.prompt.started_at,
                        "ended_at": e.prompt.ended_at,
                        "error": e.prompt.error,
                        "chunks": [
                            {"seq": c.seq, "text": c.text, "kind": c.kind} for c in e.chunks
                        ],
                        "inputs": [
                            {
                                "id": f"{e.prompt.id}.{i.number}",
                                "question": i.question,
                                "options": list(i.options),
                                "answer": i.answer,
                            }
                            for i in e.inputs
                        ],
                    }
                    for e in shown
                ],
                "more": len(entries) - len(shown),
            }
        )

    async def send_prompt(request: Request) -> Response:
        sid = request.path_params["session"]
        try:
            text = _text(await _body(request), "text")
            await ctl.session_unit(sid)  # unknown_session before anything is sent
            with trio.CancelScope(shield=True):
                record = await ctl.start_prompt(sid, text)
        except Exception as exc:
            return _failure(exc)
        return _json({"prompt": record.id, "session": sid, "unit": record.unit}, 201)

    async def close_session(request: Request) -> Response:
        sid = request.path_params["session"]
        try:
            with trio.CancelScope(shield=True):
                await ctl.destroy_session(sid)
        except Exception as exc:
            return _failure(exc)
        return _json({"session": sid, "state": "closed"})

    async def cancel(request: Request) -> Response:
        prompt_id = request.path_params["prompt"]
        if prompt_id >= INT_BOUND:
            return _error(ErrorCode.UNKNOWN_REQUEST.value, f"no prompt {prompt_id}")
        if prompt_id not in ctl.prompts:
            row = await ctl.read(ctl.reads.get_prompt, prompt_id)
            if row is None:
                return _error(ErrorCode.UNKNOWN_REQUEST.value, f"no prompt {prompt_id}")
            return _json({"prompt": prompt_id, "state": row.state, "cancelled": False})
        await ctl.cancel(prompt_id)
        return _json({"prompt": prompt_id, "state": "running", "cancelled": True}, 202)

    async def follow(request: Request) -> Response:
        prompt_id = request.path_params["prompt"]
        try:
            after = int(
                request.headers.get("last-event-id") or request.query_params.get("after", "-1")
            )
        except ValueError:
            after = INT_BOUND
        if not -1 <= after < INT_BOUND:
            return _error(ErrorCode.BAD_MESSAGE.value, "after: expected a chunk's seq")
        if prompt_id >= INT_BOUND:
            return _error(ErrorCode.UNKNOWN_REQUEST.value, f"no prompt {prompt_id}")
        if prompt_id not in ctl.prompts and await ctl.read(ctl.reads.get_prompt, prompt_id) is None:
            return _error(ErrorCode.UNKNOWN_REQUEST.value, f"no prompt {prompt_id}")
        return _sse(_follow(prompt_id, after))

    async def _follow(prompt_id: int, after: int) -> AsyncIterator[bytes]:
        """A prompt's chunks after `after` (stored first, then live), its questions,
        its end; a chunk's SSE id is its seq, so a browser that reconnects resumes."""
        try:
            async for kind, payload in ctl.follow(prompt_id, after):
                if kind == "chunk":
                    yield sse(
                        "chunk",
                        {"seq": payload.seq, "text": payload.text, "kind": payload.kind},
                        payload.seq,
                    )
                elif kind == "input":
                    yield sse(
                        "input",
                        {
                            "id": f"{prompt_id}.{payload.input}",
                            "question": payload.question,
                            "options": list(payload.options or ()),
                        },
                    )
                else:
                    yield sse("end", payload)
                    return
        except LatisError as exc:
            code, message = error_code(exc)
            yield sse("end", {"outcome": "error", "code": code, "message": message})

    routes = [
        Route("/", page),
        Route("/static/{name}", static_file),
        Route("/api/v1/hello", hello),
        Route("/api/v1/methods", methods),
        Route("/api/v1/call/{method}", call, methods=["GET", "POST"]),
        Route("/api/v1/events", events),
        Route("/api/v1/sessions", new_session, methods=["POST"]),
        Route("/api/v1/sessions/{session}/transcript", transcript),
        Route("/api/v1/sessions/{session}/prompts", send_prompt, methods=["POST"]),
        Route("/api/v1/sessions/{session}/close", close_session, methods=["POST"]),
        Route("/api/v1/prompts/{prompt:int}/events", follow),
        Route("/api/v1/prompts/{prompt:int}/cancel", cancel, methods=["POST"]),
    ]
    handlers = {404: _not_found, 405: _not_found}
    return _Guard(Starlette(routes=routes, exception_handlers=handlers), server)
