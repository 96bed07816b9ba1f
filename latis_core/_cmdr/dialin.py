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
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from latis_core._errors import (
    ConnectError,
    ConnectionClosed,
    ErrorCode,
    LatisError,
    RemoteProtocolError,
    RequestError,
)
from latis_core._io.accept import (
    BURST_PER_HOST,
    RATE_PER_HOST,
    Gate,
    ListenerStats,
    RefusalLog,
    bound_port,
    serve_listener,
)
from latis_core._io.client import UnitClient
from latis_core._io.heartbeat import Heartbeats
from latis_core._io.peer import open_peer
from latis_core._util import unwrap_group
from latis_core._wire.auth import METHOD, new_challenge, verify
from latis_core._wire.codec import encode
from latis_core._wire.frames import encode_frame
from latis_core._wire.messages import Error, Hello, Role

if TYPE_CHECKING:
    from latis_core._cmdr.controller import Controller, UnitRuntime

__all__ = ["DialIns", "ListenerRuntime"]

log = logging.getLogger("latis.cmdr.listen")

#: Seconds an already connected unit gets to answer a ping before a
#: newcomer with its enrollment replaces it (a connection that died silently).
LIVENESS_TIMEOUT = 2.0
#: Address schemes, by transport, for enrollment lines.
_SCHEMES = {"tcp": "tcp", "websocket": "ws", "quic": "quic", "unix": "unix"}


