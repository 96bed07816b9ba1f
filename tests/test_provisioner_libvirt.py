"""The `libvirt` provisioner against libvirt's real API: its in-process test driver
(`test:///default`), and a real libvirtd booting the busybox guest when one can run."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from latis_provisioners.libvirt import NAMESPACE, LibvirtProvisioner, find_orphans
from provisioning import ask, recorded
from qemu_guest import (
    HOST_ROOT_SHARE,
    GuestUnavailable,
    channel_unit_script,
    echo_guest,
    echoes,
    script_guest,
)

from latis_core import MemoryResources, ProvisionContext, ProvisionError, ProvisionState

libvirt = pytest.importorskip(
    "libvirt",
    reason="libvirt-python is not installed (.ci/run installs it: pip install -e '.[libvirt]'"
    " after apt-get install libvirt-dev pkg-config gcc python3-dev)",
)

TEST_URI = "test:///default"

Make = Callable[..., LibvirtProvisioner]


@pytest.fixture
def conn() -> Any:
    """A connection to libvirt's test driver, held so its domains live through the test
    (the driver's state lasts while any connection to it is open)."""
    libvirt.registerErrorHandler(lambda *_: None, None)
    connection = libvirt.open(TEST_URI)
    yield connection
    for domain in connection.listAllDomains():
        if domain.name().startswith("latis-"):
            if domain.isActive():
                domain.destroy()
            domain.undefine()
    connection.close()


@pytest.fixture
async def make(tmp_path: Path, conn: Any) -> AsyncIterator[Make]:
    """Builds libvirt provisioners on the test driver for unit 'box' in tmp_path."""
    made: list[LibvirtProvisioner] = []

    def make(resources: MemoryResources | None = None, unit: str = "box",
             **options: Any) -> LibvirtProvisioner:
        context = ProvisionContext(
            unit=unit, agent="echo", agent_options={}, run_dir=tmp_path / "run" / unit,
            log_dir=tmp_path / "log",
            resources=resources if resources is not None else MemoryResources(),
        )
        options = {"uri": TEST_URI, "kernel": "/boot/vmlinuz", "ready": "none", **options}
        provisioner = LibvirtProvisioner(LibvirtProvisioner.Options(**options), context)
        made.append(provisioner)
        return provisioner

    yield make
    for provisioner in made:
        await provisioner.aclose()


class TestTestDriver:
    async def test_whole_life(self, make: Make, conn: Any, tmp_path: Path) -> None:
        """create defines a marked domain, start runs it, stop shuts it down, start runs
        it again, destroy stops and undefines it and removes the run dir."""
        provisioner = make(memory="256M", cpus=2, append="console=ttyS0")
        assert (await provisioner.status()).state == ProvisionState.ABSENT
        await provisioner.create()
        domain = conn.lookupByName("latis-box")
        assert not domain.isActive()
        assert (await provisioner.status()).state == ProvisionState.CREATED
        values = recorded(provisioner)
        assert values["domain"] == "latis-box"
        assert values["uuid"] == domain.UUIDString()
        assert values["uri"] == TEST_URI
        marker = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)
        assert 'name="box"' in marker
        assert domain.maxMemory() == 256 * 1024
        assert domain.info()[3] == 2  # vcpus
        xml = domain.XMLDesc()
        assert "<cmdline>console=ttyS0</cmdline>" in xml
        assert f"{tmp_path}/run/box/unit.sock" in xml

        await provisioner.start()
        assert domain.isActive()
        status = await provisioner.status()
        assert status.state == ProvisionState.RUNNING
        assert status.detail == f"domain latis-box at {TEST_URI}"
        await provisioner.start()  # idempotent
        dialer = provisioner.dialer()
        assert dialer is not None
        assert dialer.describe() == f"unix: {tmp_path}/run/box/unit.sock (virtio channel)"

        await provisioner.stop()
        assert not domain.isActive()
        status = await provisioner.status()
        assert status.state == ProvisionState.STOPPED
        assert status.detail.endswith("stopped (shut down)")
        await provisioner.stop()  # idempotent
        await provisioner.start()
        assert domain.isActive()

        await provisioner.destroy()
        assert [d.name() for d in conn.listAllDomains() if d.name() == "latis-box"] == []
        assert recorded(provisioner) == {}
        assert not (tmp_path / "run" / "box").exists()
        assert (await provisioner.status()).state == ProvisionState.ABSENT
        await provisioner.destroy()  # idempotent

    async def test_restart_finds_the_domain(self, make: Make, conn: Any) -> None:
        """A new provisioner with what was recorded finds the running domain and stops it."""
        first = make()
        await first.start()
        again = make(MemoryResources(recorded(first)))
        assert (await again.status()).state == ProvisionState.RUNNING
        await again.start()
        assert recorded(again)["uuid"] == recorded(first)["uuid"]
        await again.destroy()
        assert (await first.status()).state == ProvisionState.ABSENT

    async def test_orphans_are_latis_domains_only(self, make: Make) -> None:
        """orphans lists the domains latis defined, by unit, and not the driver's own."""
        await make(unit="box").start()
        await make(unit="other").create()
        orphans = await make(unit="third").orphans()
        assert sorted((o.unit, o.detail) for o in orphans) == [
            ("box", f"domain latis-box at {TEST_URI}, running"),
            ("other", f"domain latis-other at {TEST_URI}, defined"),
        ]
        assert {o.unit for o in await trio.to_thread.run_sync(find_orphans, TEST_URI)} == {
            "box", "other"}

    async def test_a_foreign_domain_is_left_alone(self, make: Make, conn: Any) -> None:
        """A domain of the unit's name that latis did not define is refused, untouched."""
        provisioner = make(name="test")  # the test driver's own domain
        for call in (provisioner.start, provisioner.destroy, provisioner.status):
            with pytest.raises(ProvisionError, match="latis did not define it"):
                await call()
        assert conn.lookupByName("test").isActive()

    async def test_template(self, make: Make, conn: Any, tmp_path: Path) -> None:
        """A template's placeholders are filled in and latis's metadata is added."""
        template = tmp_path / "domain.xml"
        template.write_text(
            "<domain type='test'><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type>hvm</type><kernel>/k</kernel><cmdline>unit=$unit</cmdline></os>"
            "<devices><channel type='unix'><source mode='bind' path='$channel'/>"
            "<target type='virtio' name='x'/></channel></devices></domain>"
        )
        provisioner = make(template=str(template))
        await provisioner.start()
        domain = conn.lookupByName("latis-box")
        xml = domain.XMLDesc()
        assert "<cmdline>unit=box</cmdline>" in xml
        assert str(provisioner.channel) in xml
        assert 'name="box"' in domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)
        await provisioner.destroy()

    async def test_start_without_waiting(self, make: Make, conn: Any) -> None:
        """With `wait` off, start returns once the domain runs, whatever `ready` says."""
        provisioner = make(ready="console:NEVER", ready_timeout=0.5)
        provisioner.wait = False
        await provisioner.start()
        assert conn.lookupByName("latis-box").isActive()
        provisioner.wait = True
        with pytest.raises(ProvisionError, match="was not ready"):
            await provisioner.start()

    async def test_errors_carry_libvirt_words(self, make: Make) -> None:
        """A failure names the unit and says what libvirt said."""
        with pytest.raises(ProvisionError, match="unit 'box'.*neither"):
            await make(kernel=None).create()
        with pytest.raises(ProvisionError, match="memory 'lots'"):
            await make(memory="lots").create()
        with pytest.raises(ProvisionError, match="unit 'box': cannot look up") as caught:
            await make(uri="test:///no/such/file.xml").status()
        assert "file.xml" in str(caught.value)


