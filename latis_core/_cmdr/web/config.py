"""The `[web]` table: whether and where cmdr serves the dashboard (docs/web.md).

Nothing heavy here: the config reader imports it with every command.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["DEFAULT_PORT", "WebConfig", "is_loopback", "parse_web"]

#: The dashboard's port unless `[web] port` or `latis web --port` says otherwise.
DEFAULT_PORT = 8340
_KEYS = ("enabled", "host", "port", "tls", "names", "max_connections",
         "max_connections_per_host")


@attrs.frozen
class WebConfig:
    """The `[web]` table.

    Attributes:
        enabled: serve the dashboard as soon as the daemon starts (default
            off: `latis web` starts it on demand).
        host: the address to listen on; anything but loopback needs `tls`.
        port: the port (0: any free one).
        tls: serve HTTPS with a certificate from cmdr's own CA.
        names: the host names and addresses browsers use to reach the page
            (the certificate's names, and the only `Host` headers accepted
            besides loopback's).
        max_connections: connections open at once at most; one past it waits
            a few seconds for a slot, then is closed.
        max_connections_per_host: the same, for one client address (loopback
            is one address: every local browser and script shares it).
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls: bool = False
    names: tuple[str, ...] = ()
    max_connections: int = 256
    max_connections_per_host: int = 64


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine's loopback (only this machine can reach it)."""
    if host.lower() == "localhost":
        return True
    import ipaddress  # (here: the config reader imports this module with every command)

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_web(value: object) -> tuple[WebConfig, list[tuple[tuple[str, ...], str]]]:
    """A `[web]` table and its problems as (key path, message)."""
    problems: list[tuple[tuple[str, ...], str]] = []
    if type(value) is not dict:
        return WebConfig(), [((), "expected a table")]
    fields: dict[str, Any] = {}
    for key, item in value.items():
        if key not in _KEYS:
            problems.append(((key,), f"unknown key (keys: {', '.join(_KEYS)})"))
        elif key in ("enabled", "tls"):
            if type(item) is not bool:
                problems.append(((key,), "expected true or false"))
            else:
                fields[key] = item
        elif key == "host":
            if type(item) is not str or not item:
                problems.append(((key,), 'expected an address, e.g. "127.0.0.1"'))
            else:
                fields[key] = item
        elif key == "port":
            if type(item) is not int or not 0 <= item <= 65535:
                problems.append(((key,), "expected a port number from 0 to 65535"))
            else:
                fields[key] = item
        elif key in ("max_connections", "max_connections_per_host"):
            if type(item) is not int or item < 1:
                problems.append(((key,), "expected a whole number of connections, at least 1"))
            else:
                fields[key] = item
        elif type(item) is not list or any(type(n) is not str or not n for n in item):
            problems.append(((key,), "expected an array of host names"))
        else:
            fields[key] = tuple(item)
    return WebConfig(**fields), problems
