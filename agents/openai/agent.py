"""The `openai` adapter itself: `OpenAIAgent` (its options are read by
`latis_agents.openai.options`; the HTTP client), its sessions (the conversation,
a streamed request with retries), the answer's chunks, and `OpenAIError` with
the messages for HTTP and connection failures. The package docstring has the
whole story.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import orjson
import trio
from latis_agents.openai.options import (
    LOOPBACK,
    OPTIONS,
    Settings,
    as_float,
    as_int,
    as_str,
    check_base_url,
    check_header,
    completions_url,
    option_error,
    read_key,
)
from latis_agents.openai.sse import SSEDecoder

from latis_core._plugins.agent import Agent, AgentSession, Reply, _no_command
from latis_core._version import __version__
from latis_core._wire.messages import AgentInfo

if TYPE_CHECKING:
    import ssl

    import httpx

__all__ = ["OpenAIAgent", "OpenAIError"]

log = logging.getLogger("latis.agent.openai")

#: Seconds to wait for a connection and for each piece of an answer.
DEFAULT_TIMEOUT = 120.0
#: Appended to an assistant turn that was cancelled before it was complete.
TRUNCATED_MARK = "[interrupted]"
#: A server that asks to wait longer than this (Retry-After) is not retried.
MAX_RETRY_WAIT = 60.0
#: Backoff between retries without Retry-After: 0.5 s, 1 s, 2 s, ... up to 8 s.
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0
#: Characters of a non-JSON error body quoted in an error message.
BODY_QUOTE = 500
#: Bytes of an error response read at most.
_ERROR_BODY_LIMIT = 64 * 1024
#: finish_reason values that need no mention.
_NORMAL_FINISH = frozenset({"stop", "tool_calls", "function_call"})



class OpenAIError(Exception):
    """The endpoint failed a request, or could not be reached.

    The message is the server's own when it sent one, and never contains the
    API key.

    Attributes:
        status: the HTTP status, or None when no response came.
        retry_after: seconds the server asked to wait (`Retry-After`), or None.
        retryable: whether `retries` applies (429, 5xx, connection errors).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable


# ---- the agent ----------------------------------------------------------------------------


class OpenAIAgent(Agent):
    """Talks to an OpenAI-compatible chat-completions endpoint, streaming.

    Args:
        base_url: the API root, e.g. `http://127.0.0.1:11434/v1`.
        model: the model's name on that server.
        api_key_env: the name of the environment variable holding the API
            key, or None for a server that needs none.
        system: a system prompt, or None.
        temperature: sent when given.
        max_tokens: sent when given.
        timeout: seconds for the connection and for each piece of an answer.
        retries: tries again after 429, 5xx or connection errors, this many times.
        headers: extra HTTP headers (not for secrets).

    Raises:
        ValueError: an argument is not valid, or the key's variable is not set.
    """

    info: ClassVar[AgentInfo] = AgentInfo("openai", __version__)

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = check_base_url(as_str("base_url", base_url)).rstrip("/")
        self.url = completions_url(self.base_url)
        self.defaults = Settings(
            as_str("model", model, required=True),
            (as_str("system", system) or None) if system is not None else None,
            None if temperature is None else as_float("temperature", temperature, minimum=0),
            None if max_tokens is None else as_int("max_tokens", max_tokens, minimum=1),
        )
        self.timeout = as_float("timeout", timeout, minimum=0, above=True)
        self.retries = as_int("retries", retries, minimum=0)
        self.headers = dict(headers or {})
        for name, value in self.headers.items():
            check_header(name, value)
        self.api_key_env = api_key_env
        self._key = read_key(api_key_env) if api_key_env is not None else None
        host = urlsplit(self.base_url).hostname or ""
        #: Proxies from the environment do not apply to a server on loopback.
        self.trust_env = not LOOPBACK.match(host)
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        key = f", api_key_env={self.api_key_env!r}" if self.api_key_env else ""
        return f"<OpenAIAgent {self.base_url} model={self.defaults.model!r}{key}>"

    @classmethod
    def from_options(cls, options: Mapping[str, str], command: Sequence[str] = ()) -> OpenAIAgent:
        _no_command("openai", command)
        headers: dict[str, str] = {}
        plain: dict[str, str] = {}
        for key, value in options.items():
            if key.startswith("header."):
                name = key.removeprefix("header.")
                if not name:
                    raise option_error("option 'header.NAME=VALUE' needs a NAME")
                if name.lower() in {h.lower() for h in headers}:
                    raise option_error(f"option 'header.{name}' is given twice")
                headers[name] = value
            elif key in OPTIONS:
                plain[key] = value
            else:
                raise option_error(
                    f"unknown option {key!r} (known: {', '.join(OPTIONS)}, header.NAME)"
                )
        for required in ("base_url", "model"):
            if not plain.get(required):
                example = {
                    "base_url": "http://127.0.0.1:11434/v1",
                    "model": "llama3.2",
                }[required]
                raise option_error(f"option {required!r} is required, e.g. -o {required}={example}")
        timeout: float = DEFAULT_TIMEOUT
        if "timeout" in plain:
            timeout = as_float("timeout", plain["timeout"], minimum=0, above=True)
        return cls(
            plain["base_url"],
            plain["model"],
            api_key_env=plain.get("api_key_env"),
            system=plain.get("system"),
            temperature=(
                as_float("temperature", plain["temperature"], minimum=0)
                if "temperature" in plain
                else None
            ),
            max_tokens=(
                as_int("max_tokens", plain["max_tokens"], minimum=1)
                if "max_tokens" in plain
                else None
            ),
            timeout=timeout,
            retries=as_int("retries", plain.get("retries", "0"), minimum=0),
            headers=headers,
        )

    async def open_session(self, session_id: str, options: Mapping[str, Any]) -> AgentSession:
        return OpenAISession(self, self.defaults.override(options))

    # ---- for sessions -------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        import httpx

        if self._ssl is None:
            # One SSL context for all sessions: building one costs milliseconds.
            self._ssl = httpx.create_ssl_context(trust_env=self.trust_env)
        headers = dict(self.headers)
        if not any(name.lower() == "user-agent" for name in headers):
            headers["User-Agent"] = f"latis/{__version__}"
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            verify=self._ssl,
            trust_env=self.trust_env,
            headers=headers,
        )

    def _request_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        return headers

    def _scrub(self, text: str) -> str:
        return self._key.scrub(text) if self._key is not None else text

    def _fail(self, message: str, **kwargs: Any) -> OpenAIError:
        return OpenAIError(self._scrub(message), **kwargs)


