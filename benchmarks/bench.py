#!/usr/bin/env python
"""latis benchmarks: one table, every row measured side by side in one run.

    python benchmarks/bench.py            # full run (~70 s)
    python benchmarks/bench.py --quick    # short run (~30 s)
    python benchmarks/bench.py --json     # also print the numbers as JSON (last line)

See benchmarks/README.md for what each row measures and its target. This is a
measurement script: it never asserts on a number, it marks targets ✓ or ✗.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import orjson
import trio
from latis_transports import socket_stream_pair

import latis_core
from latis_core import EchoAgent, ResponseChunk

HERE = Path(__file__).resolve().parent
CHILDREN = str(HERE / "_children.py")
sys.path.insert(0, str(HERE))
# The ssh and container rows use the tests' own sshd and container image.
sys.path.append(str(HERE.parent / "tests"))
import _children  # noqa: E402  (the execnet sources)

#: The request of every round-trip row.
PAYLOAD = b"x" * 100
#: ~100 bytes of text for the codec rows.
TEXT = ("The quick brown fox jumps over the lazy dog; " * 3)[:100]
#: The words of the streaming prompt: one chunk each, repeated by the echo agent.
WORDS = [f"latency{i}" for i in range(10)]
KiB = 1024
ROUNDS = 3
#: Chunks a second from a real unit, over stdio and over unix (issue 13).
STREAM_TARGET = 500_000

perf_ns = time.perf_counter_ns


class Config:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        #: Round trips measured per row per round (after `rt_warmup`).
        self.rt_iters = 1000 if quick else 10_000
        self.rt_warmup = 200 if quick else 1000
        #: Messages per streaming run, and runs of each streaming row.
        self.stream_n = 200_000
        self.stream_runs = 1 if quick else 3
        #: Codec: batches of `codec_batch` encode+decode pairs.
        self.codec_batches = 60 if quick else 300
        self.codec_batch = 1000
        #: Idle connections and idle sessions for the memory rows (tracing the
        #: heap of 1,000 takes ~20 s; 250 give the same figures within 1%).
        self.mem_n = 250 if quick else 1000
        #: Rounds of the whole-process rows (start-up, prompts), after one warm-up round.
        self.start_runs = 5 if quick else 30
        #: Prompt round trips measured per in-process prompt row per round.
        self.prompt_iters = 100 if quick else 500
        self.prompt_warmup = 20 if quick else 50
        #: Per transport and round: round trips measured (after a warm-up), and the
        #: words (chunks) of the streamed prompt.
        self.trans_iters = 300 if quick else 2000
        self.trans_warmup = 50 if quick else 200
        self.trans_words = 20_000 if quick else 200_000


_T0 = time.perf_counter()


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process
    and its reaped children): their difference over a run is what other
    processes took, the noise."""
    import resource

    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    ours = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        ours += usage.ru_utime + usage.ru_stime
    return busy, ours


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:5.1f} s] {msg}", file=sys.stderr, flush=True)


# ---- round trips ---------------------------------------------------------------------


async def timed_loop(one: Callable[[], Awaitable[Any]], n: int) -> list[int]:
    times = []
    append = times.append
    for _ in range(n):
        t0 = perf_ns()
        await one()
        append(perf_ns() - t0)
    return times


def blocking_loop(one: Callable[[], Any], n: int) -> list[int]:
    times = []
    append = times.append
    for _ in range(n):
        t0 = perf_ns()
        one()
        append(perf_ns() - t0)
    return times


async def setup_f1(nursery: trio.Nursery) -> Callable[[], Awaitable[None]]:
    """F1: 100 B ping-pong over a trio socket pair, echo task in the same process."""
    a, b = socket_stream_pair()

    async def echo() -> None:
        async with b:
            while True:
                data = await b.receive_some(65536)
                if not data:
                    return
                await b.send_all(data)

    nursery.start_soon(echo)
    size = len(PAYLOAD)

    async def one() -> None:
        await a.send_all(PAYLOAD)
        got = 0
        while got < size:
            got += len(await a.receive_some(65536))

    one.close = a.aclose  # type: ignore[attr-defined]
    return one


