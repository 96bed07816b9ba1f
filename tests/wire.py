"""Raw frames to and from a real unit, with no protocol logic: for bad-input tests."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio
from latis_transports import ProcessStream, open_local

from latis_core import FrameDecoder, unit_command

HELLO = {"type": "hello", "id": 0, "protocol": 1, "role": "cmdr"}


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


class Wire:
    """Sends any bytes; receives whole frames as JSON objects."""

    def __init__(self, stream: ProcessStream) -> None:
        self.stream = stream
        self.process = stream.process
        self._decoder = FrameDecoder()
        self.stash: list[dict[str, Any]] = []

    async def send(self, obj: dict[str, Any]) -> None:
        await self.stream.send_all(frame(orjson.dumps(obj)))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        """The next message (or fail after `timeout` seconds)."""
        if self.stash:
            return self.stash.pop(0)
        with trio.fail_after(timeout):
            while True:
                payload = self._decoder.next_frame()
                if payload is not None:
                    return orjson.loads(payload)  # type: ignore[no-any-return]
                data = await self.stream.receive_some(1 << 16)
                if not data:
                    raise EOFError("the unit closed its stdout")
                self._decoder.feed(data)

    async def recv_for(self, rid: Any, timeout: float = 10) -> dict[str, Any]:
        """The next message with id `rid`; others are kept for later `recv`s."""
        kept = []
        try:
            while True:
                msg = await self.recv(timeout)
                if msg.get("id") == rid:
                    return msg
                kept.append(msg)
        finally:
            self.stash[:0] = kept

    async def request(self, obj: dict[str, Any]) -> dict[str, Any]:
        await self.send(obj)
        return await self.recv_for(obj["id"])

    async def stream_of(self, rid: Any, timeout: float = 10) -> list[dict[str, Any]]:
        """Every message for `rid` up to and including its final one."""
        out = []
        while True:
            msg = await self.recv_for(rid, timeout)
            out.append(msg)
            if msg["type"] in ("response.complete", "response.cancelled", "error"):
                return out

    async def eof(self, timeout: float = 10) -> bool:
        """Whether the unit closes its stdout (after any frames still coming)."""
        with trio.move_on_after(timeout):
            while await self.stream.receive_some(1 << 16):
                pass
            return True
        return False

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


@asynccontextmanager
async def raw_unit(
    options: dict[str, str] | None = None, args: Sequence[str] = (), hello: bool = True
) -> AsyncIterator[Wire]:
    """A real `latis-unit --stdio` (echo agent), spoken to frame by frame."""
    env = dict(os.environ)
    async with open_local(unit_command("echo", options, args=args), env=env) as stream:
        wire = Wire(stream)
        if hello:
            reply = await wire.request(HELLO)
            assert reply["type"] == "hello", reply
        yield wire