# ---- a session ----------------------------------------------------------------------------


class _Turn:
    __slots__ = ("content", "role", "truncated")

    def __init__(self, role: str, content: str, truncated: bool = False) -> None:
        self.role = role
        self.content = content
        self.truncated = truncated

    def message(self) -> dict[str, str]:
        content = self.content
        if self.truncated:
            content = f"{content}\n\n{TRUNCATED_MARK}" if content else TRUNCATED_MARK
        return {"role": self.role, "content": content}


class _Answer:
    """What one prompt's answer has streamed so far."""

    __slots__ = ("calls", "finish_reason", "parts", "started", "usage")

    def __init__(self) -> None:
        self.parts: list[str] = []
        #: Tool calls by slot: their id, type and name, kept to label each delta.
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        #: Whether any chunk went to the controller (then the request is not retried).
        self.started = False

    @property
    def text(self) -> str:
        return "".join(self.parts)


class OpenAISession(AgentSession):
    """One conversation: its settings and its history of turns."""

    def __init__(self, agent: OpenAIAgent, settings: Settings) -> None:
        self.agent = agent
        self.settings = settings
        #: The exchanges so far: user and assistant turns, alternating.
        self.history: list[_Turn] = []
        self._http: httpx.AsyncClient | None = None

    def messages(self, text: str) -> list[dict[str, str]]:
        """The messages a prompt of `text` sends: system, history, then `text`."""
        out = []
        if self.settings.system:
            out.append({"role": "system", "content": self.settings.system})
        out.extend(turn.message() for turn in self.history)
        out.append({"role": "user", "content": text})
        return out

    def body(self, text: str) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {"model": s.model, "messages": self.messages(text), "stream": True}
        if s.temperature is not None:
            body["temperature"] = s.temperature
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        return body

    async def prompt(self, text: str, reply: Reply) -> None:
        payload = orjson.dumps(self.body(text))
        answer = _Answer()
        if self._http is None:
            self._http = self.agent._client()
        try:
            await self._post(self._http, payload, reply, answer)
        except trio.Cancelled:
            # Keep what the user saw, marked as cut short (see TRUNCATED_MARK).
            self.history += [_Turn("user", text), _Turn("assistant", answer.text, True)]
            raise
        # An error adds nothing: the exchange did not happen.
        self.history += [_Turn("user", text), _Turn("assistant", answer.text)]

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + 2
                await http.aclose()

    # ---- the request ------------------------------------------------------------------

    async def _post(
        self, http: httpx.AsyncClient, payload: bytes, reply: Reply, answer: _Answer
    ) -> None:
        agent = self.agent
        attempt = 0
        while True:
            try:
                await self._stream(http, payload, reply, answer)
                return
            except OpenAIError as exc:
                if not exc.retryable or attempt >= agent.retries or answer.started:
                    raise
                wait = exc.retry_after
                if wait is None:
                    wait = min(BACKOFF_BASE * 2**attempt, BACKOFF_MAX)
                elif wait > MAX_RETRY_WAIT:
                    raise
                attempt += 1
                log.warning(
                    "%s; try %d of %d in %.1f s", exc, attempt + 1, agent.retries + 1, wait
                )
                await trio.sleep(wait)

    async def _stream(
        self, http: httpx.AsyncClient, payload: bytes, reply: Reply, answer: _Answer
    ) -> None:
        import httpx

        agent = self.agent
        request = http.build_request(
            "POST", agent.url, content=payload, headers=agent._request_headers()
        )
        log.debug("POST %s (model %s)", agent.url, self.settings.model)
        try:
            response = await http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _transport_error(agent, exc) from exc
        try:
            if response.status_code >= 400:
                raise await _http_error(agent, response)
            ctype = response.headers.get("content-type", "")
            try:
                if "json" in ctype and "event-stream" not in ctype:
                    # A server that ignored "stream": the whole answer at once.
                    await _whole(agent, response, reply, answer)
                else:
                    await _events(agent, response, reply, answer)
            except httpx.HTTPError as exc:
                raise _transport_error(agent, exc, streaming=True) from exc
        finally:
            # Closing a response that is not read to its end closes the
            # connection: a cancelled prompt stops the server at once.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + 1
                await response.aclose()
        reason = answer.finish_reason
        if reason is not None and reason not in _NORMAL_FINISH:
            await _send(reply, answer, kind="finish", data={"finish_reason": reason})


