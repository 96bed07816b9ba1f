"""The ssh transport, against a real throwaway sshd on 127.0.0.1 (tests/sshd.py).

The unit on the "host" is this machine's Python running `latis_core._unit.cli`.
Every test skips, with the reason, where sshd cannot run.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from latis_transports.ssh import DIALER, SshDialer, SshStream
from sshd import Sshd, fingerprint, keygen, running_sshd, sshd_unavailable

import latis_core
from latis_core import ConnectError

UNIT = [sys.executable, "-m", "latis_core._unit.cli", "--stdio"]

# Never reads stdin (so never sees EOF), ignores SIGHUP, and SIGTERM too when
# told; starts a child in its process group, which says when it is up. Both
# have the marker in their command line.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGHUP, signal.SIG_IGN)
if sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = "import time; print('child up', flush=True); time.sleep(60)"
subprocess.Popen([sys.executable, "-c", child, sys.argv[1]])
print("ready", flush=True)
time.sleep(60)
"""

# Joins its stdin and stdout to a TCP connection to the test, with
# half-closes passed on both ways: the test holds the other end of the stream.
# Its stderr is closed at once: sshd sends EOF only when stdout and stderr
# have both closed.
RELAY = """
import os, socket, sys, threading
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def up():
    try:
        while data := os.read(0, 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        os._exit(1)
def down():
    try:
        while data := sock.recv(65536):
            while data:
                data = data[os.write(1, data):]
        os.close(1)
    except OSError:
        os._exit(1)
threads = [threading.Thread(target=up), threading.Thread(target=down)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.fixture(scope="module")
def server() -> Iterator[Sshd]:
    """A throwaway sshd for this module; skips when sshd cannot run here."""
    why = sshd_unavailable()
    if why is not None:
        pytest.skip(why)
    with running_sshd() as sshd:
        yield sshd


def dialer(server: Sshd, **changes: Any) -> SshDialer:
    """A dialer to `server` with its client key and its host key pinned."""
    options: dict[str, Any] = {
        "port": server.port,
        "user": server.user,
        "identity": (server.client_key,),
        "host_key": server.host_key,
        "command": UNIT,
        "grace": 0.2,
    }
    options.update(changes)
    return SshDialer(server.host, **options)


async def read_until(stream: SshStream, want: bytes) -> bytes:
    got = b""
    while want not in got:
        data = await stream.receive_some()
        assert data, f"the stream ended after {got!r}"
        got += data
    return got


async def gone(marker: str) -> list[str]:
    """Wait (up to 5 s) until no process carries `marker`; return those that still do.

    A signal to a process group is delivered to each member on its own, so a
    child may take a moment longer to die than the command sshd reported on.
    """
    with trio.move_on_after(5):
        while running(marker):
            await trio.sleep(0.01)
    return running(marker)


def alive(pid: int | None) -> bool:
    """Whether process `pid` exists on the host (sshd has reaped it once it reports its end)."""
    return pid is not None and Path(f"/proc/{pid}").exists()


def running(marker: str) -> list[str]:
    """The command lines of the host's live processes that carry `marker` (like pgrep -f)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes()  # empty for a zombie
        except OSError:
            continue  # not a process, or it is gone
        if marker.encode() in argv:
            found.append(argv.replace(b"\0", b" ").decode(errors="replace"))
    return found


