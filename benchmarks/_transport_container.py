"""The container transport for bench.py: its floor and latis over it.

Each helper starts its own container (from the tests' image, built here
if absent: a busybox rootfs, the host's Python and this checkout mounted
read-only at their own paths, as in tests/podman_image.py) and removes it on
leaving. `raw_round_trips` measures `podman exec -i CTR cat` alone (no
latis); `latis_unit_stream` dials `python -m latis_core._unit_cli --stdio`
in the container through `ContainerDialer`. podman needs the settings of
.ci/containers.conf here: CONTAINERS_CONF points there unless it is set.
Nothing here prints.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

import latis_core

__all__ = ["latis_unit_stream", "raw_round_trips"]

REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/latis-test-base:1"
ENGINE = "podman"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    ci_conf = REPO / ".ci" / "containers.conf"
    if "CONTAINERS_CONF" not in env and ci_conf.exists():
        env["CONTAINERS_CONF"] = str(ci_conf)
    return env


async def _podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(120):
        result = await trio.run_process(
            [ENGINE, *args], capture_stdout=True, capture_stderr=True, env=_env(), check=False
        )
    if check and result.returncode != 0:
        error = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{ENGINE} {args[0]} failed: {error}")
    return result


def _mounts() -> list[str]:
    """`-v` arguments that let this Python, with latis, run in the container."""
    wanted = [Path("/usr"), Path("/lib"), Path("/lib64")]
    wanted += [Path(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
    wanted += [Path(p) for p in site.getsitepackages()]
    assert latis_core.__file__ is not None
    wanted.append(Path(latis_core.__file__).resolve().parent.parent)
    kept: list[Path] = []
    for path in sorted({p for p in wanted if p.exists()}, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return [arg for path in kept for arg in ("-v", f"{path}:{path}:ro")]


def _rootfs(archive: Path) -> None:
    root = archive.parent / "rootfs"
    for folder in ("bin", "etc", "root", "run", "tmp"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("the container benchmark needs busybox (apt-get install busybox-static)")
    shutil.copy(busybox, root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")


@asynccontextmanager
async def _container() -> AsyncIterator[str]:
    """A running container of our own; removed on leaving."""
    if shutil.which(ENGINE) is None:
        raise RuntimeError(f"{ENGINE} is not installed")
    if (await _podman("image", "exists", IMAGE, check=False)).returncode != 0:
        with tempfile.TemporaryDirectory() as folder:
            archive = Path(folder) / "rootfs.tar"
            await trio.to_thread.run_sync(_rootfs, archive)
            await _podman("import", "--quiet", str(archive), IMAGE)
    name = f"latis-bench-{uuid.uuid4().hex[:8]}"
    sleeper = [sys.executable, "-c", "import time; time.sleep(100000)"]
    await _podman("run", "-d", "--init", "--name", name, *_mounts(), IMAGE, *sleeper)
    try:
        yield name
    finally:
        with trio.CancelScope(shield=True):
            await _podman("rm", "-f", "-t", "0", name)


async def raw_round_trips(n: int, size: int = 100) -> list[float]:
    """`n` round trips of `size` bytes through `podman exec -i CTR cat`; seconds each."""
    from latis_transports.local import open_local

    payload = b"x" * size
    times = []
    async with _container() as name:
        argv = [ENGINE, "exec", "-i", name, "/bin/busybox", "cat"]
        async with open_local(argv, env=_env(), stderr=subprocess.DEVNULL) as stream:
            send, receive, clock = stream.send_all, stream.receive_some, time.perf_counter
            for _ in range(n):
                start = clock()
                await send(payload)
                got = 0
                while got < size:
                    data = await receive()
                    if not data:
                        raise RuntimeError("cat in the container ended")
                    got += len(data)
                times.append(clock() - start)
    return times


@asynccontextmanager
async def latis_unit_stream() -> AsyncIterator[trio.abc.Stream]:
    """A stream, through `ContainerDialer`, to a latis echo unit in a container of its own."""
    from latis_transports.container import ContainerDialer

    command = (sys.executable, "-m", "latis_core._unit_cli", "--stdio")
    async with _container() as name:
        async with ContainerDialer(name, engine=ENGINE, command=command).connect() as stream:
            yield stream
