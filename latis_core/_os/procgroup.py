"""Process groups: signal them, ask whether anything in one still runs, name signals.

The agent adapters start their agents in a process group of their own, so
that what an agent starts goes with it.
"""

from __future__ import annotations

import os
import signal

__all__ = ["group_alive", "signal_group", "signal_name"]


def signal_name(number: int) -> str:
    """'SIGKILL' for 9; 'signal 99' for a number with no name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to process group `pgid` (0: only check); False if it has no process."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    """Whether process group `pgid` has a process that is not a zombie.

    Orphaned zombies wait for init to reap them, which can take a while (or
    forever, when the system's init does not reap): they count as gone. Reads
    /proc, so it may take a millisecond or more; without /proc, any member that
    signal 0 reaches counts.
    """
    if not signal_group(pgid, 0):
        return False
    try:
        names = os.listdir("/proc")
    except OSError:
        return True
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone, or not ours to read
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            return True
    return False