#: What .ci/run appends to /etc/libvirt/qemu.conf (../shared/RECIPES.md, "libvirt").
CI_MARKER = "# latis CI (.ci/run)"
SYSTEM_SOCKET = Path("/run/libvirt/libvirt-sock")


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A libvirtd for qemu:///system: the running one, or one started here (and stopped
    by its pid afterwards); skipped with the reason when there can be none."""
    try:
        conf = Path("/etc/libvirt/qemu.conf").read_text()
    except OSError as exc:
        pytest.skip(f"no libvirt QEMU driver config: {exc}")
    if CI_MARKER not in conf:
        pytest.skip("/etc/libvirt/qemu.conf is not set up to run QEMU as root without"
                    " a security driver (.ci/run does it)")
    daemon = None
    if not SYSTEM_SOCKET.exists():
        binary = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
        if os.geteuid() != 0 or not os.path.exists(binary):
            pytest.skip("no libvirtd running, and none can be started here (needs root"
                        " and libvirt-daemon)")
        log = tmp_path_factory.mktemp("libvirtd") / "libvirtd.log"
        with open(log, "wb") as out:
            daemon = subprocess.Popen([binary], stdout=out, stderr=out,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while not SYSTEM_SOCKET.exists() and daemon.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not SYSTEM_SOCKET.exists():
            daemon.kill()
            daemon.wait()
            pytest.skip(f"libvirtd did not start: {log.read_text()[-500:]}")
    try:
        libvirt.registerErrorHandler(lambda *_: None, None)
        try:
            libvirt.open("qemu:///system").close()
        except libvirt.libvirtError as exc:
            pytest.skip(f"libvirtd does not answer on qemu:///system: {exc}")
        yield "qemu:///system"
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_real_libvirtd_boots_a_guest(libvirtd: str, tmp_path: Path) -> None:
    """Through a real libvirtd, the busybox guest boots, echoes on its virtio channel,
    shuts down and is undefined without a trace."""
    try:
        guest = echo_guest()
    except GuestUnavailable as exc:
        pytest.skip(f"no QEMU guest here: {exc}")
    context = ProvisionContext("box", "echo", {}, tmp_path / "run", tmp_path / "log",
                               MemoryResources())
    options = LibvirtProvisioner.Options(
        uri=libvirtd, name=f"latis-test-{os.getpid()}", kernel=str(guest.kernel),
        initrd=str(guest.initrd), append=guest.append, memory="256M", stop_timeout=1,
    )
    provisioner = LibvirtProvisioner(options, context)
    try:
        await provisioner.start()  # ready: the guest opened its end of the channel
        assert (await provisioner.status()).state == ProvisionState.RUNNING
        channel = str(provisioner.channel)

        async def connect() -> trio.SocketStream:
            return await trio.open_unix_socket(channel)

        assert await echoes(connect, b"over virtio\n") == b"over virtio\n"
        assert "box" in {o.unit for o in await provisioner.orphans()}
        # busybox's init ignores ACPI: the domain is destroyed after stop_timeout.
        await provisioner.stop()
        status = await provisioner.status()
        assert status.state == ProvisionState.STOPPED
        assert status.detail.endswith("stopped (destroyed after 1 s)")
    finally:
        await provisioner.destroy()
        await provisioner.aclose()
    left = await trio.to_thread.run_sync(find_orphans, libvirtd)
    assert [o for o in left if o.detail.split()[1] == options.name] == []
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_real_libvirtd_runs_a_real_unit(libvirtd: str, tmp_path: Path) -> None:
    """Through a real libvirtd, a guest serves a real latis-unit on its virtio channel
    (the host root shared over 9p), reached by the provisioner's dialer."""
    script = tmp_path / "unit.sh"
    script.write_text(channel_unit_script())
    try:
        guest = script_guest(script)
    except GuestUnavailable as exc:
        pytest.skip(f"no QEMU guest here: {exc}")
    context = ProvisionContext("box", "echo", {}, tmp_path / "run", tmp_path / "log",
                               MemoryResources())
    options = LibvirtProvisioner.Options(
        uri=libvirtd, name=f"latis-test-{os.getpid()}", kernel=str(guest.kernel),
        initrd=str(guest.initrd), append=guest.append, memory="1G", network=False,
        shares=[HOST_ROOT_SHARE], stop_timeout=0.5,
    )
    provisioner = LibvirtProvisioner(options, context)
    try:
        await provisioner.start()  # ready: the guest opened its end of the channel
        # (A second connection meets a fresh unit: tested once, on QEMU directly.)
        # The guest's Python starts under TCG over 9p: its hello may take long
        # on a busy machine (as on QEMU directly, test_provisioner_qemu.py).
        assert await ask(provisioner, "through libvirt", handshake_timeout=60) == "through libvirt"
    finally:
        await provisioner.destroy()
        await provisioner.aclose()
    assert not (tmp_path / "run").exists()
