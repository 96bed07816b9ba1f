"""`latis agents list` and `latis plugins`."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

from cyclopts import App, Parameter

from ._cmdr import OK

agents_app = App(name="agents", help="The agents behind the units.", help_format="plaintext")


@agents_app.command(name="list")
def list_agents(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """List each unit's agent: the adapter it runs, and, when connected, the agent's
    own name, version and capabilities from the handshake.

    For example:
      latis agents list
      latis agents list --json

    Args:
        json_output: print a JSON array.
    """
    from ._cmdr import daemon_pid

    rows: list[dict[str, Any]] = []
    if daemon_pid() is not None:
        from ._run import run_with_cmdr

        async def work(cmdr: Any) -> int:

            rows.extend((await cmdr.agents_list())["units"])
            return OK

        status = run_with_cmdr(work, autostart=False)
        if status != OK:
            return status
    else:
        import os

        from latis_core import load_config

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


#: Agent CLIs latis knows how to run, and the adapter that runs each.
KNOWN_AGENTS = {
    "claude": "command (preset claude), or acp through claude-agent-acp",
    "claude-agent-acp": "acp",
    "codex": "command (preset codex)",
    "codex-acp": "acp",
    "gemini": "acp (gemini --experimental-acp), or command (preset gemini)",
    "goose": "acp (goose acp)",
    "aider": "command (preset aider)",
    "llm": "command (preset llm)",
    "ollama": "openai (base_url=http://127.0.0.1:11434/v1)",
}


@agents_app.command
def available(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """List the installed adapters, and which known agent CLIs are on PATH (and where).

    For example:
      latis agents available
      latis agents available --json | jq '.agents[] | select(.found)'

    Args:
        json_output: print a JSON object.
    """
    import shutil

    from latis_core import agent_names

    found = [
        {"agent": name, "found": shutil.which(name) is not None, "path": shutil.which(name),
         "adapter": adapter}
        for name, adapter in KNOWN_AGENTS.items()
    ]
    if json_output:
        print(json.dumps({"adapters": agent_names(), "agents": found}, indent=2))
        return OK
    sys.stdout.write(f"adapters: {', '.join(agent_names())}\n\n")
    for row in found:
        where = row["path"] or "not on PATH"
        sys.stdout.write(f"{row['agent']:18} {where:40} {row['adapter']}\n")
    return OK


def plugins(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """List the installed plugins: agents, transports and provisioners (built-in ones too).

    Third-party packages add their own through the entry-point groups
    `latis.agents`, `latis.transports` and `latis.provisioners`.

    For example:
      latis plugins
      latis plugins --json

    Args:
        json_output: print a JSON object.
    """
    from latis_core import agent_names, plugin_problems, provisioner_names, transport_names

    data: dict[str, Any] = {
        "agents": agent_names(),
        "transports": transport_names(),
        "provisioners": provisioner_names(),
    }
    problems = plugin_problems()
    if json_output:
        print(json.dumps(data | {"unavailable": problems}, indent=2))
        return OK
    for group, names in data.items():
        broken = problems.get(group, {})
        shown = [f"{n} (unavailable)" if n in broken else n for n in names]
        sys.stdout.write(f"{group + ':':14} {', '.join(shown)}\n")
    for group, broken in problems.items():
        for name, why in broken.items():
            sys.stdout.write(f"\n{group[:-1]} {name!r} is unavailable: {why['reason']}\n"
                             f"  fix: {why['fix']}\n")
    return OK
