"""Units that dial in, many to a process, for benchmarks/load.py's dial-in rows.

    python _load_fleet.py ENROLLMENTS.json

ENROLLMENTS.json is a list of `{"unit", "secret", "url"}` (what `unit.enroll`
returns). The process runs at nice 19: it stands in for remote machines.
Each unit runs through the public library (`open_unit`, `dial_cmdr`)
with the echo agent. Every 0.25 s the process prints one JSON line:
`{"ever": N, "since_mark": M, "refused": R}`: units connected at least once,
units connected since the last `mark` line read on stdin, and units cmdr
refused for good (`unauthorized`: they stop).
"""

from __future__ import annotations

import json
import os
import sys

import trio

import latis_core


async def main(path: str) -> None:
    # These processes stand in for the fleet's own machines: they yield the CPU
    # to cmdr and the CLI, which on a real fleet would have their host to
    # themselves (on 2 shared cores, 20 of them at full priority starve any
    # command run beside them, whatever it does).
    os.nice(19)
    entries = json.loads(await trio.Path(path).read_text())
    since_mark: set[int] = set()
    ever: set[int] = set()
    refused: list[str] = []

    async def run_unit(i: int, entry: dict[str, str]) -> None:
        def on_connected() -> None:
            ever.add(i)
            since_mark.add(i)

        async with latis_core.open_unit(
            latis_core.EchoAgent(),
            name=entry["unit"],
            enrollment=latis_core.Enrollment.parse(entry["secret"]),
        ) as unit:
            _, dialer = latis_core.dialer_from_url(entry["url"])
            why = await latis_core.dial_cmdr(unit, dialer, on_connected=on_connected)
            refused.append(why)
            print(f"unit {entry['unit']} refused: {why}", file=sys.stderr, flush=True)

    async def report() -> None:
        while True:
            await trio.sleep(0.25)
            print(
                json.dumps(
                    {"ever": len(ever), "since_mark": len(since_mark), "refused": len(refused)}
                ),
                flush=True,
            )

    async def read_marks(done: trio.CancelScope) -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        while data := await stdin.receive_some():
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip() == b"mark":
                    since_mark.clear()
        done.cancel()  # the benchmark went away: so do we

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_marks, nursery.cancel_scope)
        nursery.start_soon(report)
        for i, entry in enumerate(entries):
            nursery.start_soon(run_unit, i, entry)
            if i % 50 == 49:
                await trio.lowlevel.checkpoint()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
