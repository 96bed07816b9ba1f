"""The `container` provisioner against real podman, with a real `latis-unit` inside.

No image registry is reachable, so the tests build their image: a busybox
rootfs (`busybox-static`, if installed; an empty rootfs works as well),
`podman import`ed once as `localhost/latis-test-base:1` (kept between runs:
the import is skipped when the image exists). The unit inside is the host's
own Python and this checkout, bind-mounted read-only at the same paths (see
`python_mounts`): /usr, /lib and /lib64 for the interpreter's libraries, the
interpreter's prefixes (sys.base_prefix, sys.prefix: the venv with the
dependencies) and the folder of the editable install (the repo).

podman here needs runc, cgroupfs and no default ulimits (../shared/RECIPES.md):
CONTAINERS_CONF is pointed at .ci/containers.conf unless it is set already.
These tests skip when podman is not installed; CI installs it (.ci/run).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from latis_provisioners.container import ContainerProvisioner
from podman_image import IMAGE, UNIT_COMMAND, podman_run, python_mounts
from provisioning import ask, recorded, refuses, start_from_a_controller

from latis_core._plugins.provision import (
    MemoryResources,
    ProvisionContext,
    ProvisionError,
    ProvisionState,
)

Make = Callable[..., ContainerProvisioner]


@pytest.fixture
def prefix(podman: str) -> Iterator[str]:
    """A unique prefix for this test's container names; every container that has it
    is removed at teardown, whatever happened."""
    prefix = f"latis-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    listed = podman_run("ps", "-a", "--filter", f"name=^{prefix}", "--format", "{{.ID}}")
    ids = listed.stdout.split()
    if ids:
        podman_run("rm", "-f", *ids)


@pytest.fixture
async def make(prefix: str, tmp_path: Path) -> AsyncIterator[Make]:
    """Builds container provisioners for unit 'box' (container PREFIX-box)."""

    def make(resources: MemoryResources | None = None, **options: Any) -> ContainerProvisioner:
        options = {
            "image": IMAGE,
            "mounts": python_mounts(),
            "command": UNIT_COMMAND,
            "name": f"{prefix}-box",
            **options,
        }
        context = ProvisionContext(
            unit="box",
            agent="echo",
            agent_options={},
            run_dir=tmp_path / "run",
            log_dir=tmp_path / "log",
            resources=resources if resources is not None else MemoryResources(),
        )
        return ContainerProvisioner(ContainerProvisioner.Options(**options), context)

    yield make


def containers(prefix: str) -> list[str]:
    """`podman ps -a`: the names of the containers whose names start with `prefix`."""
    listed = podman_run("ps", "-a", "--filter", f"name=^{prefix}", "--format", "{{.Names}}")
    return listed.stdout.split()


def started_at(container: str) -> str:
    return podman_run("container", "inspect", "-f", "{{.State.StartedAt}}", container).stdout


class TestLifecycle:
    async def test_start_serves_a_session(self, make: Make, prefix: str, tmp_path: Path) -> None:
        """start creates and starts the container; its unit answers on the mounted socket."""
        provisioner = make()
        assert (await provisioner.status()).state == ProvisionState.ABSENT
        started = time.perf_counter()
        await provisioner.start()
        print(f"create + start + ready: {time.perf_counter() - started:.3f} s")
        container = recorded(provisioner)["container"]
        assert len(container) == 64
        status = await provisioner.status()
        assert status.state == ProvisionState.RUNNING
        assert status.detail == f"container {container[:12]}, running"
        assert containers(prefix) == [f"{prefix}-box"]
        socket = tmp_path / "run" / "unit.sock"
        assert provisioner.dialer().describe() == f"unix: {socket}"
        assert socket.stat().st_uid == os.getuid()
        assert socket.stat().st_mode & 0o777 == 0o600
        assert await ask(provisioner) == "hello there"

    async def test_create_then_start(self, make: Make) -> None:
        """create makes the container without starting it."""
        provisioner = make()
        await provisioner.create()
        container = recorded(provisioner)["container"]
        assert (await provisioner.status()).state == ProvisionState.CREATED
        await provisioner.create()  # idempotent
        await provisioner.start()
        assert recorded(provisioner)["container"] == container
        assert await ask(provisioner) == "hello there"

    async def test_start_twice_is_a_no_op(self, make: Make) -> None:
        """A second start, or a start by a new controller, leaves the running container be."""
        provisioner = make()
        await provisioner.start()
        container = recorded(provisioner)["container"]
        since = started_at(container)
        started = time.perf_counter()
        await provisioner.start()
        print(f"start when running: {time.perf_counter() - started:.3f} s")
        again = make(MemoryResources(recorded(provisioner)))
        await again.start()
        # Lost its records: finds the container by its name and label.
        lost = make()
        await lost.start()
        assert recorded(provisioner)["container"] == container
        assert recorded(again)["container"] == container
        assert recorded(lost)["container"] == container
        assert started_at(container) == since
        assert await ask(again) == "hello there"

    async def test_stop_then_start_again(self, make: Make) -> None:
        """stop stops the container (the socket refuses); start starts the same one."""
        provisioner = make()
        await provisioner.start()
        container = recorded(provisioner)["container"]
        started = time.perf_counter()
        await provisioner.stop()
        print(f"stop: {time.perf_counter() - started:.3f} s")
        status = await provisioner.status()
        assert status.state == ProvisionState.STOPPED
        assert status.detail == f"container {container[:12]}, exited (0)"
        assert await refuses(provisioner)
        await provisioner.stop()  # idempotent
        started = time.perf_counter()
        await provisioner.start()
        print(f"start again + ready: {time.perf_counter() - started:.3f} s")
        assert recorded(provisioner)["container"] == container
        assert await ask(provisioner, "again") == "again"

    async def test_destroy_leaves_nothing(self, make: Make, prefix: str, tmp_path: Path) -> None:
        """destroy removes the container and the run dir, and forgets them."""
        provisioner = make()
        await provisioner.start()
        started = time.perf_counter()
        await provisioner.destroy()
        print(f"destroy: {time.perf_counter() - started:.3f} s")
        assert (await provisioner.status()).state == ProvisionState.ABSENT
        assert recorded(provisioner) == {}
        assert containers(prefix) == []
        assert not (tmp_path / "run").exists()
        assert await refuses(provisioner)
        await provisioner.destroy()  # idempotent

    async def test_container_removed_behind_our_back(self, make: Make) -> None:
        """A recorded container that is gone is ABSENT; start makes a new one."""
        provisioner = make()
        await provisioner.start()
        container = recorded(provisioner)["container"]
        podman_run("rm", "-f", container)
        assert (await provisioner.status()).state == ProvisionState.ABSENT
        await provisioner.start()
        assert recorded(provisioner)["container"] != container
        assert await ask(provisioner) == "hello there"

    async def test_unit_outlives_its_controller(self, make: Make, tmp_path: Path) -> None:
        """A unit started by a controller that then exits still answers."""
        provisioner = make()
        options = attrs.asdict(provisioner.options)
        values = await start_from_a_controller("container", options, tmp_path)
        provisioner = make(MemoryResources(values))
        assert (await provisioner.status()).state == ProvisionState.RUNNING
        assert await ask(provisioner) == "hello there"
        await provisioner.destroy()


class TestErrors:
    async def test_missing_image(self, make: Make, prefix: str) -> None:
        """The engine's own message is in the error; nothing is left behind."""
        provisioner = make(image="localhost/latis-no-such-image:1")
        with pytest.raises(ProvisionError) as info:
            await provisioner.start()
        message = str(info.value)
        assert message.startswith("container provisioner for unit 'box': podman create failed: ")
        assert "localhost/latis-no-such-image:1" in message
        assert recorded(provisioner) == {}
        assert containers(prefix) == []

    async def test_no_engine(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Neither podman nor docker on PATH (or not the one asked for): a clear error."""
        monkeypatch.setenv("PATH", str(tmp_path))
        context = ProvisionContext(
            "box", "echo", {}, tmp_path / "run", tmp_path / "log", MemoryResources()
        )
        provisioner = ContainerProvisioner(ContainerProvisioner.Options(image=IMAGE), context)
        with pytest.raises(ProvisionError) as info:
            await provisioner.start()
        assert str(info.value) == (
            "container provisioner for unit 'box': no container engine: neither podman nor"
            " docker is on PATH (install one, or set `engine` to its path)"
        )
        options = ContainerProvisioner.Options(image=IMAGE, engine="docker")
        with pytest.raises(ProvisionError, match="the container engine 'docker' is not on PATH"):
            await ContainerProvisioner(options, context).status()

    async def test_command_that_exits_at_once(self, make: Make) -> None:
        """The container's exit status and the end of its log are in the error."""
        fails = [sys.executable, "-c", "import sys; sys.exit('boom: no agent here')"]
        provisioner = make(command=fails)
        with pytest.raises(ProvisionError) as info:
            await provisioner.start()
        message = str(info.value)
        assert message.startswith("container provisioner for unit 'box': the container ")
        assert "exited (exit status 1) before its unit listened" in message
        assert "boom: no agent here" in message
        assert (await provisioner.status()).state == ProvisionState.STOPPED

    async def test_unit_that_never_listens(self, make: Make, prefix: str) -> None:
        """A unit that does not answer within ready_timeout: the container is stopped."""
        provisioner = make(
            command=[sys.executable, "-c", "import time; time.sleep(60)"], ready_timeout=1.0
        )
        with pytest.raises(ProvisionError, match=r"did not answer on .*unit\.sock within 1 s"):
            await provisioner.start()
        assert (await provisioner.status()).state == ProvisionState.STOPPED

    async def test_a_container_that_is_not_ours(self, make: Make, prefix: str) -> None:
        """A container of our name without our label is neither used nor removed."""
        podman_run("create", "--name", f"{prefix}-box", IMAGE, "/bin/sh")
        provisioner = make()
        with pytest.raises(ProvisionError, match="is not this unit's"):
            await provisioner.start()
        assert containers(prefix) == [f"{prefix}-box"]
