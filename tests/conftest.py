"""Shared fixtures. Tests use loopback and child processes only."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# helpers.py sits beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

from podman_image import CI_CONTAINERS_CONF, ensure_image  # noqa: E402
from standins import Kmock, Moto, aws_credentials, kmock_server, moto_server  # noqa: E402

#: Set in this process's environment (each xdist worker its own), so that every
#: process the tests start, and what those start, carries it: the daemons that
#: `latis` detaches, the units their provisioners start, sshd and its children.
MARKER = "LATIS_TEST_RUN"
os.environ[MARKER] = f"{os.getpid()}-{uuid.uuid4().hex}"
#: Seconds the processes still ending at the close of the run get to go.
LEFT_GRACE = 10.0


def _started_here() -> dict[int, str]:
    """The live processes this run started: those whose environment carries our
    marker, and our descendants; pid -> command line. (Linux: /proc.)"""
    me = os.getpid()
    mark = f"{MARKER}={os.environ[MARKER]}".encode()
    parents: dict[int, int] = {}
    argvs: dict[int, str] = {}
    ours: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] in ("Z", "X"):
                continue  # a zombie holds nothing but its entry
            parents[pid] = int(fields[1])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            argvs[pid] = argv.replace(b"\0", b" ").decode(errors="replace").strip()
            if mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                ours.add(pid)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
    for pid in parents:
        up, hops = parents.get(pid), 0
        while up is not None and up > 1 and hops < 64:
            if up == me:
                ours.add(pid)
                break
            up, hops = parents.get(up), hops + 1
    return {pid: argvs.get(pid, "") for pid in ours}


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running() -> Iterator[None]:
    """Fail the run if a process the tests started is still alive at its end.

    Each is killed (SIGKILL) once reported, so that one run's leftovers never
    outlive it.
    """
    before = set(_started_here())
    yield
    deadline = time.monotonic() + LEFT_GRACE
    left = {pid: argv for pid, argv in _started_here().items() if pid not in before}
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid: argv for pid, argv in _started_here().items() if pid not in before}
    if not left:
        return
    for pid in left:  # each by its pid: a group may be pytest's own
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    listed = "\n".join(f"  pid {pid}: {argv}" for pid, argv in sorted(left.items()))
    pytest.fail(
        f"the tests left {len(left)} process(es) running (now killed):\n{listed}", pytrace=False
    )


@pytest.fixture(scope="session")
def podman() -> Iterator[str]:
    """podman, configured for this machine, with podman_image.IMAGE imported (once)."""
    path = shutil.which("podman")
    if path is None:
        pytest.skip(
            "podman is not installed (.ci/run installs it:"
            " apt-get install podman runc catatonit busybox-static)"
        )
    with pytest.MonkeyPatch.context() as patch:
        if "CONTAINERS_CONF" not in os.environ and CI_CONTAINERS_CONF.exists():
            patch.setenv("CONTAINERS_CONF", str(CI_CONTAINERS_CONF))
        ensure_image()
        yield path


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    """A moto EC2 server on loopback (standins.py), for a module's tests."""
    with aws_credentials(), moto_server() as server:
        yield server


@pytest.fixture
def ec2(moto: Moto) -> Iterator[Any]:
    """A bare boto3 EC2 client, on the moto server emptied for this test."""
    moto.reset()
    with aws_credentials():
        yield moto.ec2()


@pytest.fixture(scope="module")
def kmock() -> Iterator[Kmock]:
    """A kmock Kubernetes API emulator on loopback (standins.py), for a module's tests."""
    with kmock_server() as server:
        yield server
