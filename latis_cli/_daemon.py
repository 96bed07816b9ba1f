"""`latis daemon run|start|stop|restart|reload|status`."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

from cyclopts import App, Parameter

from ._cmdr import CMDR_UNREACHABLE, ERROR, OK

daemon = App(
    name="daemon",
    help="The cmdr daemon: it holds units, sessions and prompts for every `latis` command.",
    help_format="plaintext",
)


def _use(config: Path | None) -> None:
    """Make `config` the file the daemon started from here serves."""
    if config is not None:
        os.environ["LATIS_CONFIG"] = str(config.expanduser().resolve())


@daemon.command
def run(*, config: Path | None = None) -> int:
    """Run the daemon in the foreground (logs on stderr) until SIGTERM or Ctrl-C.

    It serves one config file: `--config`, else the one every command finds
    (LATIS_CONFIG, ./latis.toml upward, the user config).

    For example:
      latis daemon run
      latis daemon run --config ~/fleet/latis.toml
      LATIS_LOG_LEVEL=debug latis daemon run

    Args:
        config: the config file to serve.
    """
    from latis_core import run_daemon

    _use(config)
    return run_daemon(os.environ.get("LATIS_CONFIG"))


@daemon.command
def start(*, config: Path | None = None) -> int:
    """Start the daemon in the background, unless it runs (commands also start it on first use).

    For example:
      latis daemon start
      latis daemon start --config ~/fleet/latis.toml

    Args:
        config: the config file to serve (else the one commands find from here).
    """
    from ._cmdr import CmdrUnreachable, daemon_pid, start_daemon

    _use(config)

    pid = daemon_pid()
    if pid is not None:
        print(f"cmdr runs (pid {pid})", file=sys.stderr)
        return OK
    try:
        start_daemon()
    except CmdrUnreachable as exc:
        print(f"latis: {exc}", file=sys.stderr)
        return CMDR_UNREACHABLE
    return OK


@daemon.command
def stop(*, timeout: float = 15.0) -> int:
    """Stop the daemon. Units that run by themselves and their prompts go on.

    For example:
      latis daemon stop

    Args:
        timeout: seconds to wait for it to exit.
    """
    from ._cmdr import daemon_pid

    pid = daemon_pid()
    if pid is None:
        print("cmdr is not running", file=sys.stderr)
        return OK
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return OK
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon_pid() is None:
            print(f"stopped cmdr (pid {pid})", file=sys.stderr)
            return OK
        time.sleep(0.05)
    print(f"latis: cmdr (pid {pid}) did not stop within {timeout:g} s", file=sys.stderr)
    return ERROR


@daemon.command
def restart(*, config: Path | None = None, timeout: float = 15.0) -> int:
    """Stop the daemon and start it again, serving `--config` (or the config found from here).

    Units that run by themselves and their prompts go on; the new daemon
    re-attaches to those its config still names.

    For example:
      latis daemon restart
      latis daemon restart --config ./ex1.toml

    Args:
        config: the config file to serve.
        timeout: seconds to wait for the old daemon to exit.
    """
    from latis_core import ConfigError, load_config

    _use(config)
    try:  # A config the new daemon would refuse leaves the running one as it is.
        load_config(os.environ.get("LATIS_CONFIG") or None)
    except ConfigError as exc:
        print(f"latis: {exc}\nlatis: the daemon was not restarted (it runs on, with the "
              "config it has)", file=sys.stderr)
        return ERROR
    stopped = stop(timeout=timeout)
    if stopped != OK:
        return stopped
    return start(config=config)


@daemon.command
def reload(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """Make the daemon read its config file again now (it also does when the file changes).

    Units the file no longer names are stopped (provisioned) or disconnected.
    A daemon that serves the built-in config takes the file commands find
    from here (`latis init` wrote one, say); one that serves another file
    reads its own again, and says which.

    For example:
      latis daemon reload

    Args:
        json_output: print a JSON object.
    """
    from ._run import config_mismatch, config_path, run_with_cmdr

    async def work(cmdr: Any) -> int:
        wanted = config_path()
        used = await cmdr.config_use(wanted)
        if not used.get("match", True):
            print(config_mismatch(used.get("config"), wanted).replace(
                "latis: ", "latis: note: ", 1), file=sys.stderr)
        data = await cmdr.config_reload()
        for key in ("added", "removed"):
            data[key] = [*used.get(key, []), *data.get(key, [])]
        if json_output:
            print(json.dumps(data, indent=2))
            return OK
        print(f"cmdr read {data.get('config') or 'the built-in config'} again", file=sys.stderr)
        for key in ("added", "removed"):
            if data.get(key):
                print(f"  {key}: {', '.join(data[key])}", file=sys.stderr)
        if data.get("kept"):
            print(f"  changed but connected, kept as they were: {', '.join(data['kept'])} "
                  "(latis unit down NAME, then latis daemon reload, takes the change)",
                  file=sys.stderr)
        for note in [*used.get("notes", []), *data.get("notes", [])]:
            print(f"  note: {note}", file=sys.stderr)
        return OK

    return run_with_cmdr(work, autostart=False, config=False)


def _served() -> tuple[str | None, str | None]:
    """The config file the running daemon serves (None: it serves none, or is
    unreachable), and what is wrong with that file since it changed (None: nothing)."""
    import trio

    from latis_core import LatisError, open_daemon

    async def ask() -> tuple[str | None, str | None]:
        async with open_daemon(autostart=False) as cmdr:
            found = (await cmdr.status())["daemon"]
            return found.get("config") or None, found.get("config_error")

    try:
        return trio.run(ask)
    except (LatisError, OSError):
        return None, None


@daemon.command
def status(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """Say whether the daemon runs, with its pid and socket; with --json, when it
    runs, also where its notifications go (URLs redacted) and its approval rules.

    Exit status 0 when it runs, 5 when it does not.

    For example:
      latis daemon status
      latis daemon status --json

    Args:
        json_output: print a JSON object.
    """
    from latis_core import paths

    from ._cmdr import daemon_pid
    from ._run import _named, config_path

    pid = daemon_pid()
    where = paths()
    served, problem = _served() if pid is not None else (None, None)
    try:
        here: str | None = config_path()
    except Exception:  # a --config that does not exist: said by the commands that read it
        here = None
    info = {
        "running": pid is not None,
        "pid": pid,
        "socket": str(where.socket),
        "log": str(where.log_dir / "cmdr.log"),
        "config": served,
        "config_error": problem,
        "config_here": here,
    }
    if json_output:
        if pid is not None:
            from ._run import run_with_cmdr

            async def more(cmdr: Any) -> int:
                found = await cmdr.status()
                info["notify"] = found.get("notify")
                info["policy"] = found.get("policy")
                return OK

            run_with_cmdr(more, autostart=False, config=False)
        print(json.dumps(info))
    elif pid is None:
        print("cmdr is not running")
    else:
        print(f"cmdr runs (pid {pid}), socket {where.socket}")
        print(f"config: {_named(served)}")
        if problem:
            print(f"  it no longer reads (what it read before is served):\n"
                  f"  {problem.replace(chr(10), chr(10) + '  ')}")
        if served != here:
            print(f"(commands run here read {_named(here)}: "
                  f"latis daemon restart{' --config ' + here if here else ''})")
    return OK if pid is not None else CMDR_UNREACHABLE
