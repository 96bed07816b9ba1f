"""Serving the dashboard: hypercorn's trio worker in the daemon's own nursery.

`start_web` (the daemon's `web.start`) starts it, or says where it runs;
`stop_web` stops it. One server at a time; starting it elsewhere moves it.
hypercorn and starlette are imported here, when the dashboard starts, never
by a command that only talks to the daemon.

A listen address other than loopback is refused without TLS; with it, the
certificate comes from cmdr's own CA (`latis_core._os.tls`), for the names
in `[web] names` (and loopback's): browsers trust it once its `ca.pem` is
imported.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import attrs
import trio

from latis_core._cmdr.web.auth import Keys, load_token, new_token
from latis_core._cmdr.web.config import WebConfig, is_loopback
from latis_core._cmdr.web.listener import serve_web, web_gate
from latis_core._errors import ErrorCode, RequestError
from latis_core._io.accept import ListenerStats
from latis_core._util import leaves

if TYPE_CHECKING:
    from latis_core._cmdr.daemon import Daemon
    from latis_core._cmdr.web.events import Hub

__all__ = ["WebServer", "serve_at_start", "start_web", "stop_web"]

log = logging.getLogger("latis.web")
#: Seconds a client has for its TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds a connection may go without a request (before its first, between two).
IDLE_TIMEOUT = 5.0

#: Host names every server answers for (besides its listen address and `names`).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "[::]", "")


class WebServer:
    """The dashboard as it is served: where, with which keys, and its scope."""

    def __init__(self, daemon: Daemon, settings: WebConfig) -> None:
        self.daemon = daemon
        self.settings = settings
        self.token_file = daemon.paths.data_dir / "web" / "token"
        self.keys: Keys | None = None
        self.url = ""
        self.ca: str | None = None
        self.hub: Hub | None = None
        self._scope = trio.CancelScope()
        self.done = trio.Event()
        #: Connections: open at once in all and per address (`[web] max_connections`,
        #: `max_connections_per_host`), and counted as accepted or refused.
        self.gate = web_gate(settings.max_connections, settings.max_connections_per_host)
        self.stats = ListenerStats()

    @property
    def names(self) -> list[str]:
        """The names a browser may use for this server, the URL's first."""
        host = self.settings.host
        own = list(self.settings.names)
        if _wildcard(host):
            if not own:
                own.append(socket.gethostname())
        elif not is_loopback(host):
            own.insert(0, _bracket(host))
        else:
            own.insert(0, _bracket(host) if host != "localhost" else "localhost")
        return list(dict.fromkeys(n.lower() for n in [*own, *LOOPBACK_NAMES]))

    def _tls_files(self) -> tuple[str, str, str]:
        from latis_core._os.tls import CertificateAuthority

        hosts = [n.strip("[]") for n in self.names]
        ca = CertificateAuthority.load_or_create(self.daemon.paths.data_dir / "tls")
        stem = "web-" + hashlib.sha256(",".join(hosts).encode()).hexdigest()[:12]
        files = ca.files(stem, "latis web", hosts)
        return str(files.cert), str(files.key), str(ca.cert_file)

    def rotate(self) -> None:
        """A new token: every browser must come back through `latis web`'s new URL."""
        token = new_token(self.token_file)
        if self.keys is not None:
            self.keys = attrs.evolve(self.keys, token=token)

    async def run(self, *, task_status: trio.TaskStatus[WebServer]) -> None:
        """Serve until `stop` (or the daemon ends); `started` once it listens.

        Raises (before it listens only: later failures are logged, the daemon goes on):
            RequestError: (bad_message) the address needs TLS, or cannot be listened on.
        """
        import hypercorn.config

        from latis_core._cmdr.web.app import create_app
        from latis_core._cmdr.web.events import Hub

        settings = self.settings
        _check_clear_text(settings)
        config = hypercorn.config.Config()
        config.bind = [f"{_bracket(settings.host)}:{settings.port}"]
        config.accesslog = None
        config.errorlog = log
        config.include_server_header = False
        # A TLS handshake is before any proof: a client gets seconds, not a minute;
        # so does a connection for its first request (and an idle one for its next).
        config.ssl_handshake_timeout = HANDSHAKE_TIMEOUT
        config.keep_alive_timeout = IDLE_TIMEOUT
        if settings.tls:
            config.certfile, config.keyfile, self.ca = await trio.to_thread.run_sync(
                self._tls_files
            )
        token = await trio.to_thread.run_sync(load_token, self.token_file)
        hub = self.hub = Hub(self.daemon.controller)
        app: Any = create_app(self.daemon, self, hub)  # an ASGI app, as hypercorn types it
        failed: OSError | None = None
        started = False
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    try:
                        ports = await nursery.start(functools.partial(
                            serve_web, app, config, self.gate, self.stats))
                    except* OSError as group:  # (found bare or in a group: trio's start)
                        failed = next(e for e in leaves(group) if isinstance(e, OSError))
                        nursery.cancel_scope.cancel()
                    else:
                        port = ports[0]
                        scheme = "https" if settings.tls else "http"
                        self.keys = Keys(token, port, settings.tls, frozenset(self.names))
                        self.url = f"{scheme}://{self.names[0]}:{port}/"
                        log.info("dashboard at %s (its token: %s)", self.url, self.token_file)
                        started = True
                        task_status.started(self)
        except Exception:
            if not started:
                raise
            log.exception("the dashboard stopped")
        finally:
            hub.close()
            self.done.set()
            if self.daemon.web is self:
                self.daemon.web = None
        if failed is not None:
            way_out = (
                "another host: `latis web --host H`, or `host` in [web]"
                if isinstance(failed, socket.gaierror)
                else "another port: `latis web --port N`, or `port` in [web]; 0 picks a free one"
            )
            raise RequestError(
                ErrorCode.BAD_MESSAGE.value,
                f"web: cannot listen on {settings.host}:{settings.port}: "
                f"{failed.strerror or failed} ({way_out})",
            )

    async def stop(self) -> None:
        self._scope.cancel()
        await self.done.wait()

    def describe(self, started: bool) -> dict[str, Any]:
        assert self.keys is not None
        return {
            "url": self.url,
            "login": f"{self.url}?token={self.keys.token}",
            "token_file": str(self.token_file),
            "host": self.settings.host,
            "port": self.keys.port,
            "tls": self.settings.tls,
            "ca": self.ca,
            "started": started,
            "pid": os.getpid(),
            "connections": {"open": self.gate.pending, "waiting": self.gate.waiting,
                            **self.stats.as_dict()},
        }


