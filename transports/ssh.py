"""The `ssh` dialer: run a unit's command on another host, talk over its stdin and stdout.

`SshDialer` logs in with asyncssh, runs the unit's command (by default
`latis-unit --stdio`) without a pty, and yields a `trio.abc.HalfCloseableStream`
over the command's stdin and stdout, bytes unchanged. This is the only module
of latis that runs asyncio: `connect()` opens a trio-asyncio loop in a task of
its own, so callers need nothing special, and each connection has its own loop
(trio-asyncio runs any number of loops in one trio run). asyncssh and
trio-asyncio are imported on the first `connect()`: they cost ~0.3 s to import
and `trio_asyncio` patches asyncio's loop lookup.

How bytes cross between trio and asyncio. An awaited call into asyncio costs
40-90 µs (an asyncio task, a future, a trio wake-up), more than the rest of a
round trip, so the data path awaits none:

- `send_all` calls the channel's `write` directly from the calling trio task.
  asyncssh's write path is synchronous (frame, encrypt, a non-blocking `send`
  on the socket) and uses the loop it keeps, not the current one. It awaits
  only when the channel's send buffer is over its high-water mark.
- Received data needs no asyncio task either. asyncssh hands each packet's
  payload to our session's `data_received`, which the trio-asyncio loop runs
  in one of trio's own tasks; it appends the bytes to a buffer and reschedules
  the trio task parked in `receive_some`. `receive_some` returns all that is
  buffered at once (one join), so a burst of packets costs one wake-up. Over
  `HIGH_WATER` buffered bytes, reading pauses and the SSH window holds the
  host back.

Host keys are verified: against known_hosts, or a pinned key (`host_key`). An
unknown host is refused unless `accept_new` (trust on first use, recorded in
known_hosts); a changed key is always refused. Password and keyboard-interactive
logins are off (nobody is there to type), and so are agent and X11 forwarding.

Nothing is left running on the host. sshd does not signal the command when the
channel or the connection closes, and ignores signal requests from root, so a
command that ignores EOF on stdin would outlive us. So the command starts
through a tiny `sh` wrapper that prints its PID on stdout (a line we take out)
and then `exec`s it: the command keeps the channel's own stdin and stdout
(nothing of ours in the data path), and because sshd makes each session's
process a session leader, that PID also names the command's process group.
Leaving the `connect()` block closes the channel (the command's stdin reaches
EOF and its stdout closes; `latis-unit` exits by itself). sshd confirms the
close only once the command has exited, which is how we see it exit. If it
has not within `grace` seconds, a second command over the same connection
sends SIGTERM to its whole process group, and SIGKILL `grace` seconds later
(to the group even if the command obeyed: its children may not have). This
cleanup is shielded from cancellation and bounded in time.

We chose this over a wrapper that relays stdin to the command (a `cat` in the
data path: a copy and a process hop on every message, to notice EOF), and
over a pty (closing it sends SIGHUP, but a process may ignore SIGHUP, and the
pty would have to be put in raw mode). If the connection itself is gone,
nothing can reach the host: the command still gets EOF on its stdin, and a
well-behaved unit exits then.
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import logging
import operator
import os
import re
import shlex
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import attrs
import trio
from trio.lowlevel import (
    Abort,
    Task,
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from latis_core._errors import ConnectError

if TYPE_CHECKING:
    import asyncssh
    import trio_asyncio  # type: ignore[import-untyped]

__all__ = ["DIALER", "SshDialer", "SshStream"]

log = logging.getLogger("latis.transport.ssh")

#: Received bytes buffered before reading from the channel pauses ...
HIGH_WATER = 1024 * 1024
#: ... until `receive_some` takes them below this.
LOW_WATER = 256 * 1024
#: Bytes in asyncssh's send buffer over which `send_all` waits.
SEND_HIGH_WATER = 256 * 1024
#: Seconds a kill command may take, and the command may take to die after SIGKILL.
KILL_TIMEOUT = 5.0
#: Seconds to wait, once the command's output has ended, for its exit status
#: (a unit that dies is then reported with its code and its stderr). A dying
#: process's status follows its EOF within milliseconds; a command that
#: closes its output and goes on costs this once.
EXIT_STATUS_WAIT = 0.25
#: Bytes of the command's stderr kept for error messages.
STDERR_TAIL = 2048
#: Bytes a login script may print before our wrapper's line.
PREAMBLE_LIMIT = 64 * 1024
#: Exit status of the wrapper when the command is not found (as sh's).
NOT_FOUND = 127

# Run by sh: check that the command exists (so a missing one fails before
# connect() returns), print our PID (= the session leader's, = the process
# group's), then become the command.
_WRAPPER = (
    'command -v "$1" >/dev/null 2>&1 || { echo "$1: command not found" >&2; exit 127; }; '
    'echo "LATIS-SSH-PID $$"; exec "$@"'
)
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}=?")
#: The line the wrapper prints before it execs the command.
_PID_LINE = re.compile(rb"LATIS-SSH-PID (\d+)\r?\n")


def _remote_command(argv: Sequence[str]) -> str:
    # The user's login shell runs this line. `exec sh` keeps its PID (the
    # session leader's) and makes the rest independent of which shell it is.
    return f"exec sh -c {shlex.quote(_WRAPPER)} latis-ssh {shlex.join(argv)}"


def _kill_command(pid: int, signal: str) -> str:
    # The whole process group first (the unit's own children die with it);
    # the lone process if the group is gone or was never one.
    script = f"kill -{signal} -{pid} 2>/dev/null || kill -{signal} {pid} 2>/dev/null; exit 0"
    return f"exec sh -c {shlex.quote(script)}"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _where(user: str | None, host: str, port: int) -> str:
    return f"{user}@{_address(host, port)}" if user else _address(host, port)


def _known_hosts_pattern(host: str, port: int | None) -> str:
    return host if port in (None, 22) else f"[{host}]:{port}"


# ---- the dialer ---------------------------------------------------------------


def _argv(value: str | Sequence[str]) -> tuple[str, ...]:
    # A string is split as a shell would (config and URLs give one).
    return tuple(shlex.split(value)) if isinstance(value, str) else tuple(value)


def _paths(value: str | Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(os.fspath(path) for path in value)


def _optional_path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)


def _check_host_key(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    fields = value.split()
    if len(fields) == 1 and _FINGERPRINT.fullmatch(value):
        return
    if len(fields) >= 2 and not fields[0].startswith("SHA256:"):
        try:
            base64.b64decode(fields[1], validate=True)
        except (binascii.Error, ValueError):
            pass
        else:
            return
    raise ValueError(
        f"host_key must be an OpenSSH public key line ('ssh-ed25519 AAAA...') or a "
        f"SHA256 fingerprint ('SHA256:' and 43 base64 characters), not {value!r}"
    )


def _check_command(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value or not value[0]:
        raise ValueError("an ssh dialer needs a command to run on the host")


def _check_port(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 < value < 65536:
        raise ValueError(f"port must be within 1-65535, not {value}")


def _check_host(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or any(c.isspace() for c in value) or value.startswith("-"):
        raise ValueError(f"not a host name: {value!r}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_URL_SINGLE = {"command", "host_key", "accept_new", "known_hosts", "connect_timeout", "grace"}


@attrs.frozen
class SshDialer:
    """Dial a unit by running its command on a host over ssh.

    Attributes:
        host: the host name or address (an alias from ~/.ssh/config works).
        user: who to log in as (default: the ssh config's `User`, or ours).
        port: the ssh port.
        command: the unit's command line on the host (a string is split as
            by a shell).
        identity: private key files to log in with, and only these; by default
            the usual keys in ~/.ssh and those of the ssh agent.
        known_hosts: the known_hosts file (default ~/.ssh/known_hosts).
        host_key: the host's key, pinned: an OpenSSH public key line
            (`ssh-ed25519 AAAA...`) or the `SHA256:...` fingerprint of the key
            it presents. Then known_hosts is not used.
        accept_new: trust on first use: accept the key of a host that
            known_hosts does not know, and add it there. A changed key is
            always refused.
        connect_timeout: seconds to log in and start the command.
        grace: seconds the command gets to exit after its stdin closes, before
            SIGTERM (and as long again before SIGKILL).
    """

    host: str = attrs.field(validator=_check_host)
    user: str | None = None
    port: int = attrs.field(default=22, validator=_check_port)
    command: tuple[str, ...] = attrs.field(
        default=("latis-unit", "--stdio"), converter=_argv, validator=_check_command
    )
    identity: tuple[str, ...] = attrs.field(default=(), converter=_paths)
    known_hosts: str | None = attrs.field(default=None, converter=_optional_path)
    host_key: str | None = attrs.field(default=None, validator=_check_host_key)
    accept_new: bool = False
    connect_timeout: float = attrs.field(default=15.0)
    grace: float = attrs.field(default=5.0)

    def __attrs_post_init__(self) -> None:
        if self.host_key is not None and self.accept_new:
            raise ValueError("host_key pins the host's key: accept_new does not apply to it")
        if not self.connect_timeout > 0:
            raise ValueError(f"connect_timeout must be above 0, not {self.connect_timeout}")
        if not self.grace >= 0:
            raise ValueError(f"grace must be 0 or more, not {self.grace}")

    def connect(self) -> AbstractAsyncContextManager[SshStream]:
        """Log in, start the command, and yield a stream to its stdin and stdout.

        Leaving the block ends the command (see the module's docstring) and
        the connection, also when the block is cancelled.

        Raises:
            ConnectError: the connection, the host key, the login, or starting
                the command failed; the message names user@host:port and why.
        """
        return _open(self)

    def describe(self) -> str:
        """Say where this dialer goes: `ssh: user@host:port`."""
        return f"ssh: {_where(self.user, self.host, self.port)}"

    @classmethod
    def from_url(cls, url: str) -> SshDialer:
        """Make a dialer from `ssh://[user@]host[:port][?key=value&...]`.

        Keys: `command` (split as by a shell), `host_key`, `accept_new` (1 or
        0), `identity` (may repeat), `known_hosts`, `connect_timeout`, `grace`.
        Values are percent-decoded; `+` stays a plus (base64 has them), so
        write a space as `%20`.

        Raises:
            ValueError: `url` is not such a URL, or a value is wrong.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"not an ssh URL: {url!r}: {exc}") from None
        if parts.scheme != "ssh":
            raise ValueError(f"not an ssh URL (ssh://[user@]host[:port]): {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        if parts.password is not None:
            raise ValueError(f"{url!r} has a password: latis logs in with keys only")
        if parts.path not in ("", "/") or parts.fragment:
            raise ValueError(f"an ssh URL has no path or fragment: {url!r}")
        options: dict[str, Any] = {}
        identity: list[str] = []
        for item in parts.query.split("&") if parts.query else ():
            key, sep, raw = item.partition("=")
            value = unquote(raw)
            if not sep:
                raise ValueError(f"{item!r} in {url!r} is not key=value")
            if key == "identity":
                identity.append(value)
                continue
            if key not in _URL_SINGLE:
                known = ", ".join(sorted(_URL_SINGLE | {"identity"}))
                raise ValueError(f"unknown option {key!r} in {url!r} (known: {known})")
            if key in options:
                raise ValueError(f"{key!r} given twice in {url!r}")
            options[key] = value
        if "accept_new" in options:
            flag = options["accept_new"].lower()
            if flag not in _TRUE | _FALSE:
                raise ValueError(f"accept_new must be 1 or 0, not {options['accept_new']!r}")
            options["accept_new"] = flag in _TRUE
        if "command" in options:
            try:
                options["command"] = shlex.split(options["command"])
            except ValueError as exc:
                raise ValueError(f"cannot split command {options['command']!r}: {exc}") from None
        for key in ("connect_timeout", "grace"):
            if key in options:
                try:
                    options[key] = float(options[key])
                except ValueError:
                    raise ValueError(f"{key} must be a number of seconds") from None
        if identity:
            options["identity"] = identity
        return cls(
            host=parts.hostname,
            user=unquote(parts.username) if parts.username else None,
            port=22 if port is None else port,
            **options,
        )


#: This module's dialer, for the `latis.transports` registry.
DIALER = SshDialer


# ---- the stream ---------------------------------------------------------------


class SshStream(trio.abc.HalfCloseableStream):
    """A stream to a remote command's stdin and stdout over an ssh channel.

    `send_eof` closes the command's stdin. `aclose` closes the channel: the
    command's stdin reaches EOF and its stdout is closed; the `connect()` block
    makes sure it ends. A command that exits with a failure (after its stdout
    ends) makes `receive_some` raise `trio.BrokenResourceError` with its exit
    status and the end of its stderr, instead of returning b"". The end of
    its output comes once the command has closed both stdout and stderr (sshd
    holds the EOF back while stderr is open), or has exited.

    Attributes:
        peer_address: the host's (address, port).
        where: `user@host:port`, for messages.
        command: the command line run on the host.
        pid: the command's process id on the host.
        exit_status: its exit status once known (None until then, or if a
            signal ended it).
        exit_signal: the name of the signal that ended it, if one did.
    """

    #: A cancelled `receive_some` loses nothing (latis's links read from any task).
    cancel_safe_receive = True

    def __init__(self, where: str, command: tuple[str, ...]) -> None:
        self.where = where
        self.command = command
        self.peer_address: tuple[str, int] = ("", 0)
        self.pid: int | None = None
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self._chan: Any = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._preamble: bytearray | None = bytearray()
        self._stderr_tail = bytearray()
        self._stderr_line = bytearray()
        self._receiver: Task | None = None
        self._sender: Task | None = None
        self._receiving: Task | None = None
        self._sending = False
        self._read_paused = False
        self._write_paused = False
        self._eof = False  # the command's stdout has ended
        self._waited_for_exit = False
        self._eof_sent = False
        self._closed = False  # aclose() was called
        self._error: BaseException | None = None  # the connection broke
        self._started = trio.Event()  # our PID line came, or the channel ended
        self._gone = trio.Event()  # the channel is closed: the command has exited

    # -- trio.abc.HalfCloseableStream -------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send `data` to the command's stdin.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: the stream was closed, or `send_eof` called.
            trio.BrokenResourceError: the channel or the connection is gone.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof was called: nothing more can be sent")
        await checkpoint_if_cancelled()
        self._sending = True
        try:
            self._check_open()
            if data:
                try:
                    self._chan.write(data)
                except OSError as exc:
                    raise self._broken(exc) from exc
            if self._write_paused:
                await self._wait_writable()
                return
        finally:
            self._sending = False
        await cancel_shielded_checkpoint()

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Hand `data` to the channel now, without waiting (it buffers what the
        SSH window does not take yet). Not a checkpoint. Returns whether more
        may be sent now: False once the channel's send buffer is over its
        high-water mark (then wait with `wait_send_all_might_not_block`).

        Raises:
            trio.ClosedResourceError: the stream was closed, or `send_eof` called.
            trio.BrokenResourceError: the channel or the connection is gone.
        """
        if self._closed or self._eof_sent:
            raise trio.ClosedResourceError("the stream is closed for sending")
        self._check_open()
        if data:
            try:
                self._chan.write(data)
            except OSError as exc:
                raise self._broken(exc) from exc
        return not self._write_paused

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the channel's send buffer is under its high-water mark."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        await checkpoint_if_cancelled()
        if self._write_paused and self._error is None and not self._gone.is_set():
            self._sending = True
            try:
                await self._wait_writable()
            finally:
                self._sending = False
            return
        await cancel_shielded_checkpoint()

    async def send_eof(self) -> None:
        """Close the command's stdin (after what was sent); we can still receive."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        await checkpoint_if_cancelled()
        if not self._eof_sent:
            self._eof_sent = True
            try:
                self._chan.write_eof()
            except OSError:
                pass  # the channel is closing: the command's stdin is closed anyway
        await cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return what the command wrote, up to `max_bytes`; b"" at the end.

        Raises:
            trio.BusyResourceError: another task is receiving.
            trio.ClosedResourceError: the stream was closed.
            trio.BrokenResourceError: the connection broke, or the command
                failed (its exit status and stderr are in the message).
        """
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be 1 or more")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        await checkpoint_if_cancelled()
        me = self._receiving = current_task()
        waited = False
        try:
            while not self._chunks:
                if self._eof:
                    return await self._end_of_output()
                waited = True
                self._receiver = current_task()
                await wait_task_rescheduled(self._abort_receive)
                if self._closed:
                    raise trio.ClosedResourceError("the stream was closed while receiving")
            data = self._take(max_bytes)
        finally:
            if self._receiving is me:
                self._receiving = None
        if self._read_paused and self._buffered <= LOW_WATER:
            self._read_paused = False
            self._chan.resume_reading()  # may deliver buffered packets right here
        if not waited:
            await cancel_shielded_checkpoint()
        return data

    async def aclose(self) -> None:
        """Close the channel: the command's stdin reaches EOF and its stdout closes."""
        self._close()
        await trio.lowlevel.checkpoint()

    # -- inside ------------------------------------------------------------------

    def _abort_receive(self, _: Any) -> Abort:
        self._receiver = None
        self._receiving = None  # cancelled: another task may receive at once
        return Abort.SUCCEEDED

    def _abort_send(self, _: Any) -> Abort:
        self._sender = None
        return Abort.SUCCEEDED

    def _wake_receiver(self) -> None:
        task = self._receiver
        if task is not None:
            self._receiver = None
            reschedule(task)

    def _wake_sender(self) -> None:
        task = self._sender
        if task is not None:
            self._sender = None
            reschedule(task)

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._broken(self._error)
        if self._gone.is_set():
            raise trio.BrokenResourceError(f"{self._who()} has ended: its stdin is closed")

    def _broken(self, exc: BaseException) -> trio.BrokenResourceError:
        return trio.BrokenResourceError(f"ssh connection to {self.where} broke: {exc}")

    def _who(self) -> str:
        return f"{shlex.join(self.command)} on {self.where}"

    async def _wait_writable(self) -> None:
        while self._write_paused:
            if self._closed:
                raise trio.ClosedResourceError("the stream was closed while sending")
            self._check_open()
            self._sender = current_task()
            await wait_task_rescheduled(self._abort_send)

    def _take(self, max_bytes: int | None) -> bytes:
        chunks = self._chunks
        if max_bytes is None or max_bytes >= self._buffered:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._buffered = 0
            return data
        out = bytearray()
        while len(out) < max_bytes:
            first = chunks[0]
            need = max_bytes - len(out)
            if len(first) <= need:
                out += chunks.popleft()
            else:
                out += first[:need]
                chunks[0] = first[need:]
        self._buffered -= len(out)
        return bytes(out)

    async def _end_of_output(self) -> bytes:
        if self._error is not None:
            raise self._broken(self._error)
        if not self._gone.is_set() and not self._waited_for_exit:
            # The exit status comes just after the output ends (or with the close).
            self._waited_for_exit = True
            with trio.move_on_after(EXIT_STATUS_WAIT):
                await self._gone.wait()
        failure = self._failure()
        if failure is not None:
            raise trio.BrokenResourceError(f"{self._who()} {failure}")
        await cancel_shielded_checkpoint()
        return b""

    def _failure(self) -> str | None:
        """How the command ended, if it failed; None if it exited with 0 (or is running)."""
        if self.exit_signal is not None:
            how = f"was killed by SIG{self.exit_signal}"
        elif self.exit_status:
            how = f"exited with code {self.exit_status}"
        else:
            return None
        tail = self.stderr_tail()
        return f"{how}: {tail}" if tail else how

    def stderr_tail(self, lines: int = 3) -> str:
        """The last `lines` lines the command wrote to stderr (from its last ~2 KiB)."""
        text = bytes(self._stderr_tail).decode(errors="replace")
        return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._eof_sent = True
        self._chunks.clear()
        self._buffered = 0
        chan = self._chan
        if chan is not None:
            # Discards unread data; sshd closes the command's stdin and stdout.
            chan.close()
        self._wake_receiver()
        self._wake_sender()

    # -- asyncssh's session callbacks (run by the loop, in trio's thread) --------

    def _connection_made(self, chan: Any) -> None:
        self._chan = chan
        chan.set_write_buffer_limits(high=SEND_HIGH_WATER)

    def _data_received(self, data: bytes, datatype: int | None) -> None:
        if datatype is not None:
            self._stderr_received(data)
        elif self._preamble is not None:
            self._preamble_received(data)
        elif not self._closed:
            self._chunks.append(data)
            self._buffered += len(data)
            task = self._receiver
            if task is not None:
                self._receiver = None
                reschedule(task)
            if self._buffered > HIGH_WATER and not self._read_paused:
                self._read_paused = True
                self._chan.pause_reading()

    def _preamble_received(self, data: bytes) -> None:
        # Before our PID line: a login script may print something first.
        preamble = self._preamble
        assert preamble is not None
        preamble += data
        match = _PID_LINE.search(preamble)
        if match is None:
            if len(preamble) > PREAMBLE_LIMIT:
                self._preamble = None
                self._started.set()
            return
        self.pid = int(match.group(1))
        rest = bytes(preamble[match.end() :])
        self._preamble = None
        if rest:
            self._chunks.append(rest)
            self._buffered += len(rest)
        self._started.set()

    def _stderr_received(self, data: bytes) -> None:
        tail = self._stderr_tail
        tail += data
        if len(tail) > STDERR_TAIL:
            del tail[: len(tail) - STDERR_TAIL]
        # Log whole lines: the unit's warnings belong in the controller's log.
        line = self._stderr_line
        line += data
        *lines, rest = line.split(b"\n")
        for text in lines:
            log.warning("%s: %s", self.where, text.decode(errors="replace").rstrip())
        self._stderr_line = rest[-STDERR_TAIL:]

    def _eof_received(self) -> bool:
        self._eof = True
        self._started.set()
        self._wake_receiver()
        return True  # keep our side open: sending EOF is the caller's choice

    def _exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def _exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal

    def _pause_writing(self) -> None:
        self._write_paused = True

    def _resume_writing(self) -> None:
        self._write_paused = False
        self._wake_sender()

    def _connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._error is None:
            self._error = exc
        self._eof = True
        if self._stderr_line:
            self._stderr_received(b"\n")
        self._gone.set()
        self._started.set()
        self._wake_receiver()
        self._wake_sender()


# ---- connecting and ending -----------------------------------------------------


@functools.cache
def _asyncssh_classes() -> tuple[type, type]:
    """Our asyncssh client and session classes (made on first use: asyncssh loads late)."""
    import asyncssh

    class Client(asyncssh.SSHClient):
        def __init__(self, check: _HostKeyCheck) -> None:
            self._check = check

        def validate_host_public_key(
            self, host: str, addr: str, port: int, key: asyncssh.SSHKey
        ) -> bool:
            return self._check.validate(host, addr, port, key)

    class Session(asyncssh.SSHClientSession[bytes]):
        # Each callback goes straight to the stream's.
        def __init__(self, stream: SshStream) -> None:
            self.connection_made = stream._connection_made  # type: ignore[method-assign]
            self.data_received = stream._data_received  # type: ignore[method-assign]
            self.eof_received = stream._eof_received  # type: ignore[method-assign]
            self.exit_status_received = stream._exit_status_received  # type: ignore[method-assign]
            self.exit_signal_received = stream._exit_signal_received  # type: ignore[method-assign]
            self.pause_writing = stream._pause_writing  # type: ignore[method-assign]
            self.resume_writing = stream._resume_writing  # type: ignore[method-assign]
            self.connection_lost = stream._connection_lost  # type: ignore[method-assign]

    return Client, Session


class _HostKeyCheck:
    """Decides on the host keys that asyncssh could not match itself.

    With a pinned key line, asyncssh trusts that key only; with a pinned
    fingerprint, or by known_hosts, every key it does not trust comes here:
    one that known_hosts knows another key for has changed; one it does not
    know is new (accepted with `accept_new`, and added to the file once the
    login succeeds).
    """

    def __init__(self, dialer: SshDialer, where: str) -> None:
        self.dialer = dialer
        self.where = where
        path = dialer.known_hosts or os.path.join("~", ".ssh", "known_hosts")
        self.path = Path(path).expanduser()
        self.known: Any = None
        #: Why the key was refused, for the ConnectError.
        self.refusal: str | None = None
        #: (host, port, key) to add to known_hosts once logged in.
        self.new: tuple[str, int, Any] | None = None

    def known_hosts(self) -> Any:
        """The `known_hosts` argument for asyncssh."""
        import asyncssh

        pin = self.dialer.host_key
        if pin is not None:
            if pin.startswith("SHA256:"):
                return ([], [], [])
            return ([asyncssh.import_public_key(pin)], [], [])
        if self.path.exists():
            self.known = asyncssh.read_known_hosts(str(self.path))
            return self.known
        return ([], [], [])

    def validate(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        import asyncssh

        fingerprint = key.get_fingerprint("sha256")
        presented = f"{key.get_algorithm()} key {fingerprint}"
        pin = self.dialer.host_key
        if pin is not None:
            if pin == fingerprint:
                return True
            pinned = pin if pin.startswith("SHA256:") else self._fingerprint_of(pin)
            self.refusal = (
                f"its host key ({presented}) is not the pinned host_key ({pinned}): "
                f"refusing to connect"
            )
            return False
        trusted: Sequence[asyncssh.SSHKey] = ()
        if self.known is not None:
            trusted = asyncssh.match_known_hosts(
                self.known, host, addr, None if port == 22 else port
            )[0]
        pattern = _known_hosts_pattern(host, port)
        if trusted:
            self.refusal = (
                f"its host key has CHANGED: it presents an {presented}, but {self.path} "
                f"holds another key for {pattern}. Someone may be intercepting the "
                f"connection, or the host was reinstalled; if you know it was, remove "
                f"the old key (ssh-keygen -R '{pattern}' -f {self.path}) and connect again"
            )
            return False
        if self.dialer.accept_new:
            self.new = (host, port, key)
            return True
        keyscan = f"ssh-keyscan -p {port} {host}" if port != 22 else f"ssh-keyscan {host}"
        self.refusal = (
            f"the host is unknown: its {presented} is not in {self.path}. Trust it on "
            f"first use with accept_new = true, or pin it (once checked) with "
            f'host_key = "{fingerprint}", or add it to known_hosts: '
            f"{keyscan} >> {self.path}"
        )
        return False

    @staticmethod
    def _fingerprint_of(line: str) -> str:
        import asyncssh

        try:
            return str(asyncssh.import_public_key(line).get_fingerprint("sha256"))
        except (asyncssh.KeyImportError, ValueError):
            return line

    def record(self) -> None:
        """Add the key accepted on first use to known_hosts (a warning if we cannot)."""
        if self.new is None:
            return
        host, port, key = self.new
        fields = key.export_public_key("openssh").decode().split()
        line = f"{_known_hosts_pattern(host, port)} {fields[0]} {fields[1]}\n"
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as file:
                if file.tell() > 0 and not self.path.read_bytes().endswith(b"\n"):
                    line = "\n" + line
                file.write(line)
        except OSError as exc:
            log.warning("could not add %s's host key to %s: %s", self.where, self.path, exc)
            return
        log.warning(
            "%s: added its %s key %s to %s (accept_new)",
            self.where,
            key.get_algorithm(),
            key.get_fingerprint("sha256"),
            self.path,
        )


@contextmanager
def _unwrap() -> Iterator[None]:
    # Our nursery and trio-asyncio's two nest the caller's exception in groups
    # of one: the caller should see their own exception (or our ConnectError).
    try:
        yield
    except BaseExceptionGroup as group:
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if exc is group:
            raise
        raise exc from exc.__cause__


@asynccontextmanager
async def _open(dialer: SshDialer) -> AsyncIterator[SshStream]:
    released = trio.Event()
    with _unwrap():
        async with trio.open_nursery() as nursery:
            # The asyncio loop lives in a task of its own: the caller's block
            # stays outside trio-asyncio's nurseries (which shield their body)
            # and its context (the current loop).
            stream: SshStream = await nursery.start(_run, dialer, released)
            try:
                yield stream
            finally:
                released.set()


async def _run(
    dialer: SshDialer,
    released: trio.Event,
    task_status: trio.TaskStatus[SshStream] = trio.TASK_STATUS_IGNORED,
) -> None:
    import trio_asyncio

    async with trio_asyncio.open_loop() as loop:
        # asyncssh reports stray errors (a task failing after the connection
        # broke) to the loop; trio-asyncio's default would raise them into
        # our nursery. The stream reports what matters to its user.
        loop.set_exception_handler(_log_asyncio_error)
        conn, stream = await _start(loop, dialer)
        try:
            task_status.started(stream)
            await released.wait()
        finally:
            with trio.CancelScope(shield=True):
                await _end(loop, conn, stream, dialer.grace)


def _log_asyncio_error(loop: Any, context: dict[str, Any]) -> None:
    log.debug("asyncio: %s", context.get("message"), exc_info=context.get("exception"))


async def _start(
    loop: trio_asyncio.TrioEventLoop, dialer: SshDialer
) -> tuple[asyncssh.SSHClientConnection, SshStream]:
    where = _where(dialer.user, dialer.host, dialer.port)
    with trio.move_on_after(dialer.connect_timeout) as scope:
        options, check = await _options(loop, dialer, where)
        # Now we know the user name (given, from ssh config, or ours).
        where = check.where = _where(options.username, dialer.host, dialer.port)
        conn = await _login(loop, dialer, options, check, where)
        try:
            stream = await _exec(loop, dialer, conn, where)
        except BaseException:
            with trio.CancelScope(shield=True):
                await _close_connection(loop, conn)
            raise
    if scope.cancelled_caught:
        raise ConnectError(
            f"cannot connect to {where}: no connection (login and start) within "
            f"{dialer.connect_timeout:g} s"
        )
    check.record()
    return conn, stream


async def _options(
    loop: trio_asyncio.TrioEventLoop, dialer: SshDialer, where: str
) -> tuple[asyncssh.SSHClientConnectionOptions, _HostKeyCheck]:
    import asyncssh

    Client, _ = _asyncssh_classes()
    check = _HostKeyCheck(dialer, where)
    kwargs: dict[str, Any] = {
        "host": dialer.host,
        "port": dialer.port,
        "client_factory": lambda: Client(check),
        "agent_forwarding": False,
        "x11_forwarding": False,
        "request_pty": False,
        "password_auth": False,
        "kbdint_auth": False,
    }
    if dialer.user is not None:
        kwargs["username"] = dialer.user
    if dialer.identity:
        kwargs["client_keys"] = list(dialer.identity)
        kwargs["agent_path"] = None
    try:
        kwargs["known_hosts"] = check.known_hosts()
        options = await loop.run_aio_coroutine(
            asyncssh.SSHClientConnectionOptions.construct(**kwargs)
        )
    except (OSError, ValueError, asyncssh.Error) as exc:
        # An unreadable key or known_hosts file, a bad ssh config line.
        raise ConnectError(f"cannot connect to {where}: {exc}") from exc
    return options, check


async def _login(
    loop: trio_asyncio.TrioEventLoop,
    dialer: SshDialer,
    options: asyncssh.SSHClientConnectionOptions,
    check: _HostKeyCheck,
    where: str,
) -> asyncssh.SSHClientConnection:
    import asyncssh

    async def login() -> asyncssh.SSHClientConnection:
        # asyncssh.connect() makes its coroutine at once, inside an awaitable
        # wrapper: made here, it is not left un-awaited if we are cancelled
        # before the asyncio task starts.
        return await asyncssh.connect(dialer.host, dialer.port, options=options)

    try:
        conn: asyncssh.SSHClientConnection = await loop.run_aio_coroutine(login())
        return conn
    except asyncssh.HostKeyNotVerifiable as exc:
        raise ConnectError(f"cannot connect to {where}: {check.refusal or exc.reason}") from exc
    except asyncssh.PermissionDenied as exc:
        keys = (
            ", ".join(dialer.identity)
            if dialer.identity
            else "the default keys in ~/.ssh and the ssh agent's"
        )
        raise ConnectError(
            f"cannot connect to {where}: authentication failed: the host accepted none of "
            f"our keys ({keys}) for {options.username}"
        ) from exc
    except asyncssh.DisconnectError as exc:
        raise ConnectError(f"cannot connect to {where}: {exc.reason}") from exc
    except OSError as exc:
        raise ConnectError(f"cannot connect to {where}: {_os_reason(exc)}") from exc
    except (asyncssh.Error, ValueError) as exc:
        raise ConnectError(f"cannot connect to {where}: {exc}") from exc


def _os_reason(exc: OSError) -> str:
    # asyncio replaces strerror with "Connect call failed (address)": say the
    # errno's plain meaning instead ("Connection refused").
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror}"
    if exc.errno:
        return os.strerror(exc.errno)
    return str(exc)


async def _exec(
    loop: trio_asyncio.TrioEventLoop,
    dialer: SshDialer,
    conn: asyncssh.SSHClientConnection,
    where: str,
) -> SshStream:
    import asyncssh

    _, Session = _asyncssh_classes()
    stream = SshStream(where, dialer.command)
    peer = conn.get_extra_info("peername") or (dialer.host, dialer.port)
    stream.peer_address = (str(peer[0]), int(peer[1]))
    try:
        await loop.run_aio_coroutine(
            conn.create_session(
                lambda: Session(stream),
                _remote_command(dialer.command),
                encoding=None,
                request_pty=False,
            )
        )
    except (asyncssh.Error, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConnectError(f"cannot start a command on {where}: {reason}") from exc
    await stream._started.wait()
    if stream.pid is not None:
        return stream
    # No PID line: the wrapper (or the login shell) ended, or printed junk.
    with trio.move_on_after(EXIT_STATUS_WAIT):
        await stream._gone.wait()
    command = shlex.join(dialer.command)
    if stream._error is not None:
        raise ConnectError(f"cannot start {command} on {where}: {stream._error}")
    if stream.exit_status == NOT_FOUND:
        raise ConnectError(
            f"cannot start {command} on {where}: {dialer.command[0]}: command not found "
            f"(exit status 127)"
        )
    why = stream._failure() or "the remote shell did not start it"
    if stream._preamble is None and not stream._gone.is_set():
        why = f"the login printed over {PREAMBLE_LIMIT} bytes before it (a chatty shell rc file?)"
    raise ConnectError(f"cannot start {command} on {where}: {why}")


async def _end(
    loop: trio_asyncio.TrioEventLoop,
    conn: asyncssh.SSHClientConnection,
    stream: SshStream,
    grace: float,
) -> None:
    """Close the channel, make sure the command has ended, close the connection."""
    stream._close()
    command = shlex.join(stream.command)
    try:
        with trio.move_on_after(grace):
            await stream._gone.wait()
        if stream._error is not None or stream.pid is None:
            # Nothing reaches the host now; the command got EOF on its stdin.
            log.warning(
                "%s: the connection broke: cannot make sure %s ended", stream.where, command
            )
            return
        if stream._gone.is_set():
            return  # it exited by itself
        log.info("%s: %s did not exit within %g s: SIGTERM", stream.where, command, grace)
        await _kill(loop, conn, stream, "TERM")
        with trio.move_on_after(grace):
            await stream._gone.wait()
        # SIGKILL the group even if the command obeyed SIGTERM: a child of
        # it may not have. (After our close, sshd reports the command's exit,
        # not its children's.)
        await _kill(loop, conn, stream, "KILL")
        with trio.move_on_after(KILL_TIMEOUT):
            await stream._gone.wait()
        if not stream._gone.is_set():
            log.warning("%s: %s (pid %s) outlived SIGKILL", stream.where, command, stream.pid)
    finally:
        await _close_connection(loop, conn)


async def _kill(
    loop: trio_asyncio.TrioEventLoop,
    conn: asyncssh.SSHClientConnection,
    stream: SshStream,
    signal: str,
) -> None:
    import asyncssh

    assert stream.pid is not None
    with trio.move_on_after(KILL_TIMEOUT):
        try:
            await loop.run_aio_coroutine(
                conn.run(_kill_command(stream.pid, signal), check=False, request_pty=False)
            )
        except (asyncssh.Error, OSError) as exc:
            log.warning("%s: cannot send SIG%s: %s", stream.where, signal, exc)


async def _close_connection(
    loop: trio_asyncio.TrioEventLoop, conn: asyncssh.SSHClientConnection
) -> None:
    conn.close()
    with trio.move_on_after(KILL_TIMEOUT):
        await loop.run_aio_coroutine(conn.wait_closed())
