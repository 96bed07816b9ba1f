"""Python's cyclic garbage collector, set for a process that holds a fleet (cmdr's)."""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLDS", "tune_gc"]

#: Collector thresholds (`gc.set_threshold`) that `tune_gc` sets: young
#: collections every 50,000 allocations, not 700.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Keep the cyclic collector out of the way of a process that runs a fleet,
    as cmdr's daemon does: call it once, when everything long-lived is set up
    (the controller open, its units up).

    What exists then is frozen (`gc.freeze`): no collection walks it again,
    and a cycle among those objects that becomes garbage later is never freed.
    Young collections come every 50,000 allocations instead of 700: garbage is
    freed by reference counting, and cycles are rare in latis. With Python's
    defaults, every young pass walks the live state of every running prompt,
    and a full pass the whole process (a 20,000-session daemon: 15-40 ms each,
    about every second). The settings are the process's: a library leaves them
    to the program that uses it, so nothing in latis calls this but cmdr.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
