"""Units that dial in: cmdr's listeners, the proof of enrollment, enrollment lines.

Every distinct `accept` table in config is one listener, shared by the units
that name it. A unit that connects proves who it is in its `hello`: cmdr's
`hello` carries a fresh challenge, and the unit answers with its enrollment
id and a proof made with the enrollment's secret (`latis_core._wire.auth`). Until
then the connection is held to the handshake (`strict`: any other frame, an
oversized one or silence past the handshake timeout closes it) and occupies
one of the listener's pending slots (`latis_core._io.accept`).

A refusal (no enrollment, an unknown one, a wrong proof, a unit that does
not dial in on this listener, a unit already connected) is sent to the unit
as `unauthorized`, logged with the peer's address, and counted per listener
(`latis status --json` shows the counts).

TLS listeners present cmdr's own certificate, issued by cmdr's CA (made on
first use in the data directory); the enrollment line carries the CA's
fingerprint, which the unit pins.
"""

from __future__ import annotations

import functools
import logging
import shlex
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from latis_core._errors import ConnectError, ErrorCode
from latis_core._io.accept import Gate, ListenerStats, bound_port, serve_listener
from latis_core._io.client import UnitClient
from latis_core._io.peer import open_peer
from latis_core._wire.auth import METHOD, new_challenge, verify
from latis_core._wire.messages import Error, Hello, Role

if TYPE_CHECKING:
    from latis_core._cmdr.controller import Controller, UnitRuntime

__all__ = ["DialIns", "ListenerRuntime"]

log = logging.getLogger("latis.cmdr.listen")

#: Seconds an already connected unit gets to answer a ping before a
#: newcomer with its enrollment replaces it (a connection that died silently).
LIVENESS_TIMEOUT = 2.0
#: Keep-alive on dialed-in connections: NAT boxes drop silent ones.
KEEPALIVE = 15.0
#: Address schemes, by transport, for enrollment lines.
_SCHEMES = {"tcp": "tcp", "websocket": "ws", "quic": "quic", "unix": "unix"}


class Refused(Exception):
    """A unit that dialed in is not let in: `reason` (counted) and what it is told."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@attrs.define(eq=False)
class ListenerRuntime:
    """One of cmdr's listeners as it runs."""

    type: str
    options: Any
    stats: ListenerStats = attrs.field(factory=ListenerStats)
    #: The port bound, once listening (useful with port 0).
    port: int | None = None
    #: Why it does not listen, if it could not.
    error: str | None = None
    #: cmdr's CA fingerprint, when the listener speaks TLS.
    fingerprint: str | None = None
    listening: trio.Event = attrs.field(factory=trio.Event)

    def describe(self) -> str:
        options = self.options
        if getattr(options, "port", None) == 0 and self.port:
            options = attrs.evolve(options, port=self.port)  # say which port it got
        return str(options.describe())

    def uses_tls(self) -> bool:
        return self.type == "quic" or bool(getattr(self.options, "tls", False))


