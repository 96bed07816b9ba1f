"""What a container engine's failure says: the useful lines of its stderr, and the
setting that fixes a failure we know (shared by the provisioner and the image recipe)."""

from __future__ import annotations

import re

__all__ = ["_fix_for", "_stderr_summary"]


def _stderr_summary(stderr: bytes, returncode: int) -> str:
    """The useful part of an engine's stderr: its `Error:` lines, else its last lines."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.lower().startswith("error")]
    text = "\n".join(errors or lines[-5:])
    return text or f"exit status {returncode}, and nothing on stderr"


#: Engine failures a setting fixes: (what the engine says, the fix).
_FIXES = (
    (re.compile(r"cni|netavark|slirp4netns|network", re.I),
     'the engine could not set up the container\'s network: set network = "host" (or '
     '"none") in the unit\'s provisioner table (`latis unit add NAME --provisioner '
     "container --set network=host ...`)"),
    (re.compile(r"rlimit", re.I),
     "the engine may not set the container's ulimits here: put `default_ulimits = []` "
     "under [containers] in a containers.conf and point CONTAINERS_CONF at it"),
)


def _fix_for(summary: str) -> str:
    """The setting that fixes an engine failure, as a sentence to append ("" if none is known)."""
    for pattern, fix in _FIXES:
        if pattern.search(summary):
            return f"\n  fix: {fix}"
    return ""