class Refused(Exception):
    """A unit that dialed in is not let in: `reason` (counted) and what it is told.

    `code` is `unauthorized` (the unit stops dialing) unless the unit should
    dial again later (`limit_reached`: it waits for a person's approval).
    """

    def __init__(
        self, reason: str, message: str, code: ErrorCode = ErrorCode.UNAUTHORIZED
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


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
    #: Refused and dropped connections, summarised in the log once per interval.
    refusals: RefusalLog | None = None

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

    def problems(self, names: Sequence[str]) -> list[str]:
        """What a reload should say of the listeners: those of units `names` that do
        not listen (and why), and those no unit names any more (they run until a
        daemon restart)."""
        said = []
        for name in names:
            rt = self.ctl.units.get(name)
            for lr in self.listener_of(rt) if rt is not None else ():
                if lr.error is not None:
                    said.append(f"unit {name}: {lr.describe()} does not listen: {lr.error}")
        named = {(accept.type, accept.options)
                 for rt in self.ctl.units.values() for accept in rt.config.accept}
        said += [f"{lr.describe()}: no unit names it now; it listens until a daemon restart"
                 for key, lr in self.listeners.items() if key not in named]
        return said

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
                lr.refusals = RefusalLog(label)
                task_status.started()
                # One keep-alive clock for all the units that dialed in here
                # (unwrapped: a failed accept is reported below, not as a group).
                with unwrap_group():
                    async with trio.open_nursery() as clock:
                        await serve_listener(
                            accepting,
                            functools.partial(self._dialed_in, lr, Heartbeats(clock)),
                            gate=self._gate(options),
                            stats=lr.stats,
                            label=label,
                            refuse=_tell_busy,
                            refusals=lr.refusals,
                        )
                        clock.cancel_scope.cancel()
        except (OSError, ValueError, ImportError) as exc:
            lr.error = str(exc)
            log.error("%s cannot listen: %s", label, exc)
            task_status.started()

    def _gate(self, options: Any) -> Gate:
        # A unit waits for a slot at most half its handshake time (its dialer
        # gives connect and TLS 10 s): past that it is told when to come back.
        return Gate(
            getattr(options, "max_pending", 128),
            getattr(options, "max_pending_per_host", 64),
            getattr(options, "rate_per_host", RATE_PER_HOST),
            getattr(options, "burst_per_host", BURST_PER_HOST),
            max_wait=min(5.0, self.ctl.config.daemon.handshake_timeout / 2),
        )

    # ---- one unit dialing in ----------------------------------------------------------

    async def _dialed_in(
        self,
        lr: ListenerRuntime,
        heartbeats: Heartbeats,
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
                keepalive=self.ctl.config.daemon.heartbeat or None,
                keepalive_timeout=self.ctl.config.daemon.heartbeat_timeout,
                heartbeats=heartbeats,
                label=f"a unit dialing in from {where}",
            ) as connection:
                release()
                try:
                    rt = await self._admit(lr, connection.remote, challenge, where)
                except Refused as refused:
                    lr.stats.refuse(refused.reason)
                    log.warning("%s: refused a unit from %s: %s", lr.describe(), where,
                                refused.message)
                    connection.send_nowait(Error(None, refused.code.value, refused.message))
                    return
                connection.conn.set_keepalive(*self.ctl.config.daemon.heartbeat_of(rt.config))
                log.info("unit %s dialed in from %s (%s)", rt.name, where, lr.describe())
                await self.ctl.attach(rt, UnitClient(connection), f"dialed in on "
                                      f"{lr.describe()} from {where}")
        except ConnectError as exc:
            lr.stats.refuse("handshake")
            _dropped(lr, where, exc)
        except (ConnectionClosed, RequestError, RemoteProtocolError) as exc:
            # The peer's doing (it hung up, or broke the protocol): a line, not a traceback.
            log.warning("%s: the connection from %s ended: %s", lr.describe(), where, exc)

    async def _admit(
        self, lr: ListenerRuntime, hello: Hello, challenge: str, where: str
    ) -> UnitRuntime:
        auth = hello.auth if isinstance(hello.auth, dict) else {}
        eid = auth.get("enrollment")
        if not isinstance(eid, str):
            raise Refused(
                "no_enrollment",
                "this listener takes enrolled units only: run the unit with --secret-file "
                "(the line `latis unit add NAME --accept …` printed)",
            )
        ctl = self.ctl
        found = await ctl.read(ctl.reads.enrollment, eid[:100])
        if found is None:
            raise Refused("unknown_unit", f"unknown enrollment {eid[:100]!r}: enroll the "
                          f"unit again (`latis unit enroll NAME`)")
        if found.retired is not None:
            # Never good again, whatever key comes with it (Salt CVE-2016-9639).
            raise Refused(found.retired, f"enrollment {eid!r} was {found.retired}: enroll "
                          f"the unit again (`latis unit enroll NAME`)")
        name, enrollment = found.unit, found.enrollment
        if not verify(enrollment.secret, Role.UNIT.value, challenge, eid, auth.get("proof")):
            # (The unit's name is for cmdr's log, not for whoever holds the id.)
            log.info("wrong proof for the enrollment of unit %s", name)
            raise Refused("wrong_proof", f"wrong proof for enrollment {eid!r}")
        if found.state == "new" and found.expires_at is not None and \
                time.time() >= found.expires_at:
            raise Refused("expired", f"enrollment {eid!r} expired before its first use: "
                          f"enroll the unit again (`latis unit enroll {name}`)")
        rt = ctl.units.get(name)
        if rt is None or lr not in self.listener_of(rt):
            raise Refused("wrong_listener",
                          f"unit {name!r} does not dial in on {lr.describe()} (see its accept "
                          f"entries in config)")
        if await ctl.db(ctl.state.use_enrollment, eid, where) == "pending":
            raise Refused("pending", f"unit {name!r} waits for a person to accept it: on "
                          f"cmdr, `latis unit accept {name}` (it dials again until then)",
                          ErrorCode.LIMIT_REACHED)
        client = rt.client
        proved = _enrollment_of(client) if client is not None else None
        if client is not None and not client.peer.closed and proved not in (None, eid):
            # Its connection was made with a key this use just retired (a rotation
            # is complete): the unit on the new key takes over, without downtime.
            log.warning("unit %s: dialed in with its new key; closing its connection on "
                        "the old one", name)
            await client.peer.aclose()
        elif client is not None and not client.peer.closed:
            answered = False
            with trio.move_on_after(LIVENESS_TIMEOUT):
                try:
                    await client.ping()
                    answered = True
                except LatisError:
                    pass  # it died while we asked: it gives way like a silent one
            if answered:
                raise Refused("duplicate", f"unit {name!r} is already connected "
                              f"({rt.via or rt.how()})")
            log.warning("unit %s: the connection it had is dead or does not answer; "
                        "replacing it", name)
            await client.peer.aclose()
        if rt.client is not None or (rt._done is not None and not rt._done.is_set()):
            # The old connection's holder is letting go (it records the loss).
            with trio.move_on_after(LIVENESS_TIMEOUT):
                await rt.released()
        if rt.client is not None:
            raise Refused("duplicate", f"unit {name!r} is already connected")
        return rt

    # ---- enrollment -------------------------------------------------------------------

    async def enroll(
        self,
        name: str,
        address: str | None = None,
        *,
        ttl: float | None = None,
        approval: bool | None = None,
        rotate: bool = False,
    ) -> dict[str, Any]:
        """Issue a new enrollment to unit `name`.

        Args:
            name: the unit.
            address: the host name the unit should dial.
            ttl: seconds within which the enrollment must be used a first time
                (0: no limit; None: `[daemon] enrollment_ttl`).
            approval: its first use waits for `latis unit accept` (None:
                `[daemon] approve_units`).
            rotate: the unit's current secret keeps working until the new one
                is first used (no downtime); otherwise it stops at once.

        Returns the enrollment's id, its secret line, the addresses to dial,
        when it expires unused, and the one line to run on the unit.

        Raises:
            ValueError: the unit has no `accept` entry, or its listeners do not listen.
        """
        ctl = self.ctl
        rt = ctl.unit(name)
        if ttl is not None and not ttl >= 0:
            raise ValueError(f"ttl must be 0 (no limit) or more seconds, got {ttl:g}")
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
        daemon = ctl.config.daemon
        ttl = daemon.enrollment_ttl if ttl is None else ttl
        approval = daemon.approve_units if approval is None else approval
        enrollment = await ctl.db(functools.partial(
            ctl.state.enroll, name, ttl=ttl or None, approval=approval, rotate=rotate
        ))
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
            "expires_at": time.time() + ttl if ttl else None,
            "approval": approval and not rotate,
        }

    async def revoke(self, name: str) -> dict[str, Any]:
        """Retire every enrollment of unit `name` for good and cut its connection now.

        Raises:
            ValueError: the unit does not dial in and never did (nothing to revoke).
        """
        ctl = self.ctl
        rt = ctl.unit(name)
        ids = await ctl.db(ctl.state.revoke_enrollments, name)
        if not ids and not rt.config.accept:
            raise ValueError(f"unit {name!r} does not dial in: it has no enrollment to revoke")
        cut = rt.client is not None and rt.via is not None  # only what dialed in
        if cut:
            assert rt.client is not None
            log.warning("unit %s: enrollment revoked; cutting its connection", name)
            await rt.client.peer.aclose()
        return {"unit": name, "revoked": ids, "cut": cut}

    async def pending(self) -> list[dict[str, Any]]:
        """The units that dialed in and wait for a person to accept them."""
        ctl = self.ctl
        return [
            {"unit": row.unit, "enrollment": row.enrollment.id, "from": row.seen_from,
             "since": row.seen_at}
            for row in await ctl.read(ctl.reads.pending_enrollments)
        ]

    async def accept(self, name: str) -> dict[str, Any]:
        """Let unit `name`, which waits, in (it gets in when it next dials).

        Raises:
            ValueError: the unit does not wait.
        """
        ctl = self.ctl
        ctl.unit(name)
        eid = await ctl.db(ctl.state.accept_enrollment, name)
        if eid is None:
            raise ValueError(f"unit {name!r} does not wait for acceptance "
                             f"(`latis unit pending` lists those that do)")
        return {"unit": name, "enrollment": eid, "accepted": True}

    async def reject(self, name: str) -> dict[str, Any]:
        """Refuse unit `name`, which waits: its enrollment is retired for good.

        Raises:
            ValueError: the unit does not wait.
        """
        ctl = self.ctl
        ctl.unit(name)
        if not any(p["unit"] == name for p in await self.pending()):
            raise ValueError(f"unit {name!r} does not wait for acceptance "
                             f"(`latis unit revoke {name}` retires an enrollment in use)")
        ids = await ctl.db(ctl.state.revoke_enrollments, name, "rejected")
        return {"unit": name, "rejected": ids}

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


