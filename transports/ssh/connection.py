"""Connecting and ending over ssh, the asyncio side: a trio-asyncio loop per
connection, asyncssh's client and session classes, logging in, starting the
command, and ending it (SIGTERM, then SIGKILL, after `grace`) and the
connection. asyncssh and trio-asyncio are imported here on first use."""

from __future__ import annotations

import functools
import logging
import os
import shlex
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import trio

from latis_core._errors import ConnectError

from .addresses import _where
from .hostkeys import _HostKeyCheck
from .remote import NOT_FOUND, _kill_command, _remote_command
from .stream import EXIT_STATUS_WAIT, PREAMBLE_LIMIT, SshStream

if TYPE_CHECKING:
    import asyncssh
    import trio_asyncio  # type: ignore[import-untyped]

    from .dialer import SshDialer


log = logging.getLogger("latis.transport.ssh")

#: Seconds a kill command may take, and the command may take to die after SIGKILL.
KILL_TIMEOUT = 5.0


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
