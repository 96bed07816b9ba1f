"""Every failure as one or a few lines and an exit status; the traceback only with --debug.

`describe(exc)` turns any exception (a nursery's ExceptionGroup unwrapped to
its cause) into what the user reads and the exit status of ../shared/CLI.md;
`guard(main)` runs a command line under it. `--debug` or `LATIS_DEBUG=1`
prints the traceback too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ._cmdr import AUTH, CANCELLED, CMDR_UNREACHABLE, ERROR, INTERRUPTED, UNIT_UNREACHABLE, USAGE

#: Wire codes (as the daemon answers) and the exit status each maps to.
_BY_CODE = {
    "unreachable": UNIT_UNREACHABLE,
    "provision_failed": UNIT_UNREACHABLE,
    "unit_lost": UNIT_UNREACHABLE,
    "unauthorized": AUTH,
    "auth_required": AUTH,
    "cancelled": CANCELLED,
}


def debugging() -> bool:
    """Whether tracebacks are shown (`--debug`, or LATIS_DEBUG set and not 0)."""
    return os.environ.get("LATIS_DEBUG", "") not in ("", "0")


def cause(exc: BaseException) -> BaseException:
    """The exception that matters: a group's first leaf that is not a cancellation."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in exc.exceptions if type(e).__name__ != "Cancelled"]
        exc = (leaves or list(exc.exceptions))[0]
    return exc


def describe(exc: BaseException) -> tuple[str, int]:
    """What to tell the user about `exc`, and the exit status."""
    exc = cause(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    if isinstance(exc, SystemExit):
        code = exc.code
        if isinstance(code, int):
            return "", code
        return str(code or "").removeprefix("latis: "), ERROR
    name = type(exc).__name__
    code = getattr(exc, "code", None)
    if name == "CmdrUnreachable":
        return f"{exc} (see `latis daemon status`; `latis daemon start` starts it)", \
            CMDR_UNREACHABLE
    if name == "RequestError":
        message = str(getattr(exc, "message", exc))
        return _hint(str(code), message), _BY_CODE.get(str(code), ERROR)
    if name == "ConnectionClosed":
        # The CLI talks to cmdr only (a unit's failures come back as errors it
        # sends): this connection is cmdr's, and cmdr went away mid-command.
        return (f"{exc}: cmdr stopped while this command ran (see `latis daemon status` and "
                "its log; `latis daemon start` starts it)"), CMDR_UNREACHABLE
    if name in ("UnitNotConnected", "ConnectError", "TransportError"):
        return str(exc), UNIT_UNREACHABLE
    if name == "ConfigError":
        return f"{exc}", ERROR
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename}", USAGE
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}", ERROR
    if code is not None and isinstance(exc, Exception) and _is_latis(exc):
        return str(exc), _BY_CODE.get(str(code), ERROR)
    return f"{name}: {exc} (a bug? run again with --debug and report it)", ERROR


def _is_latis(exc: BaseException) -> bool:
    return any(k.__name__ == "LatisError" for k in type(exc).__mro__)


def _hint(code: str, message: str) -> str:
    """The daemon's message, and what to do about the common ones."""
    if code == "agent_error":
        return (f"the agent failed: {message}\n"
                "  `latis agents available` lists the agent CLIs on PATH; "
                "`latis unit list` each unit's agent (options: docs/config.md)")
    if code in ("unreachable", "provision_failed"):
        return f"{message}\n  `latis status` shows each unit; the daemon's log: {_log()}"
    if code == "unknown_session" and "is closed" not in message:
        return f"{message}\n  `latis session ls` lists the open sessions"
    return message


def _log() -> str:
    try:
        from latis_core import paths

        return str(paths().log_dir / "cmdr.log")
    except Exception:  # noqa: BLE001 (a hint must not fail)
        return "cmdr.log in latis's log folder"


def report(exc: BaseException, program: str = "latis") -> int:
    """Print `exc` as a message (and its traceback when debugging); return the exit status."""
    if debugging():
        import traceback

        traceback.print_exception(exc)
    message, status = describe(exc)
    if message:
        print(f"{program}: {message}", file=sys.stderr)
    return status


def guard(main: Callable[[], Any], program: str = "latis") -> NoReturn:
    """Run `main` (which may `sys.exit`); exit with the status of what happened."""
    try:
        result = main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            raise
        sys.exit(report(exc, program))
    except BrokenPipeError:
        # The reader went away (`latis ... | head`): nothing to say to anyone.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(ERROR)
    except BaseException as exc:  # noqa: BLE001 (this is where every failure ends)
        sys.exit(report(exc, program))
    sys.exit(result if isinstance(result, int) else 0)
