"""The `tart` provisioner against a stand-in `tart` on PATH (tests/fake_tart.py).

tart runs on macOS on Apple silicon only, so here it is exercised through a
script that records its command lines and keeps its VMs in a JSON file;
`tart exec` runs the command on this machine, as the guest agent would in
the VM, so the unit script the provisioner sends really starts a
`latis-unit` that dials a real controller. The real tart is exercised only
on macOS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from latis_provisioners.tart import TartProvisioner

import latis_core
from latis_core import (
    MemoryResources,
    ProvisionContext,
    ProvisionError,
    ProvisionState,
    StateStore,
    parse_config,
    paths,
)

pytestmark = pytest.mark.timeout(60)

FAKE = Path(__file__).with_name("fake_tart.py")
LINE = "latis-enroll-1:u0123456789abcdef:" + "s" * 43
UNIT_COMMAND = str(Path(sys.executable).with_name("latis-unit"))


class Tart:
    """The stand-in's command log and VM state."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / "tart.log"
        self.state = folder / "tart.json"

    def commands(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def vms(self) -> dict[str, Any]:
        return dict(json.loads(self.state.read_text())) if self.state.exists() else {}


@pytest.fixture
def tart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tart]:
    """`tart` on PATH is the stand-in; units it started are killed at teardown."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "tart"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    stand_in = Tart(tmp_path)
    monkeypatch.setenv("FAKE_TART_LOG", str(stand_in.log))
    monkeypatch.setenv("FAKE_TART_STATE", str(stand_in.state))
    yield stand_in
    for pid_file in tmp_path.glob("vm*/*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
    for name in stand_in.vms():  # ends any `tart run` still waiting
        vms = stand_in.vms()
        vms[name]["State"] = "stopped"
        stand_in.state.write_text(json.dumps(vms))


Make = Callable[..., TartProvisioner]


@pytest.fixture
def make(tart: Tart, tmp_path: Path) -> Make:
    secret = tmp_path / "enrollment"
    secret.write_text(LINE + "\n")

    def make(resources: MemoryResources | None = None, **options: Any) -> TartProvisioner:
        options = {"image": "ghcr.io/cirruslabs/macos-sequoia-base:latest",
                   "unit_dir": str(tmp_path / "vm"), "unit_command": "true",
                   "connect": "wss://cmdr.example:8443/latis", "secret_file": str(secret),
                   **options}
        context = ProvisionContext("box", "echo", {}, tmp_path / "run", tmp_path / "log",
                                   resources if resources is not None else MemoryResources())
        return TartProvisioner(TartProvisioner.Options(**options), context)

    return make


def without_values(commands: list[list[str]]) -> list[str]:
    return [c[0] for c in commands]


async def test_start_clones_sizes_runs_and_starts_the_unit(make: Make, tart: Tart) -> None:
    """`start` clones, sets cpu and memory, runs headless, waits for the IP, and execs the unit."""
    p = make(cpu=4, memory=8192)
    await p.start()
    commands = tart.commands()
    # `tart run` runs beside the commands after it: its line may come later in the log.
    assert ["run", "--no-graphics", "latis-box"] in commands
    assert [c for c in commands if c[0] not in ("list", "run")] == [
        ["clone", "ghcr.io/cirruslabs/macos-sequoia-base:latest", "latis-box"],
        ["set", "latis-box", "--cpu", "4", "--memory", "8192"],
        ["ip", "latis-box", "--wait", "120"],
        ["exec", "-i", "latis-box", "sh", "-s"],
    ]
    assert tart.vms()["latis-box"]["State"] == "running"
    resources = p.context.resources.values  # type: ignore[attr-defined]
    assert resources["vm"] == "latis-box" and resources["ip"] == "127.0.0.1"
    assert resources["enrollment"] == LINE
    status = await p.status()
    assert status.state is ProvisionState.RUNNING
    assert status.detail == "VM latis-box, running, ip 127.0.0.1"
    await p.start()  # running: no second clone or run
    assert [c[0] for c in tart.commands()].count("run") == 1
    await p.destroy()


async def test_stop_then_start_runs_the_same_vm(make: Make, tart: Tart) -> None:
    """`stop` stops the VM (`tart run` ends) and `start` runs it again without a clone."""
    p = make()
    await p.start()
    await p.stop()
    assert ["stop", "latis-box", "--timeout", "30"] in tart.commands()
    assert (await p.status()).state is ProvisionState.STOPPED
    await p.start()
    names = without_values(tart.commands())
    assert names.count("clone") == 1 and names.count("run") == 2
    await p.destroy()


async def test_destroy_deletes_the_vm_and_forgets_it(make: Make, tart: Tart) -> None:
    """`destroy` stops and deletes the VM and forgets it; a second one does nothing."""
    p = make()
    await p.start()
    await p.destroy()
    assert tart.vms() == {}
    assert ["delete", "latis-box"] in tart.commands()
    assert p.context.resources.values == {}  # type: ignore[attr-defined]
    assert (await p.status()).state is ProvisionState.ABSENT
    await p.destroy()


async def test_a_vm_of_its_name_that_it_did_not_make_is_left_alone(
    make: Make, tart: Tart
) -> None:
    """A VM of the unit's name not recorded as its own is an error naming the unit."""
    await trio.run_process(["tart", "clone", "other-image", "latis-box"])
    with pytest.raises(ProvisionError, match="unit 'box': a VM named 'latis-box' exists"):
        await make().start()
    assert list(tart.vms()) == ["latis-box"]


