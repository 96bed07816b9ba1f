#!/usr/bin/env python
"""`parallel` fan-out: one prompt to many agents through `Controller.coordinate`,
beside the floor (a plain trio loop doing the same through the bare client API),
all in one run.

    python benchmarks/coordinate.py            # 15 rounds per row (~15 s)
    python benchmarks/coordinate.py --short    # 2 rounds per row (what the tests run)
    python benchmarks/coordinate.py --json     # also print the numbers as JSON (last line)

Two set-ups, each measured for the floor and for latis, interleaved round by
round so that noise hits both alike:

- `inproc`: 100 units served in this process (`serve_unit` over socket pairs,
  the echo agent), connected before the clock starts;
- `procs`: 20 `latis-unit --stdio` processes (the echo agent), started and
  connected before the clock starts.

The prompt is 20 words; the echo agent answers it word by word (20 chunks).
Per round, from the moment the task is handed over:

- `first`: until every agent's first chunk has arrived (the slowest agent's);
- `done`: until every agent's prompt has completed;
- `ended`: until the call returned (latis: `coordinate` has its answer and
  has handed its sessions' closing to the controller, which is let finish
  before the next row starts; floor: the sessions are destroyed).

A third row per set-up, `engine`, does what each agent of a coordination does
through the controller's prompt engine, without a coordination
(`create_session`, `start_prompt`, `follow`, `destroy_session`): what the
coordination adds is latis over engine; what storing adds is engine over floor.

The floor opens a session on each unit, sends the prompt, reads its chunks and
destroys the session, every unit at once in one nursery. latis does the same
and more: each session and prompt is stored (SQLite, in a worker thread),
every chunk is stored and handed to the coordination as an event, the
coordination's record is written. Target: latis within 10% of the floor
(`done`; the ratio is taken round by round, the rows interleaved). Progress
goes to stderr, the table to stdout. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from latis_agents.echo import EchoAgent

import latis_core
from latis_core import StateStore, parse_config, paths
from latis_core._io.pair import socket_stream_pair
from latis_core._unit.unit import serve_unit

TEXT = " ".join(f"word{i}" for i in range(20))
#: (set-up, units) in the order measured.
SETUPS = (("inproc", 100), ("procs", 20))
TARGET = 1.10


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class InProcessDialer:
    """A unit served in this trio run, over a kernel socket pair, for each connection."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[trio.abc.Stream]:
        ours, theirs = socket_stream_pair()
        scope = await self.nursery.start(_serve, theirs)
        try:
            yield ours
        finally:
            scope.cancel()

    def describe(self) -> str:
        return "in-process"


async def _serve(stream: trio.abc.Stream, *, task_status: Any) -> None:
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await serve_unit(stream, EchoAgent())


Timing = tuple[float, float, float]


def _timing(start: float, firsts: list[float], dones: list[float], ended: float) -> Timing:
    return max(firsts) - start, max(dones) - start, ended - start


async def floor_round(clients: list[latis_core.UnitClient]) -> Timing:
    """Session, prompt, chunks, destroy: on every unit at once, the bare client API."""
    firsts: list[float] = []
    dones: list[float] = []

    async def one(client: latis_core.UnitClient) -> None:
        session = await client.create_session()
        first = None
        async for _ in session.prompt(TEXT):
            if first is None:
                first = time.perf_counter()
        dones.append(time.perf_counter())
        assert first is not None
        firsts.append(first)
        await session.destroy()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(one, client)
    return _timing(start, firsts, dones, time.perf_counter())


async def engine_round(ctl: latis_core.Controller, units: list[str]) -> Timing:
    """The controller's prompt engine without a coordination: on every unit at once,
    `create_session`, `start_prompt`, `follow` to the end, `destroy_session` (what
    each agent of a coordination costs, stored alike, minus the coordination)."""
    firsts: list[float] = []
    dones: list[float] = []

    async def one(unit: str) -> None:
        session = str((await ctl.create_session(unit))["session"])
        record = await ctl.start_prompt(session, TEXT)
        first = None
        async for kind, _ in ctl.follow(record.id):
            if first is None and kind == "chunk":
                first = time.perf_counter()
        dones.append(time.perf_counter())
        assert first is not None
        firsts.append(first)
        await ctl.destroy_session(session)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for unit in units:
            nursery.start_soon(one, unit)
    return _timing(start, firsts, dones, time.perf_counter())


async def latis_round(ctl: latis_core.Controller, units: list[str]) -> Timing:
    """`Controller.coordinate` with the parallel strategy over the same units."""
    firsts: dict[str, float] = {}
    dones: list[float] = []

    def on_event(event: latis_core.CoordinationEvent) -> None:
        if event.type == "chunk" and event.agent not in firsts:
            firsts[event.agent] = time.perf_counter()
        elif event.type == "reply":
            dones.append(time.perf_counter())

    start = time.perf_counter()
    result = await ctl.coordinate(TEXT, units, on_event)
    ended = time.perf_counter()
    assert result.outcome == "complete", result
    assert len(dones) == len(units)
    # Its sessions close behind its answer: not in the next row's time.
    while ctl.sessions:  # noqa: ASYNC110 (a benchmark waits on the controller, by polling)
        await trio.sleep(0.001)
    return _timing(start, list(firsts.values()), dones, ended)


