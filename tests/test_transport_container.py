"""The container dialer against real podman: `podman exec -i` into one container.

The module starts one container from tests/podman_image.py's image, with the
host's Python and this checkout bind-mounted (as the container provisioner's
tests do), and runs every test in it; `podman top` says what still runs
there. The tests skip when podman is not installed (see podman_image.py).
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator

import pytest
import trio
from latis_transports import container as container_module
from latis_transports.container import ContainerDialer, ContainerStream
from podman_image import IMAGE, UNIT_COMMAND, podman_run, python_mounts
from units import conversation

import latis_core
from latis_core import ConnectError

#: Ignores EOF and SIGTERM: only SIGKILL ends it.
STUBBORN = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def box(podman: str) -> Iterator[str]:
    """A running container for the whole module; removed at the end."""
    name = f"latis-test-{uuid.uuid4().hex[:8]}-exec"
    mounts = [arg for mount in python_mounts() for arg in ("-v", mount)]
    sleeper = [sys.executable, "-c", "import time; time.sleep(100000)"]
    started = podman_run(
        "run", "-d", "--init", "--name", name, *mounts, IMAGE, *sleeper, check=False
    )
    if started.returncode != 0:
        pytest.skip(f"podman cannot run a container here: {started.stderr.strip()}")
    try:
        if podman_run("exec", name, "/bin/sh", "-c", "true", check=False).returncode != 0:
            pytest.skip(f"{IMAGE} has no /bin/sh (install busybox-static, remove the image)")
        yield name
    finally:
        podman_run("rm", "-f", "-t", "0", name, check=False)


def running(box: str) -> list[str]:
    """The command lines of what runs in the container, but for its init and sleeper."""
    listed = podman_run("top", box, "pid", "args").stdout.splitlines()[1:]
    commands = [line.split(None, 1)[1].strip() for line in listed]
    return [c for c in commands if "time.sleep(100000)" not in c and "podman-init" not in c]


def unit(box: str, *args: str) -> ContainerDialer:
    """A dialer for an echo unit in `box` (the host's Python, mounted)."""
    return ContainerDialer(box, command=(*UNIT_COMMAND, "--stdio", *args))


class TestProtocol:
    async def test_a_latis_conversation(self, box: str) -> None:
        """Handshake, session, streamed prompt, cancel mid-stream and state, over exec."""
        dialer = unit(box, "--name", "boxed", "-o", "delay=0.01")
        async with dialer.connect() as stream, latis_core.connect(stream) as client:
            assert client.name == "boxed"
            assert stream.peer_address == f"container:{box}"
            await conversation(client)
        assert stream.process.returncode == 0
        assert running(box) == []

    async def test_options_reach_the_command(self, box: str) -> None:
        """env, workdir and user are the command's."""
        dialer = ContainerDialer(
            box,
            command=("/bin/sh", "-c", 'echo "$LATIS_TEST $(pwd) $(id -u)"'),
            env={"LATIS_TEST": "hello"},
            workdir="/tmp",
            user="1234",
        )
        async with dialer.connect() as stream:
            got = b""
            while data := await stream.receive_some():
                got += data
        assert got == b"hello /tmp 1234\n"


class TestCleanup:
    async def test_command_that_ignores_eof_is_ended_in_the_container(self, box: str) -> None:
        """A command that never reads stdin gets SIGTERM inside the container after grace."""
        dialer = ContainerDialer(box, command=("sleep", "600"), grace=0.2)
        async with dialer.connect() as stream:
            assert isinstance(stream, ContainerStream)
            assert any(line == "sleep 600" for line in running(box))
        assert running(box) == []
        assert stream.process.returncode is not None

    async def test_command_that_ignores_sigterm_is_killed(self, box: str) -> None:
        """A command that ignores EOF and SIGTERM gets SIGKILL inside the container."""
        dialer = ContainerDialer(box, command=(sys.executable, "-c", STUBBORN), grace=0.2)
        async with dialer.connect() as stream:
            assert await stream.receive_some() == b"ready\n"
        assert running(box) == []

    async def test_cancelled_block_still_cleans_up(self, box: str) -> None:
        """Cancelling the caller's scope still ends the command in the container."""
        dialer = ContainerDialer(box, command=("sleep", "600"), grace=0.2)
        with trio.CancelScope() as scope:
            async with dialer.connect():
                scope.cancel()
                await trio.sleep_forever()
        assert running(box) == []

    async def test_stderr_is_passed_on(self, box: str, capfd: pytest.CaptureFixture[str]) -> None:
        """Once the command runs, what it writes to stderr reaches ours."""
        dialer = ContainerDialer(box, command=("/bin/sh", "-c", "echo note from inside >&2"))
        async with dialer.connect() as stream:
            assert await stream.receive_some() == b""
        assert "note from inside" in capfd.readouterr().err


class TestErrors:
    async def test_no_such_container(self, podman: str) -> None:
        """The engine's own message, after the container's name."""
        dialer = ContainerDialer("latis-no-such-container")
        with pytest.raises(ConnectError) as info:
            async with dialer.connect():
                pass
        assert str(info.value) == (
            "cannot reach container 'latis-no-such-container' through podman: Error: no"
            ' container with name or ID "latis-no-such-container" found: no such container'
        )

    async def test_container_not_running(self, podman: str) -> None:
        """A created (not started) container: the engine says so."""
        name = f"latis-test-{uuid.uuid4().hex[:8]}-stopped"
        podman_run("create", "--name", name, IMAGE, "/bin/sh")
        try:
            with pytest.raises(ConnectError) as info:
                async with ContainerDialer(name).connect():
                    pass
        finally:
            podman_run("rm", "-f", name)
        assert str(info.value).startswith(f"cannot reach container {name!r} through podman: ")
        assert "can only create exec sessions on running containers" in str(info.value)

    async def test_command_not_found(self, box: str) -> None:
        """A command the container does not have: named, and nothing left running."""
        dialer = ContainerDialer(box, command=("latis-no-such-unit", "--stdio"))
        with pytest.raises(ConnectError) as info:
            async with dialer.connect():
                pass
        assert str(info.value) == (
            f"cannot reach container {box!r} through podman: latis-no-such-unit: command not found"
        )
        assert running(box) == []

    async def test_engine_missing(self) -> None:
        """An engine that is not installed: said plainly, before anything runs."""
        with pytest.raises(ConnectError) as info:
            async with ContainerDialer("box", engine="latis-no-such-engine").connect():
                pass
        assert str(info.value) == (
            "cannot reach container 'box' through latis-no-such-engine: the container engine"
            " 'latis-no-such-engine' is not on PATH"
        )

    @pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client installed")
    async def test_docker_without_a_daemon(self) -> None:
        """The docker client's own words when it cannot reach its daemon."""
        dialer = ContainerDialer.from_url("container://box?engine=docker")
        try:
            async with dialer.connect():
                pytest.skip("a docker daemon answers here: this test wants none")
        except ConnectError as exc:
            assert str(exc).startswith("cannot reach container 'box' through docker: ")
            assert "docker" in str(exc).lower()


class TestConfig:
    def test_from_url(self) -> None:
        """container://NAME with engine, command, user and workdir in the query."""
        dialer = ContainerDialer.from_url(
            "container://build-box?engine=docker&command=latis-unit+--stdio+--name+x"
            "&user=1000&workdir=/work"
        )
        assert dialer == ContainerDialer(
            "build-box",
            engine="docker",
            command=("latis-unit", "--stdio", "--name", "x"),
            user="1000",
            workdir="/work",
        )
        assert ContainerDialer.from_url("container://box") == ContainerDialer("box")
        with pytest.raises(ValueError, match="unknown option 'image'"):
            ContainerDialer.from_url("container://box?image=x")
        with pytest.raises(ValueError, match="not a container address"):
            ContainerDialer.from_url("docker://box")

    def test_describe(self) -> None:
        """The container's name and the engine's, for messages."""
        assert ContainerDialer("box").describe() == "container: box (podman)"
        assert ContainerDialer("box", engine="/usr/bin/docker").describe() == (
            "container: box (docker)"
        )
        assert container_module.DIALER is ContainerDialer
        assert isinstance(ContainerDialer("box"), latis_core.Dialer)
