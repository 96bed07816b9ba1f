"""`latis agents list` and `latis plugins`."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

from cyclopts import App, Parameter

from ._cmdr import OK

agents_app = App(name="agents", help="The agents behind the units.", help_format="markdown")


@agents_app.command(name="list")
def list_agents(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """List each unit's agent: the adapter it runs, and, when connected, the agent's
    own name, version and capabilities from the handshake.

    Examples
    --------
    ```
    latis agents list
    latis agents list --json
    ```

    Args:
        json_output: print a JSON array.
    """
    from ._cmdr import daemon_pid

    rows: list[dict[str, Any]] = []
    if daemon_pid() is not None:
        from ._run import run_with_cmdr

        async def work(cmdr: Any) -> int:
            from ._cmdr import call

            rows.extend((await call(cmdr, "agents.list"))["units"])
            return OK

        status = run_with_cmdr(work, autostart=False)
        if status != OK:
            return status
    else:
        import os

        from latis_core._config import load_config

        config = load_config(os.environ.get("LATIS_CONFIG") or None)
        rows = [{"unit": n, "adapter": u.agent, "connection": "disconnected"}
                for n, u in sorted(config.units.items())]
    if json_output:
        print(json.dumps(rows, indent=2))
        return OK
    for row in rows:
        agent = row.get("agent")
        found = f"{agent['name']} {agent['version']}" if agent else "(not connected)"
        caps = ", ".join(row.get("capabilities", []))
        print(f"{row['unit']:16} {row['adapter']:10} {found:24} {caps}")
    return OK


def plugins(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """List the installed plugins: agents, transports and provisioners (built-in ones too).

    Third-party packages add their own through the entry-point groups
    `latis.agents`, `latis.transports` and `latis.provisioners`.

    Examples
    --------
    ```
    latis plugins
    latis plugins --json
    ```

    Args:
        json_output: print a JSON object.
    """
    from latis_core._registry import agent_names, provisioner_names, transport_names

    data = {
        "agents": agent_names(),
        "transports": transport_names(),
        "provisioners": provisioner_names(),
    }
    if json_output:
        print(json.dumps(data, indent=2))
    else:
        for group, names in data.items():
            sys.stdout.write(f"{group + ':':14} {', '.join(names)}\n")
    return OK
