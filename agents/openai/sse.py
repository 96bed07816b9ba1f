"""Server-sent events: `SSEDecoder` turns the bytes of a `text/event-stream`
response into (event type, data) pairs, however the reads cut them."""

from __future__ import annotations

import re

_EOL = re.compile(rb"\r\n|\r|\n")


class SSEDecoder:
    """Server-sent events from bytes as they arrive, however the reads cut them.

    `feed` returns the events completed so far as (event type, data) pairs:
    `data:` lines joined with newlines, comments (`:` lines) and fields other
    than `event` and `data` ignored. A field `error:` (the llama.cpp server
    sends one) is taken as the data of an `error` event.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._data: list[str] = []
        self._event = ""
        self._first = True

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        buf = self._buf
        buf += data
        events: list[tuple[str, str]] = []
        start = 0
        end = len(buf)
        while True:
            match = _EOL.search(buf, start)
            if match is None:
                break
            if match.end() == end and buf[match.start()] == 0x0D:
                break  # a CR at the end may be half of a CRLF
            self._line(bytes(buf[start : match.start()]), events)
            start = match.end()
        del buf[:start]
        return events

    def close(self) -> list[tuple[str, str]]:
        """The last event, if the stream ended without a blank line after it."""
        events: list[tuple[str, str]] = []
        rest = bytes(self._buf).rstrip(b"\r\n")
        self._buf.clear()
        if rest:
            for line in _EOL.split(rest):
                self._line(line, events)
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[tuple[str, str]]) -> None:
        line = raw.decode("utf-8", "replace")
        if self._first:
            self._first = False
            line = line.removeprefix("\ufeff")
        if not line:
            if self._data:
                events.append((self._event or "message", "\n".join(self._data)))
            self._data = []
            self._event = ""
            return
        if line[0] == ":":
            return
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "error":
            self._event = "error"
            self._data.append(value)
