"""What the transports' options share: attrs validators for a port and a number of
seconds. A wrong value fails the option's class with a ValueError naming the key,
which a config file's error shows beside its line."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["port", "remote_port", "seconds"]


def port(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    """A port to listen on: 0 (any free one) to 65535."""
    if type(value) is not int or not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be from 0 to 65535, got {value!r}")


def remote_port(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    """A port to dial: 1 to 65535."""
    if type(value) is not int or not 1 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be from 1 to 65535, got {value!r}")


def seconds(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    """A timeout: above 0 seconds."""
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 seconds, got {value!r}")
