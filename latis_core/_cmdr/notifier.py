"""Sending notifications (the settings are `latis_core._cmdr.notify`): one
`Notifier` per target batches and rate-limits events and delivers them to a
command, the desktop and apprise's URLs, keeping the URLs' secrets out of logs.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
import trio

from latis_core._cmdr.notify import NotifyConfig, redact

__all__ = ["COMMAND_TIMEOUT", "Notifier"]

log = logging.getLogger("latis.notify")

#: Seconds a notification command may run.
COMMAND_TIMEOUT = 30.0


def _summary(events: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    if len(events) == 1:
        event = events[0]
        title = f"latis: {event['unit']} {event['event']}"
        body = str(event.get("question") or event.get("error") or f"session {event['session']}")
        return title, body
    counts: dict[str, int] = {}
    for event in events:
        counts[event["event"]] = counts.get(event["event"], 0) + 1
    title = f"latis: {len(events)} events"
    body = ", ".join(f"{n} {name}" for name, n in counts.items())
    return title, body


class Notifier:
    """Sends one target's notifications, batched and rate-limited (a task runs `run`)."""

    def __init__(self, config: NotifyConfig) -> None:
        self.config = config
        self.pending: list[dict[str, Any]] = []
        self._wake = trio.Event()
        #: Batches sent (for tests and `status`).
        self.sent = 0

    def add(self, event: dict[str, Any]) -> None:
        """Queue an event (ignored unless its kind is one the config asks for)."""
        if event["event"] not in self.config.events:
            return
        self.pending.append(event)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await trio.sleep(self.config.batch)
            batch, self.pending = self.pending, []
            self._wake = trio.Event()
            if batch:
                try:
                    await self.send(batch)
                except Exception:
                    # A notification must never take the daemon down with it.
                    log.exception("sending a notification failed")
                await trio.sleep(max(0.0, self.config.interval - self.config.batch))
                if self.pending:
                    self._wake.set()

    async def send(self, events: list[dict[str, Any]]) -> None:
        """Deliver one batch everywhere the config says; a failure is logged, not raised."""
        self.sent += 1
        title, body = _summary(events)
        payload = {
            "type": "latis.notification",
            "title": title,
            "body": body,
            "count": len(events),
            "events": events,
            "sent_at": time.time(),
        }
        config = self.config
        if config.command:
            await self._command(orjson.dumps(payload))
        if config.desktop and shutil.which("notify-send"):
            await self._run(["notify-send", "--app-name=latis", title, body], b"")
        if config.urls:
            await trio.to_thread.run_sync(self._apprise, title, body, payload)

    async def _command(self, data: bytes) -> None:
        await self._run(list(self.config.command), data)

    async def _run(self, argv: list[str], data: bytes) -> None:
        try:
            with trio.move_on_after(COMMAND_TIMEOUT):
                done = await trio.run_process(
                    argv, stdin=data, check=False, stdout=subprocess.DEVNULL, capture_stderr=True
                )
                if done.returncode != 0:
                    log.warning(
                        "notification command %s exited %d: %s",
                        argv[0],
                        done.returncode,
                        done.stderr.decode(errors="replace")[-300:],
                    )
        except OSError as exc:
            log.warning("notification command %s failed: %s", argv[0], exc)

    def _apprise(self, title: str, body: str, payload: Mapping[str, Any]) -> None:
        try:
            import apprise
        except ImportError:
            log.warning("notification URLs need apprise: pip install 'latis[notify]'")
            return
        _guard_apprise_log(self.config.urls)
        for url in self.config.urls:
            sender = apprise.Apprise()
            if not sender.add(url):
                log.warning("notification URL %s is not one apprise knows", redact(url))
                continue
            if not sender.notify(title=title, body=body):
                log.warning("notification to %s failed", redact(url))


class _HideSecrets(logging.Filter):
    """Takes the notification URLs' secrets out of log records."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            for secret in sorted(self.secrets, key=len, reverse=True):
                text = text.replace(secret, "***")
            record.msg, record.args = text, None
        return True


_HIDE = _HideSecrets()


def _secrets_of(url: str) -> set[str]:
    """What `redact` hides of `url`, piece by piece (as apprise may log them)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    credentials, _, host = parts.netloc.rpartition("@")
    pieces = [*credentials.split(":"), *parts.path.split("/"), parts.fragment]
    pieces += [value for _, value in parse_qsl(parts.query)]
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    if name and "." not in name and name != "localhost":
        pieces.append(name)  # no host name: a token (slack://TOKEN/...)
    found = {unquote(p) for p in pieces} | set(pieces)
    return {p for p in found if len(p) >= 3}


def _guard_apprise_log(urls: Sequence[str]) -> None:
    """Keep the secrets of `urls` out of cmdr's log. apprise logs the URLs it sends
    to (at debug whole ones, "JSON POST URL: ...", above that one it cannot parse),
    and so does urllib3 under it ("POST /hooks/TOKEN"): apprise's records below
    info are dropped (even at LATIS_LOG_LEVEL=debug), and every handler of the
    root logger takes the secrets out of whatever record reaches it."""
    quiet = logging.getLogger("apprise")
    if quiet.getEffectiveLevel() < logging.INFO:
        quiet.setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        if _HIDE not in handler.filters:
            handler.addFilter(_HIDE)
    for url in urls:
        _HIDE.secrets |= _secrets_of(url)