def _enrollment_of(client: UnitClient) -> str | None:
    """The enrollment id a connected unit proved (None if it proved none)."""
    auth = client.hello.auth
    eid = auth.get("enrollment") if isinstance(auth, dict) else None
    return eid if isinstance(eid, str) else None


def _dropped(lr: ListenerRuntime, where: str, exc: ConnectError) -> None:
    """A connection that failed its handshake: counted into the listener's summary line
    (a fleet reconnecting at once drops many; one line each would flood the log)."""
    if lr.refusals is not None:
        lr.refusals.note("handshake", where.rsplit(":", 1)[0], str(exc))
    else:
        log.warning("%s: dropped a connection from %s: %s", lr.describe(), where, exc)


async def _tell_busy(stream: trio.abc.Stream, retry_after: float) -> None:
    """Tell a unit the listener has no slot for it now, and when to dial again.

    In place of cmdr's `hello`: an `error` `limit_reached` with `retry_after`
    (over TLS, after its handshake: a TLS alert cannot carry a time).
    """
    message = (f"cmdr is busy with other units' handshakes: dial again in "
               f"{retry_after:.1f} s")
    error = Error(None, ErrorCode.LIMIT_REACHED.value, message, retry_after=round(retry_after, 2))
    await stream.send_all(encode_frame(encode(error)))
    if isinstance(stream, trio.SSLStream):
        await stream.aclose()  # close_notify: the unit reads the frame, then a clean end


def _where(peer: tuple[str, int] | str | None) -> str:
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return peer or "an unknown address"
