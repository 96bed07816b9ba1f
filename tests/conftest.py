"""Shared fixtures. Tests use loopback and child processes only."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# helpers.py sits beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

from podman_image import CI_CONTAINERS_CONF, ensure_image  # noqa: E402
from standins import Kmock, Moto, aws_credentials, kmock_server, moto_server  # noqa: E402


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
