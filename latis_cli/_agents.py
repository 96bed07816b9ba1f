"""`latis agents list`."""

from __future__ import annotations

import json
import sys
from typing import Annotated

from cyclopts import Parameter


def list_agents(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> None:
    """List the agent adapters this installation can run.

    Examples
    --------
    ```
    latis agents list
    latis agents list --json
    ```

    Args:
        json_output: print a JSON array of names.
    """
    from latis_core import agent_names

    names = agent_names()
    if json_output:
        print(json.dumps(names))
    else:
        sys.stdout.write("".join(f"{name}\n" for name in names))


