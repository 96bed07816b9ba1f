"""`latis unit pending|accept|reject|revoke|rotate`: the life of a dial-in unit's enrollment."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

from cyclopts import Parameter

from ._cmdr import OK
from ._run import run_with_cmdr
from ._units import print_enrollment, unit_app


@unit_app.command
def pending(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """The units that dialed in and wait for you to accept them.

    A unit waits when its enrollment asked for approval (`latis unit enroll
    NAME --approve`, or `approve_units = true` in `[daemon]`): it proved its
    secret once, from the address shown, and dials again until you decide.

    For example:
      latis unit pending
      latis unit pending --json | jq -r '.[].unit'

    Args:
        json_output: print a JSON array.
    """

    async def work(cmdr: Any) -> int:
        rows = await cmdr.unit_pending()
        if json_output:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no unit waits for acceptance", file=sys.stderr)
        else:
            import time

            for row in rows:
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["since"]))
                print(f"{row['unit']}\t{row['enrollment']}\tfrom {row['from']}\tsince {since}")
        return OK

    return run_with_cmdr(work)


@unit_app.command
def accept(name: str) -> int:
    """Let a unit that waits in (it gets in when it next dials).

    For example:
      latis unit accept edge

    Args:
        name: the unit (`latis unit pending` lists those that wait).
    """

    async def work(cmdr: Any) -> int:
        data = await cmdr.unit_accept(name)
        print(f"accepted unit {name!r} ({data['enrollment']})", file=sys.stderr)
        return OK

    return run_with_cmdr(work)


@unit_app.command
def reject(name: str) -> int:
    """Refuse a unit that waits, for good: its enrollment never works again.

    For example:
      latis unit reject edge

    Args:
        name: the unit (`latis unit pending` lists those that wait).
    """

    async def work(cmdr: Any) -> int:
        await cmdr.unit_reject(name)
        print(f"rejected unit {name!r}: enroll it again to let it in", file=sys.stderr)
        return OK

    return run_with_cmdr(work)


@unit_app.command
def revoke(name: str) -> int:
    """Revoke a unit's enrollment: its connection is cut now, its secret refused after.

    The enrollment's id is never accepted again, whatever key comes with it.
    `latis unit enroll NAME` issues a new one.

    For example:
      latis unit revoke edge

    Args:
        name: the unit.
    """

    async def work(cmdr: Any) -> int:
        data = await cmdr.unit_revoke(name)
        cut = "; its connection was cut" if data["cut"] else ""
        print(f"revoked {len(data['revoked'])} enrollment(s) of unit {name!r}{cut}",
              file=sys.stderr)
        return OK

    return run_with_cmdr(work)


@unit_app.command
def rotate(
    name: str,
    *,
    address: str | None = None,
    ttl: float | None = None,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Give a unit that dials in a new secret, without downtime.

    The unit stays connected and its old secret keeps working until the new
    one is used a first time: run the printed line on the unit (it rewrites
    the secret file and starts the unit), then stop the old one.

    For example:
      latis unit rotate edge
      latis unit rotate edge --ttl 600 --json | jq -r .secret

    Args:
        name: the unit.
        address: the host the unit dials (default: the listener's, else this machine's name).
        ttl: seconds within which the new secret must be used (default `[daemon] enrollment_ttl`).
        json_output: print the enrollment as a JSON object.
    """

    async def work(cmdr: Any) -> int:
        data = await cmdr.unit_rotate(name, address, ttl=ttl)
        return print_enrollment(data, json_output, f"new secret for unit {name!r} "
                                f"({data['enrollment']}); the old one works until this is "
                                f"used. Run on the unit")

    return run_with_cmdr(work)
