#!/usr/bin/env python
"""latis at fleet scale (issue 13): every target of the issue, side by side, in one run.

    python benchmarks/load.py            # full sizes (several minutes on 2 cores)
    python benchmarks/load.py --short    # small sizes (well under a minute): checks it runs
    python benchmarks/load.py --json     # also print the numbers as JSON (last line)

What it runs (see benchmarks/README.md, "load.py", for each row and its target):

- `latis-unit` processes (20) listening on unix sockets, their agent stamping
  each chunk with the machine's monotonic clock; one cmdr daemon that dials
  them, holding 100 and then 20,000 idle sessions on them; the same units
  reached straight from this process through the bare client API. Rows: chunk
  latency p99 with 100 concurrent streams (200 chunks, 10 ms apart), through
  the daemon and straight; the daemon's added latency for one prompt at 100
  and at 20,000 sessions held; fan-out of one prompt to the 20 processes
  (a `parallel` coordination in the daemon, against a plain trio loop that
  opens a session, prompts and closes it on each unit).
- 100 units served in this process, the library's controller over them,
  against the same plain trio loop.
- `latis prompt "hi"` as a whole process against a minimal cyclopts app's
  `--help` (bench.py's).
- 10,000 units dialing in to one cmdr (TLS, enrolled), 500 to a process:
  connected, then the daemon restarted; the time until all are back, cmdr's
  memory per unit, `latis status` run over and over during the storm.
- A 5,000-unit config parsed, and `latis unit add` on it.

A measurement script: it never asserts on a number, it marks targets ✓ or ✗.
Every process it starts is ended when it exits, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# bench.py's isolated LATIS_HOME, minimal cyclopts app, and way to run `latis`.
from bench import (  # noqa: E402
    MINI_APP,
    LatisHome,
    compile_latis,
    latis_argv,
    log,
    process_cpu,
)
from fleet_config import fleet_config  # noqa: E402  (tests/, on the path since bench)

import latis_core  # noqa: E402
from latis_core._cmdr.config import parse_config  # noqa: E402
from latis_core._cmdr.state import StateDB  # noqa: E402
from latis_core._io.unix import is_listening, listen_unix, open_unix  # noqa: E402

perf = time.perf_counter
MS = 1000.0


class Sizes:
    """How big each part runs: the issue's sizes, or small ones (`--short`)."""

    def __init__(self, short: bool) -> None:
        self.short = short
        #: latis-unit processes, and idle sessions held on them in the end.
        self.procs = 4 if short else 20
        self.held_small = 20 if short else 100
        self.held = 200 if short else 20_000
        #: Concurrent streams, chunks each, seconds between chunks.
        self.streams = 10 if short else 100
        self.chunks = 50 if short else 200
        self.pause = 0.01
        #: Sequential prompt round trips per side per round (after a warm-up).
        self.rt_iters = 100 if short else 500
        self.rt_warmup = 20 if short else 100
        #: Rounds of the interleaved rows (the table shows their median).
        self.rounds = 1 if short else 3
        #: Fan-out rounds per side (interleaved); in-process units.
        self.fanout_rounds = 3 if short else 15
        self.inproc = 20 if short else 100
        #: Idle client connections to the daemon, a session each (its memory per one).
        self.clients = 50 if short else 2_000
        #: Whole-process rounds of the CLI row (after one warm-up round).
        self.cli_rounds = 3 if short else 20
        #: Units that dial in, and units per process.
        self.dialins = 200 if short else 10_000
        self.per_proc = 100 if short else 500
        #: Units of the parsed config; parse rounds.
        self.config_units = 500 if short else 5_000
        self.parse_rounds = 3 if short else 7