async def _send(
    reply: Reply,
    answer: _Answer,
    text: str = "",
    *,
    kind: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    answer.started = True
    await reply.send(text, kind=kind, data=data)


# ---- the answer ---------------------------------------------------------------------------


async def _events(
    agent: OpenAIAgent, response: httpx.Response, reply: Reply, answer: _Answer
) -> None:
    decoder = SSEDecoder()
    chunks = response.aiter_bytes()
    done = False
    async for data in chunks:
        for event, payload in decoder.feed(data):
            if await _on_event(agent, event, payload, reply, answer):
                done = True
                break
        if done:
            break
    if done:
        # Read the end of the response, so that the connection can be reused.
        with trio.move_on_after(1):
            async for _ in chunks:
                pass
        return
    for event, payload in decoder.close():
        if await _on_event(agent, event, payload, reply, answer):
            return


async def _on_event(
    agent: OpenAIAgent, event: str, payload: str, reply: Reply, answer: _Answer
) -> bool:
    """Handle one server-sent event; return True at `[DONE]`."""
    if payload == "[DONE]":
        return True
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        if event == "error":
            raise agent._fail(f"{agent.base_url} reported an error: {_quote(payload)}") from None
        raise agent._fail(
            f"{agent.base_url} sent an event that is not JSON: {_quote(payload, 200)}"
        ) from None
    if not isinstance(obj, dict):
        raise agent._fail(f"{agent.base_url} sent an event that is not an object: {payload[:200]}")
    error = obj.get("error")
    if error or event == "error":
        message = _error_message(obj) or _quote(payload)
        raise agent._fail(f"{agent.base_url} reported an error mid-stream: {message}")
    await _on_completion(obj, "delta", reply, answer)
    return False


async def _whole(
    agent: OpenAIAgent, response: httpx.Response, reply: Reply, answer: _Answer
) -> None:
    body = await response.aread()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise agent._fail(
            f"{agent.base_url} answered with JSON that does not parse: {_quote(body)}"
        ) from None
    if not isinstance(obj, dict):
        raise agent._fail(f"{agent.base_url} answered with {_quote(body)}")
    if obj.get("error"):
        raise agent._fail(f"{agent.base_url} reported an error: {_error_message(obj)}")
    await _on_completion(obj, "message", reply, answer)


async def _on_completion(obj: dict[str, Any], key: str, reply: Reply, answer: _Answer) -> None:
    """One `chat.completion.chunk` (key "delta") or a whole completion ("message")."""
    usage = obj.get("usage")
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get(key)
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                await _send(reply, answer, reasoning, kind="reasoning")
            content = delta.get("content")
            if isinstance(content, str) and content:
                answer.parts.append(content)
                await _send(reply, answer, content)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for position, call in enumerate(calls):
                    if isinstance(call, dict):
                        await _send(
                            reply, answer, kind="tool_call", data=_tool_call(answer, call, position)
                        )
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            answer.finish_reason = reason
    if isinstance(usage, dict) and usage:
        await _send(reply, answer, kind="usage", data=usage)


def _tool_call(answer: _Answer, call: dict[str, Any], position: int) -> dict[str, Any]:
    """The chunk data for one tool-call delta: the call's slot, id, type and name
    (carried over from its earlier deltas) and this delta's piece of the arguments."""
    index = call.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        index = position
    known = answer.calls.get(index)
    cid = call.get("id")
    if known is not None and cid and known["id"] and cid != known["id"]:
        # A server that numbers every call 0: a new id is a new call.
        index = max(answer.calls) + 1
        known = None
    if known is None:
        known = answer.calls[index] = {"id": None, "type": "function", "name": None}
    if cid:
        known["id"] = cid
    if isinstance(call.get("type"), str):
        known["type"] = call["type"]
    function = call.get("function")
    arguments = ""
    if isinstance(function, dict):
        if function.get("name"):
            known["name"] = function["name"]
        args = function.get("arguments")
        if isinstance(args, str):
            arguments = args
        elif args is not None:  # some servers send the arguments as an object
            arguments = orjson.dumps(args).decode()
    return {"index": index, **known, "arguments": arguments}


# ---- errors -------------------------------------------------------------------------------


def _quote(text: str | bytes, limit: int = BODY_QUOTE) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _error_message(obj: Any) -> str:
    """The message in an error body: OpenAI's shape first, then common others."""
    if not isinstance(obj, dict):
        return ""
    error = obj.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
        return _quote(orjson.dumps(error))
    if isinstance(error, str) and error:
        return error
    for key in ("message", "detail"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
        if value:
            return _quote(orjson.dumps(value))
    return ""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        import email.utils

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _seconds(value: float) -> str:
    return f"{round(value)} s" if value >= 1 else f"{value:.2g} s"


async def _http_error(agent: OpenAIAgent, response: httpx.Response) -> OpenAIError:
    status = response.status_code
    body = bytearray()
    try:
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except Exception as exc:  # the message is what matters; the body is a bonus
        log.debug("could not read the error body: %s", exc)
    try:
        message = _error_message(orjson.loads(body))
    except orjson.JSONDecodeError:
        message = ""
    if not message:
        message = _quote(bytes(body)) or response.reason_phrase or "no message"
    retryable = status == 429 or status >= 500
    if status == 429:
        raw = response.headers.get("retry-after")
        wait = _retry_after(raw)
        text = f"rate limited by {agent.base_url} (HTTP 429): {message}"
        if wait is not None:
            text += f" (Retry-After: {_seconds(wait)})"
        elif raw:
            text += f" (Retry-After: {_quote(raw, 100)})"
        return agent._fail(text, status=status, retry_after=wait, retryable=True)
    reason = f" {response.reason_phrase}" if response.reason_phrase else ""
    return agent._fail(
        f"{agent.base_url} answered HTTP {status}{reason}: {message}",
        status=status,
        retryable=retryable,
    )


def _transport_error(
    agent: OpenAIAgent, exc: httpx.HTTPError, *, streaming: bool = False
) -> OpenAIError:
    import httpx

    base = agent.base_url
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return agent._fail(
            f"cannot connect to {base}: no answer within {agent.timeout:g} s (option timeout)",
            retryable=True,
        )
    if isinstance(exc, httpx.TimeoutException):
        what = "the rest of the answer" if streaming else "an answer"
        return agent._fail(
            f"timed out waiting {agent.timeout:g} s for {what} from {base} (option timeout)"
        )
    if isinstance(exc, httpx.ConnectError):
        if _refused(exc):
            detail = "connection refused (is the server running?)"
        return agent._fail(f"cannot connect to {base}: {detail}", retryable=True)
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        when = "before the answer was complete" if streaming else "before it answered"
        return agent._fail(f"the connection to {base} closed {when} ({detail})")
    return agent._fail(f"request to {base} failed: {type(exc).__name__}: {detail}")


def _refused(exc: BaseException, depth: int = 0) -> bool:
    """Whether a ConnectionRefusedError is behind `exc` (trio wraps one per address)."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    if depth > 8:
        return False
    inner: list[BaseException] = []
    if isinstance(exc, BaseExceptionGroup):
        inner.extend(exc.exceptions)
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            inner.append(linked)
    return any(_refused(e, depth + 1) for e in inner)
