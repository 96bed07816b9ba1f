"""The layers hold: import-linter's contracts (.importlinter) pass, and fail when broken."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("latis_core", "latis_cli", "latis_agents", "latis_transports", "latis_provisioners")


def lint() -> subprocess.CompletedProcess[str]:
    """Run import-linter on the repository's contracts."""
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as m; m()",
         "--no-cache", str(ROOT / ".importlinter")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )


def test_the_contracts_are_kept() -> None:
    """Every layer contract in .importlinter is kept by the code as it is."""
    result = lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("room", "line", "contract"),
    [
        ("latis_core/_wire", "import trio\n", "the wire (_wire) is sans-IO"),
        ("latis_core/_io", "from latis_core._cmdr import controller\n", "latis_core's layers"),
        ("latis_cli", "from latis_core._cmdr import state\n", "the CLI uses latis_core's public"),
        ("agents", "import asyncio\n", "nothing imports asyncio but the ssh"),
    ],
)
def test_a_broken_rule_fails_the_check(room: str, line: str, contract: str) -> None:
    """A module that breaks a rule makes the check fail and names the contract."""
    module = ROOT / room / f"_layer_probe_{uuid.uuid4().hex[:8]}.py"
    module.write_text(f'"""A probe that breaks a layer rule (deleted at once)."""\n{line}')
    try:
        result = lint()
    finally:
        module.unlink()
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout


def test_no_module_imports_itself_back() -> None:
    """No import cycle: no module is reachable again from what it imports (at run time)."""
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    cycles = sorted(
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if graph.find_shortest_chain(importer=b, imported=a)
    )
    assert cycles == []
