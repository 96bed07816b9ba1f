"""The shell lines the ssh transport runs on the host: the wrapper that prints
the command's PID and `exec`s it, and the kill command for its process group."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

#: Exit status of the wrapper when the command is not found (as sh's).
NOT_FOUND = 127

# Run by sh: check that the command exists (so a missing one fails before
# connect() returns), print our PID (= the session leader's, = the process
# group's), then become the command.
_WRAPPER = (
    'command -v "$1" >/dev/null 2>&1 || { echo "$1: command not found" >&2; exit 127; }; '
    'echo "LATIS-SSH-PID $$"; exec "$@"'
)
#: The line the wrapper prints before it execs the command.
_PID_LINE = re.compile(rb"LATIS-SSH-PID (\d+)\r?\n")


def _remote_command(argv: Sequence[str]) -> str:
    # The user's login shell runs this line. `exec sh` keeps its PID (the
    # session leader's) and makes the rest independent of which shell it is.
    return f"exec sh -c {shlex.quote(_WRAPPER)} latis-ssh {shlex.join(argv)}"


def _kill_command(pid: int, signal: str) -> str:
    # The whole process group first (the unit's own children die with it);
    # the lone process if the group is gone or was never one.
    script = f"kill -{signal} -{pid} 2>/dev/null || kill -{signal} {pid} 2>/dev/null; exit 0"
    return f"exec sh -c {shlex.quote(script)}"
