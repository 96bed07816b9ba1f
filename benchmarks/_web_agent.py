"""Helpers of benchmarks/web.py, each run in a process of its own.

- `stamped`: a python-agent target (`latis-unit --agent python -o target=_web_agent:stamped`).
  The prompt "COUNT INTERVAL" streams COUNT chunks, INTERVAL seconds apart, each the
  wall-clock time it was sent (`1796495.123456 `): whoever shows a chunk can tell
  how long it took from the unit.
- `python _web_agent.py stamp FILE`: reads `latis attach --json` lines on stdin and
  writes each chunk's text with the time it was read (a process of its own, so the
  benchmark's busy loop never delays the reading).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator

import trio


async def stamped(text: str) -> AsyncIterator[str]:
    count, interval = text.split()
    pause = float(interval)
    for _ in range(int(count)):
        await trio.sleep(pause)
        yield f"{time.time():.6f} "


def stamp(path: str) -> None:
    with open(path, "w") as out:
        for line in sys.stdin:
            now = time.time()
            try:
                event = json.loads(line)
            except ValueError:
                continue
            text = event.get("text")
            if text:
                out.write(f"{text.strip()} {now:.6f}\n")
                out.flush()


if __name__ == "__main__":
    if sys.argv[1:2] == ["stamp"]:
        stamp(sys.argv[2])
