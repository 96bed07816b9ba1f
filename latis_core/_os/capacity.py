"""What this machine can take: the unit-side probe for placement (no agent involved).

Read from the kernel at each call (Linux: `/proc/meminfo`'s MemAvailable,
which counts reclaimable cache as free); on a system without it the memory
members are left out and placement goes by sessions alone.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["probe_capacity"]

_MEMINFO = "/proc/meminfo"


def _meminfo() -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        with open(_MEMINFO, "rb") as f:
            for line in f:
                name, _, rest = line.partition(b":")
                if name in (b"MemAvailable", b"MemTotal"):
                    found[name.decode()] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return found


def probe_capacity(sessions: int, max_sessions: int | None) -> dict[str, Any]:
    """The `capacity` of a unit's `state.update` (PROTOCOL.md 4.13)."""
    memory = _meminfo()
    out: dict[str, Any] = {"cpus": os.cpu_count() or 1, "sessions": sessions}
    if max_sessions is not None:
        out["max_sessions"] = max_sessions
    if "MemAvailable" in memory:
        out["memory_free"] = memory["MemAvailable"]
    if "MemTotal" in memory:
        out["memory_total"] = memory["MemTotal"]
    return out
