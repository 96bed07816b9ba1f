"""A terminal: a command the agent runs (`terminal/create`), in a process group
of its own, with the tail of its output and its exit status."""

from __future__ import annotations

import signal
from typing import Any

import trio

from latis_core._os.procgroup import signal_group


class _Terminal:
    """A command the agent runs (`terminal/create`): its output tail and exit status."""

    def __init__(self, tid: str, process: trio.Process, limit: int) -> None:
        self.id = tid
        self.process = process
        self.limit = limit
        self.output = bytearray()
        self.truncated = False
        self.exited = trio.Event()

    async def pump(self, stream: trio.lowlevel.FdStream) -> None:
        try:
            async with stream:
                while data := await stream.receive_some(65536):
                    output = self.output
                    output += data
                    over = len(output) - self.limit
                    if over > 0:
                        # Keep the tail, cut at a character boundary.
                        while over < len(output) and (output[over] & 0xC0) == 0x80:
                            over += 1
                        del output[:over]
                        self.truncated = True
            await self.process.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            # Cancelled (the session or the agent ends): the command goes too.
            if self.process.returncode is None:
                self.kill(signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await self.process.wait()
            self.exited.set()

    def status(self) -> dict[str, Any]:
        code = self.process.returncode
        if code is None:
            return {}
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return {"exitCode": None, "signal": name}
        return {"exitCode": code, "signal": None}

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.process.returncode is None or not self.exited.is_set():
            signal_group(self.process.pid, sig)
