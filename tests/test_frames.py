"""Tests of latis_core._wire.frames: the length-prefixed framing, fed bytes of any size."""

from __future__ import annotations

import struct

import pytest

from latis_core import (
    DEFAULT_MAX_FRAME,
    ErrorCode,
    FrameDecoder,
    LocalProtocolError,
    RemoteProtocolError,
    encode_frame,
)


def frames_of(decoder: FrameDecoder) -> list[bytes]:
    """Take every whole payload the decoder holds."""
    out = []
    while (payload := decoder.next_frame()) is not None:
        out.append(payload)
    return out


def header(size: int) -> bytes:
    return struct.pack(">I", size)


class TestEncodeFrame:
    def test_prefix(self) -> None:
        """A frame is a 4-byte big-endian length, then the payload."""
        assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
        assert encode_frame(b"x" * 258) == b"\x00\x00\x01\x02" + b"x" * 258

    def test_empty_payload(self) -> None:
        """An empty payload is four zero bytes."""
        assert encode_frame(b"") == b"\x00\x00\x00\x00"

    def test_over_limit(self) -> None:
        """A payload over the limit is refused with frame_too_large."""
        with pytest.raises(LocalProtocolError) as info:
            encode_frame(b"x" * 11, max_size=10)
        assert info.value.code is ErrorCode.FRAME_TOO_LARGE
        assert "11" in str(info.value) and "10" in str(info.value)

    def test_at_limit(self) -> None:
        """A payload exactly at the limit is accepted."""
        assert encode_frame(b"x" * 10, max_size=10) == header(10) + b"x" * 10

    def test_default_limit(self) -> None:
        """The default limit is 16 MiB."""
        assert DEFAULT_MAX_FRAME == 16 * 1024 * 1024
        with pytest.raises(LocalProtocolError):
            encode_frame(bytes(DEFAULT_MAX_FRAME + 1))


class TestFrameDecoder:
    def test_round_trip(self) -> None:
        """A fed frame comes back as its payload."""
        decoder = FrameDecoder()
        decoder.feed(encode_frame(b"hello"))
        assert decoder.next_frame() == b"hello"
        assert decoder.next_frame() is None
        assert decoder.buffered == 0
        assert not decoder.in_frame

    def test_nothing_fed(self) -> None:
        """With nothing fed there is no frame, and feeding b"" changes nothing."""
        decoder = FrameDecoder()
        assert decoder.next_frame() is None
        decoder.feed(b"")
        assert decoder.next_frame() is None
        assert decoder.buffered == 0

    def test_byte_by_byte(self) -> None:
        """Frames fed one byte at a time come out whole, each as soon as it ends."""
        payloads = [b"one", b"", b"three" * 50]
        data = b"".join(map(encode_frame, payloads))
        decoder = FrameDecoder()
        got = []
        for i in range(len(data)):
            decoder.feed(data[i : i + 1])
            got.extend(frames_of(decoder))
        assert got == payloads
        assert decoder.buffered == 0

    def test_several_frames_in_one_feed(self) -> None:
        """Several frames fed at once come out in order."""
        payloads = [b"a", b"bb", b"", b"ccc"]
        decoder = FrameDecoder()
        decoder.feed(b"".join(map(encode_frame, payloads)))
        assert frames_of(decoder) == payloads

    def test_frames_across_feeds(self) -> None:
        """A feed may end in the middle of a header or a payload."""
        data = encode_frame(b"first") + encode_frame(b"second")
        decoder = FrameDecoder()
        decoder.feed(data[:2])
        assert decoder.next_frame() is None
        assert decoder.in_frame
        decoder.feed(data[2:11])
        assert frames_of(decoder) == [b"first"]
        assert decoder.in_frame
        decoder.feed(data[11:])
        assert frames_of(decoder) == [b"second"]
        assert not decoder.in_frame

    def test_large_frame_in_slices(self) -> None:
        """A large frame arriving in 64 KiB slices comes out whole and exact."""
        payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)
        data = encode_frame(payload) + encode_frame(b"after")
        decoder = FrameDecoder()
        step = 64 * 1024
        got = []
        for start in range(0, len(data), step):
            decoder.feed(data[start : start + step])
            got.extend(frames_of(decoder))
        assert got == [payload, b"after"]
        assert decoder.buffered == 0

    def test_zero_length_payload(self) -> None:
        """A zero-length frame is an empty payload, not 'no frame'."""
        decoder = FrameDecoder()
        decoder.feed(b"\x00\x00\x00\x00")
        assert decoder.next_frame() == b""
        assert decoder.next_frame() is None

    def test_buffered(self) -> None:
        """`buffered` counts whole frames not taken plus a partial frame."""
        decoder = FrameDecoder()
        decoder.feed(encode_frame(b"abc") + encode_frame(b"defg")[:6])
        assert decoder.buffered == 3 + 6
        assert decoder.next_frame() == b"abc"
        assert decoder.buffered == 6

    @pytest.mark.parametrize("kind", [bytearray, memoryview])
    def test_reused_buffer(self, kind: type) -> None:
        """The decoder keeps its own copy: a caller may reuse its buffer after `feed`."""
        buffer = bytearray(encode_frame(b"payload")[:7])
        decoder = FrameDecoder()
        decoder.feed(kind(buffer))
        buffer[:] = b"\xff" * len(buffer)
        decoder.feed(b"load")
        assert decoder.next_frame() == b"payload"

    def test_payloads_are_bytes(self) -> None:
        """Payloads come out as bytes whatever kind of buffer was fed."""
        decoder = FrameDecoder()
        decoder.feed(bytearray(encode_frame(b"ab")))
        decoder.feed(memoryview(encode_frame(b"cd")))
        got = frames_of(decoder)
        assert got == [b"ab", b"cd"]
        assert all(type(p) is bytes for p in got)


