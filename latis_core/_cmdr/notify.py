"""Notifications: when a session starts waiting, or a prompt ends, tell a person.

Where to (docs/config.md, `[notify]`, globally or per unit): a `command` (the
batch as JSON on its stdin), a `desktop` notification (`notify-send`, when it
is on PATH), and any `urls` that apprise knows (ntfy, Slack, email, json://
webhooks ...; `pip install 'latis[notify]'`).

Rate-limited and batched: the first event waits `batch` seconds for others,
then all go as one notification; after a notification, the next waits at
least `interval` seconds, gathering what comes meanwhile. So a burst from 30
agents is one notification, not 30.

URLs carry secrets (tokens in the path, passwords): `redact` shows them only
as scheme and host, in logs and in `--json`.

This module is the settings (read with the config, so it imports no trio);
`latis_core._cmdr.notifier` sends.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs

__all__ = ["EVENTS", "NotifyConfig", "parse_notify", "redact", "redact_url"]

#: The events a notification may be for.
EVENTS = ("waiting", "complete", "failed", "cancelled")
_KEYS = ("command", "desktop", "urls", "events", "batch", "interval")


@attrs.frozen
class NotifyConfig:
    """A `[notify]` table."""

    command: tuple[str, ...] = ()
    desktop: bool = False
    urls: tuple[str, ...] = ()
    events: tuple[str, ...] = ("waiting", "complete", "failed")
    #: Seconds the first event of a batch waits for others.
    batch: float = 1.0
    #: Seconds at least between two notifications.
    interval: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.command or self.desktop or self.urls)

    def describe(self) -> dict[str, Any]:
        """For `--json` and logs: the URLs redacted."""
        return {
            "command": list(self.command),
            "desktop": self.desktop,
            "urls": [redact(url) for url in self.urls],
            "events": list(self.events),
            "batch": self.batch,
            "interval": self.interval,
        }


def redact(url: str) -> str:
    """`url` with everything that may be a secret hidden: user, password, path, query,
    and a "host" that is no host name (apprise puts tokens there: slack://TOKEN/...)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<a notification URL>"
    if host and "." not in host and ":" not in host and host != "localhost":
        host = "***"
    user = "***@" if parts.username or parts.password else ""
    rest = "/***" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{user}{host}{port}{rest}"


def parse_notify(value: object) -> tuple[NotifyConfig, list[tuple[tuple[str, ...], str]]]:
    """A `[notify]` table and its problems as (key path, message)."""
    problems: list[tuple[tuple[str, ...], str]] = []
    if type(value) is not dict:
        return NotifyConfig(), [((), "expected a table")]
    fields: dict[str, Any] = {}
    for key, item in value.items():
        if key not in _KEYS:
            problems.append(((key,), f"unknown key (keys: {', '.join(_KEYS)})"))
        elif key in ("command", "urls", "events"):
            if type(item) is not list or any(type(w) is not str for w in item):
                problems.append(((key,), "expected an array of strings"))
            elif key == "events" and any(e not in EVENTS for e in item):
                problems.append(((key,), f"expected events among {', '.join(EVENTS)}"))
            else:
                fields[key] = tuple(item)
        elif key == "desktop":
            if type(item) is not bool:
                problems.append(((key,), "expected true or false"))
            else:
                fields[key] = item
        elif type(item) not in (int, float) or item < 0:
            problems.append(((key,), "expected seconds, 0 or more"))
        else:
            fields[key] = float(item)
    return NotifyConfig(**fields), problems


#: The public name (`latis_core.redact_url`).
redact_url = redact
