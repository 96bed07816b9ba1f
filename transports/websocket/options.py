"""What the websocket dialer and listener share: the default path, and the
validator of their positive options."""

from __future__ import annotations

import attrs

#: The path a websocket listener serves unless told otherwise (and the path a
#: dialer asks for when its URL has none).
DEFAULT_PATH = "/latis"


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")
