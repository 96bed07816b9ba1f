"""The `qemu` provisioner against real QEMU guests under TCG (tests/qemu_guest.py).

Guest boots are few and one at a time: a busybox echo guest boots in ~4 s, the
guest with a real `latis-unit` answers its first prompt at ~16 s.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from latis_provisioners.qemu import QemuProvisioner, detect_accel, find_orphans
from provisioning import ask, recorded, start_from_a_controller
from qemu_guest import (
    GUEST_PORT,
    HOST_ROOT_SHARE,
    Guest,
    GuestUnavailable,
    channel_unit_script,
    echo_guest,
    echoes,
    script_guest,
    unit_guest,
)

import latis_core
from latis_core import MemoryResources, ProvisionContext, ProvisionError, ProvisionState
from latis_core._cmdr.config import parse_config
from latis_core._cmdr.state import StateDB as State
from latis_core._os.paths import paths
from latis_core._wire.auth import read_secret_file

Make = Callable[..., QemuProvisioner]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")


def _qemus(run_dir: Path) -> list[int]:
    """The pids of the QEMUs whose QMP socket is in `run_dir`."""
    return [orphan.pid for orphan in find_orphans()
            if orphan.pid is not None and str(run_dir) in orphan.detail]


@pytest.fixture(scope="session")
def echo() -> Guest:
    """The busybox echo guest (built once; skipped with the reason if it cannot be)."""
    try:
        return echo_guest()
    except GuestUnavailable as exc:
        pytest.skip(f"no QEMU guest here: {exc}")


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """Builds qemu provisioners for unit 'box' in tmp_path; kills what they left."""

    def make(resources: MemoryResources | None = None, **options: Any) -> QemuProvisioner:
        context = ProvisionContext(
            unit="box", agent="echo", agent_options={}, run_dir=tmp_path / "run",
            log_dir=tmp_path / "log",
            resources=resources if resources is not None else MemoryResources(),
        )
        return QemuProvisioner(QemuProvisioner.Options(**options), context)

    yield make
    for pid in _qemus(tmp_path / "run"):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


async def _echoes(stream: trio.abc.Stream, data: bytes) -> bytes:
    await stream.send_all(data)
    got = b""
    with trio.fail_after(10):
        while len(got) < len(data):
            got += await stream.receive_some(len(data) - len(got))
    return got


class TestOptions:
    """Options are checked before anything runs (no guest boots here)."""

    async def test_bad_options_name_the_unit(self, make: Make, tmp_path: Path) -> None:
        """create refuses impossible options with a message naming the unit."""
        kernel = tmp_path / "vmlinuz"
        kernel.write_bytes(b"")
        cases: dict[str, dict[str, Any]] = {
            "neither": {},
            "no such file": {"kernel": str(tmp_path / "nope")},
            "memory": {"kernel": str(kernel), "memory": "lots"},
            "port": {"kernel": str(kernel), "ports": ["9000:x"]},
            "accel": {"kernel": str(kernel), "accel": "hvf"},
            "share": {"kernel": str(kernel), "shares": ["/only-a-path"]},
            "network": {"kernel": str(kernel), "ports": [9000], "network": False},
        }
        for words, options in cases.items():
            with pytest.raises(ProvisionError, match="unit 'box'") as caught:
                await make(**options).create()
            assert words in str(caught.value), str(caught.value)

    async def test_disk_image_is_a_snapshot(self, make: Make, tmp_path: Path) -> None:
        """A disk image is opened with -snapshot unless told otherwise, so it is never written."""
        image = tmp_path / "disk.qcow2"
        image.write_bytes(b"")
        argv = make(image=str(image), ports=[9000, "9001:22"]).argv("tcg")
        assert f"file={image},if=virtio,format=qcow2" in argv
        assert "-snapshot" in argv
        nic = argv[argv.index("-nic") + 1]
        assert "hostfwd=tcp:127.0.0.1:9000-:9000" in nic
        assert "hostfwd=tcp:127.0.0.1:9001-:22" in nic
        assert "-snapshot" not in make(image=str(image), snapshot=False).argv("tcg")

    def test_auto_accel_wants_hardware_virtualization(self) -> None:
        """accel 'auto' picks kvm only when the CPU shows vmx or svm, and says why."""
        accel, why = detect_accel()
        flags = Path("/proc/cpuinfo").read_text().split()
        if "vmx" not in flags and "svm" not in flags:
            assert accel == "tcg"
        assert accel in ("kvm", "tcg") and why

    def test_seed_example_loads(self, tmp_path: Path) -> None:
        """The seed's qemu example, in this config's words, loads with its options."""
        image = tmp_path / "vm.qcow2"
        config = parse_config(
            "[units.vm1]\n"
            f'provisioner = {{ type = "qemu", image = "{image}", memory = "1G", cpus = 1,'
            " ports = [9000] }\n"
            'dial = { type = "tcp", host = "localhost", port = 9000 }\n'
        )
        provisioner = config.unit("vm1").provisioner
        assert provisioner is not None
        options = provisioner.options
        assert isinstance(options, QemuProvisioner.Options)
        assert (options.memory, options.cpus, options.ports) == ("1G", 1, [9000])

    async def test_qemu_words_when_it_fails(
        self, make: Make, echo: Guest, tmp_path: Path
    ) -> None:
        """A QEMU that exits at once fails start with QEMU's own message."""
        provisioner = make(**echo.options(extra_args=["-no-such-flag"]))
        with pytest.raises(ProvisionError, match="exited before the guest was ready") as caught:
            await provisioner.start()
        assert "-no-such-flag: invalid option" in str(caught.value)
        assert (await provisioner.status()).state == ProvisionState.STOPPED


