"""The `libvirt` provisioner against libvirt's real API: its in-process test driver
(`test:///default`), and a real libvirtd booting the busybox guest when one can run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from latis_provisioners.libvirt import NAMESPACE, LibvirtProvisioner, find_orphans
from provisioning import recorded

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
        assert provisioner.dialer().describe() == f"unix: {tmp_path}/run/box/unit.sock"

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

    async def test_errors_carry_libvirt_words(self, make: Make) -> None:
        """A failure names the unit and says what libvirt said."""
        with pytest.raises(ProvisionError, match="unit 'box'.*neither"):
            await make(kernel=None).create()
        with pytest.raises(ProvisionError, match="memory 'lots'"):
            await make(memory="lots").create()
        with pytest.raises(ProvisionError, match="unit 'box': cannot look up") as caught:
            await make(uri="test:///no/such/file.xml").status()
        assert "file.xml" in str(caught.value)
