"""The attach keyboard: a detach key read from the terminal, and answers typed there.

On a terminal, `latis attach` puts stdin in cbreak mode (keys arrive one by
one; Ctrl-C still interrupts) and reads it without a thread, so the detach
key works at any moment; a question's answer is read from the same keys.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Keys", "parse_key"]


def parse_key(name: str) -> bytes | None:
    """The byte a control key sends: "ctrl-]" -> b"\\x1d"; None if it is not one."""
    lowered = name.strip().lower()
    for prefix in ("ctrl-", "ctrl+", "c-", "^"):
        if lowered.startswith(prefix):
            rest = lowered[len(prefix):]
            break
    else:
        return None
    if len(rest) != 1:
        return None
    code = ord(rest.upper()) ^ 0x40
    if not 0 < code < 0x20 or code in (0x03, 0x0D):  # Ctrl-C cancels; Ctrl-M is Enter
        return None
    return bytes([code])


class Keys:
    """stdin's keys while attached: the detach key, and lines typed as answers."""

    def __init__(self, detach: bytes) -> None:
        import termios
        import tty

        import trio

        self.detach = detach
        self._fd = sys.stdin.fileno()
        self._saved: Any = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        self._lines_in, self._lines = trio.open_memory_channel[str](16)
        self._typed = b""

    def restore(self) -> None:
        """Put the terminal back as it was."""
        import termios

        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    async def run(self, on_detach: Callable[[], Awaitable[None]]) -> None:
        """Read keys until the detach key (then call `on_detach`) or EOF."""
        import trio

        while True:
            await trio.lowlevel.wait_readable(self._fd)
            data = os.read(self._fd, 1024)
            if not data:
                return
            if self.detach in data:
                await on_detach()
                return
            for byte in data:
                char = bytes([byte])
                if char in (b"\n", b"\r"):
                    sys.stderr.write("\n")
                    await self._lines_in.send(self._typed.decode(errors="replace"))
                    self._typed = b""
                elif char in (b"\x7f", b"\x08"):
                    if self._typed:
                        self._typed = self._typed[:-1]
                        sys.stderr.write("\b \b")
                else:
                    self._typed += char
                    sys.stderr.write(char.decode(errors="replace"))
            sys.stderr.flush()

    async def line(self, prompt: str) -> str:
        """Ask `prompt` and return the next line typed."""
        sys.stderr.write(prompt)
        sys.stderr.flush()
        return await self._lines.receive()
