"""The `container` dialer: a unit in a running container, over `podman exec -i`
(or `docker exec -i`), speaking on the command's stdin and stdout.

Each connection runs the command (`latis-unit --stdio` by default) anew in
the container, through the local engine client (started as `local` starts
its commands: `latis_transports.local.open_local`).

Leaving the block must leave nothing running in the container, and killing
the local `podman exec` client does not do that: the process it started
keeps running (checked with podman 4.3: SIGTERM or SIGKILL to the client
leaves it be; docker's client is known to do the same). So the command runs
through a small `/bin/sh -c` wrapper that checks that the command exists,
prints its own pid on stdout, then `exec`s the command, which keeps that
pid (and leads its own process group: exec sessions start one). The dialer
reads that line before handing the stream over. On leaving, stdin is
closed (`latis-unit` exits on EOF); if the command is still running
`grace` seconds later, `ENGINE exec CONTAINER sh -c 'kill -s TERM -- -PID'`
ends its process group, and `KILL` follows after another `grace`. The
container therefore needs a POSIX `sh` (busybox's will do).

The engine's stderr (and the command's) is read by the dialer: until the
command has started it explains a failure (no such container, container
not running, command not found: `ConnectError` quotes the engine's own
message); after that it is passed on to our stderr.

Streams have `peer_address` `"container:NAME"` (there is no host and port),
and `pid`, the command's pid inside the container.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from urllib.parse import parse_qs, urlsplit

import attrs
import trio

from latis_core._errors import ConnectError
from latis_core._util import unwrap_group

from .local import ProcessStream, open_local

__all__ = ["ContainerDialer", "ContainerStream"]

#: Checks that the command exists, prints the pid (which `exec` keeps), runs it.
WRAPPER = (
    'command -v "$1" >/dev/null 2>&1 || { echo "$1: command not found" >&2; exit 127; }\n'
    'echo "$$"\n'
    'exec "$@"\n'
)
#: Seconds the engine gets to start the command (until its pid line arrives).
START_TIMEOUT = 30.0
#: Seconds an `ENGINE exec … kill` may take.
KILL_TIMEOUT = 30.0
#: Bytes of the engine's stderr kept to explain a failure.
STDERR_KEPT = 8192
#: Seconds we wait for the end of the engine's stderr once it has exited.
STDERR_DRAIN = 1.0


class ContainerStream(ProcessStream):
    """A stream to a command in a container, through the engine client's stdin and stdout.

    Attributes:
        peer_address: `"container:NAME"`.
        container: the container's name or id, as given.
        pid: the command's pid inside the container.
        process: the local engine client (`podman exec`).
    """

    def __init__(self, stream: ProcessStream, container: str, pid: int) -> None:
        super().__init__(stream.send_stream, stream.receive_stream, stream.process)
        self.container = container
        self.peer_address = f"container:{container}"
        self.pid = pid


def _summary(stderr: bytes, returncode: int | None) -> str:
    """The useful part of an engine's stderr: its `Error:` lines, else its last lines."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.lower().startswith("error")]
    text = "\n".join(errors or lines[-5:])
    if text:
        return text
    if returncode is None:
        return "it printed nothing"
    return f"exit status {returncode}, and nothing on stderr"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Stderr:
    """Reads the engine's stderr: keeps its end until `forward`, then passes it to ours."""

    def __init__(self, fd: int) -> None:
        self._stream = trio.lowlevel.FdStream(fd)
        self.kept = bytearray()
        self.forwarding = False
        #: Set at the end of the engine's stderr.
        self.done = trio.Event()

    async def pump(self) -> None:
        try:
            while True:
                data = await self._stream.receive_some(65536)
                if not data:
                    break
                if self.forwarding:
                    await _forward(data)
                else:
                    self.kept += data
                    del self.kept[:-STDERR_KEPT]
        finally:
            self.done.set()
            await self._stream.aclose()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def forward(self) -> None:
        """Pass on what was kept, and from now on all of it."""
        self.forwarding = True
        kept, self.kept = bytes(self.kept), bytearray()
        if kept:
            await _forward(kept)


async def _forward(data: bytes) -> None:
    # Our stderr may block (a full pipe): a thread, abandoned on cancel,
    # keeps that from stopping trio.
    await trio.to_thread.run_sync(_write_all, 2, data, abandon_on_cancel=True)


def _command(value: Sequence[str]) -> tuple[str, ...]:
    command = tuple(value)
    if not command:
        raise ValueError("command is empty")
    return command


