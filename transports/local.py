"""The `local` dialer: spawn a unit process and talk over its stdin and stdout.

The child gets its own session (process group), so a Ctrl-C meant for the
controller does not reach it: the controller decides what to cancel. Its
stderr is the controller's unless told otherwise. Leaving the block ends it
cleanly (stdin closed: `latis-unit` exits on EOF), then forcibly (SIGTERM,
then SIGKILL) if it lingers.
"""

from __future__ import annotations

import fcntl
import os
import shlex
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import attrs
import trio

from latis_core._errors import ConnectError

__all__ = ["LocalDialer", "ProcessStream", "open_local"]

#: Pipe capacity asked for: big pipes let chunks leave in large batches.
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class ProcessStream(trio.abc.HalfCloseableStream):
    """A stream to a child process's stdin and stdout; `process` is the child.

    `send_eof` closes the child's stdin.
    """

    def __init__(
        self,
        send_stream: trio.lowlevel.FdStream,
        receive_stream: trio.lowlevel.FdStream,
        process: trio.Process,
    ) -> None:
        self.send_stream = send_stream
        self.receive_stream = receive_stream
        self.process = process

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.send_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.send_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.send_stream.aclose()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.receive_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        try:
            await self.send_stream.aclose()
        finally:
            await self.receive_stream.aclose()


def _grow(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size: the default size works too


@asynccontextmanager
async def open_local(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stderr: int | None = None,
    grace: float = 5.0,
) -> AsyncIterator[ProcessStream]:
    """Start `argv` and yield a stream to its stdin and stdout.

    Args:
        argv: the command line.
        env: the child's whole environment (default: ours).
        cwd: its working directory.
        stderr: where its stderr goes: a file descriptor, `subprocess.DEVNULL`,
            or None for ours.
        grace: seconds it gets to exit after its stdin closes, before SIGTERM
            (and as long again before SIGKILL).

    Raises:
        ConnectError: the command could not be started.
    """
    if not argv:
        raise ValueError("argv is empty")
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    _grow(to_child_w)
    _grow(from_child_w)
    try:
        process = await trio.lowlevel.open_process(
            list(argv),
            stdin=to_child_r,
            stdout=from_child_w,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException as exc:
        for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
            os.close(fd)
        if isinstance(exc, OSError):
            raise ConnectError(
                f"cannot start {shlex.join(argv)}: {exc.strerror or exc}"
            ) from exc
        raise
    os.close(to_child_r)
    os.close(from_child_w)
    stream = ProcessStream(
        trio.lowlevel.FdStream(to_child_w), trio.lowlevel.FdStream(from_child_r), process
    )
    try:
        yield stream
    finally:
        with trio.CancelScope(shield=True):
            await _end(stream, process, grace)


async def _end(stream: ProcessStream, process: trio.Process, grace: float) -> None:
    await stream.send_stream.aclose()
    with trio.move_on_after(grace):
        await process.wait()
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(grace):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
    await stream.receive_stream.aclose()


def _command(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen
class LocalDialer:
    """Dial a unit by starting it as a local process, over its stdin and stdout.

    As a unit's `dial` in config, `local` with no `command` means the unit
    that the unit's own provisioner runs on this machine (reached through its
    socket); with a `command`, that command is started for each connection.

    Attributes:
        command: the unit's command line, e.g. `["latis-unit", "--stdio"]`.
        env: extra environment variables for it (added to ours).
        cwd: its working directory, or None for ours.
        grace: seconds it gets to exit by itself when the connection ends.
    """

    command: tuple[str, ...] | None = attrs.field(default=None, converter=_command)
    env: dict[str, str] | None = None
    cwd: str | None = None
    grace: float = 5.0

    @classmethod
    def from_url(cls, url: str) -> LocalDialer:
        """`local:COMMAND` (split as a shell would, without running one)."""
        command = shlex.split(url.removeprefix("local:"))
        if not command or not url.startswith("local:"):
            raise ValueError(f"{url!r} is not a local command (expected local:COMMAND)")
        return cls(command)

    def connect(self) -> AbstractAsyncContextManager[ProcessStream]:
        if not self.command:
            raise ValueError("a local dialer needs a command to start")
        env = {**os.environ, **self.env} if self.env else None
        return open_local(self.command, env=env, cwd=self.cwd, grace=self.grace)

    def describe(self) -> str:
        if not self.command:
            return "local: the unit's own process"
        return f"local: {shlex.join(self.command)}"


#: This module's dialer, for the `latis.transports` registry.
DIALER = LocalDialer

