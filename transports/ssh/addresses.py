"""How the ssh transport writes a host: `user@host:port` (`[v6]:port`) in
messages, and the pattern known_hosts files use for it."""

from __future__ import annotations


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _where(user: str | None, host: str, port: int) -> str:
    return f"{user}@{_address(host, port)}" if user else _address(host, port)


def _known_hosts_pattern(host: str, port: int | None) -> str:
    return host if port in (None, 22) else f"[{host}]:{port}"
