"""One helper for the transport rows: a child process that says where it listens.

The child prints one line (its port, or a socket path) when it is ready, then
serves until its stdin reaches EOF, so none outlives the benchmark.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

__all__ = ["line_child"]


@asynccontextmanager
async def line_child(argv: Sequence[str], what: str) -> AsyncIterator[str]:
    """Run `argv`; yield the first line it prints; on leaving, close its stdin
    and wait for it (5 s, then kill). `what` names it in errors."""
    process = await trio.lowlevel.open_process(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin and process.stdout and process.stderr
    try:
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                data = await process.stdout.receive_some()
                if not data:
                    await process.wait()
                    error = await process.stderr.receive_some()
                    raise RuntimeError(
                        f"the {what} child exited ({process.returncode}) before it "
                        f"listened: {error.decode(errors='replace').strip()}"
                    )
                line += data
        yield line.decode().strip()
    finally:
        with trio.CancelScope(shield=True):
            await process.stdin.aclose()  # EOF: the child ends
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()