#: Seconds between two fan-out runs (the last one's sessions close meanwhile).
SETTLE = 0.05


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def alive(pid: int) -> bool:
    """Whether `pid` still runs: it exists and has not ended (a daemon whose parent
    is init stays a zombie until init reaps it, which here takes up to ~2 s)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1] not in ("Z", "X")
    except OSError:
        return False
    return True


def rss_kib(pid: int) -> int:
    """The resident memory of `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def open_direct(path: str) -> AsyncIterator[latis_core.UnitClient]:
    """A unit's socket, reached through the bare client API."""
    async with open_unix(path) as stream, latis_core.connect(stream, name="load") as unit:
        yield unit


async def gather(n: int, fn: Callable[[int], Awaitable[Any]], at_once: int = 64) -> list[Any]:
    """fn(0) .. fn(n-1), `at_once` at a time; their results in order."""
    out: list[Any] = [None] * n
    limit = trio.CapacityLimiter(at_once)

    async def one(i: int) -> None:
        async with limit:
            out[i] = await fn(i)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return out


# ---- config --------------------------------------------------------------------------------


def config_rows(sizes: Sizes, latis: list[str]) -> dict[str, Any]:
    """Parse an n-unit config in this process; `latis unit add` on it as a whole process."""
    log(f"config: parsing {sizes.config_units} units, {sizes.parse_rounds} rounds")
    text = fleet_config(sizes.config_units)
    parse_ms = []
    for _ in range(sizes.parse_rounds):
        t0 = perf()
        config = parse_config(text)
        parse_ms.append((perf() - t0) * MS)
    assert len(config.units) == sizes.config_units + 1
    home = LatisHome(latis)  # (not entered: no daemon, a folder and its clean-up)
    try:
        add_ms = []
        for r in range(3):
            home.write("latis.toml", text)
            t0 = perf()
            if home.run([*latis, "unit", "add", f"new{r}", "--provisioner", "process"]) is None:
                raise RuntimeError("latis unit add hung")
            add_ms.append((perf() - t0) * MS)
    finally:
        home.close()
    return {"parse_ms": parse_ms, "unit_add_ms": add_ms}


# ---- the daemon against the units straight ------------------------------------------------


class UnitProcs:
    """`latis-unit --listen unix:...` processes with the load agent, until `close`."""

    def __init__(self, folder: str, n: int, max_sessions: int) -> None:
        os.makedirs(os.path.join(folder, "u"), exist_ok=True)
        self.names = [f"u{i}" for i in range(n)]
        self.sockets = [os.path.join(folder, "u", f"{name}.sock") for name in self.names]
        self.procs: list[subprocess.Popen[bytes]] = []
        for name, path in zip(self.names, self.sockets, strict=True):
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "latis_core._unit.cli",
                        "--listen",
                        f"unix:{path}",
                        "--name",
                        name,
                        "--agent",
                        "python",
                        "-o",
                        "target=_load_agent:reply",
                        "-o",
                        f"path={HERE}",
                        "--max-sessions",
                        str(max_sessions),
                        "--log-level",
                        "warning",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=open(os.path.join(folder, "u", f"{name}.log"), "wb"),  # noqa: SIM115
                )
            )
        deadline = time.monotonic() + 60
        for path, proc in zip(self.sockets, self.procs, strict=True):
            while not (os.path.exists(path) and is_listening(path)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"latis-unit for {path} did not start")
                time.sleep(0.02)

    def config(self) -> str:
        """The daemon's config: each unit dialed at its socket; no session closed for idling."""
        out = ["[daemon]\nsession_idle_timeout = 0\n"]
        for name, path in zip(self.names, self.sockets, strict=True):
            out.append(
                f'[units.{name}]\nagent = "python"\n[units.{name}.dial]\n'
                f'type = "unix"\npath = "{path}"\n'
            )
        return "\n".join(out)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()


async def round_trips(session: latis_core.Session, n: int) -> list[float]:
    """n sequential prompt round trips ("hi", one chunk back), in ms."""
    out = []
    for _ in range(n):
        t0 = perf()
        if await session.prompt("hi").text() != "hi":
            raise RuntimeError("the agent did not echo")
        out.append((perf() - t0) * MS)
    return out


async def added_latency(
    sizes: Sizes, direct: latis_core.Session, daemon: latis_core.Session
) -> dict[str, list[float]]:
    """Round trips straight and through the daemon, interleaved round by round: medians."""
    out: dict[str, list[float]] = {"direct": [], "daemon": []}
    for _ in range(sizes.rounds):
        for name, session in (("direct", direct), ("daemon", daemon)):
            await round_trips(session, sizes.rt_warmup)
            out[name].append(statistics.median(await round_trips(session, sizes.rt_iters)))
    return out


async def stream_p99(sizes: Sizes, sessions: list[latis_core.Session]) -> float:
    """All sessions stream at once (`chunks` chunks `pause` s apart): the p99 of every
    chunk's latency, unit's clock to here, in ms."""
    latencies: list[float] = []
    text = f"stream {sizes.chunks} {sizes.pause}"

    async def one(session: latis_core.Session) -> None:
        count = 0
        async for chunk in session.prompt(text):
            latencies.append((time.monotonic_ns() - int(chunk.text)) / 1e6)
            count += 1
        if count != sizes.chunks:
            raise RuntimeError(f"a stream ended after {count} of {sizes.chunks} chunks")

    # This process's own collector stays out of the figure (it holds 20,000
    # sessions): what is measured is the path, not this client's pauses.
    gc.collect()
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            for session in sessions:
                nursery.start_soon(one, session)
    finally:
        gc.enable()
    return pct(latencies, 99)


async def fanout(
    sizes: Sizes,
    runs: dict[str, Callable[[], Awaitable[None]]],
    settle: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, list[float]]:
    """One prompt to every unit, each way in `runs` (bare, through latis...)
    interleaved: ms each. Each run starts `SETTLE` seconds after the last, and
    once `settle()` returned."""
    out: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        await run()  # warm-up
    for _ in range(sizes.fanout_rounds):
        for name, run in runs.items():
            # Each run starts on a quiet fleet: a coordination's sessions close
            # after its answer, and that work must not land in the next run.
            await trio.sleep(SETTLE)
            if settle is not None:
                await settle()
            t0 = perf()
            await run()
            out[name].append((perf() - t0) * MS)
    return out


async def bare_fanout(units: list[latis_core.UnitClient]) -> None:
    """The plain trio loop: a session, the prompt and the session's end on each unit."""

    async def one(unit: latis_core.UnitClient) -> None:
        session = await unit.create_session()
        if await session.prompt("hi").text() != "hi":
            raise RuntimeError("the agent did not echo")
        await session.destroy()

    async with trio.open_nursery() as nursery:
        for unit in units:
            nursery.start_soon(one, unit)


async def daemon_rows(sizes: Sizes, units: UnitProcs, pid: int) -> dict[str, Any]:
    """Everything measured against the daemon (process `pid`) and the unit processes."""
    out: dict[str, Any] = {}
    names = units.names
    async with AsyncExitStack() as stack:
        direct = [await stack.enter_async_context(open_direct(p)) for p in units.sockets]
        cmdr = await stack.enter_async_context(latis_core.open_daemon(autostart=False))
        log(f"daemon: {len(names)} units up")
        await gather(len(names), lambda i: cmdr.unit_up(names[i]))
        held: list[latis_core.Session] = []

        async def hold(upto: int) -> None:
            more = upto - len(held)
            log(f"daemon: {more} more sessions ({upto} held)")
            held.extend(
                await gather(
                    more, lambda i: cmdr.create_session(unit=names[(len(held) + i) % len(names)])
                )
            )

        await hold(sizes.held_small)
        one_direct = await direct[0].create_session()
        one_daemon = held[0]
        log(f"added latency at {len(held)} sessions held")
        out["added_small"] = await added_latency(sizes, one_direct, one_daemon)
        out["held_small"] = len(held)

        await hold(sizes.held)
        log(f"added latency at {len(held)} sessions held")
        out["added_big"] = await added_latency(sizes, one_direct, one_daemon)
        out["held"] = len(held)

        straight = await gather(sizes.streams, lambda i: direct[i % len(direct)].create_session())
        through = held[: sizes.streams]
        out["streams"] = {"direct": [], "daemon": [], "cpu_us": []}
        for r in range(sizes.rounds):
            log(
                f"{sizes.streams} streams of {sizes.chunks} chunks, straight then through the "
                f"daemon, round {r + 1}/{sizes.rounds}"
            )
            out["streams"]["direct"].append(await stream_p99(sizes, straight))
            cpu0 = process_cpu(pid)
            out["streams"]["daemon"].append(await stream_p99(sizes, through))
            chunks = sizes.streams * sizes.chunks
            out["streams"]["cpu_us"].append((process_cpu(pid) - cpu0) / chunks * 1e6)

        log(f"fan-out to {len(names)} latis-unit processes, {sizes.fanout_rounds} rounds")

        async def coordinated(live: bool = False) -> None:
            # The result alone, as the plain loop has it (and as the in-process
            # row asks the controller); `live`: its events streamed too, as
            # `latis coordinate` shows them.
            on_event = (lambda event: None) if live else None
            result = await cmdr.coordinate("hi", list(names), on_event)
            if result.outcome != "complete":
                raise RuntimeError(f"the coordination ended {result.outcome}: {result.error}")

        async def settle() -> None:
            # A read through the daemon waits for its writer to store what was
            # written behind (the closes of the last run's sessions among it).
            await cmdr.coordination_list(limit=1)

        out["fanout_procs"] = await fanout(
            sizes,
            {"bare": functools.partial(bare_fanout, direct), "latis": coordinated,
             "live": functools.partial(coordinated, live=True)},
            settle,
        )
        out["clients"] = await client_memory(sizes, names, pid)
    return out


async def client_memory(sizes: Sizes, names: list[str], pid: int) -> dict[str, Any]:
    """The daemon's memory per idle client connection with one session: `sizes.clients`
    connections opened (a session each, on the units in turn), then left idle."""
    n = sizes.clients
    log(f"daemon: {n} idle client connections, a session each")
    before = rss_kib(pid)
    async with AsyncExitStack() as stack:
        # (One at a time, in this task: each holds a nursery, left in the task that
        # entered it.)
        clients = [await stack.enter_async_context(latis_core.open_daemon(autostart=False))
                   for _ in range(n)]
        await gather(n, lambda i: clients[i].create_session(unit=names[i % len(names)]))
        await trio.sleep(1)  # idle: their first heartbeats come and go
        after = rss_kib(pid)
    return {"n": n, "before_kib": before, "after_kib": after}


async def inproc_rows(sizes: Sizes, folder: str) -> dict[str, Any]:
    """Fan-out to units served in this process: the library's controller against the
    plain trio loop over the same units."""
    n = sizes.inproc
    log(f"fan-out to {n} in-process units, {sizes.fanout_rounds} rounds")
    os.makedirs(os.path.join(folder, "i"), exist_ok=True)
    sockets = [os.path.join(folder, "i", f"i{k}.sock") for k in range(n)]
    config = parse_config(
        "\n".join(
            f'[units.i{k}]\n[units.i{k}.dial]\ntype = "unix"\npath = "{path}"\n'
            for k, path in enumerate(sockets)
        )
    )
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        for k, path in enumerate(sockets):
            unit = await stack.enter_async_context(
                latis_core.open_unit(latis_core.EchoAgent(), name=f"i{k}")
            )
            listener = await stack.enter_async_context(listen_unix(path))
            nursery.start_soon(trio.serve_listeners, unit.serve, [listener])
        direct = [await stack.enter_async_context(open_direct(p)) for p in sockets]
        state = stack.enter_context(StateDB(os.path.join(folder, "inproc.db")))
        ctl = await stack.enter_async_context(latis_core.open_controller(config, state))
        names = list(config.units)
        names.remove("local")
        await gather(n, lambda i: ctl.up(names[i]))

        async def coordinated() -> None:
            result = await ctl.coordinate("hi", names)
            if result.outcome != "complete":
                raise RuntimeError(f"the coordination ended {result.outcome}: {result.error}")

        async def settle() -> None:
            # Its sessions closed, and everything it wrote behind stored: the
            # writer's next batch must not run in the next run's time.
            while ctl.sessions:  # noqa: ASYNC110 (polled between runs, off the clock)
                await trio.sleep(0.005)
            await ctl.flush()

        out = await fanout(
            sizes, {"bare": functools.partial(bare_fanout, direct), "latis": coordinated}, settle
        )
        nursery.cancel_scope.cancel()
    return out


def cli_rows(sizes: Sizes, home: LatisHome, latis: list[str]) -> dict[str, list[float]]:
    """`latis prompt "hi"` and the minimal cyclopts app's `--help`, whole processes,
    interleaved round by round (ms)."""
    log(f'latis prompt "hi" against a minimal cyclopts app, {sizes.cli_rounds} rounds')
    mini = home.write("mini_app.py", MINI_APP)
    cases = {
        "cyclopts": ([sys.executable, mini, "--help"], "greet"),
        "prompt": ([*latis, "prompt", "hi"], "hi"),
    }
    out: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(sizes.cli_rounds + 1):
        for name, (argv, expect) in cases.items():
            elapsed = home.run(argv, expect, timeout=60)
            if elapsed is None:
                raise RuntimeError(f"{' '.join(argv)} hung")
            if r:
                out[name].append(elapsed * MS)
    return out


def fleet_section(sizes: Sizes, latis: list[str]) -> dict[str, Any]:
    home = LatisHome(latis)
    units = None
    try:
        log(f"starting {sizes.procs} latis-unit processes")
        units = UnitProcs(home.path, sizes.procs, 2 * sizes.held // sizes.procs + 100)
        home.write("latis.toml", units.config())
        home.__enter__()  # the daemon (over those units) and `local`; `close` ends them
        os.environ["LATIS_HOME"] = home.path
        pid = home.daemon_pid()
        if pid is None:
            raise RuntimeError("the daemon is not running")
        out = trio.run(daemon_rows, sizes, units, pid)
        out["daemon_rss_kib"] = rss_kib(pid)
        out["cli"] = cli_rows(sizes, home, latis)
        out["inproc"] = trio.run(inproc_rows, sizes, home.path)
        return out
    finally:
        if units is not None:
            units.close()  # (our children: reaped here, before the home ends the rest)
        if os.path.isdir(home.path):
            home.close()


# ---- a dial-in fleet and a restart --------------------------------------------------------


class Fleet:
    """Child processes of `_load_fleet.py`, and what each last said."""

    def __init__(self) -> None:
        self.procs: list[trio.Process] = []
        self.said: list[dict[str, int]] = []

    def total(self, key: str) -> int:
        return sum(said.get(key, 0) for said in self.said)

    async def start(self, nursery: trio.Nursery, files: list[str]) -> None:
        for path in files:
            err = os.open(path + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                proc = await trio.lowlevel.open_process(
                    [sys.executable, str(HERE / "_load_fleet.py"), path],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                )
            finally:
                os.close(err)
            self.procs.append(proc)
            self.said.append({})
            nursery.start_soon(self._read, len(self.procs) - 1, proc)

    async def _read(self, i: int, proc: trio.Process) -> None:
        assert proc.stdout is not None
        buffer = b""
        while data := await proc.stdout.receive_some():
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            if lines:
                self.said[i] = json.loads(lines[-1])

    async def mark(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            await proc.stdin.send_all(b"mark\n")
        # Until each has said a count since the mark, the old count stands.
        for said in self.said:
            said["since_mark"] = 0

    async def wait(self, key: str, n: int, limit: float) -> float | None:
        """Seconds until `key` adds up to n (None: not within `limit`)."""
        t0 = perf()
        with trio.move_on_after(limit):
            while self.total(key) < n:  # noqa: ASYNC110 (the children's reports change it)
                await trio.sleep(0.05)
            return perf() - t0
        return None

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for proc in self.procs:
                proc.kill()
            for proc in self.procs:
                await proc.wait()


async def dialin_async(sizes: Sizes, home: LatisHome, latis: list[str]) -> dict[str, Any]:
    n = sizes.dialins
    out: dict[str, Any] = {"units": n}
    names = [f"f{i}" for i in range(n)]
    log(f"dial-in: enrolling {n} units")
    async with latis_core.open_daemon(autostart=False) as cmdr:
        enrolled = await gather(
            n, lambda i: cmdr.unit_enroll(names[i], address="127.0.0.1"), at_once=32
        )
    files = []
    for start in range(0, n, sizes.per_proc):
        path = os.path.join(home.path, f"fleet{start}.json")
        await trio.Path(path).write_text(
            json.dumps(
                [
                    {"unit": e["unit"], "secret": e["secret"], "url": e["urls"][0]}
                    for e in enrolled[start : start + sizes.per_proc]
                ]
            )
        )
        files.append(path)

    def daemon_rss() -> int:
        pid = home.daemon_pid()
        if pid is None:
            raise RuntimeError("the daemon is not running")
        return rss_kib(pid)

    out["rss0_kib"] = daemon_rss()
    fleet = Fleet()
    limit = 120 if sizes.short else 900
    async with trio.open_nursery() as nursery:
        try:
            log(f"dial-in: {n} units in {len(files)} processes dial cmdr")
            await fleet.start(nursery, files)
            out["first_s"] = await fleet.wait("ever", n, limit)
            await trio.sleep(1)
            out["rss1_kib"] = daemon_rss()
            out["status_quiet_ms"] = [await timed_status(latis, home) for _ in range(3)]

            log("dial-in: restarting cmdr")
            await fleet.mark()
            pid = home.daemon_pid()
            t0 = perf()
            # (`latis daemon stop` waits 15 s; with a fleet connected cmdr may take longer.)
            await trio.run_process(
                [*latis, "daemon", "stop"],
                env=home.env,
                cwd=home.path,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            with trio.move_on_after(300):
                while pid is not None and alive(pid):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            if pid is not None and alive(pid):
                raise RuntimeError(f"cmdr (pid {pid}) did not stop within 300 s")
            out["stop_s"] = perf() - t0
            cmdr_log = trio.Path(home.path, "log", "cmdr.log")
            log_size = (await cmdr_log.stat()).st_size
            t0 = perf()
            await trio.run_process(
                [*latis, "daemon", "start"],
                env=home.env,
                cwd=home.path,
                capture_stdout=True,
                capture_stderr=True,
            )
            out["start_s"] = perf() - t0
            during: list[float] = []
            done = trio.Event()

            async def status_loop() -> None:
                while not done.is_set():
                    during.append(await timed_status(latis, home))
                    await trio.sleep(0.1)

            nursery.start_soon(status_loop)
            back = await fleet.wait("since_mark", n, limit)
            out["back_s"] = None if back is None else back + out["start_s"]
            done.set()
            out["status_ms"] = during
            await trio.sleep(1)
            out["rss2_kib"] = daemon_rss()
            out["refused_units"] = fleet.total("refused")
            listeners = await trio.run_process(
                [*latis, "listeners", "--json"], env=home.env, cwd=home.path, capture_stdout=True
            )
            out["listeners"] = json.loads(listeners.stdout)
            text = (await cmdr_log.read_bytes())[log_size:]
            lines = text.decode(errors="replace").splitlines()
            out["log_lines"] = len(lines)
            out["log_refusal_lines"] = sum("refused" in line for line in lines)
        finally:
            await fleet.aclose()
            nursery.cancel_scope.cancel()
    return out


async def timed_status(latis: list[str], home: LatisHome) -> float:
    """One `latis status` as a whole process, in ms."""
    t0 = perf()
    result = await trio.run_process(
        [*latis, "status"],
        env=home.env,
        cwd=home.path,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"latis status: {result.stderr.decode()[-500:]}")
    return (perf() - t0) * MS


def dialin_section(sizes: Sizes, latis: list[str]) -> dict[str, Any]:
    home = LatisHome(latis)
    port = free_port()
    home.write(
        "latis.toml",
        "[daemon]\nsession_idle_timeout = 0\n\n"
        + "\n".join(
            f'[units.f{i}]\n[[units.f{i}.accept]]\ntype = "tcp"\nhost = "127.0.0.1"\n'
            f"port = {port}\ntls = true\n"
            for i in range(sizes.dialins)
        ),
    )
    try:
        home.__enter__()
        os.environ["LATIS_HOME"] = home.path
        return trio.run(dialin_async, sizes, home, latis)
    finally:
        if os.path.isdir(home.path):
            home.close()


# ---- the table -----------------------------------------------------------------------------


def build_rows(sizes: Sizes, raw: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(
        name: str,
        what: str,
        peer: float | None,
        latis: float | None,
        unit: str,
        target: str,
        ok: bool | None,
        ratio: float | None = None,
    ) -> None:
        if ratio is None and peer and latis is not None:
            ratio = latis / peer
        rows.append(
            {
                "row": name,
                "what": what,
                "peer": peer,
                "latis": latis,
                "unit": unit,
                "ratio": ratio,
                "target": target,
                "ok": ok,
            }
        )

    med = statistics.median
    fleet = raw["fleet"]
    streams = fleet["streams"]
    direct_p99, daemon_p99 = med(streams["direct"]), med(streams["daemon"])
    row(
        "chunk_p99",
        f"chunk latency p99, {sizes.streams} streams x {sizes.chunks} chunks, "
        f"{fleet['held']} sessions held: straight from the units | through the daemon",
        direct_p99,
        daemon_p99,
        "ms",
        "<= 3x",
        daemon_p99 <= 3 * direct_p99,
    )
    row(
        "chunk_cpu",
        "the daemon's CPU (all its threads, user and system) per chunk of those "
        "streams (the ticks of /proc: ~10 ms each)",
        None,
        med(streams["cpu_us"]),
        "us",
        "-",
        None,
    )
    added = {}
    for key, held in (("added_small", fleet["held_small"]), ("added_big", fleet["held"])):
        d, c = med(fleet[key]["direct"]), med(fleet[key]["daemon"])
        added[key] = c - d
        row(
            key,
            f"one prompt's round trip, {held} sessions held: straight | through the "
            f"daemon (x = the daemon's added ms)",
            d,
            c,
            "ms",
            "added <= 0.3 ms",
            c - d <= 0.3,
            ratio=c - d,
        )
    flat = added["added_big"] - added["added_small"]
    row(
        "added_flat",
        f"added latency at {fleet['held']} minus at {fleet['held_small']} sessions held",
        None,
        flat,
        "ms",
        "<= 0.1 ms (flat)",
        flat <= 0.1,
    )
    fp = fleet["fanout_procs"]
    row(
        "fanout_procs",
        f"fan-out of one prompt to {sizes.procs} latis-unit processes: plain "
        "trio loop on the bare client API | a parallel coordination in the daemon, "
        "its result alone",
        med(fp["bare"]),
        med(fp["latis"]),
        "ms",
        "<= 1.3x",
        med(fp["latis"]) <= 1.3 * med(fp["bare"]),
    )
    row(
        "fanout_live",
        "the same | the coordination with its events streamed to the caller as they come "
        "(`latis coordinate`'s live view)",
        med(fp["bare"]),
        med(fp["live"]),
        "ms",
        "-",
        None,
    )
    fi = fleet["inproc"]
    row(
        "fanout_inproc",
        f"fan-out to {sizes.inproc} in-process units: plain trio loop | the "
        "library's controller (coordinate)",
        med(fi["bare"]),
        med(fi["latis"]),
        "ms",
        "<= 1.3x",
        med(fi["latis"]) <= 1.3 * med(fi["bare"]),
    )
    cl = fleet["clients"]
    per_client = (cl["after_kib"] - cl["before_kib"]) / cl["n"]
    row(
        "client_kib",
        f"cmdr memory per idle client connection with one session ({cl['n']} of them, "
        "RSS growth)",
        None,
        per_client,
        "KiB",
        "<= 10 KiB",
        per_client <= 10,
    )
    cli = fleet["cli"]
    row(
        "cli_prompt",
        'whole process: a minimal cyclopts app\'s --help | latis prompt "hi" (daemon running)',
        med(cli["cyclopts"]),
        med(cli["prompt"]),
        "ms",
        "<= 1.5x",
        med(cli["prompt"]) <= 1.5 * med(cli["cyclopts"]),
    )
    d = raw["dialin"]
    n = d["units"]
    row(
        "dialin_first",
        f"{n} dial-in units connect to a fresh cmdr (TLS, enrolled)",
        None,
        d["first_s"],
        "s",
        "-",
        None,
    )
    row(
        "dialin_back",
        f"{n} dial-in units all back after `latis daemon stop; start`",
        None,
        d["back_s"],
        "s",
        "<= 60 s",
        d["back_s"] is not None and d["back_s"] <= 60,
    )
    per_unit = (d["rss2_kib"] - d["rss0_kib"]) / n
    row(
        "dialin_kib",
        f"cmdr memory per connected unit after the restart (first connect: "
        f"{(d['rss1_kib'] - d['rss0_kib']) / n:.1f})",
        None,
        per_unit,
        "KiB",
        "<= 50 KiB",
        per_unit <= 50,
    )
    status = d["status_ms"]
    row(
        "status_storm",
        f"`latis status` during the storm ({len(status)} runs; p50 "
        f"{med(status):.0f} ms): quiet, all connected | the slowest during",
        med(d["status_quiet_ms"]),
        max(status) if status else None,
        "ms",
        "<= 300 ms",
        bool(status) and max(status) <= 300,
    )
    c = raw["config"]
    row(
        "config_parse",
        f"parse a {sizes.config_units}-unit config (in-process)",
        None,
        med(c["parse_ms"]),
        "ms",
        "< 500 ms (5,000)",
        med(c["parse_ms"]) < 500,
    )
    row(
        "unit_add",
        f"`latis unit add` on the {sizes.config_units}-unit config, whole process",
        None,
        med(c["unit_add_ms"]),
        "ms",
        "-",
        None,
    )
    return rows


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "s", "KiB") and abs(value) < 10:
        return f"{value:.2f} {unit}"
    return f"{value:.1f} {unit}" if abs(value) < 1000 else f"{value:.0f} {unit}"


def render(sizes: Sizes, rows: list[dict[str, Any]], raw: dict[str, Any]) -> str:
    head = ["row", "peer", "latis", "x", "target", "ok"]
    body = []
    for r in rows:
        x = r["ratio"]
        body.append(
            [
                r["row"],
                fmt(r["peer"], r["unit"]),
                fmt(r["latis"], r["unit"]),
                "-"
                if x is None
                else (f"{x:+.2f} ms" if r["row"].startswith("added_") else f"{x:.2f}x"),
                r["target"],
                {True: "✓", False: "✗", None: ""}[r["ok"]],
            ]
        )
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]
    lines = [
        f"latis load benchmark ({'short' if sizes.short else 'full'} sizes), "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} at the end",
        "",
    ]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for line in body:
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)))
    lines.append("")
    for r in rows:
        lines.append(f"{r['row']}: {r['what']}")
    fleet, d = raw["fleet"], raw["dialin"]
    n = d["units"]
    lines += [
        "",
        f"per-round values: streams p99 straight {fmt_list(fleet['streams']['direct'])}, "
        f"through {fmt_list(fleet['streams']['daemon'])}, the daemon's CPU per chunk "
        f"{fmt_list(fleet['streams']['cpu_us'])} us; fan-out (procs) bare "
        f"{fmt_list(fleet['fanout_procs']['bare'])}, latis "
        f"{fmt_list(fleet['fanout_procs']['latis'])}, live "
        f"{fmt_list(fleet['fanout_procs']['live'])}",
        f"daemon RSS with {fleet['held']} sessions held: {fleet['daemon_rss_kib'] or 0} KiB",
        f"dial-in restart: `latis daemon stop` took {d['stop_s']:.1f} s with {n} units "
        f"connected (until cmdr's process ended), `latis daemon start` {d['start_s']:.2f} s; "
        f"units refused for "
        f"good: {d['refused_units']}; cmdr.log since the restart: {d['log_lines']} lines, "
        f"{d['log_refusal_lines']} about refusals; listener: "
        + ", ".join(f"accepted {lr['accepted']} refused {lr['refused']}" for lr in d["listeners"]),
        "Ratios compare two figures of this run. Numbers on these 2-core shared machines "
        "move by 25% and more between runs.",
    ]
    return "\n".join(lines)


def fmt_list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="small sizes (checks it runs)")
    parser.add_argument("--json", action="store_true", help="also print JSON (last line)")
    args = parser.parse_args(argv)
    sizes = Sizes(args.short)
    latis = latis_argv()
    compile_latis()
    started = perf()
    raw: dict[str, Any] = {}
    try:
        raw["config"] = config_rows(sizes, latis)
        raw["fleet"] = fleet_section(sizes, latis)
        raw["dialin"] = dialin_section(sizes, latis)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    rows = build_rows(sizes, raw)
    print(render(sizes, rows, raw))
    log(f"done in {perf() - started:.0f} s")
    if args.json:
        print(json.dumps({"short": sizes.short, "rows": {r["row"]: r for r in rows}, "raw": raw}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
