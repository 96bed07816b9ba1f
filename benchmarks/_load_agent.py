"""The agent of benchmarks/load.py's units (`latis-unit --agent python -o
target=_load_agent:reply`).

`stream COUNT PAUSE` answers COUNT chunks, one every PAUSE seconds, each the
unit's `time.monotonic_ns()` when it was made (the clock is the machine's, so
the receiver's `monotonic_ns()` minus it is the chunk's latency); any other
prompt is echoed back as one chunk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import trio


async def reply(text: str) -> AsyncIterator[str]:
    if text.startswith("stream "):
        _, count, pause = text.split()
        for _ in range(int(count)):
            await trio.sleep(float(pause))
            yield f"{time.monotonic_ns()} "
    else:
        yield text
