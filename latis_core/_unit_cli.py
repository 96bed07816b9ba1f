"""`latis-unit`: serve an agent over the latis protocol.

    latis-unit --stdio --agent echo -o delay=0.1
    latis-unit --listen unix:/run/user/1000/latis/box.sock

With `--stdio` the protocol runs on stdin and stdout; logs go to stderr only,
and the unit exits by itself when stdin reaches EOF (a remote unit over ssh
relies on it: closing the channel does not always signal the process).

With `--listen` it serves any number of controllers, one after another or at
once, and its sessions outlive each connection (a controller that restarts
resumes them). It runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

    from ._agent import Agent

__all__ = ["main"]

EPILOG = """\
examples:
  latis-unit --stdio                          echo agent on stdin/stdout
  latis-unit --stdio --agent echo -o delay=0.2 -o ask="Go on?"
  latis-unit --stdio --name build-box --max-sessions 10
  latis-unit --listen unix:/tmp/box.sock      serve controllers on a unix socket (0600)
  latis-unit --stdio --agent acp -- gemini --experimental-acp
                                              an adapter that runs the agent's own command

exit status: 0 when stdin ends, 1 on a failure, 2 on a usage error.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latis-unit",
        description="Serve an agent over the latis protocol.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stdio", action="store_true", help="speak the protocol on stdin and stdout"
    )
    parser.add_argument(
        "--listen",
        metavar="ADDRESS",
        help="serve controllers that connect to ADDRESS (unix:PATH)",
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
    parser.add_argument("--max-sessions", type=int, default=1000, metavar="N")
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
        from ._version import __version__

        print(f"latis-unit {__version__}")
        return 0
    if args.stdio == bool(args.listen):
        parser.error("say how to serve: --stdio, or --listen ADDRESS (one of them)")
    if args.listen and not args.listen.startswith("unix:"):
        parser.error(f"cannot listen on {args.listen!r}: known addresses are unix:PATH")
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="latis-unit %(levelname)s %(name)s: %(message)s",
    )
    import trio

    from ._registry import make_agent

    try:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        agent = make_agent(args.agent, _options(args.option, parser), command)
    except (LookupError, ValueError) as exc:
        parser.error(str(exc.args[0]) if exc.args else str(exc))

    from ._unit import serve_unit

    limits = {
        "name": args.name,
        "max_sessions": args.max_sessions,
        "max_frame": args.max_frame,
        "replay_limit": args.replay_limit,
    }
    try:
        if args.stdio:
            stream = _take_stdio()
            trio.run(lambda: serve_unit(stream, agent, **limits))
        else:
            trio.run(_listen, args.listen.removeprefix("unix:"), agent, limits)
    except KeyboardInterrupt:
        return 130
    except Exception:
        logging.getLogger("latis.unit").exception("the unit failed")
        return 1
    return 0


async def _listen(path: str, agent: Agent, limits: dict[str, Any]) -> None:
    import signal

    import trio
    from latis_transports.unix import listen_unix

    from ._unit import open_unit

    log = logging.getLogger("latis.unit")
    async with open_unit(agent, **limits) as unit, listen_unix(path) as listener:
        log.info("listening on unix:%s", path)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, unit.serve, [listener])
                async for signum in signals:
                    log.info("stopping on signal %d", signum)
                    nursery.cancel_scope.cancel()
                    break


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
