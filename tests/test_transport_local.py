"""The local transport: a child process's stdin and stdout as one stream."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio
import trio.testing
from latis_transports import LocalDialer, open_local, socket_stream_pair

import latis_core
from latis_core import ConnectError
from latis_core._io.link import FdLink, open_link

IGNORE_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


async def test_bytes_go_both_ways() -> None:
    """What is written reaches the child's stdin; what it prints comes back."""
    async with open_local(["cat"]) as stream:
        await stream.send_all(b"hello through a pipe")
        got = b""
        while len(got) < 20:
            got += await stream.receive_some()
        assert got == b"hello through a pipe"
    assert stream.process.returncode == 0


async def test_child_ends_cleanly_on_eof() -> None:
    """Leaving the block closes the child's stdin; a child that exits on EOF ends with 0."""
    async with open_local([sys.executable, "-c", "import sys; sys.stdin.read()"]) as stream:
        pass
    assert stream.process.returncode == 0


async def test_child_that_lingers_gets_sigterm() -> None:
    """A child that ignores EOF is sent SIGTERM after the grace period."""
    async with open_local(["sleep", "60"], grace=0.2) as stream:
        pass
    assert stream.process.returncode == -15


async def test_child_that_ignores_sigterm_gets_sigkill() -> None:
    """A child that ignores EOF and SIGTERM is killed."""
    async with open_local([sys.executable, "-c", IGNORE_TERM], grace=0.2) as stream:
        assert (await stream.receive_some()).startswith(b"ready")
    assert stream.process.returncode == -9


async def test_cancelled_scope_still_ends_the_child() -> None:
    """Cancelling the block still ends the child before the block is left."""
    with trio.move_on_after(0.1):
        async with open_local(["sleep", "60"], grace=0.2) as stream:
            await trio.sleep_forever()
    assert stream.process.returncode == -15


async def test_child_has_its_own_process_group() -> None:
    """The unit does not get the controller's Ctrl-C: it runs in a session of its own."""
    async with open_local(["sleep", "60"], grace=0.1) as stream:
        assert os.getpgid(stream.process.pid) == stream.process.pid != os.getpgid(0)


async def test_missing_command() -> None:
    """A command that does not exist is a ConnectError that names it."""
    with pytest.raises(ConnectError, match="cannot start no-such-unit-binary --stdio"):
        async with open_local(["no-such-unit-binary", "--stdio"]):
            pass


async def test_unit_that_exits_at_once() -> None:
    """A unit that dies before the handshake is a ConnectError that gives its exit status."""
    argv = latis_core.unit_command("no-such-agent")
    with pytest.raises(ConnectError, match="exited with code 2"):
        async with latis_core.connect_local(argv, stderr=subprocess.DEVNULL):
            pass


async def test_pipes_take_the_fast_path() -> None:
    """The peer reads and writes the child's pipes directly (no stream wrapper in between)."""
    async with open_local(["cat"]) as stream, trio.open_nursery() as nursery:
        assert isinstance(open_link(stream, nursery), FdLink)


def test_dialer_describes_itself() -> None:
    """A local dialer says which command it runs."""
    dialer = LocalDialer(["latis-unit", "--stdio", "--name", "my box"])
    assert LocalDialer().describe() == "local: the unit's own process"
    assert dialer.describe() == "local: latis-unit --stdio --name 'my box'"
    assert isinstance(dialer, latis_core.Dialer)


async def test_dialer_connects() -> None:
    """A local dialer's stream carries the protocol to a real unit."""
    dialer = LocalDialer(latis_core.unit_command())
    async with dialer.connect() as stream, latis_core.connect(stream) as unit:
        assert unit.agent.name == "echo"


async def test_socket_pair_is_a_proper_stream() -> None:
    """The in-process stream pair passes trio's own stream conformance checks."""

    async def maker() -> tuple[trio.SocketStream, trio.SocketStream]:
        return socket_stream_pair()

    await trio.testing.check_half_closeable_stream(maker, None)