class TestOversized:
    def test_refused_at_header(self) -> None:
        """An oversized length is refused at its 4th header byte; its payload is never kept."""
        decoder = FrameDecoder(max_size=1024)
        good = encode_frame(b"before")
        decoder.feed(good)
        for byte in header(1025):
            decoder.feed(bytes([byte]))
        # Whatever follows the bad header is dropped, not buffered.
        for _ in range(16):
            decoder.feed(b"x" * 4096)
        assert decoder.buffered <= len(b"before")
        assert decoder.next_frame() == b"before"
        with pytest.raises(RemoteProtocolError) as info:
            decoder.next_frame()
        assert info.value.code is ErrorCode.FRAME_TOO_LARGE
        assert "1025" in str(info.value)
        assert decoder.buffered == 0

    def test_default_limit_refused_at_header(self) -> None:
        """A length over 16 MiB is refused by a default decoder without buffering."""
        decoder = FrameDecoder()
        decoder.feed(header(DEFAULT_MAX_FRAME + 1) + b"x" * 65536)
        assert decoder.buffered == 0
        with pytest.raises(RemoteProtocolError) as info:
            decoder.next_frame()
        assert info.value.code is ErrorCode.FRAME_TOO_LARGE

    def test_frames_before_come_first(self) -> None:
        """Frames fed before the oversized one (in the same feed) are delivered first."""
        decoder = FrameDecoder(max_size=100)
        decoder.feed(encode_frame(b"a") + encode_frame(b"b") + header(101) + b"zz")
        assert decoder.next_frame() == b"a"
        assert decoder.next_frame() == b"b"
        with pytest.raises(RemoteProtocolError):
            decoder.next_frame()

    def test_take_frames_takes_those_before(self) -> None:
        """`take_frames` takes every whole frame at once, those before an oversized
        one included; the refusal comes at the next `next_frame`."""
        decoder = FrameDecoder(max_size=100)
        decoder.feed(encode_frame(b"a") + encode_frame(b"b"))
        assert decoder.next_frame() == b"a"
        decoder.feed(encode_frame(b"c") + header(101) + b"zz")
        assert decoder.take_frames() == [b"b", b"c"]
        assert decoder.take_frames() == []
        with pytest.raises(RemoteProtocolError):
            decoder.next_frame()

    def test_after_partial_frame(self) -> None:
        """An oversized header that completes a buffered tail is still refused."""
        decoder = FrameDecoder(max_size=100)
        data = encode_frame(b"ok") + header(0xFFFFFFFF)
        decoder.feed(data[:5])
        decoder.feed(data[5:] + b"x" * 1000)
        assert decoder.buffered == 2
        assert decoder.next_frame() == b"ok"
        with pytest.raises(RemoteProtocolError):
            decoder.next_frame()

    def test_stays_failed(self) -> None:
        """Once refused, the decoder stays failed: later valid frames are ignored."""
        decoder = FrameDecoder(max_size=4)
        decoder.feed(header(5))
        with pytest.raises(RemoteProtocolError):
            decoder.next_frame()
        decoder.feed(encode_frame(b"ok"))
        assert decoder.buffered == 0
        for _ in range(2):
            with pytest.raises(RemoteProtocolError) as info:
                decoder.next_frame()
            assert info.value.code is ErrorCode.FRAME_TOO_LARGE


class TestMaxSize:
    def test_custom(self) -> None:
        """A custom max_size accepts payloads up to it and refuses one byte more."""
        decoder = FrameDecoder(max_size=10)
        assert decoder.max_size == 10
        decoder.feed(encode_frame(b"x" * 10))
        assert decoder.next_frame() == b"x" * 10
        decoder.feed(header(11))
        with pytest.raises(RemoteProtocolError):
            decoder.next_frame()

    def test_zero(self) -> None:
        """max_size 0 accepts only empty payloads."""
        decoder = FrameDecoder(max_size=0)
        decoder.feed(encode_frame(b""))
        assert decoder.next_frame() == b""
        decoder.feed(header(1))
        with pytest.raises(RemoteProtocolError):
            decoder.next_frame()

    def test_negative(self) -> None:
        """A negative max_size is a ValueError."""
        with pytest.raises(ValueError):
            FrameDecoder(max_size=-1)
