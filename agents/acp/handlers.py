"""The client-side methods the agent calls: `fs/read_text_file` and
`fs/write_text_file` (inside the session's working directory), and
`terminal/create`, `output`, `wait_for_exit`, `kill` and `release`.

`_HANDLERS` maps each method to its handler: an async function of the session
and the request's params that returns the result, or raises `_RpcError`.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from latis_agents.acp.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    RESOURCE_NOT_FOUND,
    SERVER_BUSY,
    _RpcError,
)
from latis_agents.acp.terminal import _Terminal

from latis_core._os.pathguard import resolve_inside

if TYPE_CHECKING:
    from latis_agents.acp.agent import _AcpSession

#: The largest file `fs/read_text_file` reads.
MAX_READ = 16 * 1024 * 1024
#: Terminals a session may hold, their default and largest output buffers.
MAX_TERMINALS = 16
TERMINAL_OUTPUT = 1024 * 1024
TERMINAL_OUTPUT_MAX = 4 * 1024 * 1024


def _str_param(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise _RpcError(INVALID_PARAMS, f"{name!r} must be a string, got {value!r}")
    return value


def _int_param(params: Mapping[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise _RpcError(INVALID_PARAMS, f"{name!r} must be a whole number >= 0, got {value!r}")
    return value


def _read_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _RpcError(RESOURCE_NOT_FOUND, f"no such file: {str(path)!r}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _RpcError(INVALID_PARAMS, f"{str(path)!r} is a symlink") from None
        raise _RpcError(INTERNAL_ERROR, f"cannot read {str(path)!r}: {exc.strerror}") from None
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _RpcError(INVALID_PARAMS, f"{str(path)!r} is not a regular file")
        data = f.read(MAX_READ + 1)
    if len(data) > MAX_READ:
        raise _RpcError(INVALID_PARAMS, f"{str(path)!r} is over {MAX_READ} bytes")
    return data


def _write_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _RpcError(INVALID_PARAMS, f"{str(path)!r} is a symlink") from None
        raise _RpcError(INTERNAL_ERROR, f"cannot write {str(path)!r}: {exc.strerror}") from None
    with open(fd, "wb") as f:
        f.write(content)


async def _fs_read(session: _AcpSession, params: dict[str, Any]) -> Any:
    path = resolve_inside(session.root, _str_param(params, "path"))
    line = _int_param(params, "line")
    limit = _int_param(params, "limit")
    data = await trio.to_thread.run_sync(_read_file, path)
    text = data.decode("utf-8", "replace")
    if line is not None or limit is not None:
        lines = text.splitlines(keepends=True)
        first = max((line or 1) - 1, 0)
        text = "".join(lines[first : None if limit is None else first + limit])
    return {"content": text}


async def _fs_write(session: _AcpSession, params: dict[str, Any]) -> Any:
    path = resolve_inside(session.root, _str_param(params, "path"))
    content = _str_param(params, "content")
    await trio.to_thread.run_sync(_write_file, path, content.encode("utf-8", "surrogatepass"))
    return None


async def _terminal_create(session: _AcpSession, params: dict[str, Any]) -> Any:
    command = _str_param(params, "command")
    args = params.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise _RpcError(INVALID_PARAMS, "'args' must be a list of strings")
    env = dict(os.environ)
    for var in params.get("env") or []:
        if not isinstance(var, dict):
            raise _RpcError(INVALID_PARAMS, "'env' must be a list of {name, value}")
        name, value = var.get("name"), var.get("value")
        if not isinstance(name, str) or not isinstance(value, str) or not name or "=" in name:
            raise _RpcError(INVALID_PARAMS, f"bad environment variable {var!r}")
        if "\0" in name or "\0" in value:
            raise _RpcError(INVALID_PARAMS, "an environment variable contains a NUL byte")
        env[name] = value
    cwd = params.get("cwd")
    where = session.root if cwd is None else resolve_inside(session.root, _str_param(params, "cwd"))
    if not where.is_dir():
        raise _RpcError(INVALID_PARAMS, f"the terminal's cwd {str(where)!r} is not a directory")
    if "\0" in command or any("\0" in a for a in args):
        raise _RpcError(INVALID_PARAMS, "the command contains a NUL byte")
    limit = _int_param(params, "outputByteLimit")
    limit = TERMINAL_OUTPUT if limit is None else min(limit, TERMINAL_OUTPUT_MAX)
    if len(session.terminals) >= MAX_TERMINALS:
        raise _RpcError(SERVER_BUSY, f"a session holds at most {MAX_TERMINALS} terminals")
    read_fd, write_fd = os.pipe()
    try:
        process = await trio.lowlevel.open_process(
            [command, *args],
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            cwd=where,
            env=env,
            start_new_session=True,
        )
    except BaseException as exc:
        os.close(read_fd)
        if isinstance(exc, OSError):
            message = f"cannot run {command!r}: {exc.strerror or exc}"
            raise _RpcError(INTERNAL_ERROR, message) from None
        raise
    finally:
        os.close(write_fd)
    session.next_terminal += 1
    terminal = _Terminal(f"term-{session.next_terminal}", process, limit)
    session.terminals[terminal.id] = terminal
    session.proc.spawn(terminal.pump, trio.lowlevel.FdStream(read_fd))
    return {"terminalId": terminal.id}


def _terminal(session: _AcpSession, params: dict[str, Any]) -> _Terminal:
    tid = _str_param(params, "terminalId")
    terminal = session.terminals.get(tid)
    if terminal is None:
        raise _RpcError(INVALID_PARAMS, f"no terminal {tid!r} in this session")
    return terminal


async def _terminal_output(session: _AcpSession, params: dict[str, Any]) -> Any:
    terminal = _terminal(session, params)
    result: dict[str, Any] = {
        "output": terminal.output.decode("utf-8", "replace"),
        "truncated": terminal.truncated,
    }
    if terminal.exited.is_set():
        result["exitStatus"] = terminal.status()
    return result


async def _terminal_wait(session: _AcpSession, params: dict[str, Any]) -> Any:
    terminal = _terminal(session, params)
    await terminal.exited.wait()
    return terminal.status()


async def _terminal_kill(session: _AcpSession, params: dict[str, Any]) -> Any:
    terminal = _terminal(session, params)
    if not terminal.exited.is_set():
        terminal.kill(signal.SIGTERM)
        with trio.move_on_after(1):
            await terminal.exited.wait()
        terminal.kill(signal.SIGKILL)
    return None


async def _terminal_release(session: _AcpSession, params: dict[str, Any]) -> Any:
    terminal = _terminal(session, params)
    terminal.kill(signal.SIGKILL)
    del session.terminals[terminal.id]
    return None


_Handler = Callable[["_AcpSession", dict[str, Any]], Awaitable[Any]]
_HANDLERS: dict[str, _Handler] = {
    "fs/read_text_file": _fs_read,
    "fs/write_text_file": _fs_write,
    "terminal/create": _terminal_create,
    "terminal/output": _terminal_output,
    "terminal/wait_for_exit": _terminal_wait,
    "terminal/kill": _terminal_kill,
    "terminal/release": _terminal_release,
}
