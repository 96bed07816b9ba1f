"""What the provisioners that start a detached local process share (`process`, `qemu`).

Such a process runs in a session of its own, so it outlives the controller that
started it; its pid is recorded so a controller that restarts finds it again. A
pid is only ever signalled once it is known to be ours: a child this process
started and has not reaped, or a process whose command line in /proc names our
socket (each provisioner says which, in `_is_ours`). So a recorded pid that the
system has since given to another process is left alone.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import attrs
import trio

from latis_core._plugins.provision import OneAtATime, ProvisionContext

__all__ = ["LOG_TAIL_LINES", "POLL", "DetachedProvisioner", "read_tail"]

#: How often readiness and exits are polled, in seconds.
POLL = 0.02
#: How many lines of a process's log an error shows.
LOG_TAIL_LINES = 20


def _cmdline(pid: int) -> list[str] | None:
    """The command line of `pid`, or None if it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
        # The state letter follows the command name, in parentheses that may hold anything.
        close = stat.rindex(b")")
        if stat[close + 2 : close + 3] in (b"Z", b"X"):
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except (OSError, ValueError):
        return None
    return [os.fsdecode(arg) for arg in raw.split(b"\0") if arg]


@attrs.define
class _Child:
    """A unit this process started: its socket, and its exit status once reaped."""

    socket: Path
    returncode: int | None = None


#: The units this process started, by pid. Only these are ever waited for, so no
#: other child's exit status is taken from its owner; and until one is reaped its
#: pid cannot be reused, so it is known to be ours without looking at /proc (where
#: a process that execs or exits shows an empty command line for a moment).
_CHILDREN: dict[int, _Child] = {}


class _DetachedPopen(subprocess.Popen[bytes]):
    """A child that is meant to outlive us: dropping it neither warns nor waits.

    Its exit status is collected with `os.waitpid` (`DetachedProvisioner._reap`).
    """

    def __del__(self) -> None:
        pass


def _spawn(argv: list[str], env: dict[str, str], cwd: str | None, log: Path) -> tuple[int, int]:
    """Start `argv` detached, its output appended to `log`; return its pid and the
    log's size before it started."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        offset = os.lseek(fd, 0, os.SEEK_END)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"--- {stamp} latis: starting {subprocess.list2cmdline(argv)}\n".encode())
        process = _DetachedPopen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            env=env,
            cwd=cwd,
            close_fds=True,
            # A session and process group of its own: it outlives the controller,
            # and no signal sent to the controller's group or terminal reaches it.
            start_new_session=True,
        )
    finally:
        os.close(fd)
    return process.pid, offset


def read_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of the file at `path` after byte `offset` ('' if none)."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(offset, size - 64 * 1024))
            data = file.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])


class DetachedProvisioner(OneAtATime):
    """A base for provisioners of one detached process (recorded as `pid`).

    Subclasses set `context` and `log` (the file its output goes to), and write
    `_is_ours(pid)`.
    """

    context: ProvisionContext
    log: Path

    def _is_ours(self, pid: int) -> bool:
        raise NotImplementedError

    def _recorded_pid(self) -> int | None:
        value = self.context.resources.get("pid")
        try:
            return int(value) if value else None
        except ValueError:
            return None

    def _reap(self, pid: int) -> int | None:
        """The exit status of `pid` if this process started it and it has exited,
        else None (running, or not our child: those are never waited for)."""
        child = _CHILDREN.get(pid)
        if child is None:
            return None
        if child.returncode is None:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if done == pid:
                child.returncode = os.waitstatus_to_exitcode(status)
        return child.returncode

    def _forget(self, pid: int) -> None:
        """Drop a reaped child from `_CHILDREN` (once its pid is no longer recorded)."""
        child = _CHILDREN.get(pid)
        if child is not None and child.returncode is not None:
            del _CHILDREN[pid]

    def _log_tail(self, offset: int | None) -> str:
        """The end of the log since `offset`, to quote in an error (our own header
        lines left out: they say nothing the message does not)."""
        tail = read_tail(self.log, offset or 0)
        lines = [line for line in tail.splitlines() if not line.startswith("--- ")]
        if not lines:
            return f"; its log ({self.log}) says nothing"
        return f"; the end of its log ({self.log}):\n" + "\n".join(lines)

    async def _wait_gone(self, pid: int, seconds: float) -> bool:
        """Wait up to `seconds` for our process `pid` to be gone; say whether it is."""
        deadline = trio.current_time() + seconds
        while self._is_ours(pid):
            if trio.current_time() >= deadline:
                return False
            await trio.sleep(POLL)
        return True
