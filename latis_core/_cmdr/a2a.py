"""latis's states in A2A's words (the Agent2Agent protocol's task states), for
`--json` output and the dashboard. Kept apart so the CLI reads it without the
controller's imports.
"""

from __future__ import annotations

__all__ = ["A2A_STATES", "a2a_state"]

#: latis's session states and prompt outcomes -> A2A task states.
A2A_STATES = {
    "idle": "completed",
    "busy": "working",
    "waiting": "input-required",
    "closed": "completed",
    "running": "working",
    "complete": "completed",
    "completed": "completed",
    "error": "failed",
    "failed": "failed",
    "cancelled": "canceled",
    "open": "input-required",
    "answered": "completed",
    "ended": "canceled",  # a question whose prompt ended before an answer
}


def a2a_state(state: str) -> str:
    """The A2A task state for a latis session state or prompt outcome."""
    return A2A_STATES.get(state, "unknown")
