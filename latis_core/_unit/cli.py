"""`latis-unit`: serve an agent over the latis protocol.

    latis-unit --stdio --agent echo -o delay=0.1
    latis-unit --listen unix:/run/user/1000/latis/box.sock
    latis-unit --listen tcp://0.0.0.0:7447 --tls --token-file ~/.latis-token
    latis-unit --connect 'tcp://cmdr.example:7447?fingerprint=sha256:…' --secret-file F

With `--stdio` the protocol runs on stdin and stdout; logs go to stderr only,
and the unit exits by itself when stdin reaches EOF (a remote unit over ssh
relies on it: closing the channel does not always signal the process).

With `--listen` it serves any number of controllers, one after another or at
once, and its sessions outlive each connection (a controller that restarts
resumes them). Whoever dials it must prove it knows the unit's token
(`--token-file`); without one it listens only on loopback or a unix socket,
unless told `--insecure`. It runs until SIGTERM or SIGINT.

With `--connect` it dials cmdr's listener (a unit behind NAT, a box whose
address nobody knows), proves its enrollment (`--secret-file`), and dials
again with backoff whenever the connection drops; its sessions outlive each
connection as with `--listen`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from latis_core._wire.connection import HEARTBEAT, HEARTBEAT_TIMEOUT

if TYPE_CHECKING:
    import trio

    from latis_core._plugins.agent import Agent

__all__ = ["main"]

EPILOG = """\
examples:
  latis-unit --stdio                          echo agent on stdin/stdout
  latis-unit --stdio --agent echo -o delay=0.2 -o ask="Go on?"
  latis-unit --stdio --name build-box --max-sessions 10
  latis-unit --listen unix:/tmp/box.sock      serve controllers on a unix socket (0600)
  latis-unit --listen tcp://127.0.0.1:7447    loopback only: no token needed
  latis-unit --listen tcp://0.0.0.0:7447 --tls --token-file ~/.latis-token
                                              anyone may dial; cmdr proves the token
  latis-unit --connect 'tcp://cmdr:7447?fingerprint=sha256:…' --secret-file ~/.latis-unit
                                              dial in to cmdr (`latis unit add --accept`)
  latis-unit --stdio --agent acp -- gemini --experimental-acp
                                              an adapter that runs the agent's own command

echo agent options (-o KEY=VALUE for the unit; also per session, in session.create's
options, where a session's value replaces the unit's):
  delay=SECONDS   wait before each chunk (default 0): prompts long enough to watch
  ask=QUESTION    ask the human QUESTION before each answer; the answer is echoed first
  repeat=N        echo the prompt N times (default 1), for long streams
  remember=1      start each answer with the session's previous prompt, "(you said: ...)":
                  two prompts of one session share its context

addresses: unix:PATH, tcp://HOST:PORT, ws://HOST:PORT/PATH, wss://…, quic://HOST:PORT

exit status: 0 when stdin ends or on SIGTERM, 1 on a failure, 2 on a usage error,
4 when cmdr refuses the unit's enrollment (--connect: wrong, expired, revoked, rotated
away), 130 on Ctrl-C.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said first and in two lines: the whole
    usage (eleven lines of options) buried the one that says what is wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\nusage: {self.prog} --stdio | --listen "
                     "ADDRESS | --connect URL [options] (--help shows them all)\n")


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="latis-unit",
        description="Serve an agent over the latis protocol.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    how = parser.add_argument_group("how to serve (one of)")
    how.add_argument(
        "--stdio", action="store_true", help="speak the protocol on stdin and stdout"
    )
    how.add_argument(
        "--listen", metavar="ADDRESS", help="serve controllers that dial ADDRESS"
    )
    how.add_argument(
        "--connect", metavar="URL", help="dial cmdr's listener at URL, and again if it drops"
    )
    trust = parser.add_argument_group("identity and trust")
    trust.add_argument(
        "--token-file", metavar="FILE",
        help="(--listen) a controller must prove it knows the token in FILE (mode 0600)",
    )
    trust.add_argument(
        "--secret-file", metavar="FILE",
        help="(--connect) the enrollment line cmdr issued (mode 0600)",
    )
    trust.add_argument(
        "--insecure", action="store_true",
        help="listen beyond loopback without a token, or dial cmdr without TLS",
    )
    trust.add_argument("--tls", action="store_true", help="(--listen tcp/ws) speak TLS")
    trust.add_argument("--tls-cert", metavar="PEM", help="our certificate chain "
                       "(default: a self-signed one, made once; its fingerprint is printed)")
    trust.add_argument("--tls-key", metavar="PEM", help="its private key")
    trust.add_argument("--tls-client-ca", metavar="PEM",
                       help="(--listen) ask controllers for a certificate this CA issued (mTLS)")
    trust.add_argument(
        "--handshake-timeout", type=float, default=10.0, metavar="SECONDS",
        help="(--listen) seconds a new connection gets to finish hello (default: 10)",
    )
    parser.add_argument(
        "--heartbeat", type=float, default=HEARTBEAT, metavar="SECONDS",
        help=f"seconds of silence from the controller before a ping; 0 for none "
             f"(default: {HEARTBEAT:g})",
    )
    parser.add_argument(
        "--heartbeat-timeout", type=float, default=HEARTBEAT_TIMEOUT, metavar="SECONDS",
        help=f"seconds that ping waits for an answer before the connection is dropped "
             f"(and redialed with --connect) (default: {HEARTBEAT_TIMEOUT:g})",
    )
    parser.add_argument("--agent", default="echo", help="the agent adapter (default: echo)")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option for the agent (repeatable)",
    )
    parser.add_argument("--name", help="the unit's name in its hello (default: the host name)")
    parser.add_argument(
        "--max-sessions", type=_at_least_one, default=1000, metavar="N",
        help="sessions the unit holds at most (default: 1000); more get limit_reached",
    )
    parser.add_argument(
        "--max-frame", type=int, default=16 * 1024 * 1024, metavar="BYTES",
        help="the largest frame accepted (default: 16 MiB)",
    )
    parser.add_argument(
        "--replay-limit", type=int, default=8 * 1024 * 1024, metavar="BYTES",
        help="bytes of each prompt's chunks kept for replay (default: 8 MiB)",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND ...",
        help="the agent's own command line, for adapters that run one (acp, command)",
    )
    return parser


