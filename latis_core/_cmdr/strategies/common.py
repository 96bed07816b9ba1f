"""What the built-in strategies share: reading options, writing answers into a prompt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["answers_block", "check_agent", "check_options"]


def check_options(strategy: str, options: Mapping[str, str], known: Sequence[str]) -> None:
    """Refuse options `strategy` does not take.

    Raises:
        ValueError: an unknown option (the message lists the known ones).
    """
    for name in options:
        if name not in known:
            takes = f"it takes {', '.join(known)}" if known else "it takes none"
            raise ValueError(f"strategy {strategy}: no option {name!r} ({takes})")


def check_agent(what: str, label: str, labels: Sequence[str]) -> None:
    """Refuse an option that names an agent not in the coordination.

    Raises:
        ValueError: `label` is not one of `labels`.
    """
    if label not in labels:
        raise ValueError(f"{what} {label!r} is not one of the agents ({', '.join(labels)})")


def answers_block(answers: Mapping[str, str]) -> str:
    """Answers for a prompt: each under a line naming its agent."""
    return "\n\n".join(f"--- {label} ---\n{text.strip()}" for label, text in answers.items())