def _check_clear_text(settings: WebConfig) -> None:
    """Refuse to serve clear text anywhere but on loopback."""
    if not is_loopback(settings.host) and not settings.tls:
        raise RequestError(
            ErrorCode.BAD_MESSAGE.value,
            f"web: {settings.host} is not loopback: the dashboard controls agents that "
            "run commands, and other machines would reach it in clear text. Serve it "
            "with TLS (`latis web --tls`, or `tls = true` in [web]: a certificate from "
            "cmdr's own CA), or on 127.0.0.1",
        )


async def start_web(
    daemon: Daemon,
    host: str | None = None,
    port: int | None = None,
    tls: bool | None = None,
    new_token: bool | None = None,
) -> dict[str, Any]:
    """Serve the dashboard (as `[web]` says, unless given here), or say where it runs."""
    base = daemon.controller.config.web
    settings = attrs.evolve(
        base,
        host=base.host if host is None else host,
        port=base.port if port is None else port,
        tls=base.tls if tls is None else tls,
    )
    if not 0 <= settings.port <= 65535:
        raise RequestError(ErrorCode.BAD_MESSAGE.value,
                           f"web: port {settings.port}: expected a port number from 0 to 65535")
    _check_clear_text(settings)
    running: WebServer | None = daemon.web
    before = None
    if running is not None:
        same = attrs.evolve(settings, enabled=running.settings.enabled) == running.settings
        if same or (host is None and port is None and tls is None):
            if new_token:
                await trio.to_thread.run_sync(running.rotate)
            return running.describe(started=False)
        before = running.settings  # (on the port it got, if it asked for any free one)
        if running.keys is not None:
            before = attrs.evolve(before, port=running.keys.port)
        await stop_web(daemon)  # (it may hold the port the new one asks for)
    if daemon.nursery is None:
        raise RequestError(ErrorCode.INTERNAL.value, "the daemon is not serving yet")
    server = WebServer(daemon, settings)
    if new_token:
        await trio.to_thread.run_sync(server.rotate)
    try:
        daemon.web = await daemon.nursery.start(server.run)
    except RequestError:
        if before is not None:  # the one served before comes back where it was
            try:
                daemon.web = await daemon.nursery.start(WebServer(daemon, before).run)
            except RequestError as exc:
                log.error("the dashboard could not be served again: %s", exc.message)
        raise
    return server.describe(started=True)


async def stop_web(daemon: Daemon) -> dict[str, Any]:
    """Stop serving the dashboard."""
    running: WebServer | None = daemon.web
    if running is None:
        await trio.lowlevel.checkpoint()
        return {"stopped": False}
    daemon.web = None
    await running.stop()
    return {"stopped": True, "url": running.url}


async def serve_at_start(daemon: Daemon) -> None:
    """`[web] enabled`: serve the dashboard as the daemon starts (a failure is logged)."""
    try:
        info = await start_web(daemon)
    except RequestError as exc:
        log.error("%s", exc.message)
        return
    log.info("the dashboard is served at %s", info["url"])
