"""The config examples in the cloud, cluster and VM provisioner docs load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from latis_core import parse_config

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["provisioner-cloud-aws.md", "provisioner-kubernetes.md", "provisioner-tart.md"]


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_toml_examples_load(page: str) -> None:
    """Each `toml` block of the page that holds units reads as a valid config."""
    blocks = re.findall(r"```toml\n(.*?)```", (DOCS / page).read_text(), re.S)
    units = [b for b in blocks if "[units." in b]
    assert units
    for block in units:
        config = parse_config(block)
        assert any(u.provisioner is not None and u.accept for u in config.units.values())
