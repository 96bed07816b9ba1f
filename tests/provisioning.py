"""What the provisioner tests share: talk to a provisioned unit, and start one
from a controller process that then exits."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio

import latis_core
from latis_core._errors import ConnectError
from latis_core._plugins.provision import MemoryResources

#: Starts a unit through a provisioner, prints what it recorded, and exits.
CONTROLLER = """
import json, sys
from pathlib import Path
import trio
from latis_core._plugins.provision import MemoryResources, ProvisionContext
from latis_core._plugins.registry import load_provisioner

kind, options, run_dir, log_dir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
cls = load_provisioner(kind)
resources = MemoryResources()
context = ProvisionContext("box", "echo", {}, Path(run_dir), Path(log_dir), resources)
trio.run(cls(cls.Options(**options), context).start)
print(json.dumps(resources.values))
"""


async def start_from_a_controller(
    kind: str, options: dict[str, Any], tmp_path: Path
) -> dict[str, str]:
    """Start unit `box` from a controller process that exits; return what it recorded."""
    result = await trio.run_process(
        [sys.executable, "-c", CONTROLLER, kind, json.dumps(options),
         str(tmp_path / "run"), str(tmp_path / "log")],
        capture_stdout=True,
    )
    values: dict[str, str] = json.loads(result.stdout)
    return values


def recorded(provisioner: Any) -> dict[str, str]:
    """What the provisioner recorded."""
    resources = provisioner.context.resources
    assert isinstance(resources, MemoryResources)
    return resources.values


async def ask(provisioner: Any, text: str = "hello there", handshake_timeout: float = 10.0) -> str:
    """Open a session on the unit and return its answer to one prompt."""
    async with provisioner.dialer().connect() as stream, latis_core.connect(
        stream, handshake_timeout=handshake_timeout
    ) as unit:
        assert unit.name == "box"
        session = await unit.create_session()
        return await session.prompt(text).text()


async def refuses(provisioner: Any) -> bool:
    """Whether the unit's address refuses a connection."""
    try:
        async with provisioner.dialer().connect():
            return False
    except ConnectError:
        return True
