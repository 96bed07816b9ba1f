"""A unit that dials cmdr: serve it over the dialed stream, dial again when it drops.

For units behind NAT and ephemeral boxes (`latis-unit --connect URL`): the unit
proves its enrollment in `hello`, and redials with backoff and jitter until
cmdr refuses the proof.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import trio

from latis_core._errors import ConnectError
from latis_core._plugins.transport import Dialer
from latis_core._unit.unit import Unit

__all__ = ["DIAL_BACKOFF", "dial_cmdr"]

log = logging.getLogger("latis.unit")


#: Seconds between dial attempts to cmdr (doubling up to the last), before jitter.
DIAL_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


async def dial_cmdr(
    unit: Unit,
    dialer: Dialer,
    *,
    label: str = "cmdr",
    backoff: Sequence[float] = DIAL_BACKOFF,
) -> str:
    """Dial cmdr's listener and serve it; dial again, with backoff, whenever it drops.

    The unit proves its `enrollment` to cmdr's challenge. Returns only when
    cmdr refuses that proof (`unauthorized`): the reason it gave.
    """
    attempt = 0

    def welcomed() -> None:
        nonlocal attempt
        attempt = 0
        log.info("connected to %s", label)

    while True:
        try:
            async with dialer.connect() as stream:
                await unit.serve(stream, on_handshake=welcomed)
        except (ConnectError, OSError, trio.BrokenResourceError) as exc:
            log.warning("cannot reach %s: %s", label, exc)
        if unit.refused is not None:
            return unit.refused
        delay = backoff[min(attempt, len(backoff) - 1)]
        attempt += 1
        await trio.sleep(delay * random.uniform(0.8, 1.2))