class TestProtocol:
    async def test_prompt_over_ssh(self, server: Sshd) -> None:
        """Two units at once, each over its own ssh connection, answer a prompt."""

        async def ask(text: str) -> None:
            async with dialer(server).connect() as stream, latis_core.connect(stream) as unit:
                assert stream.peer_address == ("127.0.0.1", server.port)
                assert unit.agent.name == "echo"
                session = await unit.create_session()
                assert await session.prompt(text).text() == text
            assert stream.exit_status == 0

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "hello over ssh")
            nursery.start_soon(ask, "and hello again")

    async def test_cancel_mid_stream(self, server: Sshd) -> None:
        """A prompt cancelled mid-stream ends as cancelled; the session is idle and usable."""
        slow = dialer(server, command=[*UNIT, "-o", "delay=0.05"])
        async with slow.connect() as stream, latis_core.connect(stream) as unit:
            session = await unit.create_session()
            prompt = session.prompt("one two three four five six seven eight nine ten")
            seen = []
            with trio.CancelScope() as scope:
                async for chunk in prompt:
                    seen.append(chunk)
                    scope.cancel()
            assert len(seen) == 1
            assert prompt.outcome == "cancelled"
            assert await session.state() == "idle"
            assert await session.prompt("again").text() == "again"

    async def test_unit_that_fails_says_why(self, server: Sshd) -> None:
        """A unit that exits with a failure ends the stream with its exit code and stderr."""
        async with dialer(server, command=[*UNIT, "--agent", "no-such-agent"]).connect() as stream:
            with pytest.raises(
                trio.BrokenResourceError, match="(?s)exited with code 2: .*unknown agent"
            ):
                await stream.receive_some()

    async def test_is_a_proper_half_closeable_stream(self, server: Sshd) -> None:
        """The ssh stream passes trio's own conformance checks (against a relay on the host)."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        relay = dialer(server, command=[sys.executable, "-c", RELAY, str(port)])

        async def hold(task_status: trio.TaskStatus[SshStream]) -> None:
            async with relay.connect() as stream:
                task_status.started(stream)
                await trio.sleep_forever()

        async with trio.open_nursery() as nursery:

            async def maker() -> tuple[SshStream, trio.abc.HalfCloseableStream]:
                ours = await nursery.start(hold)
                theirs = await listeners[0].accept()
                return ours, theirs

            await trio.testing.check_half_closeable_stream(maker, None)
            nursery.cancel_scope.cancel()
        await listeners[0].aclose()


class TestHostKeys:
    async def test_unknown_host_is_refused(self, server: Sshd, tmp_path: Path) -> None:
        """A host not in known_hosts is refused, with how to trust it; nothing is written."""
        known = tmp_path / "known_hosts"
        with pytest.raises(ConnectError) as caught:
            async with dialer(server, host_key=None, known_hosts=known).connect():
                pass
        message = str(caught.value)
        assert f"root@127.0.0.1:{server.port}" in message
        assert "unknown" in message and server.host_fingerprint in message
        assert "accept_new = true" in message and "host_key" in message
        assert "ssh-keyscan" in message
        assert not known.exists()

    async def test_accept_new_records_the_key(self, server: Sshd, tmp_path: Path) -> None:
        """accept_new trusts a new host and records its key; the next dial trusts it as known."""
        known = tmp_path / "ssh" / "known_hosts"
        first = dialer(server, host_key=None, known_hosts=known, accept_new=True, command=["cat"])
        async with first.connect():
            pass
        assert known.read_text() == server.known_hosts_line
        again = dialer(server, host_key=None, known_hosts=known, command=["cat"])
        async with again.connect() as stream:
            await stream.send_all(b"known now")
            assert await read_until(stream, b"known now") == b"known now"
        assert known.read_text() == server.known_hosts_line

    async def test_changed_key_is_refused_even_with_accept_new(
        self, server: Sshd, tmp_path: Path
    ) -> None:
        """A host whose key is not the one known_hosts holds is refused, accept_new or not."""
        other = keygen(tmp_path / "other")
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{server.port} {other}\n")
        changed = dialer(server, host_key=None, known_hosts=known, accept_new=True)
        with pytest.raises(ConnectError, match="CHANGED") as caught:
            async with changed.connect():
                pass
        assert f"ssh-keygen -R '[127.0.0.1]:{server.port}'" in str(caught.value)
        assert known.read_text() == f"[127.0.0.1]:{server.port} {other}\n"

    @pytest.mark.parametrize("form", ["line", "fingerprint"])
    async def test_pinned_key_is_accepted(self, server: Sshd, form: str) -> None:
        """A pinned host key, as a key line or a fingerprint, lets the dialer in."""
        pin = server.host_key if form == "line" else server.host_fingerprint
        async with dialer(server, host_key=pin, command=["cat"]).connect() as stream:
            stream.send_nowait(b"pin")
            await stream.send_all(b"ned")
            assert await read_until(stream, b"pinned") == b"pinned"

    @pytest.mark.parametrize("form", ["line", "fingerprint"])
    async def test_wrong_pin_is_refused(self, server: Sshd, tmp_path: Path, form: str) -> None:
        """A host whose key is not the pinned one is refused."""
        other = keygen(tmp_path / "other")
        pin = other if form == "line" else fingerprint(tmp_path / "other.pub")
        with pytest.raises(ConnectError, match="not the pinned host_key") as caught:
            async with dialer(server, host_key=pin).connect():
                pass
        assert server.host_fingerprint in str(caught.value)


class TestFailures:
    async def test_wrong_user_key_is_refused(self, server: Sshd, tmp_path: Path) -> None:
        """A key the host does not accept is an authentication failure that names the key."""
        keygen(tmp_path / "stranger")
        stranger = str(tmp_path / "stranger")
        with pytest.raises(ConnectError, match="authentication failed") as caught:
            async with dialer(server, identity=[stranger]).connect():
                pass
        assert f"root@127.0.0.1:{server.port}" in str(caught.value)
        assert stranger in str(caught.value)

    async def test_connection_refused(self, server: Sshd) -> None:
        """Nothing listening on the port is a ConnectError that names user@host:port."""
        with trio.socket.socket() as probe:
            await probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with pytest.raises(ConnectError, match=f"root@127.0.0.1:{port}: .*[Rr]efused"):
            async with dialer(server, port=port).connect():
                pass

    async def test_silent_host_times_out(self, server: Sshd) -> None:
        """A host that accepts the connection and says nothing fails after connect_timeout."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        silent = dialer(server, port=port, connect_timeout=0.3)
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}: .*within 0.3 s"):
            async with silent.connect():
                pass
        await listeners[0].aclose()

    async def test_command_not_found(self, server: Sshd) -> None:
        """A command the host does not have fails the dial, before any protocol."""
        missing = dialer(server, command=["no-such-latis-unit", "--stdio"])
        with pytest.raises(ConnectError, match="no-such-latis-unit: command not found"):
            async with missing.connect():
                pass