async def setup_f2(nursery: trio.Nursery) -> Callable[[], Awaitable[None]]:
    """F2: 100 B round trip over pipes to a child running a blocking echo loop."""
    proc = await nursery.start(
        functools.partial(
            trio.run_process,
            [sys.executable, CHILDREN, "pipe-echo"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
    )
    send_all = proc.stdin.send_all
    receive_some = proc.stdout.receive_some
    size = len(PAYLOAD)

    async def one() -> None:
        await send_all(PAYLOAD)
        got = 0
        while got < size:
            got += len(await receive_some(65536))

    one.close = proc.stdin.aclose  # type: ignore[attr-defined]
    return one


class ZmqPeer:
    """pyzmq REQ (here, blocking) to a REP echo in a child, over ipc://."""

    def __init__(self, tmpdir: str) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 30_000)
        self.sock.setsockopt(zmq.SNDTIMEO, 30_000)
        address = f"ipc://{tmpdir}/bench-zmq.ipc"
        self.sock.bind(address)
        self.proc = subprocess.Popen(
            [sys.executable, CHILDREN, "zmq-rep", address], stdin=subprocess.PIPE
        )
        send, recv = self.sock.send, self.sock.recv

        def one() -> None:
            send(PAYLOAD)
            recv()

        self.one = one

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.sock.send(b"")
                self.sock.recv()
        except Exception:
            pass
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the child exits on EOF too
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.ctx.term()


class ExecnetPeer:
    """execnet popen gateway: a channel echo, and a channel that streams."""

    def __init__(self) -> None:
        import execnet

        self.group = execnet.Group()
        self.gw = self.group.makegateway(f"popen//python={sys.executable}")
        self.echo = self.gw.remote_exec(_children.EXECNET_ECHO)
        self.streamer = self.gw.remote_exec(_children.EXECNET_STREAM)
        send, receive = self.echo.send, self.echo.receive

        def one() -> None:
            send(PAYLOAD)
            receive()

        self.one = one

    def stream(self, n: int, size: int) -> float:
        """Stream n messages of size bytes from the child; return the seconds taken."""
        receive = self.streamer.receive
        t0 = time.perf_counter()
        self.streamer.send((n, size))
        for _ in range(n):
            receive()
        end = receive()
        elapsed = time.perf_counter() - t0
        if end is not None:
            raise RuntimeError("execnet stream: too many messages")
        return elapsed

    def close(self) -> None:
        for ch in (self.echo, self.streamer):
            try:
                ch.send(None)
            except Exception:
                pass
        self.group.terminate(timeout=5)


# ---- streaming ---------------------------------------------------------------------------


def chunk_frame_size() -> int:
    """Bytes on the wire of a typical chunk of the streaming prompt."""
    msg = ResponseChunk(7, 123_456, WORDS[0] + " ")
    return len(latis_core.encode_frame(latis_core.encode(msg)))


async def setup_raw_stream(
    nursery: trio.Nursery, n: int, size: int
) -> Callable[[], Awaitable[float]]:
    """F4: a child writes n messages of size bytes (one os.write each) into a pipe."""
    proc = await nursery.start(
        functools.partial(
            trio.run_process,
            [sys.executable, CHILDREN, "pipe-stream", str(n), str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
    )
    total = n * size

    async def run() -> float:
        receive_some = proc.stdout.receive_some
        t0 = time.perf_counter()
        await proc.stdin.send_all(b"g")
        got = 0
        while got < total:
            data = await receive_some(1 << 20)
            if not data:
                raise RuntimeError("raw stream child ended early")
            got += len(data)
        return time.perf_counter() - t0

    run.close = proc.stdin.aclose  # type: ignore[attr-defined]
    return run


async def latis_stream(session: latis_core.Session, text: str, expected: int) -> float:
    t0 = time.perf_counter()
    count = 0
    async for _chunk in session.prompt(text):
        count += 1
    elapsed = time.perf_counter() - t0
    if count != expected:
        raise RuntimeError(f"latis stream: {count} chunks, expected {expected}")
    return elapsed


# ---- codec -------------------------------------------------------------------------------


def codec_rows(cfg: Config) -> dict[str, list[float]]:
    """Per-batch µs per encode+decode pair, for latis, raw orjson and stdlib json."""
    msg = ResponseChunk(12_345, 678, TEXT)
    as_dict = {"type": "response.chunk", "id": 12_345, "seq": 678, "text": TEXT}
    encode, decode = latis_core.encode, latis_core.decode
    if decode(encode(msg)) != msg:
        raise RuntimeError("codec: the chunk did not survive encode+decode")
    odumps, oloads = orjson.dumps, orjson.loads
    jdumps, jloads = json.dumps, json.loads
    cases: dict[str, Callable[[], Any]] = {
        "F3": lambda: oloads(odumps(as_dict)),
        "codec_latis": lambda: decode(encode(msg)),
        "codec_json": lambda: jloads(jdumps(as_dict)),
    }
    batch = cfg.codec_batch
    loop = range(batch)
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(cfg.codec_batches):  # interleaved, batch by batch
        for name, fn in cases.items():
            t0 = perf_ns()
            for _ in loop:
                fn()
            out[name].append((perf_ns() - t0) / batch / 1000)
    return out


# ---- memory ------------------------------------------------------------------------------

#: Frames kept per allocation while attributing memory to a side (more is slower).
TRACE_FRAMES = 10


def _holder_lines() -> tuple[str, set[int]]:
    """This file, and the lines of the scenarios that hold connections and sessions."""
    lines: set[int] = set()
    for fn in (mem_connections, mem_sessions):
        source, first = inspect.getsourcelines(fn)
        lines.update(range(first, first + len(source)))
    return inspect.getsourcefile(mem_connections) or __file__, lines


def _side(tb: tracemalloc.Traceback, holder: tuple[str, set[int]]) -> str:
    # Frames are oldest first: the innermost frame we recognise names the side.
    # The scenario code that holds the connections and the Session handles (as
    # a controller's code would) counts as the cmdr side; trio's own run loop,
    # and anything else with neither side's code on its stack, as "other".
    path, lines = holder
    for frame in reversed(tb):
        f = frame.filename
        if f.endswith(("_unit/unit.py", "agents/echo.py", "_plugins/agent.py")):
            return "unit"
        if f.endswith(("_io/peer.py", "_io/client.py")):
            return "cmdr"
        if f == path and frame.lineno in lines:
            return "cmdr"
    return "other"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Meter:
    """Memory at marked points: RSS (no tracemalloc) or the Python heap.

    In heap mode, `trace_from(name)` restarts tracemalloc with tracebacks, so that
    the snapshot taken at the next mark holds exactly the blocks allocated
    since and still alive, each with the code that allocated it. Tracebacks
    slow allocation down a lot, so only the phase that needs a split has them.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.marks: dict[str, int] = {}
        self.split: dict[str, dict[str, int]] = {}
        self._traced_since: str | None = None

    def mark(self, name: str) -> None:
        gc.collect()
        if self.mode == "rss":
            self.marks[name] = _rss()
            return
        if self._traced_since is not None:
            snap = tracemalloc.take_snapshot()
            tracemalloc.stop()  # (the sums below would be traced too, and slow)
            sides = {"cmdr": 0, "unit": 0, "other": 0}
            holder = _holder_lines()
            for stat in snap.statistics("traceback"):
                sides[_side(stat.traceback, holder)] += stat.size
            sides["total"] = sum(sides.values())
            self.split[f"{self._traced_since}..{name}"] = sides
            self.marks[name] = self.marks[self._traced_since] + sides["total"]
            self._traced_since = None
            del snap
            gc.collect()
            tracemalloc.start(1)
            return
        self.marks[name] = tracemalloc.get_traced_memory()[0]

    def trace_from(self, name: str) -> None:
        """Mark `name`, and attribute what is allocated until the next mark."""
        self.mark(name)
        if self.mode == "heap":
            tracemalloc.stop()
            tracemalloc.start(TRACE_FRAMES)
            self._traced_since = name

    def delta(self, a: str, b: str) -> int:
        return self.marks[b] - self.marks[a]


async def mem_connections(n: int, meter: Meter) -> None:
    """n idle connections to one in-process unit, one session each."""
    async with latis_core.open_unit(EchoAgent(), max_sessions=n + 10) as unit:
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            # Warm-up: one connection and session made (and kept) before the
            # baseline, so one-off allocations (read buffer, caches) are not counted.
            a, b = socket_stream_pair()
            await nursery.start(unit.serve, b)
            client = await stack.enter_async_context(latis_core.connect(a))
            keep = [await client.create_session()]
            meter.mark("start")
            pairs = [socket_stream_pair() for _ in range(n)]
            meter.mark("sockets")
            for _a, b in pairs:
                await nursery.start(unit.serve, b)
            meter.trace_from("served")
            for a, _b in pairs:
                client = await stack.enter_async_context(latis_core.connect(a))
                keep.append(await client.create_session())
            meter.mark("connected")
            await stack.aclose()
            nursery.cancel_scope.cancel()


async def mem_sessions(n: int, meter: Meter) -> None:
    """n idle sessions over one connection to an in-process unit."""
    async with latis_core.open_unit(EchoAgent(), max_sessions=n + 10) as unit:
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            a, b = socket_stream_pair()
            await nursery.start(unit.serve, b)
            client = await stack.enter_async_context(latis_core.connect(a))
            keep = [await client.create_session()]
            meter.trace_from("start")
            for _ in range(n):
                keep.append(await client.create_session())
            meter.mark("sessions")
            await stack.aclose()
            nursery.cancel_scope.cancel()


def mem_child(kind: str, n: int) -> dict[str, Any]:
    """Run one memory scenario in this (fresh) process; return its marks."""
    scenario = mem_connections if kind.endswith("conn") else mem_sessions
    mode = kind.split("-")[0]
    if mode == "heap":
        tracemalloc.start(1)
    meter = Meter(mode)
    trio.run(scenario, n, meter)
    return {"marks": meter.marks, "split": meter.split}


def memory_rows(cfg: Config) -> dict[str, Any]:
    """Each scenario in a fresh process: RSS is not blurred by memory freed earlier."""
    out: dict[str, Any] = {}
    for kind in ("rss-conn", "rss-sessions", "heap-conn", "heap-sessions"):
        proc = subprocess.run(
            [sys.executable, __file__, "--mem-child", kind, "--mem-n", str(cfg.mem_n)],
            stdout=subprocess.PIPE,
            check=True,
            timeout=300,
        )
        out[kind] = json.loads(proc.stdout)
    return out


# ---- start-up, and a prompt through the CLI and the daemon ----------------------------------

#: The prompt of the prompt rows (the echo agent answers it back).
PROMPT_TEXT = "hello there"

#: The reference of the start-up rows: a minimal cyclopts app, three commands with
#: one option and a one-line docstring each, cyclopts' defaults otherwise.
MINI_APP = '''\
"""A minimal three-command cyclopts app."""

from cyclopts import App

app = App(name="mini")


@app.command
def greet(*, name: str = "world") -> None:
    """Greet someone."""
    print(f"hello {name}")


@app.command
def count(*, upto: int = 3) -> None:
    """Count up to a number."""
    print(*range(1, upto + 1))


@app.command
def check(*, strict: bool = False) -> None:
    """Check the things."""
    print("ok (strict)" if strict else "ok")


if __name__ == "__main__":
    app()
'''

#: Row prompt_lib_proc: the same prompt through the library, as a whole process.
LIB_PROMPT = f"""\
import trio

import latis_core


async def main() -> None:
    async with latis_core.connect_local() as unit:
        session = await unit.create_session()
        print(await session.prompt({PROMPT_TEXT!r}).text())


trio.run(main)
"""


#: latis's packages, as installed (`latis_agents` etc. are the plugin folders).
PACKAGES = ("latis_core", "latis_cli", "latis_agents", "latis_transports", "latis_provisioners")


def compile_latis() -> None:
    """Write the bytecode of latis's packages, as an installed latis has it: an
    editable install under PYTHONDONTWRITEBYTECODE (this sandbox sets it) would
    otherwise compile every module changed since its last .pyc in every process
    the benchmarks time (~10 ms a command for a few changed modules)."""
    import compileall

    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                compileall.compile_dir(folder, quiet=2)


def latis_argv() -> list[str]:
    """How to run `latis`: the script beside sys.executable (what users run) when it
    runs this same Python, else `python -m latis_cli`."""
    script = Path(sys.executable).with_name("latis")
    try:
        with open(script, "rb") as f:
            first = f.readline()
    except OSError:
        first = b""
    if first.startswith(b"#!") and os.access(script, os.X_OK):
        shebang = first[2:].decode(errors="replace").split()
        if shebang and os.path.realpath(shebang[0]) == os.path.realpath(sys.executable):
            return [str(script)]
    return [sys.executable, "-m", "latis_cli"]


def _proc_cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def process_cpu(pid: int) -> float:
    """A process's own CPU time so far (user + system, all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a process and its reaped children, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LatisHome:
    """An isolated LATIS_HOME in a short folder under /tmp (unit socket paths are
    limited to 107 bytes), with the daemon running and the `local` unit up.

    Leaving it (also on Ctrl-C, which is ignored meanwhile) stops the daemon,
    ends the unit processes whose command line names the folder, and removes it.
    """

    def __init__(self, latis: list[str]) -> None:
        self.latis = latis
        self.path = tempfile.mkdtemp(prefix="lb", dir="/tmp" if os.path.isdir("/tmp") else None)
        self.env = {k: v for k, v in os.environ.items() if k != "LATIS_CONFIG"}
        self.env["LATIS_HOME"] = self.path

    def __enter__(self) -> LatisHome:
        try:
            for args, expect in (
                (["daemon", "start"], ""),
                (["unit", "up", "local"], ""),
                (["status"], "connected"),
            ):
                if self.run([*self.latis, *args], expect) is None:
                    raise RuntimeError(f"latis {' '.join(args)} did not end within 60 s")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.path, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run(self, argv: list[str], expect: str = "", timeout: float = 60.0) -> float | None:
        """Run a whole process in the home (cwd and env); return its wall time in s,
        or None if it was still running after `timeout` s (then it is killed)."""
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                argv,
                cwd=self.path,  # (no ./latis.toml of the caller's folder)
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return None
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0 or expect not in proc.stdout:
            raise RuntimeError(
                f"{' '.join(argv)}: exit {proc.returncode}, expected {expect!r} in its "
                f"output\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
            )
        return elapsed

    def socket(self) -> str:
        """The daemon's unix socket."""
        from latis_core._os.paths import paths

        old = os.environ.get("LATIS_HOME")
        os.environ["LATIS_HOME"] = self.path
        try:
            return str(paths().socket)
        finally:
            if old is None:
                del os.environ["LATIS_HOME"]
            else:
                os.environ["LATIS_HOME"] = old

    def daemon_pid(self) -> int | None:
        """The daemon's pid, checked to be a process with this LATIS_HOME."""
        pidfile = os.path.join(self.path, "run", "cmdr.pid")
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if f"LATIS_HOME={self.path}".encode() in environ else None

    def unit_pids(self) -> list[int]:
        """Processes (not this one) whose command line names the folder: the units."""
        needle = (self.path + "/").encode()
        me = os.getpid()
        return [
            int(d)
            for d in os.listdir("/proc")
            if d.isdigit() and int(d) != me and needle in _proc_cmdline(int(d))
        ]

    def helper_cpu(self) -> float:
        """CPU seconds the daemon and the units have used (not reaped by us, so not
        in our rusage: the noise figure takes them out)."""
        pids = set(self.unit_pids())
        daemon = self.daemon_pid()
        if daemon is not None:
            pids.add(daemon)
        return sum(_proc_cpu(pid) for pid in pids)

    def close(self) -> None:
        import shutil
        import signal

        try:
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread
            old = None
        try:
            daemon = self.daemon_pid()
            try:
                subprocess.run(
                    [*self.latis, "daemon", "stop"],
                    cwd=self.path,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=30,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                log(f"latis daemon stop: {exc}")
            pids = self.unit_pids()
            if daemon is not None and _alive(daemon) and self.daemon_pid() == daemon:
                pids.append(daemon)
            for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + wait
                while (pids := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if not pids:
                    break
            if pids:
                log(f"could not end processes {pids} of {self.path}")
            shutil.rmtree(self.path, ignore_errors=True)
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)


#: Seconds a prompt may take before it counts as hung (in-process rows).
PROMPT_HANG_S = 3.0
#: Hung prompts through the daemon tolerated in one run (each followed by a new connection).
MAX_HUNG = 10


class DaemonConnection:
    """A connection to the daemon and a session on unit `local`, renewed when a
    prompt through it hangs (its answer never comes back: see the README)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.stack: AsyncExitStack | None = None
        self.session: latis_core.Session | None = None
        #: Prompts that hung: first prompts on a new connection, and measured ones.
        self.hung = 0

    async def open(self) -> None:
        """Connect, make the session, and see its first prompt answered."""
        from latis_transports.unix import open_unix

        while True:
            await self.aclose()
            self.stack = stack = AsyncExitStack()
            stream = await stack.enter_async_context(open_unix(self.socket_path))
            cmdr = await stack.enter_async_context(
                latis_core.connect(stream, name="latis-bench", label="cmdr")
            )
            with trio.move_on_after(PROMPT_HANG_S):
                session = await cmdr.create_session(unit="local")
                text = await session.prompt(PROMPT_TEXT).text()
                if text.strip() != PROMPT_TEXT:
                    raise RuntimeError(f"the daemon answered {text!r}")
                self.session = session
                return
            self.count_hang("a first prompt")

    def count_hang(self, what: str) -> None:
        self.hung += 1
        log(f"{what} through the daemon hung ({PROMPT_HANG_S:g} s): new connection")
        if self.hung > MAX_HUNG:
            raise RuntimeError(f"prompts through the daemon hung {self.hung} times")

    async def aclose(self) -> None:
        self.session = None
        if self.stack is not None:
            stack, self.stack = self.stack, None
            await stack.aclose()  # (not in a scope of its own: it holds a nursery)


async def prompt_loop(
    get: Callable[[], latis_core.Session], n: int, on_hang: Callable[[], Awaitable[None]]
) -> list[int]:
    """n prompt round trips (ns each); a hung one is not counted, and `on_hang` runs."""
    times: list[int] = []
    append = times.append
    while len(times) < n:
        session = get()
        with trio.move_on_after(PROMPT_HANG_S) as scope:
            t0 = perf_ns()
            await session.prompt(PROMPT_TEXT).text()
            append(perf_ns() - t0)
        if scope.cancelled_caught:
            await on_hang()
    return times


async def measure_prompts(cfg: Config, socket_path: str) -> dict[str, Any]:
    """One prompt round trip, in-process: to a latis-unit --stdio, and through the daemon."""
    async with latis_core.connect_local() as unit:
        direct = await unit.create_session()
        if (await direct.prompt(PROMPT_TEXT).text()).strip() != PROMPT_TEXT:
            raise RuntimeError("latis-unit --stdio did not echo the prompt")
        daemon = DaemonConnection(socket_path)
        try:  # (closed inside connect_local's block: its connections nest in there)
            await daemon.open()

            async def direct_hung() -> None:
                raise RuntimeError("a prompt to latis-unit --stdio hung")

            async def daemon_hung() -> None:
                daemon.count_hang("a prompt")
                await daemon.open()

            def via() -> latis_core.Session:
                assert daemon.session is not None
                return daemon.session

            rows: dict[str, tuple[Callable[[], latis_core.Session], Any]] = {
                "prompt_lib": (lambda: direct, direct_hung),
                "prompt_daemon": (via, daemon_hung),
            }
            out: dict[str, list[float]] = {name: [] for name in rows}
            for r in range(ROUNDS):
                log(f"prompt round trips in-process, run {r + 1}/{ROUNDS}")
                for name, (get, on_hang) in rows.items():
                    await prompt_loop(get, cfg.prompt_warmup, on_hang)
                    times = await prompt_loop(get, cfg.prompt_iters, on_hang)
                    out[name].append(statistics.median(times) / 1000)
        finally:
            await daemon.aclose()
    return {"us": out, "daemon_hung": daemon.hung}


#: A measured whole process still running after max(HANG_S, 10 x its warm-up run)
#: seconds counts as hung: it is killed, counted and left out of the medians.
HANG_S = 3.0
#: The same for the warm-up round (Python may compile bytecode then).
WARMUP_HANG_S = 10.0


def cli_rows(cfg: Config) -> dict[str, Any]:
    """Start-up and prompts as whole processes (interleaved, round by round), then
    prompts in-process; all with one daemon in an isolated LATIS_HOME."""
    latis = latis_argv()
    log(f"start-up and prompts: daemon and local unit up ({' '.join(latis)})")
    with LatisHome(latis) as home:
        mini = home.write("mini_app.py", MINI_APP)
        lib = home.write("lib_prompt.py", LIB_PROMPT)
        py = sys.executable
        cases = [
            ("F5", [py, "-c", "pass"], ""),
            ("start_cyclopts", [py, mini, "--help"], "greet"),
            ("start_latis_help", [*latis, "--help"], "latis"),
            ("start_latis_status", [*latis, "status"], "local"),
            ("prompt_lib_proc", [py, lib], PROMPT_TEXT),
            ("prompt_cli", [*latis, "prompt", PROMPT_TEXT], PROMPT_TEXT),
        ]
        # Per round, ms; None where the run hung.
        whole: dict[str, list[float | None]] = {name: [] for name, _, _ in cases}
        limit: dict[str, float] = {}
        for r in range(cfg.start_runs + 1):  # round 0 warms up
            if r % 10 == 1 or r == cfg.start_runs:
                log(f"whole processes, round {r}/{cfg.start_runs}")
            for name, argv, expect in cases:
                timeout = limit.get(name, WARMUP_HANG_S)
                elapsed = home.run(argv, expect, timeout=timeout)
                if elapsed is None:
                    log(f"{name}: hung, killed after {timeout:.1f} s")
                if r == 0:
                    limit[name] = max(HANG_S, 10 * elapsed) if elapsed else HANG_S
                else:
                    whole[name].append(None if elapsed is None else elapsed * 1000)
        for name, runs in whole.items():
            if all(x is None for x in runs):
                raise RuntimeError(f"{name}: every run hung")
        prompts = trio.run(measure_prompts, cfg, home.socket())
        helper_cpu = home.helper_cpu()
        log("stopping the daemon and the unit")
    return {
        "whole_ms": whole,
        "hang_after_s": limit,
        "prompts": prompts,
        "latis": latis,
        "helper_cpu": helper_cpu,
    }


# ---- an ACP agent: through latis-unit --agent acp, and straight from the ACP SDK ----------

#: The SDK echo agent of the ACP rows (it streams the prompt back, one chunk per word).
ACP_ECHO = str(HERE.parent / "tests" / "acp_agents" / "echo_agent.py")


def acp_sdk_child(agent: str) -> None:
    """Row acp_sdk, in its own process: the ACP SDK's own client (asyncio) starts
    `agent`, says `{"ready": true}` once its session is open, then, for each line
    "N WARMUP" on stdin, times N prompt round trips after WARMUP more and prints
    their median (µs) as JSON; it ends at EOF."""
    import asyncio

    from acp import PROTOCOL_VERSION, spawn_agent_process, text_block

    class Client:
        """The client side: counts the agent's session/update notifications."""

        updates = 0

        async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
            self.updates += 1

        def on_connect(self, conn: Any) -> None:
            pass

    async def main() -> None:
        client = Client()
        async with spawn_agent_process(client, sys.executable, agent) as (conn, _proc):
            await conn.initialize(protocol_version=PROTOCOL_VERSION)
            session = await conn.new_session(cwd=os.getcwd(), mcp_servers=[])
            prompt = [text_block(PROMPT_TEXT)]
            loop = asyncio.get_running_loop()
            print(json.dumps({"ready": True}), flush=True)
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                n, warmup = map(int, line.split())
                times = []
                for i in range(warmup + n):
                    t0 = perf_ns()
                    response = await conn.prompt(session_id=session.session_id, prompt=prompt)
                    if i >= warmup:
                        times.append(perf_ns() - t0)
                if response.stop_reason != "end_turn":
                    raise RuntimeError(f"the agent stopped with {response.stop_reason!r}")
                print(json.dumps({"us": statistics.median(times) / 1000}), flush=True)

    asyncio.run(main())


async def measure_acp(cfg: Config) -> dict[str, list[float]]:
    """One prompt round trip to the SDK echo agent: through latis (library ->
    latis-unit --agent acp -> agent) and from the SDK's own client in a child
    process, interleaved run by run."""
    out: dict[str, list[float]] = {"acp_latis": [], "acp_sdk": []}
    with tempfile.TemporaryDirectory(prefix="latis-bench-acp-") as cwd:
        argv = latis_core.unit_command("acp", {"cwd": cwd}, args=["--", sys.executable, ACP_ECHO])
        sdk = await trio.lowlevel.open_process(
            [sys.executable, __file__, "--acp-sdk-child", ACP_ECHO],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
        )
        assert sdk.stdin is not None and sdk.stdout is not None
        buf = b""

        async def sdk_line() -> dict[str, Any]:
            nonlocal buf
            assert sdk.stdout is not None
            with trio.fail_after(60):
                while b"\n" not in buf:
                    data = await sdk.stdout.receive_some(4096)
                    if not data:
                        raise RuntimeError("the ACP SDK client ended early (see its stderr)")
                    buf += data
            line, buf = buf.split(b"\n", 1)
            doc: dict[str, Any] = json.loads(line)
            return doc

        async def sdk_median(n: int, warmup: int) -> float:
            assert sdk.stdin is not None
            await sdk.stdin.send_all(f"{n} {warmup}\n".encode())
            return float((await sdk_line())["us"])

        async def hung() -> None:
            raise RuntimeError("a prompt through latis-unit --agent acp hung")

        try:
            async with latis_core.connect_local(argv) as unit:
                session = await unit.create_session()
                if (await session.prompt(PROMPT_TEXT).text()) != PROMPT_TEXT:
                    raise RuntimeError("latis-unit --agent acp did not echo the prompt")
                await sdk_line()  # started: its start-up does not overlap a measured run
                for r in range(ROUNDS):
                    log(f"an ACP agent, through latis and from the SDK, run {r + 1}/{ROUNDS}")
                    await prompt_loop(lambda: session, cfg.prompt_warmup, hung)
                    times = await prompt_loop(lambda: session, cfg.prompt_iters, hung)
                    out["acp_latis"].append(statistics.median(times) / 1000)
                    out["acp_sdk"].append(await sdk_median(cfg.prompt_iters, cfg.prompt_warmup))
        finally:
            with trio.CancelScope(shield=True):
                await sdk.stdin.aclose()  # the child ends at EOF, and its agent with it
                with trio.move_on_after(5):
                    await sdk.wait()
                if sdk.returncode is None:
                    sdk.kill()
                    await sdk.wait()
                await sdk.stdout.aclose()
    return out


# ---- the run -----------------------------------------------------------------------------


async def measure_processes(cfg: Config, tmpdir: str) -> dict[str, Any]:
    """Round trips (interleaved, ROUNDS times) and streaming, in one trio run."""
    frame_size = chunk_frame_size()
    repeat = math.ceil(cfg.stream_n / len(WORDS))
    stream_n = repeat * len(WORDS)
    prompt = " ".join(WORDS)
    results: dict[str, Any] = {"frame_size": frame_size, "stream_n": stream_n}
    with ExitStack() as blocking:
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            log("starting children and connections")
            f1 = await setup_f1(nursery)
            stack.push_async_callback(f1.close)  # type: ignore[attr-defined]
            f2 = await setup_f2(nursery)
            stack.push_async_callback(f2.close)  # type: ignore[attr-defined]

            a, b = socket_stream_pair()
            await nursery.start(functools.partial(latis_core.serve_unit, b, EchoAgent()))
            in_proc = await stack.enter_async_context(latis_core.connect(a))
            local = await stack.enter_async_context(
                latis_core.connect_local(options={"repeat": str(repeat)})
            )
            zmq_peer = ZmqPeer(tmpdir)
            blocking.callback(zmq_peer.close)
            ex = ExecnetPeer()
            blocking.callback(ex.close)

            async def run_blocking(fn: Callable[[], Any], n: int) -> list[int]:
                return blocking_loop(fn, n)

            rows: list[tuple[str, Callable[[int], Awaitable[list[int]]]]] = [
                ("F1", functools.partial(timed_loop, f1)),
                ("rt_latis_socketpair", functools.partial(timed_loop, in_proc.ping)),
                ("F2", functools.partial(timed_loop, f2)),
                ("rt_latis_pipes", functools.partial(timed_loop, local.ping)),
                ("rt_zmq", functools.partial(run_blocking, zmq_peer.one)),
                ("rt_execnet", functools.partial(run_blocking, ex.one)),
            ]
            rt: dict[str, list[float]] = {name: [] for name, _ in rows}
            for r in range(ROUNDS):
                log(f"round trips, run {r + 1}/{ROUNDS}")
                for name, loop in rows:
                    await loop(cfg.rt_warmup)
                    times = await loop(cfg.rt_iters)
                    rt[name].append(statistics.median(times) / 1000)
            results["rt"] = rt

            log(f"streaming {stream_n} messages of ~{frame_size} B")
            raw = await setup_raw_stream(nursery, stream_n, frame_size)
            stack.push_async_callback(raw.close)  # type: ignore[attr-defined]
            session = await local.create_session()
            await latis_stream(session, " ".join(WORDS[:3]), 3 * repeat)  # warm-up
            ex.stream(1000, frame_size)
            streams: dict[str, list[float]] = {"F4": [], "stream_latis": [], "stream_execnet": []}
            for r in range(cfg.stream_runs):
                log(f"streaming, run {r + 1}/{cfg.stream_runs}")
                streams["F4"].append(stream_n / await raw())
                streams["stream_latis"].append(
                    stream_n / await latis_stream(session, prompt, stream_n)
                )
                streams["stream_execnet"].append(stream_n / ex.stream(stream_n, frame_size))
            results["stream"] = streams
            log("closing children")
    return results


def run_all(cfg: Config) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="latis-bench-") as tmpdir:
        proc = trio.run(measure_processes, cfg, tmpdir)
    log("codec")
    codec = codec_rows(cfg)
    log(f"memory: {cfg.mem_n} idle connections, {cfg.mem_n} idle sessions")
    mem = memory_rows(cfg)
    cli = cli_rows(cfg)
    log("an ACP agent: through latis-unit --agent acp, and from the ACP SDK's own client")
    acp = trio.run(measure_acp, cfg)
    log("transports: each one's raw echo, then latis over it")
    import _transports

    trans = trio.run(functools.partial(
        _transports.measure, n=cfg.trans_iters, warmup=cfg.trans_warmup, rounds=ROUNDS,
        words=cfg.trans_words, log=log,
    ))
    return {"proc": proc, "codec": codec, "mem": mem, "cli": cli, "acp": acp,
            "transports": trans}


# ---- the table ---------------------------------------------------------------------------


def build_rows(cfg: Config, raw: dict[str, Any]) -> list[dict[str, Any]]:
    proc, codec, mem = raw["proc"], raw["codec"], raw["mem"]
    rt = proc["rt"]
    med = {name: statistics.median(runs) for name, runs in rt.items()}
    rows: list[dict[str, Any]] = []

    def row(id_: str, what: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
        r = {"id": id_, "what": what, "value": value, "unit": unit}
        r.update(extra)
        rows.append(r)
        return r

    # Round trips.
    per_run_f2 = [lat / f2 for lat, f2 in zip(rt["rt_latis_pipes"], rt["F2"], strict=True)]
    per_run_f1 = [lat / f1 for lat, f1 in zip(rt["rt_latis_socketpair"], rt["F1"], strict=True)]
    row(
        "F1",
        "floor: trio socket pair ping-pong, 100 B, one process",
        med["F1"],
        "µs",
        runs=rt["F1"],
    )
    row(
        "F2",
        "floor: trio pipes to a child's blocking echo loop, 100 B",
        med["F2"],
        "µs",
        runs=rt["F2"],
    )
    row(
        "rt_latis_socketpair",
        "latis unit.ping(), in-process unit over a socket pair",
        med["rt_latis_socketpair"],
        "µs",
        runs=rt["rt_latis_socketpair"],
        floor="F1",
        ratio=statistics.median(per_run_f1),
        ratio_runs=per_run_f1,
    )
    ratio_f2 = statistics.median(per_run_f2)
    beats = med["rt_latis_pipes"] < med["rt_zmq"] and med["rt_latis_pipes"] < med["rt_execnet"]
    row(
        "rt_latis_pipes",
        "latis unit.ping(), latis-unit --stdio over pipes",
        med["rt_latis_pipes"],
        "µs",
        runs=rt["rt_latis_pipes"],
        floor="F2",
        ratio=ratio_f2,
        ratio_runs=per_run_f2,
        target="≤ 2.5x F2, < zmq, < execnet",
        ok=ratio_f2 <= 2.5 and beats,
    )
    for id_, what in (
        ("rt_zmq", "pyzmq REQ/REP over ipc:// to a child, 100 B"),
        ("rt_execnet", "execnet popen gateway channel echo, 100 B"),
    ):
        per_run = [x / f2 for x, f2 in zip(rt[id_], rt["F2"], strict=True)]
        row(
            id_,
            what,
            med[id_],
            "µs",
            runs=rt[id_],
            floor="F2",
            ratio=statistics.median(per_run),
            ratio_runs=per_run,
        )

    # Codec.
    cmed = {name: statistics.median(v) for name, v in codec.items()}
    row("F3", "floor: orjson dumps+loads of the chunk dict (no latis)", cmed["F3"], "µs")
    row(
        "codec_latis",
        "latis encode+decode of a response.chunk (~100 B text)",
        cmed["codec_latis"],
        "µs",
        floor="F3",
        ratio=cmed["codec_latis"] / cmed["F3"],
        target="< 5 µs",
        ok=cmed["codec_latis"] < 5.0,
    )
    row(
        "codec_json",
        "stdlib json dumps+loads of the same dict",
        cmed["codec_json"],
        "µs",
        floor="F3",
        ratio=cmed["codec_json"] / cmed["F3"],
        note=f"latis codec is {cmed['codec_json'] / cmed['codec_latis']:.1f}x faster",
    )

    # Streaming (higher is better: the ratio is the share of the floor reached).
    st = proc["stream"]
    smed = {name: statistics.median(v) for name, v in st.items()}
    n, size = proc["stream_n"], proc["frame_size"]
    row(
        "F4",
        f"floor: raw pipe from a child, {n} x {size} B, one os.write each",
        smed["F4"],
        "msg/s",
        runs=st["F4"],
    )
    row(
        "stream_latis",
        f"latis chunks from latis-unit --stdio ({n} chunks, {size} B frames)",
        smed["stream_latis"],
        "msg/s",
        runs=st["stream_latis"],
        floor="F4",
        ratio=smed["stream_latis"] / smed["F4"],
        target=f"≥ {STREAM_TARGET:,} chunks/s",
        ok=smed["stream_latis"] >= STREAM_TARGET,
    )
    row(
        "stream_execnet",
        f"execnet channel from a child, {n} x {size} B",
        smed["stream_execnet"],
        "msg/s",
        runs=st["stream_execnet"],
        floor="F4",
        ratio=smed["stream_execnet"] / smed["F4"],
    )

    # Memory (per connection or per session; heap = tracemalloc, RSS = whole process).
    n = cfg.mem_n
    hc, hs = mem["heap-conn"], mem["heap-sessions"]
    marks = hc["marks"]
    sockets = (marks["sockets"] - marks["start"]) / n
    served = (marks["served"] - marks["sockets"]) / n
    split = {k: v / n for k, v in hc["split"]["served..connected"].items()}
    cmdr = split["cmdr"]
    unit_side = served + split["unit"]
    total = sockets + served + split["total"]
    rc = mem["rss-conn"]["marks"]
    rss_conn = (rc["connected"] - rc["start"]) / n
    rs = mem["rss-sessions"]["marks"]
    rss_session = (rs["sessions"] - rs["start"]) / n
    sess = {k: v / n for k, v in hs["split"]["start..sessions"].items()}
    row(
        "mem_conn_cmdr",
        "idle connection + 1 session: cmdr side (connect() + Session)",
        cmdr / KiB,
        "KiB",
        target="≤ 12 KiB",
        ok=cmdr <= 12 * KiB,
    )
    row(
        "mem_conn_unit",
        "idle connection + 1 session: unit side (unit.serve + session)",
        unit_side / KiB,
        "KiB",
        target="≤ 12 KiB",
        ok=unit_side <= 12 * KiB,
        note=f"unit.serve started {served / KiB:.2f} KiB + handshake and session "
        f"{split['unit'] / KiB:.2f} KiB",
    )
    row(
        "mem_conn_total",
        "idle connection + 1 session: both sides + socket pair, heap",
        total / KiB,
        "KiB",
        note=f"cmdr {cmdr / KiB:.2f} + unit {unit_side / KiB:.2f} + socket pair objects "
        f"{sockets / KiB:.2f} + not attributable (trio internals) "
        f"{split['other'] / KiB:.2f} KiB",
    )
    row(
        "mem_conn_rss",
        "idle connection + 1 session: both sides, RSS growth",
        rss_conn / KiB,
        "KiB",
        note="fresh process, no tracemalloc; excludes kernel socket buffers",
    )
    row(
        "mem_session",
        "extra idle session on one connection: both sides, heap",
        sess["total"] / KiB,
        "KiB",
        note=f"cmdr {sess['cmdr'] / KiB:.2f} + unit {sess['unit'] / KiB:.2f} + other "
        f"{sess['other'] / KiB:.2f} KiB; RSS growth {rss_session / KiB:.2f} KiB",
    )

    # Start-up and prompts as whole processes: wall time, interleaved rounds. The
    # ratios are medians of the per-round ratios; "F5 + x ms" is the time over
    # python's own start-up.
    cli = raw["cli"]
    rounds = cli["whole_ms"]  # per round; None where the run hung
    whole = {name: [x for x in v if x is not None] for name, v in rounds.items()}
    wmed = {name: statistics.median(v) for name, v in whole.items()}

    def per_round(a: str, b: str) -> list[float]:
        pairs = zip(rounds[a], rounds[b], strict=True)
        return [x / y for x, y in pairs if x is not None and y is not None]

    def hung(name: str) -> dict[str, Any]:
        n = len(rounds[name]) - len(whole[name])
        if not n:
            return {}
        return {
            "hung": n,
            "hung_note": f"{n} of {len(rounds[name])} runs hung, killed after "
            f"{cli['hang_after_s'][name]:.1f} s and left out",
        }

    def iqr(values: list[float]) -> str:
        if len(values) < 2:
            return ""
        q1, _, q3 = statistics.quantiles(values, n=4)
        return f", IQR {q1:.2f}–{q3:.2f}"

    def over_f5(name: str) -> str:
        return f"F5 + {wmed[name] - wmed['F5']:.1f} ms"

    row(
        "F5",
        "floor: python -c pass, whole process, wall time",
        wmed["F5"],
        "ms",
        runs=whole["F5"],
        **hung("F5"),
    )
    app_f5 = per_round("start_cyclopts", "F5")
    row(
        "start_cyclopts",
        "minimal cyclopts app (3 commands, 1 option each): --help",
        wmed["start_cyclopts"],
        "ms",
        runs=whole["start_cyclopts"],
        **hung("start_cyclopts"),
        floor="F5",
        ratio=statistics.median(app_f5),
        note=over_f5("start_cyclopts"),
    )
    for id_, what, limit in (
        ("start_latis_help", "latis --help", 1.15),
        ("start_latis_status", "latis status (daemon running, local unit up)", 1.5),
    ):
        per = per_round(id_, "start_cyclopts")
        ratio = statistics.median(per)
        row(
            id_,
            what,
            wmed[id_],
            "ms",
            runs=whole[id_],
            **hung(id_),
            floor="start_cyclopts",
            ratio=ratio,
            ratio_runs=per,
            target=f"≤ {limit:g}x the cyclopts app",
            ok=ratio <= limit,
            note=f"{ratio:.2f}x the cyclopts app (per round{iqr(per)}); {over_f5(id_)} "
            f"(the cyclopts app: {over_f5('start_cyclopts')})",
        )

    # A prompt: whole processes (no target), then in-process round trips.
    lib_f5 = per_round("prompt_lib_proc", "F5")
    row(
        "prompt_lib_proc",
        "library, whole process: connect_local, session, prompt",
        wmed["prompt_lib_proc"],
        "ms",
        runs=whole["prompt_lib_proc"],
        **hung("prompt_lib_proc"),
        floor="F5",
        ratio=statistics.median(lib_f5),
        note=f"{over_f5('prompt_lib_proc')}; starts its own latis-unit --stdio",
    )
    cli_lib = per_round("prompt_cli", "prompt_lib_proc")
    row(
        "prompt_cli",
        f'latis prompt "{PROMPT_TEXT}", whole process (daemon, unit up)',
        wmed["prompt_cli"],
        "ms",
        runs=whole["prompt_cli"],
        **hung("prompt_cli"),
        floor="prompt_lib_proc",
        ratio=statistics.median(cli_lib),
        ratio_runs=cli_lib,
        note=f"{over_f5('prompt_cli')}; latis status + "
        f"{wmed['prompt_cli'] - wmed['start_latis_status']:.1f} ms; "
        f"{statistics.median(per_round('prompt_cli', 'start_cyclopts')):.2f}x the cyclopts app",
    )
    pr = cli["prompts"]["us"]
    daemon_hung = cli["prompts"]["daemon_hung"]
    pmed = {name: statistics.median(v) for name, v in pr.items()}
    row(
        "prompt_lib",
        "one prompt round trip in-process, library to latis-unit --stdio",
        pmed["prompt_lib"],
        "µs",
        runs=pr["prompt_lib"],
    )
    per_run = [d / lib for d, lib in zip(pr["prompt_daemon"], pr["prompt_lib"], strict=True)]
    row(
        "prompt_daemon",
        "the same through the daemon's socket (session on unit local)",
        pmed["prompt_daemon"],
        "µs",
        runs=pr["prompt_daemon"],
        floor="prompt_lib",
        ratio=statistics.median(per_run),
        ratio_runs=per_run,
        note=f"the daemon adds {pmed['prompt_daemon'] - pmed['prompt_lib']:.0f} µs per prompt",
        **(
            {
                "hung": daemon_hung,
                "hung_note": f"{daemon_hung} prompt(s) hung ({PROMPT_HANG_S:g} s), each "
                "left out and followed by a new connection and session",
            }
            if daemon_hung
            else {}
        ),
    )

    # An ACP agent: the same SDK echo agent, through latis and from the SDK's client.
    acp = raw["acp"]
    amed = {name: statistics.median(v) for name, v in acp.items()}
    added = [lat - sdk for lat, sdk in zip(acp["acp_latis"], acp["acp_sdk"], strict=True)]
    row(
        "acp_sdk",
        "floor: ACP SDK's own client (asyncio) -> SDK echo agent, one prompt",
        amed["acp_sdk"],
        "µs",
        runs=acp["acp_sdk"],
    )
    adds = statistics.median(added)
    row(
        "acp_latis",
        "the same prompt: library -> latis-unit --agent acp -> the agent",
        amed["acp_latis"],
        "µs",
        runs=acp["acp_latis"],
        floor="acp_sdk",
        ratio=statistics.median(
            [lat / sdk for lat, sdk in zip(acp["acp_latis"], acp["acp_sdk"], strict=True)]
        ),
        target="latis adds < 0.5 ms",
        ok=adds < 500,
        note=f"latis adds {adds:.0f} µs per prompt (median of the per-run differences: "
        + " ".join(f"{x:.0f}" for x in added)
        + " µs)",
    )
    transport_rows(raw["transports"], row)
    return rows


#: Transports whose raw row is a pipe, not the transport's own echo: no target.
NO_TARGET = {"container": "the raw row is a pipe (podman exec): see rt_latis_pipes / F2"}


def transport_rows(trans: dict[str, Any], row: Callable[..., dict[str, Any]]) -> None:
    """Per transport: its raw echo (the floor), latis's ping over it, a streamed prompt."""
    import _transports

    for name, r in trans.items():
        if "skipped" in r:
            row(f"raw_{name}", f"{name}: skipped ({r['skipped']})", math.nan, "µs")
            continue
        row(f"raw_{name}", f"floor: {_transports.describe(name)}, 100 B", statistics.median(
            r["raw"]), "µs", runs=r["raw"])
        ratios = [lat / base for lat, base in zip(r["latis"], r["raw"], strict=True)]
        ratio = statistics.median(ratios)
        extra: dict[str, Any] = {"floor": f"raw_{name}", "ratio": ratio, "ratio_runs": ratios}
        if name in NO_TARGET:
            extra["note"] = NO_TARGET[name]
        else:
            extra.update(target="≤ 1.5x raw", ok=ratio <= 1.5)
        row(f"rt_{name}", f"latis unit.ping() over {name} (a real unit)",
            statistics.median(r["latis"]), "µs", runs=r["latis"], **extra)
        rate = statistics.median(r["stream"])
        target: dict[str, Any] = {}
        if name == "unix":  # (issue 13: stdio and unix)
            target = {"target": f"≥ {STREAM_TARGET:,} chunks/s", "ok": rate >= STREAM_TARGET}
        row(f"stream_{name}", f"latis streamed chunks over {name} (echo agent)",
            rate, "msg/s", runs=r["stream"], **target)


def fmt_value(value: float, unit: str) -> str:
    if unit == "µs":
        return f"{value:.2f} µs" if value < 10 else f"{value:.1f} µs"
    if unit == "msg/s":
        return f"{value / 1000:,.0f} k/s"
    if unit == "KiB":
        return f"{value:.2f} KiB"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:g} {unit}"


def fmt_runs(r: dict[str, Any]) -> str:
    runs = r.get("runs")
    if not runs or len(runs) < 2:
        return ""
    if len(runs) > ROUNDS:  # whole processes: the quartiles of many runs
        q1, _, q3 = statistics.quantiles(runs, n=4)
        return f"IQR {q1:.1f}–{q3:.1f}" + (f", {r['hung']} hung" if r.get("hung") else "")
    if r["unit"] == "msg/s":
        return " ".join(f"{x / 1000:.0f}k" for x in runs)
    return " ".join(f"{x:.1f}" for x in runs)


def render(cfg: Config, rows: list[dict[str, Any]], raw: dict[str, Any]) -> str:
    mode = "quick" if cfg.quick else "full"
    head = (
        f"latis benchmarks ({mode}: round trips {ROUNDS} interleaved runs x {cfg.rt_iters}, "
        f"streaming {cfg.stream_runs} run(s), memory over {cfg.mem_n}, whole processes "
        f"{cfg.start_runs} interleaved rounds, in-process prompts {ROUNDS} runs x "
        f"{cfg.prompt_iters})\n"
        f"Python {platform.python_version()}, trio {trio.__version__}, "
        f"latis {latis_core.__version__}, {os.cpu_count()} CPUs; other processes kept "
        f"{raw['others_cores']:.2f} of a core busy on average during the run "
        "(noise: see README)"
    )
    cols = ("row", "what", "median", "runs", "x floor", "target", "ok")
    table = []
    for r in rows:
        ratio = f"{r['ratio']:.2f}x {r['floor']}" if "ratio" in r else ""
        ok = "" if "ok" not in r else ("✓" if r["ok"] else "✗")
        table.append(
            (
                r["id"],
                r["what"],
                fmt_value(r["value"], r["unit"]),
                fmt_runs(r),
                ratio,
                r.get("target", ""),
                ok,
            )
        )
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    lines = [head, ""]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines.append(line(cols))
    lines.append("  ".join("-" * w for w in widths))
    groups = {
        "F2": "rt",
        "F3": "codec",
        "F4": "stream",
        "mem_conn_cmdr": "mem",
        "F5": "start",
        "prompt_lib_proc": "prompt",
        "acp_sdk": "acp",
        "raw_unix": "transports",
    }
    for r, cells in zip(rows, table, strict=True):
        if r["id"] in groups:
            lines.append("")
        lines.append(line(cells))
    lines.append("")
    by_id = {r["id"]: r for r in rows}
    lat = by_id["rt_latis_pipes"]
    lines.append(
        "latis over pipes / F2, per run: "
        + "  ".join(f"{x:.2f}x" for x in lat["ratio_runs"])
        + f"   (zmq/F2: {by_id['rt_zmq']['ratio']:.2f}x, "
        f"execnet/F2: {by_id['rt_execnet']['ratio']:.2f}x)"
    )
    lines.append(
        "latis in-process / F1, per run: "
        + "  ".join(f"{x:.2f}x" for x in by_id["rt_latis_socketpair"]["ratio_runs"])
    )
    notes = [f"{r['id']}: {r['note']}" for r in rows if r.get("note")]
    lines.extend(notes)
    lines.extend(f"HUNG {r['id']}: {r['hung_note']}" for r in rows if r.get("hung"))
    lines.append(
        f"latis run as: {' '.join(raw['cli']['latis'])}; python: {sys.executable}; "
        "prompt rows are informational (no target)"
    )
    targets = [r for r in rows if "ok" in r]
    met = sum(1 for r in targets if r["ok"])
    lines.append(f"targets met: {met}/{len(targets)}")
    return "\n".join(lines)


def _only_interrupts(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_interrupts(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (~30 s)")
    parser.add_argument(
        "--json", action="store_true", help="also print the numbers as one JSON line, last"
    )
    parser.add_argument("--mem-child", help=argparse.SUPPRESS)
    parser.add_argument("--mem-n", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--acp-sdk-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mem_child:
        print(json.dumps(mem_child(args.mem_child, args.mem_n)))
        return 0
    if args.acp_sdk_child:
        acp_sdk_child(args.acp_sdk_child)
        return 0
    missing = [m for m in ("zmq", "execnet") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"bench.py needs {' and '.join(missing)} for the peer rows: pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2
    if importlib.util.find_spec("acp") is None:
        print(
            "bench.py needs the ACP SDK for the acp rows: pip install agent-client-protocol "
            "(in the test extras: pip install -e '.[test]')",
            file=sys.stderr,
        )
        return 2
    cfg = Config(args.quick)
    compile_latis()
    started = time.perf_counter()
    cpu0 = cpu_seconds()
    try:
        raw = run_all(cfg)
    except BaseException as exc:
        if _only_interrupts(exc):
            log("interrupted (child processes ended)")
            return 130
        raise
    cpu1 = cpu_seconds()
    wall = time.perf_counter() - started
    # (The daemon and its units are not our reaped children: their CPU is taken out.)
    others = (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1]) - raw["cli"]["helper_cpu"]
    raw["others_cores"] = max(0.0, others) / wall
    rows = build_rows(cfg, raw)
    print(render(cfg, rows, raw))
    log(f"done in {time.perf_counter() - started:.1f} s")
    if args.json:
        doc = {
            "mode": "quick" if cfg.quick else "full",
            "python": platform.python_version(),
            "trio": trio.__version__,
            "latis": latis_core.__version__,
            "rows": {r.pop("id"): r for r in rows},
            "raw": {
                "proc": raw["proc"],
                "codec_median_us": {k: statistics.median(v) for k, v in raw["codec"].items()},
                "codec_batches": cfg.codec_batches,
                "codec_batch": cfg.codec_batch,
                "mem": raw["mem"],
                "cli": raw["cli"],
                "others_cores": raw["others_cores"],
                "acp": raw["acp"],
                "transports": raw["transports"],
            },
        }
        print(json.dumps(doc, ensure_ascii=False))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
