"""Property tests of the framing: split invariance, garbage in, oversized lengths."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from latis_core import ErrorCode, FrameDecoder, RemoteProtocolError, encode_frame

payloads = st.lists(st.binary(max_size=300), max_size=12)


def cuts(data: bytes) -> st.SearchStrategy[list[int]]:
    """Sorted cut points inside `data`."""
    return st.lists(st.integers(0, len(data)), max_size=20).map(sorted)


def pieces(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def take_all(decoder: FrameDecoder) -> list[bytes]:
    out = []
    while (payload := decoder.next_frame()) is not None:
        out.append(payload)
    return out


@given(st.data(), payloads)
def test_any_split_same_frames(data: st.DataObject, frames: list[bytes]) -> None:
    """However a valid byte stream is cut, the same frames come out in order."""
    stream = b"".join(map(encode_frame, frames))
    points = data.draw(cuts(stream))
    decoder = FrameDecoder()
    got: list[bytes] = []
    for piece in pieces(stream, points):
        decoder.feed(piece)
        got.extend(take_all(decoder))
    assert got == frames
    assert decoder.buffered == 0
    assert not decoder.in_frame


@given(st.data(), payloads)
def test_split_with_buffer_kinds(data: st.DataObject, frames: list[bytes]) -> None:
    """Feeding bytearrays and memoryviews (then reusing them) gives the same frames."""
    stream = b"".join(map(encode_frame, frames))
    points = data.draw(cuts(stream))
    decoder = FrameDecoder()
    for piece in pieces(stream, points):
        buf = bytearray(piece)
        decoder.feed(data.draw(st.sampled_from([bytes, bytearray, memoryview]))(buf))
        buf[:] = b"\xaa" * len(buf)  # the caller reuses its buffer
    assert take_all(decoder) == frames


@given(st.binary(max_size=2000), st.data(), st.integers(0, 512))
def test_garbage_only_remote_errors(garbage: bytes, data: st.DataObject, max_size: int) -> None:
    """Random bytes never raise anything but RemoteProtocolError, and every frame fits the limit."""
    decoder = FrameDecoder(max_size=max_size)
    for piece in pieces(garbage, data.draw(cuts(garbage))):
        decoder.feed(piece)
        try:
            for payload in take_all(decoder):
                assert len(payload) <= max_size
        except RemoteProtocolError as exc:
            assert exc.code is ErrorCode.FRAME_TOO_LARGE
            return
        assert decoder.buffered <= len(garbage)


@given(payloads, st.data())
def test_mutated_stream(frames: list[bytes], data: st.DataObject) -> None:
    """A valid stream with bytes changed, dropped or added fails only with RemoteProtocolError."""
    stream = bytearray(b"".join(map(encode_frame, frames)))
    for _ in range(data.draw(st.integers(1, 5))):
        op = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        at = data.draw(st.integers(0, len(stream)))
        if op == "flip" and at < len(stream):
            stream[at] = data.draw(st.integers(0, 255))
        elif op == "drop" and at < len(stream):
            del stream[at]
        else:
            stream[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    decoder = FrameDecoder(max_size=1024)
    for piece in pieces(bytes(stream), data.draw(cuts(bytes(stream)))):
        decoder.feed(piece)
        try:
            take_all(decoder)
        except RemoteProtocolError:
            return


@given(
    payloads,
    st.integers(0, 4096),
    st.integers(1, 2**32 - 1),
    st.binary(max_size=300),
    st.data(),
)
def test_oversized_refused_before_buffering(
    frames: list[bytes], limit: int, excess: int, tail: bytes, data: st.DataObject
) -> None:
    """An oversized length is refused before its payload is buffered; earlier frames come first."""
    frames = [f for f in frames if len(f) <= limit]
    size = min(limit + excess, 2**32 - 1)
    good = b"".join(map(encode_frame, frames))
    stream = good + struct.pack(">I", size) + tail
    decoder = FrameDecoder(max_size=limit)
    for piece in pieces(stream, data.draw(cuts(stream))):
        decoder.feed(piece)
        # At most the good frames and 3 bytes of the bad header are held, never its payload.
        assert decoder.buffered <= len(good) + 3
    got: list[bytes] = []
    try:
        while (payload := decoder.next_frame()) is not None:
            got.append(payload)
    except RemoteProtocolError as exc:
        assert exc.code is ErrorCode.FRAME_TOO_LARGE
    else:
        raise AssertionError("the oversized frame was not refused")
    assert got == frames
    decoder.feed(encode_frame(b""))
    assert decoder.buffered == 0
