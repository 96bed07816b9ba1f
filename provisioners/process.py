"""The `process` provisioner: a `latis-unit` as a detached process on this machine.

The unit listens on `RUN_DIR/unit.sock` (`latis-unit --listen unix:...`) in a
session of its own, so it outlives the controller that started it, and no
signal meant for the controller's terminal reaches it; its output is appended
to `LOG_DIR/UNIT.log`. A pid is only ever signalled once it is known to be
our unit: a child this process started (for this socket) and has not reaped,
or a process whose command line in /proc names our socket. So a recorded pid
that the system has since given to another process is left alone.

Resources: `socket` (from `create` on), `pid` (while started), `exit` (how
the last run ended, once stopped).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import trio
from latis_transports.unix import UnixDialer

from latis_core._os.procgroup import signal_name
from latis_core._plugins.provision import (
    ProvisionContext,
    ProvisionError,
    ProvisionState,
    ProvisionStatus,
)

from ._detached import (
    _CHILDREN,
    POLL,
    DetachedProvisioner,
    _Child,
    _cmdline,
    _spawn,
)

__all__ = ["ProcessOptions", "ProcessProvisioner"]

#: The name of the unit's socket in its run dir.
SOCKET_NAME = "unit.sock"
#: The longest path a unix socket may have (sun_path, less its NUL).
MAX_SOCKET_PATH = 107


def _default_command() -> list[str]:
    return [sys.executable, "-m", "latis_core._unit.cli"]


@attrs.define
class ProcessOptions:
    """The `process` provisioner's config table.

    Attributes:
        command: the unit's command, to which `--listen unix:SOCKET --name UNIT
            --agent AGENT [-o K=V]...` are added; by default this Python's
            `latis-unit`.
        env: variables added to the inherited environment.
        cwd: the unit's working directory (default: the controller's).
        ready_timeout: seconds `start` waits for the socket to answer.
        stop_timeout: seconds `stop` waits after SIGTERM before SIGKILL.
    """

    command: list[str] = attrs.field(factory=_default_command)
    env: dict[str, str] = attrs.field(factory=dict)
    cwd: str | None = None
    ready_timeout: float = 15.0
    stop_timeout: float = 10.0


# --- helpers (the container provisioner uses them too) -------------------------------


def socket_path_problem(path: Path) -> str | None:
    """Why `path` cannot be a unix socket's path, or None if it can."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return (
            f"the socket path {str(path)!r} is longer than {MAX_SOCKET_PATH} bytes"
            " (the limit of a unix socket's): use a shorter run dir"
        )
    return None


async def socket_answers(path: Path) -> bool:
    """Whether something accepts connections on the unix socket at `path`.

    Raises:
        PermissionError: a socket is there, but we may not connect to it.
    """
    try:
        stream = await trio.open_unix_socket(os.fspath(path))
    except PermissionError:
        raise
    except OSError:
        return False
    await stream.aclose()
    return True


def describe_exit(returncode: int | None) -> str:
    """'exit status 3', 'killed by SIGKILL', or 'exit status unknown'."""
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    return f"exit status {returncode}"


# --- processes -------------------------------------------------------------------------


class ProcessProvisioner(DetachedProvisioner):
    """Runs a unit as a detached `latis-unit --listen unix:RUN_DIR/unit.sock`."""

    Options = ProcessOptions

    def __init__(self, options: ProcessOptions, context: ProvisionContext) -> None:
        self.options = options
        self.context = context
        #: The unit's socket.
        self.socket: Path = context.run_dir / SOCKET_NAME
        #: The unit's log file.
        self.log: Path = context.log_dir / f"{context.unit}.log"
        super().__init__()

    def __repr__(self) -> str:
        return f"<ProcessProvisioner unit={self.context.unit!r} socket={str(self.socket)!r}>"

    def _error(self, message: str) -> ProvisionError:
        return ProvisionError(f"process provisioner for unit {self.context.unit!r}: {message}")

    # --- what is recorded

    def _record(self, **values: str | None) -> None:
        """Replace what is recorded with `values` (a None is left out)."""
        resources = self.context.resources
        resources.clear()
        for kind, value in values.items():
            if value is not None:
                resources.set(kind, value)

    # --- what runs

    def _is_ours(self, pid: int) -> bool:
        """Whether `pid` is alive and is our unit: a child we started for this socket
        that has not exited, or a process whose command line names our socket."""
        child = _CHILDREN.get(pid)
        if child is not None and child.socket == self.socket:
            return self._reap(pid) is None
        if child is not None and self._reap(pid) is not None:
            return False
        argv = _cmdline(pid)
        return argv is not None and f"unix:{self.socket}" in argv

    async def _terminate(self, pid: int) -> int | None:
        """SIGTERM our unit, wait, then SIGKILL its process group; return its exit status
        (None if unknown). A pid that is not our unit's is never signalled."""
        if not self._is_ours(pid):
            return self._reap(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not await self._wait_gone(pid, self.options.stop_timeout) and self._is_ours(pid):
            # Still ours, so it still leads its own session: its pid is its group's id.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            await self._wait_gone(pid, 5.0)
        return self._reap(pid)

    # --- the work (callers hold the lock)

    async def _create(self) -> None:
        """Make the run and log dirs and record the socket (nothing runs yet)."""
        problem = socket_path_problem(self.socket)
        if problem:
            raise self._error(problem)
        self.context.ensure_run_dir()
        self.context.log_dir.mkdir(parents=True, exist_ok=True)
        if self.context.resources.get("socket") is None:
            self._record(socket=str(self.socket))

    async def _start(self) -> None:
        """Start the unit unless ours already runs; return once its socket answers."""
        await self._create()
        running = self._recorded_pid()
        if running is not None and self._is_ours(running):
            # Ours runs already (perhaps still starting): wait for it, start nothing.
            await self._wait_ready(running, offset=None)
            return
        argv = [*self.options.command, *self.context.unit_args(listen=f"unix:{self.socket}")]
        env = {**os.environ, **self.options.env}
        try:
            pid, offset = await trio.to_thread.run_sync(
                _spawn, argv, env, self.options.cwd, self.log
            )
        except OSError as exc:
            raise self._error(
                f"cannot run {subprocess.list2cmdline(argv)}: {exc.strerror or exc}"
            ) from exc
        _CHILDREN[pid] = _Child(self.socket)
        self._record(socket=str(self.socket), pid=str(pid))
        await self._wait_ready(pid, offset=offset)

    async def _wait_ready(self, pid: int, offset: int | None) -> None:
        """Wait until the socket answers. If `pid` exits first, or time runs out (the
        unit is then stopped, if this call started it), raise ProvisionError."""
        deadline = trio.current_time() + self.options.ready_timeout
        while True:
            try:
                if await socket_answers(self.socket):
                    return
            except PermissionError as exc:
                await self._give_up(pid, offset)
                raise self._error(
                    f"may not connect to {self.socket}: {exc.strerror or exc}"
                ) from exc
            if not self._is_ours(pid):
                how = describe_exit(self._reap(pid))
                self._record(socket=str(self.socket), exit=how)
                self._forget(pid)
                raise self._error(
                    f"the unit (pid {pid}) exited before it listened ({how})"
                    + self._log_tail(offset)
                )
            if trio.current_time() >= deadline:
                await self._give_up(pid, offset)
                raise self._error(
                    f"the unit (pid {pid}) did not answer on {self.socket} within"
                    f" {self.options.ready_timeout:g} s" + self._log_tail(offset)
                )
            await trio.sleep(POLL)

    async def _give_up(self, pid: int, offset: int | None) -> None:
        """Stop a unit that did not come up, if this call started it."""
        if offset is not None:
            how = describe_exit(await self._terminate(pid))
            self._record(socket=str(self.socket), exit=f"failed to start, {how}")
            self._forget(pid)

    async def _stop(self) -> None:
        """SIGTERM the unit, SIGKILL it after `stop_timeout`; forget its pid."""
        pid = self._recorded_pid()
        if pid is None:
            return
        how = describe_exit(await self._terminate(pid))
        self._record(socket=str(self.socket), exit=how)
        self._forget(pid)

    async def _destroy(self) -> None:
        """Stop the unit, remove its run dir and forget everything about it."""
        await self._stop()
        run_dir = self.context.run_dir
        await trio.to_thread.run_sync(lambda: shutil.rmtree(run_dir, ignore_errors=True))
        self.context.resources.clear()

    async def status(self) -> ProvisionStatus:
        """RUNNING ("pid N"); STOPPED (a pid or a stop recorded, nothing runs);
        CREATED (created, never started); ABSENT (nothing recorded)."""
        resources = self.context.resources
        pid = self._recorded_pid()
        if pid is not None:
            if self._is_ours(pid):
                return ProvisionStatus(ProvisionState.RUNNING, f"pid {pid}")
            how = describe_exit(self._reap(pid))
            return ProvisionStatus(ProvisionState.STOPPED, f"pid {pid} is gone ({how})")
        how_ = resources.get("exit")
        if how_ is not None:
            return ProvisionStatus(ProvisionState.STOPPED, f"stopped ({how_})")
        if resources.get("socket") is not None:
            return ProvisionStatus(ProvisionState.CREATED, "not started")
        return ProvisionStatus(ProvisionState.ABSENT)

    def dialer(self) -> UnixDialer:
        """Dial the unit's socket."""
        return UnixDialer(self.socket)
