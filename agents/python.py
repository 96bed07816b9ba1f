"""The `python` agent: a Python callable as an agent, for embedding and notebooks.

    async def shout(text, ctx):
        for word in text.split():
            yield word.upper() + " "

    async with latis_core.connect_agent(PythonAgent(shout)) as unit: ...

or as a unit process: `latis-unit --stdio --agent python -o target=mypkg.agents:shout`.

The callable gets the prompt's text and, if it takes a second argument, a
`PromptContext` (the session id, `ask` to ask the human, `send` for typed
chunks). What it may be:

| callable | each chunk is |
|---|---|
| an async generator | each item it yields |
| an async function | its return value (one chunk) |
| a generator | each item, produced in a worker thread |
| a function | its return value, computed in a worker thread |

An item is a `str` (a text chunk) or a `dict` with `text`, `kind` and `data`
(a typed chunk); None is skipped. Sync callables run in a worker thread so
they never block the unit; cancelling a prompt stops an async callable at
its next await, and a sync one at its next item.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import trio

from latis_core._plugins.agent import Agent, AgentSession, Reply, _no_command
from latis_core._version import __version__
from latis_core._wire.messages import AgentInfo

__all__ = ["PromptContext", "PythonAgent", "load_target"]


@attrs.define
class PromptContext:
    """What a python agent's callable gets besides the text."""

    #: The session the prompt belongs to.
    session_id: str
    #: Per-session state the callable may keep between prompts (a plain dict).
    memory: dict[str, Any]
    _reply: Reply

    async def ask(self, question: str, options: Sequence[str] = ()) -> str:
        """Ask the human; return the answer."""
        return await self._reply.ask(question, options=options)

    async def send(
        self, text: str = "", *, kind: str | None = None, data: dict[str, Any] | None = None
    ) -> None:
        """Send one chunk now (for async callables that want typed chunks)."""
        await self._reply.send(text, kind=kind, data=data)


def load_target(target: str, path: str | None = None) -> Callable[..., Any]:
    """Import `module:attribute` (adding `path` to sys.path first, if given).

    Raises:
        ValueError: the target is malformed, cannot be imported, or is not callable.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"python agent: target {target!r} is not module:function")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"python agent: cannot import {module_name!r}: {exc}") from None
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ValueError(
                f"python agent: {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(value):
        raise ValueError(f"python agent: {target!r} is not callable")
    return value  # type: ignore[no-any-return]


class PythonAgent(Agent):
    """Runs a Python callable per prompt (see the module docstring).

    Args:
        fn: the callable.
        name: the agent's name in the unit's hello (default: the callable's).
    """

    info: ClassVar[AgentInfo] = AgentInfo("python", __version__)

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError("PythonAgent needs a callable")
        self.fn = fn
        # The callable's name is what the controller sees as the agent's name.
        label = name or str(getattr(fn, "__qualname__", "python"))
        self.info = AgentInfo(label, __version__)  # type: ignore[misc]
        self._takes_context = _takes_two(fn)

    @classmethod
    def from_options(cls, options: Mapping[str, str], command: Sequence[str] = ()) -> Agent:
        _no_command("python", command)
        unknown = sorted(set(options) - {"target", "path", "name"})
        if unknown:
            raise ValueError(
                f"python agent: unknown option {unknown[0]!r} (known: name, path, target)"
            )
        if "target" not in options:
            raise ValueError("python agent: option 'target' (module:function) is required")
        fn = load_target(options["target"], options.get("path"))
        if inspect.isclass(fn) and issubclass(fn, Agent):
            return fn()  # an Agent class given by path: use it as it is
        return cls(fn, name=options.get("name"))

    async def open_session(self, session_id: str, options: Mapping[str, Any]) -> AgentSession:
        await trio.lowlevel.checkpoint()
        return _PythonSession(self, session_id)


class _PythonSession(AgentSession):
    def __init__(self, agent: PythonAgent, session_id: str) -> None:
        self.agent = agent
        self.session_id = session_id
        self.memory: dict[str, Any] = {}

    async def prompt(self, text: str, reply: Reply) -> None:
        agent = self.agent
        fn = agent.fn
        args: tuple[Any, ...] = (text,)
        if agent._takes_context:
            args = (text, PromptContext(self.session_id, self.memory, reply))
        if inspect.isasyncgenfunction(fn):
            async for item in fn(*args):
                await _send(reply, item)
        elif inspect.iscoroutinefunction(fn):
            await _send(reply, await fn(*args))
        elif inspect.isgeneratorfunction(fn):
            await _pull_generator(fn(*args), reply)
        else:
            result = await trio.to_thread.run_sync(lambda: fn(*args), abandon_on_cancel=True)
            await _send(reply, result)


async def _pull_generator(gen: Any, reply: Reply) -> None:
    done = object()

    def step() -> Any:
        return next(gen, done)

    try:
        while True:
            item = await trio.to_thread.run_sync(step, abandon_on_cancel=True)
            if item is done:
                return
            await _send(reply, item)
    finally:
        gen.close()


async def _send(reply: Reply, item: Any) -> None:
    if item is None:
        await trio.lowlevel.checkpoint()
    elif isinstance(item, str):
        await reply.send(item)
    elif isinstance(item, Mapping):
        await reply.send(
            str(item.get("text", "")), kind=item.get("kind"), data=item.get("data")
        )
    else:
        raise TypeError(
            f"python agent yielded a {type(item).__name__}: expected str, dict or None"
        )


def _takes_two(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in positional)