def _options(pairs: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"option {pair!r} is not KEY=VALUE")
        options[key] = value
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Run `latis-unit`; return its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from latis_core._version import __version__

        print(f"latis-unit {__version__}")
        return 0
    if sum(map(bool, (args.stdio, args.listen, args.connect))) != 1:
        parser.error("say how to serve: --stdio, --listen ADDRESS or --connect URL (one of them)")
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="latis-unit %(levelname)s %(name)s: %(message)s",
    )
    import trio

    from latis_core._plugins.registry import make_agent

    try:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        agent = make_agent(args.agent, _options(args.option, parser), command)
    except (LookupError, ValueError) as exc:
        parser.error(str(exc.args[0]) if exc.args else str(exc))

    limits: dict[str, Any] = {
        "name": args.name,
        "max_sessions": args.max_sessions,
        "max_frame": args.max_frame,
        "replay_limit": args.replay_limit,
        "heartbeat": args.heartbeat or None,
        "heartbeat_timeout": args.heartbeat_timeout,
    }
    try:
        if args.stdio:
            from latis_core._unit.unit import serve_unit

            stream = _take_stdio()
            trio.run(lambda: serve_unit(stream, agent, **limits))
            return 0
        if args.listen:
            listener = _listener(args, parser, limits)
            trio.run(_listen, listener, agent, limits)
            return 0
        dialer, enrollment = _dialer(args, parser)
        limits["enrollment"] = enrollment
        return trio.run(_connect, args.connect, dialer, agent, limits)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # noqa: BLE001 (every failure ends here, as a message)
        return _failed(exc)