@attrs.frozen
class ContainerDialer:
    """Dial a unit by running its command in a running container, over stdin and stdout.

    Attributes:
        container: the container's name or id.
        engine: "podman" or "docker", or a path to either.
        command: the unit's command line in the container.
        user: run it as this user (`--user`), else the container's user.
        workdir: its working directory in the container (`--workdir`).
        env: environment variables for it (`--env`: on the engine's command
            line, where `ps` shows them; keep secrets out).
        grace: seconds it gets to exit after its stdin closes, before SIGTERM
            (and as long again before SIGKILL), both sent inside the container.
    """

    container: str
    engine: str = "podman"
    command: tuple[str, ...] = attrs.field(default=("latis-unit", "--stdio"), converter=_command)
    user: str | None = None
    workdir: str | None = None
    env: dict[str, str] | None = None
    grace: float = 5.0

    @classmethod
    def from_url(cls, url: str) -> ContainerDialer:
        """`container://NAME?engine=docker&command=latis-unit+--stdio&user=…&workdir=…`

        `command` is split as a shell would (without running one).
        """
        parts = urlsplit(url)
        if parts.scheme != "container" or not parts.netloc:
            raise ValueError(f"{url!r} is not a container address (expected container://NAME)")
        if parts.path not in ("", "/"):
            raise ValueError(f"{url!r}: a container address has no path")
        known = ("engine", "command", "user", "workdir")
        options: dict[str, str] = {}
        for key, values in parse_qs(parts.query, keep_blank_values=True).items():
            if key not in known:
                raise ValueError(f"{url!r}: unknown option {key!r} (known: {', '.join(known)})")
            if len(values) > 1:
                raise ValueError(f"{url!r}: option {key!r} is given {len(values)} times")
            options[key] = values[0]
        dialer = cls(
            parts.netloc,
            engine=options.get("engine", "podman"),
            user=options.get("user"),
            workdir=options.get("workdir"),
        )
        if "command" in options:
            dialer = attrs.evolve(dialer, command=shlex.split(options["command"]))
        return dialer

    @property
    def engine_name(self) -> str:
        """The engine's name (`podman`), for messages."""
        return os.path.basename(self.engine)

    def connect(self) -> AbstractAsyncContextManager[ContainerStream]:
        """Run the command in the container; the stream is its stdin and stdout.

        Leaving the block ends the command, in the container too (see above).

        Raises:
            ConnectError: the engine is missing, the container does not exist
                or is not running, the command does not exist (the engine's
                own message quoted).
        """
        return self._connect()

    def describe(self) -> str:
        """`container: NAME (ENGINE)`."""
        return f"container: {self.container} ({self.engine_name})"

    def _error(self, cause: str) -> ConnectError:
        return ConnectError(
            f"cannot reach container {self.container!r} through {self.engine_name}: {cause}"
        )

    def _exec_args(self, engine: str) -> list[str]:
        """`ENGINE exec -i [options] CONTAINER`, without the command."""
        args = [engine, "exec", "-i"]
        if self.user is not None:
            args += ["--user", self.user]
        if self.workdir is not None:
            args += ["--workdir", self.workdir]
        for key, value in (self.env or {}).items():
            args += ["--env", f"{key}={value}"]
        return [*args, self.container]

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[ContainerStream]:
        engine = shutil.which(self.engine)
        if engine is None:
            raise self._error(f"the container engine {self.engine!r} is not on PATH")
        argv = [*self._exec_args(engine), "/bin/sh", "-c", WRAPPER, "latis-exec", *self.command]
        err_read, err_write = os.pipe()
        stderr = _Stderr(err_read)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(stderr.aclose)
            try:
                proc = await stack.enter_async_context(
                    open_local(argv, stderr=err_write, grace=self.grace)
                )
            except ConnectError as exc:
                cause = exc.__cause__
                raise self._error(
                    f"cannot run {engine}: {getattr(cause, 'strerror', None) or cause or exc}"
                ) from exc
            finally:
                os.close(err_write)  # the engine client has its own copy
            # Our cleanup runs before open_local's, which then finds the client gone.
            with unwrap_group():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stderr.pump)
                    pid: int | None = None
                    try:
                        pid = await self._started(proc, stderr)
                        await stderr.forward()
                        yield ContainerStream(proc, self.container, pid)
                    finally:
                        with trio.CancelScope(shield=True):
                            await self._end(engine, proc, pid)
                            with trio.move_on_after(STDERR_DRAIN):
                                await stderr.done.wait()
                        nursery.cancel_scope.cancel()

    async def _started(self, proc: ProcessStream, stderr: _Stderr) -> int:
        """Read the wrapper's pid line; on failure, raise with the engine's own words."""
        line = b""
        with trio.move_on_after(START_TIMEOUT) as scope:
            # A byte at a time: what follows the line is the command's, and
            # the stream goes to the caller untouched.
            while not line.endswith(b"\n") and len(line) < 24:
                byte = await proc.receive_stream.receive_some(1)
                if not byte:
                    break
                line += byte
        if scope.cancelled_caught:
            raise self._error(f"the command did not start within {START_TIMEOUT:g} s")
        if line.endswith(b"\n") and line.strip().isdigit():
            return int(line)
        with trio.move_on_after(START_TIMEOUT):
            await proc.process.wait()
        with trio.move_on_after(STDERR_DRAIN):
            await stderr.done.wait()
        if line:
            # Not the wrapper's pid: whatever answered is not a shell we know.
            raise self._error(f"unexpected output before the command started: {line!r}")
        raise self._error(_summary(bytes(stderr.kept), proc.process.returncode))

    async def _end(self, engine: str, proc: ProcessStream, pid: int | None) -> None:
        """Close stdin; if the command lingers, end it inside the container."""
        await proc.send_stream.aclose()
        with trio.move_on_after(self.grace):
            await proc.process.wait()
        if pid is None:
            return
        for signal in ("TERM", "KILL"):
            if proc.process.returncode is not None:
                return
            await self._kill(engine, pid, signal)
            with trio.move_on_after(self.grace):
                await proc.process.wait()

    async def _kill(self, engine: str, pid: int, signal: str) -> None:
        """Send `signal` to the command's process group (else the command) in the container."""
        script = f"kill -s {signal} -- -{pid} 2>/dev/null || kill -s {signal} {pid}"
        argv = [engine, "exec"]
        if self.user is not None:
            argv += ["--user", self.user]  # the same user may signal its own processes
        argv += [self.container, "/bin/sh", "-c", script]
        with trio.move_on_after(KILL_TIMEOUT):
            await trio.run_process(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
            )


#: This module's dialer, for the `latis.transports` registry.
DIALER = ContainerDialer
