"""Shared fixtures. Tests use loopback and child processes only."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# helpers.py sits beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

from podman_image import CI_CONTAINERS_CONF, ensure_image  # noqa: E402


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
