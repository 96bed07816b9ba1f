"""The `process` provisioner against real `latis-unit` processes on a unix socket."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from latis_provisioners.process import ProcessProvisioner
from provisioning import ask, recorded, refuses, start_from_a_controller

import latis_core
from latis_core._plugins.provision import (
    MemoryResources,
    ProvisionContext,
    ProvisionError,
    ProvisionState,
)

Make = Callable[..., ProcessProvisioner]


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")


def _names_socket(entry: Path, socket: Path) -> bool:
    """Whether the process at /proc/PID names `socket` in its command line."""
    try:
        return os.fsencode(socket) in (entry / "cmdline").read_bytes()
    except OSError:
        return False


def _units(socket: Path) -> list[int]:
    """The pids of the processes (but this one) whose command line names `socket`."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _names_socket(entry, socket)
    ]


def _kill_units(socket: Path) -> None:
    """SIGKILL every process whose command line names `socket`."""
    for pid in _units(socket):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """Builds provisioners for unit 'box' in tmp_path; kills whatever they left at teardown."""

    def make(
        resources: MemoryResources | None = None, agent: str = "echo", **options: Any
    ) -> ProcessProvisioner:
        context = ProvisionContext(
            unit="box",
            agent=agent,
            agent_options={},
            run_dir=tmp_path / "run",
            log_dir=tmp_path / "log",
            resources=resources if resources is not None else MemoryResources(),
        )
        provisioner = ProcessProvisioner(ProcessProvisioner.Options(**options), context)
        return provisioner

    yield make
    _kill_units(tmp_path / "run" / "unit.sock")


class TestLifecycle:
    async def test_start_serves_a_session(self, make: Make, tmp_path: Path) -> None:
        """start runs a unit that answers a session's prompt on its socket."""
        provisioner = make()
        assert (await provisioner.status()).state == ProvisionState.ABSENT
        await provisioner.start()
        pid = int(provisioner.context.resources.get("pid") or 0)
        assert _alive(pid)
        assert provisioner.context.resources.get("socket") == str(tmp_path / "run" / "unit.sock")
        status = await provisioner.status()
        assert status.state == ProvisionState.RUNNING
        assert status.detail == f"pid {pid}"
        assert await ask(provisioner) == "hello there"
        assert provisioner.dialer().describe() == f"unix: {tmp_path / 'run' / 'unit.sock'}"
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
        assert (tmp_path / "run" / "unit.sock").stat().st_mode & 0o777 == 0o600
        # Its own session, so nothing sent to the controller's group reaches it.
        assert os.getsid(pid) == pid
        assert os.getsid(pid) != os.getsid(0)

    async def test_create_then_start(self, make: Make) -> None:
        """create records the socket and starts nothing; start then runs the unit."""
        provisioner = make()
        await provisioner.create()
        assert (await provisioner.status()).state == ProvisionState.CREATED
        assert provisioner.context.resources.get("pid") is None
        await provisioner.start()
        assert (await provisioner.status()).state == ProvisionState.RUNNING

    async def test_start_twice_is_a_no_op(self, make: Make) -> None:
        """A second start, or a start by a new controller, leaves the running unit be."""
        provisioner = make()
        await provisioner.start()
        pid = provisioner.context.resources.get("pid")
        async with provisioner.dialer().connect() as stream, latis_core.connect(stream) as unit:
            session = await unit.create_session()
        await provisioner.start()
        assert provisioner.context.resources.get("pid") == pid
        # A controller that restarted: a new provisioner with what was recorded.
        again = make(MemoryResources(recorded(provisioner)))
        await again.start()
        assert again.context.resources.get("pid") == pid
        async with again.dialer().connect() as stream, latis_core.connect(stream) as unit:
            resumed = await unit.resume_session(session.id)
            assert await resumed.prompt("still here").text() == "still here"

    async def test_concurrent_starts_make_one_unit(self, make: Make) -> None:
        """Calls on one provisioner run one at a time: two starts at once, one unit."""
        provisioner = make()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(provisioner.start)
            nursery.start_soon(provisioner.start)
        pid = provisioner.context.resources.get("pid")
        assert _units(provisioner.socket) == [int(pid or 0)]

    async def test_stop_then_start_again(self, make: Make) -> None:
        """stop ends the unit (the socket refuses); start brings a new one up."""
        provisioner = make()
        await provisioner.start()
        pid = int(provisioner.context.resources.get("pid") or 0)
        await provisioner.stop()
        assert not _alive(pid)
        status = await provisioner.status()
        assert status.state == ProvisionState.STOPPED
        assert status.detail == "stopped (exit status 0)"
        assert provisioner.context.resources.get("pid") is None
        assert await refuses(provisioner)
        await provisioner.stop()  # idempotent
        await provisioner.start()
        new_pid = int(provisioner.context.resources.get("pid") or 0)
        assert new_pid != pid
        assert await ask(provisioner, "again") == "again"

    async def test_destroy_leaves_nothing(self, make: Make, tmp_path: Path) -> None:
        """destroy stops the unit, removes its run dir and forgets it."""
        provisioner = make()
        await provisioner.start()
        pid = int(provisioner.context.resources.get("pid") or 0)
        await provisioner.destroy()
        assert not _alive(pid)
        assert (await provisioner.status()).state == ProvisionState.ABSENT
        assert recorded(provisioner) == {}
        assert not (tmp_path / "run").exists()
        assert await refuses(provisioner)
        await provisioner.destroy()  # idempotent

    async def test_unit_dies_by_itself(self, make: Make) -> None:
        """A unit that dies is STOPPED; start replaces it."""
        provisioner = make()
        await provisioner.start()
        pid = int(provisioner.context.resources.get("pid") or 0)
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(5):
            while (await provisioner.status()).state == ProvisionState.RUNNING:
                await trio.sleep(0.01)
        status = await provisioner.status()
        assert status.state == ProvisionState.STOPPED
        assert status.detail == f"pid {pid} is gone (killed by SIGKILL)"
        await provisioner.start()
        assert await ask(provisioner) == "hello there"

    async def test_env_cwd_and_log(self, make: Make, tmp_path: Path) -> None:
        """env is added to the environment, cwd is used, output goes to LOG_DIR/UNIT.log."""
        wrapper = ["/bin/sh", "-c", 'echo "var=$LATIS_TEST_VAR cwd=$(pwd)" >&2; exec "$@"', "sh"]
        provisioner = make(
            command=[*wrapper, sys.executable, "-m", "latis_core._unit.cli"],
            env={"LATIS_TEST_VAR": "forty-two"},
            cwd=str(tmp_path),
        )
        await provisioner.start()
        assert await ask(provisioner) == "hello there"
        log = (tmp_path / "log" / "box.log").read_text()
        assert f"var=forty-two cwd={tmp_path}" in log
        assert "latis: starting /bin/sh" in log


