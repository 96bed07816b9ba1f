"""Shared fixtures. Tests use loopback and child processes only."""

from __future__ import annotations

import sys
from pathlib import Path

# helpers.py sits beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

from podman_image import podman  # noqa: E402,F401 (a fixture for every test module)
