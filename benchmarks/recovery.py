#!/usr/bin/env python
"""Recovery: how soon a prompt goes on after a cut, and how soon a dead unit is told.

    python benchmarks/recovery.py            # 3 rounds a transport (~2 min)
    python benchmarks/recovery.py --short    # 1 round a transport (~40 s)
    python benchmarks/recovery.py --json     # also the numbers as one JSON line, last

Per transport, a real controller and a real `latis-unit`, with a fault between
them (tests/faultproxy.py, set up by tests/cutlinks.py), one table:

- **connect** (the floor): a fresh dial, `hello` both ways and a `ping`, through
  the same fault-free proxy: the least any pick-up costs.
- **restored → chunk**: a prompt streams; the link is cut at chunk 20 (a reset,
  refused while down; QUIC: every datagram dropped) for `--down` seconds (QUIC:
  longer than the heartbeat's bound, which a QUIC blackout must outlast to be a
  cut); then restored. From then until the follower has the next chunk. cmdr
  redials with backoff (0.5 s, 1 s, 2 s, ...), so this is mostly the wait for
  the next attempt.
- **cut → chunk**: the same, from the cut.
- **killed → unit_lost**: SIGKILL of the unit mid-prompt; until the follower has
  the typed error. Without a provisioner cmdr waits `unit_lost_after` for the
  unit to come back (`--unit-lost-after`, 1 s here; 30 s by default); over QUIC
  it first has to notice, by the heartbeat. The `process` row has a provisioner,
  which sees the process gone at once.

Heartbeats are 0.5 s (1 s to answer) on both sides. A measurement script: it
asserts nothing about the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from cutlinks import Link, behind, daemon, running_unit  # noqa: E402
from faultproxy import FaultProxy, tcp_target  # noqa: E402
from sshd import sshd_unavailable  # noqa: E402

import latis_core  # noqa: E402
from latis_core._cmdr.config import parse_config  # noqa: E402
from latis_core._cmdr.state import StateDB  # noqa: E402

TRANSPORTS = ["tcp", "tls", "websocket", "unix", "ssh", "quic", "dial-in"]
#: The chunk at which the link is cut or the unit killed.
AT = 20
#: Seconds a QUIC blackout lasts (past the heartbeat's 1.5 s bound).
QUIC_DOWN = 2.5


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, home: Path) -> None:
        self.args = args
        self.home = home
        self.words = " ".join(f"w{i}" for i in range(120 if args.short else 300))
        self.round = 0

    def fresh(self, name: str) -> Path:
        """A folder of its own for one measurement (short: unix socket paths)."""
        self.round += 1
        path = self.home / f"{name[:4]}{self.round}"
        path.mkdir()
        os.environ["LATIS_HOME"] = str(path / "cmdr")
        return path

    def config(self, link: Link | None = None, *, dying: bool = False) -> str:
        """The controller's config; a short `unit_lost_after` only where the unit dies
        (a cut must not outlast it)."""
        lost = self.args.unit_lost_after if dying else 30.0
        return link.config(unit_lost_after=lost) if link else daemon(unit_lost_after=lost)

    # ---- one measurement each --------------------------------------------------------

    async def connect(self, kind: str) -> float:
        home = self.fresh(kind)
        async with behind(kind, home) as link:
            if link.url is None:  # ssh: a table
                from latis_transports.ssh import SshDialer

                table = {k: v for k, v in link.table.items() if k != "type"}  # type: ignore[union-attr]
                dialer: Any = SshDialer(**table)
            else:
                _, dialer = latis_core.dialer_from_url(link.url)
            start = trio.current_time()
            async with dialer.connect() as stream, latis_core.connect(stream) as unit:
                await unit.ping()
                return trio.current_time() - start

    async def resume(self, kind: str) -> tuple[float, float]:
        """(restored → next chunk, cut → next chunk) for one cut."""
        home = self.fresh(kind)
        down = QUIC_DOWN if kind == "quic" else self.args.down
        if kind == "dial-in":
            return await self._resume_dial_in(home, down)
        async with behind(kind, home, "-o", "delay=0.005") as link:
            with StateDB(home / "state.db") as state:
                async with latis_core.open_controller(
                    parse_config(self.config(link)), state
                ) as ctl:
                    if link.url is not None:
                        ctl.add_address(link.url, name="u")
                    sid = (await ctl.create_session("u"))["session"]
                    return await self._cut_and_time(ctl, sid, link.fault, down)

    async def _resume_dial_in(self, home: Path, down: float) -> tuple[float, float]:
        config = self.config() + DIAL_IN_UNIT
        with StateDB(home / "state.db") as state:
            async with (
                latis_core.open_controller(parse_config(config), state) as ctl,
                trio.open_nursery() as nursery,
            ):
                url, secret = await self._enroll(ctl, home, nursery)
                async with running_unit(
                    home,
                    "--connect",
                    url,
                    "--secret-file",
                    secret,
                    "--name",
                    "edge",
                    "-o",
                    "delay=0.005",
                ):
                    await _connected(ctl, "edge")
                    sid = (await ctl.create_session("edge"))["session"]
                    result = await self._cut_and_time(ctl, sid, self._proxy, down)
                nursery.cancel_scope.cancel()
                return result

    async def _enroll(
        self, ctl: latis_core.Controller, home: Path, nursery: trio.Nursery
    ) -> tuple[str, str]:
        enrolled = await ctl.dialins.enroll("edge", "127.0.0.1")
        [listener] = ctl.dialins.listener_of(ctl.units["edge"])
        assert listener.port is not None
        self._proxy = await nursery.start(FaultProxy(tcp_target("127.0.0.1", listener.port)).serve)
        secret = home / "secret"
        secret.write_text(enrolled["secret"] + "\n")
        secret.chmod(0o600)
        url = f"tcp://127.0.0.1:{self._proxy.port}?fingerprint={enrolled['fingerprint']}"
        return url, str(secret)

    async def _cut_and_time(
        self, ctl: latis_core.Controller, sid: str, fault: Any, down: float
    ) -> tuple[float, float]:
        record = await ctl.start_prompt(sid, self.words)
        cut_at = restored_at = resumed_at = 0.0
        seqs = []
        async with trio.open_nursery() as nursery:

            async def restore() -> None:
                nonlocal restored_at
                await trio.sleep(down)
                fault.restore()
                restored_at = trio.current_time()

            async for kind, event in ctl.follow(record.id):
                if kind == "chunk":
                    seqs.append(event.seq)
                    if event.seq == AT:
                        fault.cut()
                        cut_at = trio.current_time()
                        nursery.start_soon(restore)
                    elif event.seq == AT + 1:
                        resumed_at = trio.current_time()
                elif kind == "end" and event["outcome"] != "complete":
                    raise RuntimeError(f"the prompt ended {event}")
        if seqs != list(range(len(self.words.split()))):
            raise RuntimeError("the prompt's chunks were not each there once, in order")
        return resumed_at - restored_at, resumed_at - cut_at

    async def death(self, kind: str) -> float:
        """Seconds from SIGKILL of the unit to `unit_lost` at the follower."""
        home = self.fresh(kind)
        if kind == "process":
            config = self.config(dying=True) + PROCESS_UNIT
            with StateDB(home / "state.db") as state:
                async with latis_core.open_controller(parse_config(config), state) as ctl:
                    sid = (await ctl.create_session("p"))["session"]
                    rt = ctl.units["p"]
                    assert rt.provisioner is not None
                    pid = int(rt.provisioner.context.resources.get("pid") or 0)

                    async def kill_process() -> None:
                        os.kill(pid, signal.SIGKILL)
                        await trio.lowlevel.checkpoint()

                    try:
                        return await self._kill_and_time(ctl, sid, kill_process)
                    finally:
                        await ctl.down("p")
        if kind == "dial-in":
            config = self.config(dying=True) + DIAL_IN_UNIT
            with StateDB(home / "state.db") as state:
                async with (
                    latis_core.open_controller(parse_config(config), state) as ctl,
                    trio.open_nursery() as nursery,
                ):
                    url, secret = await self._enroll(ctl, home, nursery)
                    async with running_unit(
                        home,
                        "--connect",
                        url,
                        "--secret-file",
                        secret,
                        "--name",
                        "edge",
                        "-o",
                        "delay=0.01",
                    ) as unit:
                        await _connected(ctl, "edge")
                        sid = (await ctl.create_session("edge"))["session"]
                        took = await self._kill_and_time(ctl, sid, _killer(unit))
                    nursery.cancel_scope.cancel()
                    return took
        async with behind(kind, home, "-o", "delay=0.01") as link:
            with StateDB(home / "state.db") as state:
                async with latis_core.open_controller(
                    parse_config(self.config(link, dying=True)), state
                ) as ctl:
                    if link.url is not None:
                        ctl.add_address(link.url, name="u")
                    sid = (await ctl.create_session("u"))["session"]
                    return await self._kill_and_time(ctl, sid, _killer(link.process))

    async def _kill_and_time(
        self, ctl: latis_core.Controller, sid: str, kill: Callable[[], Awaitable[None]]
    ) -> float:
        record = await ctl.start_prompt(sid, self.words)
        killed_at = 0.0
        async for kind, event in ctl.follow(record.id):
            if kind == "chunk" and event.seq == AT:
                killed_at = trio.current_time()
                await kill()
            elif kind == "end":
                if event.get("code") != "unit_lost":
                    raise RuntimeError(f"the prompt ended {event}, not unit_lost")
                return trio.current_time() - killed_at
        raise RuntimeError("the prompt ended with no end")


DIAL_IN_UNIT = """
[units.edge]
agent = "echo"
[[units.edge.accept]]
type = "tcp"
host = "127.0.0.1"
port = 0
tls = true
"""

PROCESS_UNIT = """
[units.p]
agent_options = { delay = "0.01" }
[units.p.provisioner]
type = "process"
"""


def _killer(process: trio.Process) -> Callable[[], Awaitable[None]]:
    async def kill() -> None:
        process.kill()
        await process.wait()

    return kill


async def _connected(ctl: latis_core.Controller, name: str) -> None:
    with trio.fail_after(20):
        await ctl.units[name]._connected.wait()


# ---- the run --------------------------------------------------------------------------------


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    middle = statistics.median(values) * 1000
    if len(values) == 1:
        return f"{middle:.0f}"
    return f"{middle:.0f} ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds = 1 if args.short else args.rounds
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lrec", dir="/tmp") as folder:
        bench = Bench(args, Path(folder))
        for kind in [*TRANSPORTS, "process"]:
            if kind == "ssh" and (why := sshd_unavailable()) is not None:
                rows[kind] = {"skipped": why}
                say(f"{kind}: skipped ({why})")
                continue
            row: dict[str, Any] = {"connect": [], "restored": [], "cut": [], "death": []}
            for n in range(rounds):
                say(f"{kind}: round {n + 1} of {rounds}")
                if kind not in ("process", "dial-in"):
                    row["connect"].append(await bench.connect(kind))
                if kind != "process":
                    restored, cut = await bench.resume(kind)
                    row["restored"].append(restored)
                    row["cut"].append(cut)
                row["death"].append(await bench.death(kind))
            rows[kind] = row
    return rows


def table(rows: dict[str, Any], args: argparse.Namespace) -> str:
    head = ("transport", "connect (floor)", "restored → chunk", "cut → chunk", "killed → unit_lost")
    lines = [head]
    for kind, row in rows.items():
        if "skipped" in row:
            lines.append((kind, "skipped", row["skipped"], "", ""))
            continue
        lines.append(
            (kind, ms(row["connect"]), ms(row["restored"]), ms(row["cut"]), ms(row["death"]))
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        f"recovery, ms: median (min-max) of {1 if args.short else args.rounds} round(s); "
        f"cut at chunk {AT} for {args.down:g} s (quic {QUIC_DOWN:g} s); heartbeat 0.5 s, "
        f"timeout 1 s; unit_lost_after {args.unit_lost_after:g} s",
        "",
    ]
    for i, line in enumerate(lines):
        text.append(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
        if i == 0:
            text.append("  ".join("-" * width for width in widths))
    text += [
        "",
        "restored → chunk is mostly cmdr's redial backoff (0.5 s, then 1 s, 2 s, ...; a",
        "dial-in unit's own, jittered); killed → unit_lost is unit_lost_after plus the",
        "time to notice (at once on a reset; over quic, the heartbeat's 1.5 s); the",
        "process row's provisioner sees its unit gone at once.",
    ]
    return "\n".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="one round a transport")
    parser.add_argument("--rounds", type=int, default=3, help="rounds a transport (default 3)")
    parser.add_argument(
        "--down", type=float, default=1.0, help="seconds a cut lasts (default 1; quic: 2.5)"
    )
    parser.add_argument(
        "--unit-lost-after",
        type=float,
        default=1.0,
        help="[daemon] unit_lost_after for the run (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args()
    started = time.monotonic()
    rows = trio.run(run, args)
    print(table(rows, args))
    say(f"took {time.monotonic() - started:.0f} s")
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
