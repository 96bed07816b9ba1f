"""PROTOCOL.md stays true: its recorded conversation is what the state machines do."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

import latis_core

DOC = (Path(__file__).parent.parent / "PROTOCOL.md").read_text()
FRAME = re.compile(r"^\s*\d+ (C→U|U→C) \[ *(\d+)\] (\{.*\})$", re.M)


def test_example_frames_have_their_lengths() -> None:
    """Every frame of the complete example is JSON, with the length prefix it shows."""
    frames = FRAME.findall(DOC)
    assert len(frames) >= 20
    for _, length, payload in frames:
        assert len(payload.encode()) == int(length), payload
        orjson.loads(payload)


def test_example_conversation_is_what_both_sides_do() -> None:
    """Fed frame by frame to a controller and a unit, the example breaks no rule, and the
    one malformed request gets exactly the error the document shows."""
    cmdr = latis_core.Connection(latis_core.Role.CMDR)
    unit = latis_core.Connection(latis_core.Role.UNIT)
    expected_error = None
    for direction, _, payload in FRAME.findall(DOC):
        data = payload.encode()
        if direction == "C→U":
            sender, receiver = cmdr, unit
        else:
            sender, receiver = unit, cmdr
        try:
            msg = latis_core.decode(data)
        except latis_core.RemoteProtocolError:
            # A malformed request on purpose: the unit must answer as documented.
            unit.receive_data(latis_core.encode_frame(data))
            violation = unit.next_event()
            assert isinstance(violation, latis_core.Violation)
            expected_error = violation.reply
            continue
        if expected_error is not None:
            assert msg == expected_error
            expected_error = None
            sender.send(msg)
            receiver.receive_data(latis_core.encode_frame(data))
        else:
            receiver.receive_data(sender.send(msg))
        event = receiver.next_event()
        assert not isinstance(event, latis_core.Violation), (payload, event)
        assert event == msg