class TestSafety:
    async def test_never_signals_a_pid_that_is_not_ours(self, make: Make, tmp_path: Path) -> None:
        """A recorded pid that now belongs to another process is left alone."""
        sleeper = await trio.lowlevel.open_process(["sleep", "60"])
        try:
            socket = str(tmp_path / "run" / "unit.sock")
            provisioner = make(MemoryResources({"pid": str(sleeper.pid), "socket": socket}))
            status = await provisioner.status()
            assert status.state == ProvisionState.STOPPED
            await provisioner.stop()
            assert sleeper.poll() is None
            await provisioner.start()
            assert provisioner.context.resources.get("pid") != str(sleeper.pid)
            assert await ask(provisioner) == "hello there"
            await provisioner.stop()
            provisioner.context.resources.set("pid", str(sleeper.pid))
            await provisioner.destroy()
            assert sleeper.poll() is None
        finally:
            sleeper.kill()
            await sleeper.wait()

    async def test_stop_kills_a_unit_that_ignores_sigterm(self, make: Make) -> None:
        """After stop_timeout, SIGKILL."""
        stubborn = (
            "import signal, socket, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "path = sys.argv[sys.argv.index('--listen') + 1].removeprefix('unix:')\n"
            "s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen()\n"
            "while True: time.sleep(1)\n"
        )
        provisioner = make(command=[sys.executable, "-c", stubborn], stop_timeout=0.3)
        await provisioner.start()
        pid = int(provisioner.context.resources.get("pid") or 0)
        with trio.fail_after(5):
            await provisioner.stop()
        assert not _alive(pid)
        assert (await provisioner.status()).detail == "stopped (killed by SIGKILL)"

    async def test_unit_outlives_its_controller(self, make: Make, tmp_path: Path) -> None:
        """A unit started by a controller that then exits still answers."""
        values = await start_from_a_controller("process", {}, tmp_path)
        pid = int(values["pid"])
        provisioner = make(MemoryResources(values))
        assert _alive(pid)
        assert (await provisioner.status()).state == ProvisionState.RUNNING
        assert await ask(provisioner) == "hello there"
        await provisioner.start()
        assert provisioner.context.resources.get("pid") == str(pid)
        await provisioner.destroy()
        with trio.fail_after(5):  # its new parent reaps it
            while _alive(pid):
                await trio.sleep(0.01)


class TestErrors:
    async def test_command_that_exits_at_once(self, make: Make, tmp_path: Path) -> None:
        """Its exit status and the end of its log are in the error."""
        provisioner = make(
            command=[sys.executable, "-c", "import sys; print('boom: no agent here'); sys.exit(3)"]
        )
        with pytest.raises(ProvisionError) as info:
            await provisioner.start()
        message = str(info.value)
        assert message.startswith("process provisioner for unit 'box': the unit (pid ")
        assert "exited before it listened (exit status 3)" in message
        assert "boom: no agent here" in message
        assert str(tmp_path / "log" / "box.log") in message
        status = await provisioner.status()
        assert status.state == ProvisionState.STOPPED
        assert status.detail == "stopped (exit status 3)"

    async def test_unit_usage_error(self, make: Make) -> None:
        """latis-unit's own complaint (an unknown agent) reaches the message."""
        provisioner = make(agent="no-such-agent")
        expected = r"(?s)exit status 2\).*unknown agent .no-such-agent."
        with pytest.raises(ProvisionError, match=expected):
            await provisioner.start()

    async def test_command_not_found(self, make: Make) -> None:
        provisioner = make(command=["/nonexistent/latis-unit"])
        with pytest.raises(ProvisionError) as info:
            await provisioner.start()
        assert str(info.value).startswith(
            "process provisioner for unit 'box': cannot run /nonexistent/latis-unit --listen"
        )
        assert "No such file or directory" in str(info.value)

    async def test_unit_that_never_listens(self, make: Make) -> None:
        """A unit that does not answer within ready_timeout is stopped, and says so."""
        provisioner = make(
            command=[sys.executable, "-c", "import time; time.sleep(60)"], ready_timeout=0.5
        )
        with pytest.raises(ProvisionError, match=r"did not answer on .*unit\.sock within 0\.5 s"):
            await provisioner.start()
        assert (await provisioner.status()).state == ProvisionState.STOPPED

    async def test_socket_path_too_long(self, tmp_path: Path) -> None:
        context = ProvisionContext(
            "box", "echo", {}, tmp_path / ("x" * 120), tmp_path / "log", MemoryResources()
        )
        provisioner = ProcessProvisioner(ProcessProvisioner.Options(), context)
        with pytest.raises(ProvisionError, match="longer than 107 bytes"):
            await provisioner.start()
