"""`SshStream`: the trio stream to a remote command's stdin and stdout. asyncssh
feeds it through its session callbacks (run by the loop, in trio's thread);
no call on the data path awaits asyncio."""

from __future__ import annotations

import collections
import logging
import operator
import shlex
from typing import Any

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

from .remote import _PID_LINE

log = logging.getLogger("latis.transport.ssh")

#: Received bytes buffered before reading from the channel pauses ...
HIGH_WATER = 1024 * 1024
#: ... until `receive_some` takes them below this.
LOW_WATER = 256 * 1024
#: Bytes in asyncssh's send buffer over which `send_all` waits.
SEND_HIGH_WATER = 256 * 1024
#: Seconds to wait, once the command's output has ended, for its exit status
#: (a unit that dies is then reported with its code and its stderr). A dying
#: process's status follows its EOF within milliseconds; a command that
#: closes its output and goes on costs this once.
EXIT_STATUS_WAIT = 0.25
#: Bytes of the command's stderr kept for error messages.
STDERR_TAIL = 2048
#: Bytes a login script may print before our wrapper's line.
PREAMBLE_LIMIT = 64 * 1024


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