async def test_tart_errors_are_in_tarts_words(make: Make, tart: Tart) -> None:
    """A failed tart command raises ProvisionError with the unit's name and tart's message."""
    with pytest.raises(ProvisionError) as caught:
        await make(image="missing-vm").start()
    assert str(caught.value) == ("tart provisioner for unit 'box': tart clone failed: "
                                 'Error: the specified VM "missing-vm" does not exist')


async def test_no_tart_on_path_says_where_tart_runs(make: Make) -> None:
    """Without tart, `start` says it is missing and where it runs."""
    with pytest.raises(ProvisionError, match="'no-such-tart' is not on PATH .tart runs on macOS"):
        await make(tart="no-such-tart").start()


async def test_a_tart_unit_dials_home_and_answers(
    tart: Tart, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unit script sent through `tart exec` starts a unit that dials cmdr and answers."""
    home = Path(tempfile.mkdtemp(prefix="ltt", dir="/tmp"))
    monkeypatch.setenv("LATIS_HOME", str(home))
    config = f"""
[daemon]
dial_in_timeout = 30
[units.mac1]
agent = "echo"
provisioner = {{ type = "tart", image = "ghcr.io/cirruslabs/macos-sequoia-base:latest", \
cpu = 4, memory = 8192, unit_dir = "{tmp_path / 'vm'}", unit_command = "{UNIT_COMMAND}", \
cmdr_address = "127.0.0.1" }}
[[units.mac1.accept]]
type = "websocket"
host = "127.0.0.1"
port = 0
tls = true
"""
    try:
        with StateStore(paths().state_file) as state:
            async with latis_core.open_controller(parse_config(config), state) as ctl:
                rt = ctl.units["mac1"]
                assert isinstance(rt.provisioner, TartProvisioner)
                rt.provisioner.set_enroller(ctl.dialins.enroll)  # the controller's part
                await ctl.up("mac1")
                session = await ctl.create_session("mac1")
                record = await ctl.start_prompt(session["session"], "hello from a mac")
                events = [e async for e in ctl.follow(record.id)]
                assert "".join(e[1].text for e in events if e[0] == "chunk") == (
                    "hello from a mac")
                await ctl.destroy("mac1")
        assert tart.vms() == {}
    finally:
        shutil.rmtree(home, ignore_errors=True)

