"""Units behind faults, for the tests of cuts and the recovery benchmark.

`behind(kind, home)` runs a `latis-unit --listen` and puts a fault between it
and cmdr (tests/faultproxy.py): a TCP proxy for tcp, tls and websocket, a
unix-socket proxy for unix, a UDP relay for quic, and for ssh a proxy in front
of a throwaway sshd (tests/sshd.py) whose command joins the ssh channel to the
unit's socket (a cut ends what runs over ssh, not the unit). `Link.config()`
is the controller's config for it, with heartbeats fast enough to find a
silent link within 1.5 s.

This module imports nothing from the tests but faultproxy, sshd and units, so
the benchmarks load it by path.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
from faultproxy import FaultProxy, UdpRelay, tcp_target, unix_target
from sshd import running_sshd
from units import UNIT, listening_unit

import latis_core

__all__ = ["BEAT", "UNIX_RELAY", "Link", "behind", "daemon", "running_unit"]

#: The units' side of the heartbeat (cmdr's is in `daemon`).
BEAT = ("--heartbeat", "0.5", "--heartbeat-timeout", "1")


def daemon(unit_lost_after: float = 20.0, **more: Any) -> str:
    """A `[daemon]` table: heartbeats of 0.5 s (1 s to answer), and `more`."""
    lines = [
        "[daemon]",
        "heartbeat = 0.5",
        "heartbeat_timeout = 1.0",
        f"unit_lost_after = {unit_lost_after}",
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in more.items()]
    return "\n".join(lines) + "\n"


@attrs.define
class Link:
    """A unit behind a fault: how cmdr dials it (an address, or a dial table for
    what an address cannot say), the fault, the unit's process."""

    url: str | None
    fault: Any
    process: trio.Process
    table: dict[str, Any] | None = None

    def config(self, name: str = "u", **daemon_table: Any) -> str:
        """The config: `daemon(**daemon_table)`, and the unit if it needs a table."""
        if self.table is None:
            return daemon(**daemon_table)
        lines = [f"[units.{name}.dial]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in self.table.items()]
        return daemon(**daemon_table) + "\n".join(lines) + "\n"

    def add(self, ctl: latis_core.Controller, name: str = "u") -> str:
        """Make sure `ctl` knows the unit; return its name."""
        if self.url is not None:
            ctl.add_address(self.url, name=name)
        return name


# Joins stdin and stdout to a unix socket (the unit's), as `ssh host socat - UNIX:…`
# would: what runs over ssh ends with the ssh connection; the unit does not.
UNIX_RELAY = """
import os, socket, sys, threading
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
def up():
    try:
        while data := os.read(0, 65536):
            sock.sendall(data)
    except OSError:
        pass
    os._exit(0)
def down():
    try:
        while data := sock.recv(65536):
            while data:
                data = data[os.write(1, data):]
    except OSError:
        pass
    os._exit(0)
threading.Thread(target=up).start()
down()
"""


@asynccontextmanager
async def behind(kind: str, home: Path, *unit_args: str) -> AsyncIterator[Link]:
    """A `latis-unit --listen` of `kind` and a fault between it and cmdr.

    `kind`: tcp, tls, websocket, unix, quic or ssh (check `sshd_unavailable()` first).
    """
    args = (*BEAT, *unit_args)
    async with trio.open_nursery() as nursery:
        if kind in ("tcp", "tls"):
            tls = ("--tls",) if kind == "tls" else ()
            async with listening_unit(home, "tcp://127.0.0.1:0", *tls, *args) as unit:
                assert unit.port is not None
                proxy = await nursery.start(FaultProxy(tcp_target("127.0.0.1", unit.port)).serve)
                url = f"tcp://127.0.0.1:{proxy.port}"
                if unit.fingerprint:
                    url += f"?fingerprint={unit.fingerprint}"
                yield Link(url, proxy, unit.process)
        elif kind == "websocket":
            async with listening_unit(home, "ws://127.0.0.1:0/latis", *args) as unit:
                assert unit.port is not None
                proxy = await nursery.start(FaultProxy(tcp_target("127.0.0.1", unit.port)).serve)
                url = f"ws://127.0.0.1:{proxy.port}/latis"
                yield Link(url, proxy, unit.process)
        elif kind == "unix":
            async with listening_unit(home, f"unix:{home}/u.sock", *args) as unit:
                proxy = await nursery.start(
                    FaultProxy(unix_target(f"{home}/u.sock"), path=f"{home}/p.sock").serve
                )
                yield Link(f"unix:{proxy.path}", proxy, unit.process)
        elif kind == "quic":
            async with listening_unit(home, "quic://127.0.0.1:0", *args) as unit:
                assert unit.port is not None
                relay = await nursery.start(UdpRelay(unit.port).serve)
                url = f"quic://127.0.0.1:{relay.port}?fingerprint={unit.fingerprint}"
                yield Link(url, relay, unit.process)
        elif kind == "ssh":
            with running_sshd() as sshd:
                async with listening_unit(home, f"unix:{home}/u.sock", *args) as unit:
                    proxy = await nursery.start(
                        FaultProxy(tcp_target("127.0.0.1", sshd.port)).serve
                    )
                    table = {
                        "type": "ssh",
                        "host": "127.0.0.1",
                        "port": proxy.port,
                        "user": sshd.user,
                        "identity": [sshd.client_key],
                        "host_key": sshd.host_key,
                        "grace": 0.2,
                        "command": [sys.executable, "-c", UNIX_RELAY, f"{home}/u.sock"],
                    }
                    yield Link(None, proxy, unit.process, table)
        else:
            raise AssertionError(kind)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_unit(home: Path, *args: str) -> AsyncIterator[trio.Process]:
    """`latis-unit ARGS` (echo agent, the test heartbeat) until the block ends."""
    env = {**os.environ, "LATIS_HOME": str(home / "unit-home")}
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [*UNIT, *BEAT, "--agent", "echo", *args],
                stderr=subprocess.DEVNULL,
                env=env,
                check=False,
            )
        )
        try:
            yield process
        finally:
            process.terminate()
