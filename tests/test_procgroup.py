"""Process groups: the helpers the agent adapters end their agents with."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from latis_core._os.procgroup import group_alive, signal_group, signal_name


def test_signal_names() -> None:
    """Exit messages name the signal; a number with no name still reads well."""
    assert signal_name(9) == "SIGKILL"
    assert signal_name(15) == "SIGTERM"
    assert signal_name(99) == "signal 99"


def test_a_group_is_alive_until_only_a_zombie_is_left() -> None:
    """A running group is alive; once its one process is a zombie nobody reaped, it is
    not (orphaned zombies can linger for good); an ended group cannot be signalled."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        assert group_alive(child.pid)
        assert signal_group(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not group_alive(child.pid)  # a zombie now: not reaped yet
        assert child.poll() == -signal.SIGKILL
        assert not signal_group(child.pid, 0)  # reaped: the group is gone
    finally:
        child.kill()
        child.wait()
