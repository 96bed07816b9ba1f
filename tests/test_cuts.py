"""A cut is not the end of a prompt: links cut, stalled and reset under streaming prompts.

A real controller dials (or is dialed by) a real `latis-unit` process through a
proxy the test controls (tests/faultproxy.py): TCP, TLS, websocket, unix, ssh
(a throwaway sshd, tests/sshd.py) and QUIC (through a UDP relay). The proxy
cuts the link mid-stream, stalls it (after half a frame), or leaves it
half-open; units are killed with SIGKILL. Each test asserts what a follower
of the prompt sees: every chunk once and in order, then `complete`; or, when
the cut outlasts what the unit could keep, a typed error that says how many
chunks were lost; never silence. Heartbeats here are 0.5 s (1 s to answer)
so that a silent link is found within 1.5 s.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from faultproxy import FaultProxy, UdpRelay, tcp_target, unix_target
from sshd import running_sshd, sshd_unavailable
from units import UNIT, listening_unit

import latis_core
from latis_core._cmdr.config import parse_config
from latis_core._cmdr.state import StateDB

#: The units' side of the heartbeat (cmdr's is in `daemon`).
BEAT = ("--heartbeat", "0.5", "--heartbeat-timeout", "1")
WORDS = [f"w{i}" for i in range(300)]


def daemon(unit_lost_after: float = 20.0, **more: Any) -> str:
    lines = ["[daemon]", "heartbeat = 0.5", "heartbeat_timeout = 1.0",
             f"unit_lost_after = {unit_lost_after}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in more.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Short: unix socket paths must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="lcut", dir="/tmp") as folder:
        monkeypatch.setenv("LATIS_HOME", str(Path(folder) / "cmdr"))
        yield Path(folder)


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
async def behind(
    kind: str, home: Path, *unit_args: str
) -> AsyncIterator[Link]:
    """A `latis-unit --listen` of `kind` and a fault between it and cmdr."""
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
                    FaultProxy(unix_target(f"{home}/u.sock"), path=f"{home}/p.sock").serve)
                yield Link(f"unix:{proxy.path}", proxy, unit.process)
        elif kind == "quic":
            async with listening_unit(home, "quic://127.0.0.1:0", *args) as unit:
                assert unit.port is not None
                relay = await nursery.start(UdpRelay(unit.port).serve)
                url = f"quic://127.0.0.1:{relay.port}?fingerprint={unit.fingerprint}"
                yield Link(url, relay, unit.process)
        elif kind == "ssh":
            why = sshd_unavailable()
            if why is not None:
                pytest.skip(why)
            with running_sshd() as sshd:
                async with listening_unit(home, f"unix:{home}/u.sock", *args) as unit:
                    proxy = await nursery.start(
                        FaultProxy(tcp_target("127.0.0.1", sshd.port)).serve)
                    table = {
                        "type": "ssh", "host": "127.0.0.1", "port": proxy.port,
                        "user": sshd.user, "identity": [sshd.client_key],
                        "host_key": sshd.host_key, "grace": 0.2,
                        "command": [sys.executable, "-c", UNIX_RELAY, f"{home}/u.sock"],
                    }
                    yield Link(None, proxy, unit.process, table)
        else:
            raise AssertionError(kind)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def controller(home: Path, config: str) -> AsyncIterator[latis_core.Controller]:
    with StateDB(home / "state.db") as state:
        async with latis_core.open_controller(parse_config(config), state) as ctl:
            yield ctl


@attrs.define
class Followed:
    """What one follower of a prompt saw."""

    seqs: list[int] = attrs.Factory(list)
    text: str = ""
    end: dict[str, Any] | None = None

    def complete(self, words: list[str]) -> None:
        """Every chunk once, in order, then `complete`."""
        assert self.seqs == list(range(len(words))), self.seqs
        assert self.text == " ".join(words)
        assert self.end is not None and self.end["outcome"] == "complete", self.end


async def follow(
    ctl: latis_core.Controller, prompt_id: int, at: int | None = None,
    fault: Any = None, *, down_for: float = 1.0, nursery: trio.Nursery | None = None,
) -> Followed:
    """Follow a prompt to its end; at chunk `at`, cut `fault` for `down_for` seconds."""
    seen = Followed()
    async for kind, event in ctl.follow(prompt_id):
        if kind == "chunk":
            seen.seqs.append(event.seq)
            seen.text += event.text
            if event.seq == at:
                assert nursery is not None
                fault.cut()
                nursery.start_soon(restore_after, fault, down_for)
        elif kind == "end":
            seen.end = event
    return seen


async def restore_after(fault: Any, seconds: float) -> None:
    await trio.sleep(seconds)
    fault.restore()


def stored(ctl: latis_core.Controller, sid: str) -> list[int]:
    [entry] = ctl.state.transcript(sid)
    return [chunk.seq for chunk in entry.chunks]


# ---- a cut while a prompt streams ------------------------------------------------------


DIALED = ["tcp", "tls", "websocket", "unix", "ssh", "quic"]
#: Seconds a cut lasts: QUIC carries on after a short blackout (it resends what
#: was lost), so its cut outlasts the heartbeat's bound (1.5 s here).
DOWN_FOR = {"quic": 2.5}


@pytest.mark.parametrize("kind", DIALED)
async def test_a_cut_mid_prompt_is_picked_up_complete_and_exactly_once(
    kind: str, home: Path
) -> None:
    """The link to a unit cmdr dials is cut at chunk 40 for a while: when it is back,
    cmdr redials, picks the prompt up after the last chunk it had, and every follower
    (one there all along, one that comes after the cut) sees each chunk once, in order;
    the stored transcript holds each once."""
    async with behind(kind, home, "-o", "delay=0.005") as link:
        async with controller(home, link.config()) as ctl, trio.open_nursery() as nursery:
            sid = (await ctl.create_session(link.add(ctl)))["session"]
            record = await ctl.start_prompt(sid, " ".join(WORDS))
            seen = await follow(ctl, record.id, 40, link.fault, nursery=nursery,
                                down_for=DOWN_FOR.get(kind, 1.0))
            late = await follow(ctl, record.id)
            assert link.fault.connections == 2  # picked up on a new connection
            seen.complete(WORDS)
            late.complete(WORDS)
            assert stored(ctl, sid) == list(range(len(WORDS)))
            assert link.process.returncode is None  # the same unit all along


async def test_a_cut_under_a_unit_that_dials_in_is_picked_up(home: Path) -> None:
    """The same over a dial-in (TLS with cmdr's CA): the unit redials through the
    restored link and the prompt goes on where it was."""
    config = daemon() + """
[units.edge]
agent = "echo"
[[units.edge.accept]]
type = "tcp"
host = "127.0.0.1"
port = 0
tls = true
"""
    async with controller(home, config) as ctl, trio.open_nursery() as nursery:
        enrolled = await ctl.dialins.enroll("edge", "127.0.0.1")
        [listener] = ctl.dialins.listener_of(ctl.units["edge"])
        assert listener.port is not None
        proxy = await nursery.start(FaultProxy(tcp_target("127.0.0.1", listener.port)).serve)
        secret = home / "secret"
        secret.write_text(enrolled["secret"] + "\n")
        secret.chmod(0o600)
        url = f"tcp://127.0.0.1:{proxy.port}?fingerprint={enrolled['fingerprint']}"
        async with running_unit(home, "--connect", url, "--secret-file", str(secret),
                                "--name", "edge", "-o", "delay=0.005"):
            with trio.fail_after(20):
                await ctl.units["edge"]._connected.wait()
            sid = (await ctl.create_session("edge"))["session"]
            record = await ctl.start_prompt(sid, " ".join(WORDS))
            seen = await follow(ctl, record.id, 40, proxy, nursery=nursery)
            seen.complete(WORDS)
            assert stored(ctl, sid) == list(range(len(WORDS)))
            assert listener.stats.accepted >= 2
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_unit(home: Path, *args: str) -> AsyncIterator[trio.Process]:
    """`latis-unit ARGS` (echo agent, the test heartbeat) until the block ends."""
    env = {**os.environ, "LATIS_HOME": str(home / "unit-home")}
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(functools.partial(
            trio.run_process, [*UNIT, *BEAT, "--agent", "echo", *args],
            stderr=subprocess.DEVNULL, env=env, check=False,
        ))
        try:
            yield process
        finally:
            process.terminate()