@pytest.mark.slow
@pytest.mark.timeout(120)
class TestEchoGuest:
    """The busybox echo guest: one boot per test."""

    async def test_life_of_a_vm(self, make: Make, echo: Guest, tmp_path: Path) -> None:
        """A VM started by a controller that exits keeps running, is found again from
        what was recorded, echoes over its port and its channel, shuts down and is
        destroyed without a trace."""
        port = _free_port()
        options = echo.options(ports=[f"{port}:{GUEST_PORT}"], memory="256M", stop_timeout=1)
        values = await start_from_a_controller("qemu", options, tmp_path)
        pid = int(values["pid"])
        assert _alive(pid)
        assert values["accel"] == "tcg"
        assert values["qmp"] == str(tmp_path / "run" / "qmp.sock")
        # A controller that restarted: a new provisioner with what was recorded.
        provisioner = make(MemoryResources(values), **options)
        await provisioner.start()
        assert recorded(provisioner)["pid"] == str(pid)
        status = await provisioner.status()
        assert status.state == ProvisionState.RUNNING
        assert status.detail == f"pid {pid}, tcg, running"
        dialer = provisioner.dialer()
        assert dialer is not None and dialer.describe() == f"tcp: 127.0.0.1:{port}"
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            assert await _echoes(stream, b"over hostfwd\n") == b"over hostfwd\n"
        channel = recorded(provisioner)["channel"]

        async def connect() -> trio.SocketStream:
            return await trio.open_unix_socket(channel)

        assert await echoes(connect, b"over virtio\n") == b"over virtio\n"
        assert [o.unit for o in find_orphans() if o.pid == pid] == ["box"]
        # busybox's init ignores the ACPI request: QMP `quit` ends it after stop_timeout.
        await provisioner.stop()
        assert not _alive(pid)
        status = await provisioner.status()
        assert status.state == ProvisionState.STOPPED
        assert status.detail == "stopped (quit after 1 s)"
        assert not (tmp_path / "run" / "qmp.sock").exists()
        await provisioner.stop()  # idempotent
        await provisioner.destroy()
        assert not (tmp_path / "run").exists()
        assert recorded(provisioner) == {}
        assert (await provisioner.status()).state == ProvisionState.ABSENT
        assert _qemus(tmp_path / "run") == []
        await provisioner.destroy()  # idempotent

    async def test_snapshot_keeps_the_image(self, make: Make, echo: Guest, tmp_path: Path) -> None:
        """A guest that writes its disk leaves the image as it was with `snapshot` (the
        default), and writes it without."""
        image = tmp_path / "disk.raw"
        image.write_bytes(bytes(1024 * 1024))
        for snapshot, expected in ((True, bytes(11)), (False, b"GUEST_WROTE")):
            provisioner = make(**echo.options(image=str(image), snapshot=snapshot,
                                              ready="console:READY", network=False,
                                              stop_timeout=0.5))
            await provisioner.start()
            assert "WROTE" in (tmp_path / "log" / "box.log").read_text()
            await provisioner.destroy()
            assert image.read_bytes()[:11] == expected

    async def test_start_waits_then_gives_up(self, make: Make, echo: Guest) -> None:
        """A guest that never gets ready fails start with its console's words, and its
        QEMU is shut down."""
        provisioner = make(**echo.options(ready="console:NEVER", ready_timeout=6,
                                          stop_timeout=0.5))
        lines: list[str] = []
        provisioner.progress = lines.append
        with pytest.raises(ProvisionError, match="was not ready") as caught:
            await provisioner.start()
        assert "READY" in str(caught.value)  # the console's last lines
        assert lines[0].startswith("booting unit 'box' in QEMU")
        assert any(line.startswith("waiting for unit 'box'") for line in lines[1:])
        assert _qemus(provisioner.context.run_dir) == []
        assert "failed to start" in recorded(provisioner)["exit"]

    async def test_an_unanswering_qemu_is_killed(self, make: Make, echo: Guest) -> None:
        """start returns at once when told not to wait; stop kills a QEMU whose QMP
        does not answer."""
        provisioner = make(**echo.options(ready="console:NEVER", network=False))
        provisioner.wait = False  # `latis unit up --no-wait`
        await provisioner.start()
        pid = int(recorded(provisioner)["pid"])
        assert (await provisioner.status()).state == ProvisionState.RUNNING
        with trio.fail_after(10):
            while not provisioner.qmp.exists():
                await trio.sleep(0.05)
        os.kill(pid, signal.SIGSTOP)  # frozen: QMP cannot answer
        await provisioner.stop()
        assert not _alive(pid)
        status = await provisioner.status()
        assert status.detail == "stopped (QMP did not answer; killed by SIGKILL)"
        await provisioner.destroy()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_real_unit_answers_as_the_seed_dials_it(tmp_path: Path) -> None:
    """A VM running a real latis-unit with a token answers a prompt through its
    forwarded port, reached by the seed example's tcp dialer with the token."""
    token_file = tmp_path / "vm1.token"
    token_file.write_text(secrets.token_urlsafe(24))
    token_file.chmod(0o600)
    try:
        guest = unit_guest(token_file, name="vm1")
    except GuestUnavailable as exc:
        pytest.skip(f"no QEMU guest here: {exc}")
    port = _free_port()
    config = parse_config(f"""
[units.vm1.provisioner]
type = "qemu"
kernel = "{guest.kernel}"
initrd = "{guest.initrd}"
append = "{guest.append}"
memory = "1G"
cpus = 1
ports = ["{port}:{GUEST_PORT}"]
shares = ["{HOST_ROOT_SHARE}"]
stop_timeout = 1

[units.vm1.dial]
type = "tcp"
host = "localhost"
port = {port}
token_file = "{token_file}"
""")
    unit = config.unit("vm1")
    assert unit.provisioner is not None and unit.dial is not None
    context = ProvisionContext("vm1", "echo", {}, tmp_path / "run", tmp_path / "log",
                               MemoryResources())
    provisioner = QemuProvisioner(unit.provisioner.options, context)
    try:
        await provisioner.start()
        token = read_secret_file(unit.dial.token_file or "")
        async with unit.dial.options.connect() as stream:  # type: ignore[attr-defined]
            async with latis_core.connect(stream, token=token) as client:
                assert client.name == "vm1"
                session = await client.create_session()
                assert await session.prompt("from the host").text() == "from the host"
        # Without the token the unit refuses.
        with pytest.raises(latis_core.ConnectError):
            async with unit.dial.options.connect() as stream:  # type: ignore[attr-defined]
                async with latis_core.connect(stream):
                    pass
    finally:
        await provisioner.destroy()
    assert _qemus(tmp_path / "run") == []
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_unit_in_a_vm_dials_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """A controller brings up a VM whose real latis-unit dials home to cmdr's listener
    at 10.0.2.2, and a prompt goes through that connection."""
    home = Path(tempfile.mkdtemp(prefix="lqd", dir="/tmp"))  # short: socket paths
    monkeypatch.setenv("LATIS_HOME", str(home))
    script = home / "unit.sh"
    script.write_text("sleep 3600\n")  # replaced once the unit is enrolled
    try:
        try:
            guest = script_guest(script)
        except GuestUnavailable as exc:
            pytest.skip(f"no QEMU guest here: {exc}")
        config = parse_config(f"""
[units.vm2]
agent = "echo"
[units.vm2.provisioner]
type = "qemu"
kernel = "{guest.kernel}"
initrd = "{guest.initrd}"
append = "{guest.append}"
memory = "1G"
shares = ["{HOST_ROOT_SHARE}"]
ready = "console:HOST_MOUNTED"
channel = ""  # nothing to dial: the controller waits for the unit to dial in
stop_timeout = 1
[[units.vm2.accept]]
type = "tcp"
host = "127.0.0.1"
port = 0
tls = true
""")
        with State(paths().state_file) as state:
            async with latis_core.open_controller(config, state) as ctl:
                # The guest reaches the host's loopback as 10.0.2.2.
                enrolled = await ctl.dialins.enroll("vm2", "10.0.2.2")
                secret = home / "vm2.secret"
                secret.write_text(enrolled["secret"] + "\n")
                secret.chmod(0o600)
                unit = Path(sys.prefix) / "bin" / "latis-unit"
                script.write_text(f"exec {unit} --connect '{enrolled['urls'][0]}'"
                                  f" --secret-file {secret} --name vm2 --agent echo\n")
                lines: list[str] = []
                try:
                    await ctl.up("vm2", progress=lines.append)
                    session = await ctl.create_session("vm2")
                    record = await ctl.start_prompt(session["session"], "dialed home")
                    events = [e async for e in ctl.follow(record.id)]
                    text = "".join(e[1].text for e in events if e[0] == "chunk")
                    assert text == "dialed home"
                    assert any("to dial in" in line for line in lines)
                finally:
                    await ctl.destroy("vm2")
        assert _qemus(home / "run") == []
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_real_unit_over_the_virtio_channel(make: Make, tmp_path: Path) -> None:
    """A VM without ports serves a real latis-unit on its virtio channel, reached by the
    provisioner's dialer; each connection gets a unit of its own."""
    script = tmp_path / "unit.sh"
    script.write_text(channel_unit_script())
    try:
        guest = script_guest(script)
    except GuestUnavailable as exc:
        pytest.skip(f"no QEMU guest here: {exc}")
    provisioner = make(**guest.options(memory="1G", shares=[HOST_ROOT_SHARE], network=False,
                                       stop_timeout=0.5))
    try:
        await provisioner.start()  # ready: the guest opened its end of the channel
        dialer = provisioner.dialer()
        assert dialer is not None and dialer.describe().endswith("(virtio channel)")
        # A unit starts per connection in the guest (Python over 9p under TCG: slow
        # on a busy machine), so its hello may take longer than the usual 10 s.
        assert await ask(provisioner, "first", handshake_timeout=60) == "first"
        # The unit saw EOF and a new one serves the next connection, not the old stream.
        assert await ask(provisioner, "second", handshake_timeout=60) == "second"
    finally:
        await provisioner.destroy()
    assert _qemus(tmp_path / "run") == []