@asynccontextmanager
async def setup(kind: str, n: int) -> AsyncIterator[tuple[list[Any], Any, list[str]]]:
    """The floor's clients and latis's controller over `n` units of `kind`, all connected."""
    home = Path(tempfile.mkdtemp(prefix="lbk", dir="/tmp"))
    os.environ["LATIS_HOME"] = str(home)
    names = [f"u{i}" for i in range(n)]
    unit = [sys.executable, "-m", "latis_core._unit.cli", "--stdio", "--agent", "echo"]
    if kind == "procs":
        config = "".join(
            f'[units.{name}.dial]\ntype = "local"\ncommand = {json.dumps(unit)}\n' for name in names
        )
    else:  # a placeholder dial, replaced below by the in-process one
        config = "".join(
            f'[units.{name}.dial]\ntype = "unix"\npath = "/nonexistent"\n' for name in names
        )
    try:
        async with AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            clients = []
            for _ in names:
                if kind == "procs":
                    clients.append(await stack.enter_async_context(latis_core.connect_local(unit)))
                else:
                    clients.append(
                        await stack.enter_async_context(latis_core.connect_agent(EchoAgent()))
                    )
            state = stack.enter_context(StateStore(paths().state_file))
            ctl = await stack.enter_async_context(
                latis_core.open_controller(parse_config(config), state)
            )
            for name in names:
                if kind == "inproc":
                    ctl.units[name].dialer = InProcessDialer(nursery)  # type: ignore[assignment]
                await ctl.up(name)
            yield clients, ctl, names
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def main(rounds: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for kind, n in SETUPS:
        log(f"{kind}: {n} units")
        async with setup(kind, n) as (clients, ctl, names):
            runs: dict[str, list[Timing]] = {"floor": [], "engine": [], "latis": []}
            await floor_round(clients)  # warm-ups, not measured
            await engine_round(ctl, names)
            await latis_round(ctl, names)
            calls = {
                "floor": lambda: floor_round(clients),
                "engine": lambda: engine_round(ctl, names),
                "latis": lambda: latis_round(ctl, names),
            }
            for r in range(rounds):
                log(f"  round {r + 1}/{rounds}")
                order = list(calls)
                for who in order[r % 3 :] + order[: r % 3]:  # each goes first in turn
                    gc.collect()  # no collection of another row's garbage in this one
                    runs[who].append(await calls[who]())
                    # What the row wrote behind is stored before the next starts:
                    # its writer's batch must not run in another row's time.
                    await ctl.flush()
        floor_done = [t[1] for t in runs["floor"]]
        for who, timings in runs.items():
            ratios = sorted(t[1] / f for t, f in zip(timings, floor_done, strict=True))
            results[f"{kind}_{who}"] = {
                "units": n,
                **{
                    what: statistics.median(t[i] for t in timings)
                    for i, what in enumerate(("first", "done", "ended"))
                },
                "runs_done": [t[1] for t in timings],
                # done / the floor's done in the same round: noise hits both alike.
                "x_floor": statistics.median(ratios),
                "x_floor_q": _quartiles(ratios),
            }
    return results


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def table(results: dict[str, dict[str, Any]]) -> str:
    head = (
        f"{'row':<14} {'units':>5} {'first':>9} {'done':>9} {'ended':>9} "
        f"{'x floor (done, q1–q3)':>22} {'target':>7} {'ok':>3}"
    )
    lines = [head]
    for row, found in results.items():
        kind, who = row.rsplit("_", 1)
        ratio, target, ok = "–", "–", ""
        x = found["x_floor"]
        if who != "floor":
            q1, q3 = found["x_floor_q"]
            ratio = f"{x:.2f}x ({q1:.2f}–{q3:.2f})"
        if who == "latis":
            target, ok = f"≤{TARGET:.2f}x", "✓" if x <= TARGET else "✗"
        lines.append(
            f"{row:<14} {found['units']:>5} {found['first'] * 1000:>7.1f}ms "
            f"{found['done'] * 1000:>7.1f}ms {found['ended'] * 1000:>7.1f}ms "
            f"{ratio:>22} {target:>7} {ok:>3}"
        )
    lines.append(
        "first: every agent's first chunk in; done: every prompt complete; ended: "
        "the call returned (latis: with its answer, its sessions closing behind it). "
        "Medians over the rounds; x floor: the median of each round's ratio to the floor "
        "(the rows interleaved, each first in turn)."
    )
    return "\n".join(lines)


def run(rounds: int) -> dict[str, dict[str, Any]]:
    return trio.run(main, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="2 rounds per row")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="also print JSON (last line)")
    args = parser.parse_args()
    found = run(2 if args.short else args.rounds)
    print(table(found))
    if args.json:
        print(json.dumps(found))