def _failed(exc: BaseException) -> int:
    """Say why the unit stopped (the traceback too with LATIS_DEBUG=1); the exit status."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in exc.exceptions if type(e).__name__ != "Cancelled"]
        exc = (leaves or list(exc.exceptions))[0]
    if isinstance(exc, SystemExit):
        raise exc
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if os.environ.get("LATIS_DEBUG", "") not in ("", "0"):
        logging.getLogger("latis.unit").error("the unit failed", exc_info=exc)
    _say(f"the unit stopped: {type(exc).__name__}: {exc} "
         "(LATIS_DEBUG=1 shows the traceback)")
    return 1


def _say(text: str) -> None:
    print(f"latis-unit: {text}", file=sys.stderr, flush=True)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listener(
    args: argparse.Namespace, parser: argparse.ArgumentParser, limits: dict[str, Any]
) -> Any:
    """The listener for --listen, with TLS filled in and the token checked."""
    from latis_core._plugins.registry import listener_from_url

    try:
        name, listener = listener_from_url(args.listen)
    except (ValueError, ImportError, LookupError) as exc:
        parser.error(f"--listen: {exc}")
    host = getattr(listener, "host", None)
    if args.token_file:
        from latis_core._wire.auth import read_secret_file

        try:
            limits["token"] = read_secret_file(args.token_file)
        except ValueError as exc:
            parser.error(f"--token-file: {exc}")
    elif host is not None and not _is_loopback(host) and not args.insecure:
        parser.error(
            f"refusing to listen on {args.listen} without a token: anyone who reaches it "
            f"could run the agent. Give --token-file FILE (a controller must prove it), "
            f"listen on 127.0.0.1 or a unix socket, or say --insecure"
        )
    limits["handshake_timeout"] = args.handshake_timeout
    changes: dict[str, Any] = {}
    if args.tls or args.tls_cert:
        if not hasattr(listener, "tls"):
            parser.error(f"--tls: the {name} listener has no TLS switch")
        changes["tls"] = True
    if args.tls_client_ca:
        changes["client_ca"] = args.tls_client_ca
    wants_cert = changes.get("tls") or name == "quic"
    if wants_cert:
        if args.tls_cert:
            if not args.tls_key:
                parser.error("--tls-cert needs --tls-key")
            changes["cert"], changes["key"] = args.tls_cert, args.tls_key
        elif getattr(listener, "cert", None) is None:
            import socket

            from latis_core._os.paths import paths
            from latis_core._os.tls import self_signed

            hosts = ["localhost", "127.0.0.1", socket.gethostname()]
            if host and host not in ("0.0.0.0", "::", "", "*"):
                hosts.insert(0, host)
            files = self_signed(paths().data_dir / "unit-tls", hosts)
            changes["cert"], changes["key"] = str(files.cert), str(files.key)
            _say(f"TLS certificate {files.fingerprint} (a controller pins it: "
                 f"fingerprint = \"{files.fingerprint}\")")
    import attrs

    return attrs.evolve(listener, **changes) if changes else listener


def _dialer(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Any, Any]:
    """The dialer for --connect and the enrollment it proves."""
    from urllib.parse import parse_qs, urlsplit

    from latis_core._plugins.registry import dialer_from_url
    from latis_core._wire.auth import Enrollment

    try:
        _, dialer = dialer_from_url(args.connect)
    except (ValueError, ImportError, LookupError) as exc:
        parser.error(f"--connect: {exc}")
    if not args.secret_file:
        parser.error("--connect needs --secret-file FILE: the enrollment line that "
                     "`latis unit add NAME --accept …` printed")
    try:
        enrollment = Enrollment.from_file(args.secret_file)
    except ValueError as exc:
        parser.error(f"--secret-file: {exc}")
    parts = urlsplit(args.connect)
    query = parse_qs(parts.query)
    plain = parts.scheme in ("tcp", "ws") and not ({"fingerprint", "ca", "tls"} & set(query))
    if plain and not _is_loopback(parts.hostname or "") and not args.insecure:
        parser.error(
            f"refusing to dial {args.connect} without TLS: anyone on the way could pose as "
            f"cmdr and send the agent work. Add ?fingerprint=… (the enrollment line has it), "
            f"or say --insecure"
        )
    return dialer, enrollment


async def _listen(listener: Any, agent: Agent, limits: dict[str, Any]) -> None:
    import signal

    import trio

    from latis_core._io.accept import Gate, ListenerStats, serve_listener
    from latis_core._unit.unit import open_unit

    log = logging.getLogger("latis.unit")
    gate = Gate(
        getattr(listener, "max_pending", 64),
        getattr(listener, "max_pending_per_host", 16),
    )
    async with open_unit(agent, **limits) as unit, listener.listen() as accepting:
        proof = "a controller must prove the token" if unit.token else (
            "no token: anyone who reaches it may use the agent" if _open_to_all(listener)
            else "no token: this machine's users only")
        _say(f"listening on {_address(listener, accepting)} ({proof})")

        async def serve(stream: trio.abc.Stream, peer: Any, release: Callable[[], None]) -> None:
            log.info("a controller connected from %s", peer)
            await unit.serve(stream, on_handshake=release)

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(
                        serve_listener, accepting, serve, gate=gate, stats=ListenerStats(),
                        label=listener.describe(),
                    )
                )
                async for signum in signals:
                    log.info("stopping on signal %d", signum)
                    nursery.cancel_scope.cancel()
                    break


def _open_to_all(listener: Any) -> bool:
    host = getattr(listener, "host", None)
    return host is not None and not _is_loopback(host)


def _address(listener: Any, accepting: Any) -> str:
    from latis_core._io.accept import bound_port

    text = str(listener.describe())
    port = bound_port(accepting)
    if port is not None and getattr(listener, "port", None) == 0:
        text += f" (port {port})"
    return text


async def _connect(url: str, dialer: Any, agent: Agent, limits: dict[str, Any]) -> int:
    import signal

    import trio

    from latis_core._unit.dial import dial_cmdr
    from latis_core._unit.unit import open_unit

    async with open_unit(agent, **limits) as unit:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                refused: list[str] = []

                async def dial() -> None:
                    refused.append(await dial_cmdr(
                        unit, dialer, label=url,
                        on_connected=lambda: _say(f"connected to cmdr at {url}"),
                    ))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(dial)
                async for signum in signals:
                    logging.getLogger("latis.unit").info("stopping on signal %d", signum)
                    nursery.cancel_scope.cancel()
                    break
    if refused:
        _say(f"cmdr at {url} refused this unit: {refused[0]}\n"
             "  enroll it again on cmdr (latis unit enroll NAME) and run the new line")
        return 4  # auth/enrollment refused (../shared/CLI.md)
    return 0


def _take_stdio() -> trio.abc.Stream:
    """Move the protocol off fds 0 and 1, and point those at /dev/null and stderr.

    Whatever the agent (or a library) prints then lands in the log, not in
    the middle of a frame, and nothing else can read the controller's bytes.
    """
    import trio

    rfd = os.dup(0)
    wfd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return trio.StapledStream(trio.lowlevel.FdStream(wfd), trio.lowlevel.FdStream(rfd))


if __name__ == "__main__":
    sys.exit(main())
