"""Frames: a 4-byte big-endian length, then that many bytes of payload.

Sans-IO: `FrameDecoder` is fed byte slices of any size and hands back whole
payloads; `encode_frame` does the reverse. A declared length over the limit is
refused as soon as its 4 length bytes are read: the payload is never buffered,
and nothing after it is looked at.
"""

from __future__ import annotations

import struct

from latis_core._errors import ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = ["DEFAULT_MAX_FRAME", "HEADER_SIZE", "FrameDecoder", "encode_frame", "pack_header"]

#: The default limit on a frame's payload, in bytes (16 MiB).
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: Bytes of length prefix before each payload.
HEADER_SIZE = 4

_HEADER = struct.Struct(">I")
#: The length prefix of a payload of `size` bytes (no limit checked: see `encode_frame`).
pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


def encode_frame(payload: bytes, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """Return `payload` with its length prefix.

    Raises:
        LocalProtocolError: (code `frame_too_large`) the payload is over `max_size`.
    """
    size = len(payload)
    if size > max_size:
        raise LocalProtocolError(
            f"a {size}-byte frame is over the limit of {max_size} bytes",
            ErrorCode.FRAME_TOO_LARGE,
        )
    return pack_header(size) + payload


class FrameDecoder:
    """Splits a byte stream into payloads.

    Feed it with `feed` (slices of any size, `b""` never needed), then take
    payloads with `next_frame` until it returns None. Frames are cut as they
    are fed, so an oversized length is caught before its payload is stored.

    Args:
        max_size: the largest payload accepted, in bytes.
    """

    __slots__ = ("_error", "_frames", "_head", "_tail", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        self.max_size = max_size
        self._tail = bytearray()
        # A list and a read index, not a deque: an idle connection holds one
        # decoder per side, and an empty deque costs ~600 bytes.
        self._frames: list[bytes] = []
        self._head = 0
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held: whole frames not yet taken, plus a partial frame."""
        return sum(map(len, self._frames[self._head :])) + len(self._tail)

    @property
    def in_frame(self) -> bool:
        """Whether a frame has started and not yet ended (true at EOF: a cut frame)."""
        return bool(self._tail)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the stream. Never raises."""
        if self._error is not None or not data:
            return
        limit = self.max_size
        tail = self._tail
        if tail:
            tail += data
            if len(tail) < 4:
                return
            (size,) = _unpack_header(tail, 0)
            if size <= limit and len(tail) < 4 + size:
                return  # a large frame, arriving in slices: not copied until whole
            data = bytes(tail)
            tail.clear()
        else:
            # One copy of what was read (the caller's buffer may be reused);
            # each frame is then one slice of it.
            data = bytes(data)
        append = self._frames.append
        end_all = len(data)
        pos = 0
        while end_all - pos >= 4:
            (size,) = _unpack_header(data, pos)
            if size > limit:
                self._error = RemoteProtocolError(
                    f"frame of {size} bytes is over the limit of {limit} bytes",
                    ErrorCode.FRAME_TOO_LARGE,
                )
                return
            start = pos + 4
            end = start + size
            if end > end_all:
                break
            append(data[start:end])
            pos = end
        if pos < end_all:
            with memoryview(data) as view:
                tail += view[pos:]

    def take_frames(self) -> list[bytes]:
        """Every whole payload not yet taken, in order (empty when none). A
        refused frame is raised by the next `next_frame`, after these."""
        frames = self._frames
        head = self._head
        if head == len(frames):
            return []
        self._frames = []
        self._head = 0
        return frames[head:] if head else frames

    def next_frame(self) -> bytes | None:
        """Return the next whole payload, or None until more bytes are fed.

        Raises:
            RemoteProtocolError: (code `frame_too_large`) once the frames before
                an oversized one are taken. The decoder stays failed.
        """
        frames = self._frames
        head = self._head
        if head < len(frames):
            frame = frames[head]
            head += 1
            if head == len(frames):
                frames.clear()
                head = 0
            self._head = head
            return frame
        if self._error is not None:
            raise self._error
        return None
