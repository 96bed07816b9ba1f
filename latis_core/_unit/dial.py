"""A unit that dials cmdr: serve it over the dialed stream, dial again when it drops.

For units behind NAT and ephemeral boxes (`latis-unit --connect URL`): the unit
proves its enrollment in `hello`, and redials with backoff and jitter until
cmdr refuses the proof. A cmdr too busy to shake hands (a fleet reconnecting
at once) says when to come back (`retry_after`): the unit waits that long plus
up to a quarter more, never less, so that a refused fleet spreads out. A port
that refuses connections outright (cmdr restarting) is dialed again within
`REFUSED_BACKOFF_MAX` seconds however long it has refused.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Sequence

import attrs
import trio

from latis_core._errors import ConnectError
from latis_core._plugins.transport import Dialer
from latis_core._unit.unit import Unit
from latis_core._util import leaves

__all__ = [
    "DIAL_BACKOFF",
    "DIAL_CONNECT_TIMEOUT",
    "REFUSED_BACKOFF_MAX",
    "RETRY_AFTER_MAX",
    "dial_cmdr",
]

log = logging.getLogger("latis.unit")


#: Seconds between dial attempts to cmdr (growing up to the last), at most: each
#: wait is drawn between a tenth of its step and the step.
DIAL_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: The longest step after a dial refused outright (the host is up, nothing listens
#: on cmdr's port: cmdr is restarting). Such a dial costs both sides nothing; at
#: 30 s, a unit that stepped up while cmdr restarted (~8 s with 10,000 units
#: connected) could come back up to 30 s after cmdr did.
REFUSED_BACKOFF_MAX = 10.0
#: The most of a busy cmdr's `retry_after` honoured, in seconds (a bound on a bad value).
RETRY_AFTER_MAX = 600.0
#: Seconds at least that one dial (connect and TLS) may take. A fleet redialing at
#: once queues at cmdr's listener (its waiting room, then the kernel's backlog)
#: and is served at the pace of TLS handshakes (~300 a second on 2 cores: 10,000
#: units in ~35 s); a dial that gave up before its turn would go to the back of
#: the queue with a longer backoff. At 30 s, ~2,000 of 10,000 units did, each
#: time cmdr restarted.
DIAL_CONNECT_TIMEOUT = 60.0


async def dial_cmdr(
    unit: Unit,
    dialer: Dialer,
    *,
    label: str = "cmdr",
    backoff: Sequence[float] = DIAL_BACKOFF,
    on_connected: Callable[[], None] | None = None,
) -> str:
    """Dial cmdr's listener and serve it; dial again, with backoff, whenever it drops.

    The unit proves its `enrollment` to cmdr's challenge. Returns only when
    cmdr refuses that proof (`unauthorized`): the reason it gave.
    `on_connected` is called each time cmdr accepts it.
    """
    attempt = 0
    dialer = _patient(dialer)

    def welcomed() -> None:
        nonlocal attempt
        attempt = 0
        log.info("connected to %s", label)
        if on_connected is not None:
            on_connected()

    while True:
        unit.retry_after = None
        refused = False
        try:
            async with dialer.connect() as stream:
                await unit.serve(stream, on_handshake=welcomed)
        except (ConnectError, OSError, trio.BrokenResourceError) as exc:
            log.warning("cannot reach %s: %s", label, exc)
            refused = _refused_outright(exc)
        if unit.refused is not None:
            return unit.refused
        if unit.retry_after is not None:
            # Told when: that, never sooner, jittered later so the fleet spreads.
            told = min(unit.retry_after, RETRY_AFTER_MAX)
            await trio.sleep(told * random.uniform(1.0, 1.25))
            continue
        delay = backoff[min(attempt, len(backoff) - 1)]
        if refused:
            delay = min(delay, REFUSED_BACKOFF_MAX)
        attempt += 1
        # Anywhere from a tenth of the step to all of it: a fleet that lost
        # cmdr at one instant (a restart) comes back spread over the step, not
        # in waves (a wave past what the listener serves waits a whole step more).
        await trio.sleep(delay * random.uniform(0.1, 1.0))


def _refused_outright(exc: BaseException) -> bool:
    """Whether every address dialed refused the connection (nothing listens there)."""
    found = list(itertools.islice(leaves(exc, causes=True), 64))
    return bool(found) and all(isinstance(leaf, ConnectionRefusedError) for leaf in found)


def _patient(dialer: Dialer) -> Dialer:
    """`dialer` with a connect timeout of at least `DIAL_CONNECT_TIMEOUT`, where it has one."""
    timeout = getattr(dialer, "connect_timeout", None)
    if isinstance(timeout, (int, float)) and timeout < DIAL_CONNECT_TIMEOUT and attrs.has(
        type(dialer)
    ):
        return attrs.evolve(dialer, connect_timeout=DIAL_CONNECT_TIMEOUT)  # type: ignore[misc]
    return dialer