class DialIns:
    """cmdr's listeners and the units that dial in through them."""

    def __init__(self, controller: Controller) -> None:
        self.ctl = controller
        self.listeners: dict[tuple[str, Any], ListenerRuntime] = {}

    # ---- listeners --------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Start a listener for every `accept` table not listening yet."""
        for rt in self.ctl.units.values():
            for accept in rt.config.accept:
                key = (accept.type, accept.options)
                if key not in self.listeners:
                    lr = ListenerRuntime(accept.type, accept.options)
                    self.listeners[key] = lr
                    await nursery.start(self._run, lr)

    def listener_of(self, unit: UnitRuntime) -> list[ListenerRuntime]:
        """The listeners a unit may dial in on."""
        return [
            lr for accept in unit.config.accept
            if (lr := self.listeners.get((accept.type, accept.options))) is not None
        ]

    def _with_tls(self, lr: ListenerRuntime) -> Any:
        options = lr.options
        if not lr.uses_tls():
            return options
        from latis_core._os.tls import CertificateAuthority

        ca = CertificateAuthority.load_or_create(self.ctl.paths.data_dir / "tls")
        lr.fingerprint = ca.fingerprint
        if getattr(options, "cert", None) is not None:
            return options
        files = ca.cmdr_files()
        return attrs.evolve(options, cert=str(files.cert), key=str(files.key))

    async def _run(self, lr: ListenerRuntime, *, task_status: Any) -> None:
        label = f"listener {lr.describe()}"
        try:
            options = await trio.to_thread.run_sync(self._with_tls, lr)
            async with options.listen() as accepting:
                lr.port = bound_port(accepting)
                lr.listening.set()
                if not lr.uses_tls() and getattr(options, "host", "127.0.0.1") not in (
                    "127.0.0.1", "::1", "localhost"
                ) and lr.type != "unix":
                    log.warning("%s has no TLS: anyone on the way can read the prompts and "
                                "pose as cmdr to its units (set tls = true)", label)
                log.info("%s: listening", label)
                task_status.started()
                await serve_listener(
                    accepting,
                    functools.partial(self._dialed_in, lr),
                    gate=Gate(
                        getattr(options, "max_pending", 64),
                        getattr(options, "max_pending_per_host", 16),
                    ),
                    stats=lr.stats,
                    label=label,
                )
        except (OSError, ValueError, ImportError) as exc:
            lr.error = str(exc)
            log.error("%s cannot listen: %s", label, exc)
            task_status.started()

    # ---- one unit dialing in ----------------------------------------------------------

    async def _dialed_in(
        self,
        lr: ListenerRuntime,
        stream: trio.abc.Stream,
        peer: tuple[str, int] | str | None,
        release: Callable[[], None],
    ) -> None:
        where = _where(peer)
        challenge = new_challenge()
        hello = Hello(name="cmdr", auth={"method": METHOD, "challenge": challenge})
        try:
            async with open_peer(
                stream,
                hello=hello,
                strict=True,
                handshake_timeout=self.ctl.config.daemon.handshake_timeout,
                keepalive=KEEPALIVE,
                label=f"a unit dialing in from {where}",
            ) as connection:
                release()
                try:
                    rt = await self._admit(lr, connection.remote, challenge)
                except Refused as refused:
                    lr.stats.refuse(refused.reason)
                    log.warning("%s: refused a unit from %s: %s", lr.describe(), where,
                                refused.message)
                    connection.send_nowait(
                        Error(None, ErrorCode.UNAUTHORIZED.value, refused.message)
                    )
                    return
                log.info("unit %s dialed in from %s (%s)", rt.name, where, lr.describe())
                await self.ctl.attach(rt, UnitClient(connection), f"dialed in on "
                                      f"{lr.describe()} from {where}")
        except ConnectError as exc:
            lr.stats.refuse("handshake")
            log.warning("%s: dropped a connection from %s: %s", lr.describe(), where, exc)

    async def _admit(self, lr: ListenerRuntime, hello: Hello, challenge: str) -> UnitRuntime:
        auth = hello.auth if isinstance(hello.auth, dict) else {}
        eid = auth.get("enrollment")
        if not isinstance(eid, str):
            raise Refused(
                "no_enrollment",
                "this listener takes enrolled units only: run the unit with --secret-file "
                "(the line `latis unit add NAME --accept …` printed)",
            )
        ctl = self.ctl
        found = await ctl.read(ctl.reads.find_enrollment, eid[:100])
        if found is None:
            raise Refused("unknown_unit", f"unknown enrollment {eid[:100]!r}: enroll the "
                          f"unit again (`latis unit enroll NAME`)")
        name, enrollment = found
        if not verify(enrollment.secret, Role.UNIT.value, challenge, eid, auth.get("proof")):
            # (The unit's name is for cmdr's log, not for whoever holds the id.)
            log.info("wrong proof for the enrollment of unit %s", name)
            raise Refused("wrong_proof", f"wrong proof for enrollment {eid!r}")
        rt = ctl.units.get(name)
        if rt is None or lr not in self.listener_of(rt):
            raise Refused("wrong_listener",
                          f"unit {name!r} does not dial in on {lr.describe()} (see its accept "
                          f"entries in config)")
        client = rt.client
        if client is not None and not client.peer.closed:
            with trio.move_on_after(LIVENESS_TIMEOUT):
                await client.ping()
                raise Refused("duplicate", f"unit {name!r} is already connected "
                              f"({rt.via or rt.how()})")
            log.warning("unit %s: the connection it had does not answer; replacing it", name)
            await client.peer.aclose()
            await rt.released()
        if rt.client is not None:
            raise Refused("duplicate", f"unit {name!r} is already connected")
        return rt

    # ---- enrollment -------------------------------------------------------------------

    async def enroll(self, name: str, address: str | None = None) -> dict[str, Any]:
        """Issue a new enrollment to unit `name` (revoking any older one).

        Returns the enrollment's id, its secret line, the addresses to dial
        and the one line to run on the unit.

        Raises:
            ValueError: the unit has no `accept` entry, or its listeners do not listen.
        """
        ctl = self.ctl
        rt = ctl.unit(name)
        if not rt.config.accept:
            raise ValueError(
                f"unit {name!r} does not dial in: give it an accept entry "
                f"(`latis unit add {name} --accept tcp://0.0.0.0:7447`)"
            )
        urls = []
        for lr in self.listener_of(rt):
            if lr.error is not None:
                raise ValueError(f"listener {lr.describe()} does not listen: {lr.error}")
            urls.append(self._url(lr, address))
        enrollment = await ctl.db(ctl.state.enroll, name)
        secret_file = f"~/.latis-unit-{name}"
        argv = ["latis-unit", "--connect", urls[0], "--secret-file", secret_file,
                "--name", name, "--agent", rt.config.agent]
        for key, value in rt.config.agent_options.items():
            argv += ["-o", f"{key}={value}"]
        if rt.config.agent_command:
            argv += ["--", *rt.config.agent_command]
        line = (
            f"umask 077 && printf '%s\\n' {shlex.quote(enrollment.line)} > {secret_file} && "
            + " ".join(a if a == secret_file else shlex.quote(a) for a in argv)
        )
        return {
            "unit": name,
            "enrollment": enrollment.id,
            "secret": enrollment.line,
            "urls": urls,
            "fingerprint": next((lr.fingerprint for lr in self.listener_of(rt)
                                 if lr.fingerprint), None),
            "command": line,
        }

    def _url(self, lr: ListenerRuntime, address: str | None) -> str:
        options = lr.options
        if lr.type == "unix":
            return f"unix:{options.path}"
        scheme = _SCHEMES.get(lr.type)
        if scheme is None:
            raise ValueError(f"cannot write an address for a {lr.type} listener")
        if scheme == "ws" and lr.uses_tls():
            scheme = "wss"
        host = str(address or getattr(options, "host", ""))
        if host in ("", "0.0.0.0", "::", "*"):
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        url = f"{scheme}://{host}:{lr.port or options.port}"
        if lr.type == "websocket":
            url += getattr(options, "path", "/")
        if lr.fingerprint is not None:
            url += f"?fingerprint={lr.fingerprint}"
        return url

    def status(self) -> list[dict[str, Any]]:
        """Each listener: where, whether it listens, what it accepted and refused."""
        return [
            {
                "listener": lr.describe(),
                "type": lr.type,
                "port": lr.port,
                "tls": lr.uses_tls(),
                "error": lr.error,
                **lr.stats.as_dict(),
            }
            for lr in self.listeners.values()
        ]


def _where(peer: tuple[str, int] | str | None) -> str:
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return peer or "an unknown address"
