"""What the QUIC dialer and listener share: their option validators, reading a
`quic://` URL, and how a host and port are written in messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from latis_core._os.tls import normalize_pin

from .constants import DEFAULT_PORT


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pin(value: str | None) -> str | None:
    return None if value is None else normalize_pin(value)


def _parse_url(
    url: str, known: dict[str, Callable[[str], Any]]
) -> tuple[str, int, dict[str, Any]]:
    parts = urlsplit(url)
    if parts.scheme != "quic":
        raise ValueError(f"{url!r} is not a quic URL: expected quic://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 0 to 65535") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} names no host: expected quic://HOST:PORT")
    if parts.path not in ("", "/") or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{url!r}: expected quic://HOST:PORT, with options after '?' only")
    options: dict[str, Any] = {}
    for name, text in parse_qsl(parts.query, keep_blank_values=True):
        if name not in known:
            raise ValueError(
                f"{url!r}: unknown option {name!r} (known: {', '.join(sorted(known))})"
            )
        if name in options:
            raise ValueError(f"{url!r}: option {name!r} is given twice")
        try:
            options[name] = known[name](text)
        except ValueError:
            kind = "a number" if known[name] is not str else "text"
            raise ValueError(f"{url!r}: option {name!r} must be {kind}, got {text!r}") from None
    return host, DEFAULT_PORT if port is None else port, options