class TestCleanup:
    @pytest.mark.parametrize("term", ["ignore-term", "obey-term"])
    async def test_nothing_is_left_running(self, server: Sshd, term: str) -> None:
        """A command that ignores EOF and SIGHUP, and its child, end with the block."""
        marker = f"latis-ssh-test-{uuid.uuid4().hex}"
        stubborn = dialer(server, command=[sys.executable, "-c", STUBBORN, marker, term])
        async with stubborn.connect() as stream:
            await read_until(stream, b"child up")
            assert len(running(marker)) == 2
        assert not alive(stream.pid)  # the command itself, at once
        assert await gone(marker) == []  # and its child
        assert stream.exit_signal == ("KILL" if term == "ignore-term" else "TERM")

    async def test_cancelled_block_still_cleans_up(self, server: Sshd) -> None:
        """Cancelling the block still ends the remote command before the block is left."""
        marker = f"latis-ssh-test-{uuid.uuid4().hex}"
        stubborn = dialer(server, command=[sys.executable, "-c", STUBBORN, marker, "obey-term"])
        with trio.CancelScope() as scope:
            async with stubborn.connect() as stream:
                await read_until(stream, b"child up")
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert not alive(stream.pid)
        assert await gone(marker) == []

    async def test_unit_ends_by_itself(self, server: Sshd) -> None:
        """A unit ends on EOF within the grace period: no signal is needed."""
        async with dialer(server, grace=5.0).connect() as stream:
            pass
        assert stream.exit_status == 0 and stream.exit_signal is None


class TestDialer:
    def test_describes_itself(self) -> None:
        """A dialer says where it goes; it is a latis Dialer, and this module's DIALER."""
        assert SshDialer("box", user="me", port=2222).describe() == "ssh: me@box:2222"
        assert SshDialer("box").describe() == "ssh: box:22"
        assert isinstance(SshDialer("box"), latis_core.Dialer)
        assert DIALER is SshDialer

    def test_from_url(self) -> None:
        """An ssh URL gives user, host, port and options; `+` in a key stays a plus."""
        fp = "SHA256:" + "a+b/" * 10 + "abc"
        url = (
            f"ssh://deploy@build.example:2200?command=latis-unit%20--stdio%20--agent%20acp"
            f"&host_key={fp}&identity=/k/one&identity=/k/two&grace=1.5"
        )
        assert SshDialer.from_url(url) == SshDialer(
            "build.example",
            user="deploy",
            port=2200,
            command=("latis-unit", "--stdio", "--agent", "acp"),
            host_key=fp,
            identity=("/k/one", "/k/two"),
            grace=1.5,
        )
        assert SshDialer.from_url("ssh://box?accept_new=1") == SshDialer("box", accept_new=True)
        assert SshDialer.from_url("ssh://[::1]:22") == SshDialer("::1")

    @pytest.mark.parametrize(
        ("url", "why"),
        [
            ("http://box", "not an ssh URL"),
            ("ssh://", "no host"),
            ("ssh://box:99999", "not an ssh URL"),
            ("ssh://me:secret@box", "password"),
            ("ssh://box/path", "no path"),
            ("ssh://box?colour=red", "unknown option 'colour'"),
            ("ssh://box?accept_new=maybe", "accept_new must be 1 or 0"),
            ("ssh://box?host_key=nonsense", "host_key must be"),
            ("ssh://box?command=", "needs a command"),
            ("ssh://box?grace=1&grace=2", "given twice"),
        ],
    )
    def test_bad_url(self, url: str, why: str) -> None:
        """A URL that is not a valid ssh URL is a ValueError that says what is wrong."""
        with pytest.raises(ValueError, match=why):
            SshDialer.from_url(url)

    def test_contradictory_options(self) -> None:
        """A pinned key and accept_new together are refused."""
        with pytest.raises(ValueError, match="accept_new does not apply"):
            SshDialer("box", host_key="SHA256:" + "a" * 43, accept_new=True)
