"""The points of PROTOCOL.md an implementer had to guess at (issue 11, item 9), each as
the spec now settles it in one sentence, spoken in raw frames to a real `latis-unit`."""

from __future__ import annotations

from wire import HELLO, frame, raw_unit


async def test_the_other_roles_members_in_a_hello_are_ignored() -> None:
    """§4.1: a controller's hello carrying a unit's members, of any kind, is answered."""
    async with raw_unit(hello=False) as wire:
        reply = await wire.request({**HELLO, "agent": {"x": 1}, "unit": 5})
    assert reply["type"] == "hello" and reply["role"] == "unit"


async def test_an_unknown_type_before_the_hello_is_unknown_type() -> None:
    """§5.3: before the handshake an unknown type is `unknown_type`, no type `bad_message`,
    a known request `handshake_required`; each with the message's id."""
    async with raw_unit(hello=False) as wire:
        assert await wire.request({"type": "bogus", "id": 3}) == {
            "type": "error",
            "id": 3,
            "code": "unknown_type",
            "message": "unknown message type 'bogus'",
        }
        await wire.send({"id": 4})
        assert (await wire.recv())["code"] == "bad_message"
        assert (await wire.request({"type": "ping", "id": 5}))["code"] == "handshake_required"
        assert (await wire.request(HELLO))["type"] == "hello"


async def test_which_id_a_refused_hello_gets() -> None:
    """§5.2: a hello with a member missing gets `id` 0; one whose `id` is of the wrong
    kind, missing, or not 0 gets `id` null; none of these is fatal."""
    async with raw_unit(hello=False) as wire:
        no_protocol = {k: v for k, v in HELLO.items() if k != "protocol"}
        await wire.send(no_protocol)
        error = await wire.recv()
        assert (error["type"], error["id"], error["code"]) == ("error", 0, "bad_message")
        for hello in (
            {**HELLO, "id": "0"},
            {k: v for k, v in HELLO.items() if k != "id"},
            {**HELLO, "id": 1},
        ):
            await wire.send(hello)
            error = await wire.recv()
            assert (error["type"], error["id"], error["code"]) == ("error", None, "bad_message")
        assert (await wire.request(HELLO))["type"] == "hello"


async def test_an_explicit_null_means_the_default_where_the_table_says_or_null() -> None:
    """§3.5: `"options": null` (an object or null, default {}) is accepted; `null` for a
    member whose kind does not say "or null" is refused, whatever its default."""
    async with raw_unit() as wire:
        created = await wire.request({"type": "session.create", "id": 1, "options": None})
        assert created["type"] == "ack" and created["data"]["state"] == "idle"
    async with raw_unit(hello=False) as wire:
        refused = await wire.request({**HELLO, "capabilities": None})
        assert (refused["type"], refused["code"]) == ("error", "bad_message")
        assert "$.capabilities" in refused["message"]


async def test_chunks_is_the_prompts_total_after_a_resume() -> None:
    """§4.9: after a resume from seq 3, `chunks` is the last seq + 1, not what came since."""
    async with raw_unit() as wire:
        sid = (await wire.request({"type": "session.create", "id": 1}))["data"]["session"]
        await wire.send({"type": "prompt.send", "id": 7, "session": sid, "text": "a b c d e f"})
        assert (await wire.stream_of(7))[-1] == {"type": "response.complete", "id": 7, "chunks": 6}
        await wire.send({"type": "session.resume", "id": 8, "session": sid, "prompt": 7, "seq": 3})
        assert (await wire.recv_for(8))["data"]["prompt"]["done"] is True
        replayed = await wire.stream_of(7)
        assert [m.get("seq") for m in replayed[:-1]] == [4, 5]
        assert replayed[-1] == {"type": "response.complete", "id": 7, "chunks": 6}


async def test_a_refused_resume_gets_one_error_with_its_own_id() -> None:
    """§10.3: a resume whose `prompt` equals its own id, or names a prompt in flight, gets
    one `bad_message` with the resume's id; the prompt in flight goes on."""
    async with raw_unit({"delay": "0.05"}) as wire:
        sid = (await wire.request({"type": "session.create", "id": 1}))["data"]["session"]
        await wire.send({"type": "session.resume", "id": 5, "session": sid, "prompt": 5})
        refused = await wire.recv()
        assert (refused["type"], refused["id"], refused["code"]) == ("error", 5, "bad_message")
        assert await wire.request({"type": "ping", "id": 6}) == {"type": "pong", "id": 6}

        await wire.send({"type": "prompt.send", "id": 7, "session": sid, "text": "a b c"})
        refused = await wire.request(
            {"type": "session.resume", "id": 8, "session": sid, "prompt": 7}
        )
        assert (refused["type"], refused["code"]) == ("error", "bad_message")
        assert (await wire.stream_of(7))[-1] == {"type": "response.complete", "id": 7, "chunks": 3}


async def test_a_lone_surrogate_is_not_json() -> None:
    """§3.1: a lone surrogate escape gets `bad_message` with id null and the connection goes
    on; an escaped surrogate pair is one character."""
    async with raw_unit() as wire:
        for payload in (
            b'{"type":"ping","id":"\\ud800"}',
            b'{"type":"session.create","id":9,"options":{"k":"\\udc00"}}',
        ):
            await wire.send_raw(frame(payload))
            error = await wire.recv()
            assert (error["type"], error["id"], error["code"]) == ("error", None, "bad_message")
        await wire.send_raw(
            frame(b'{"type":"session.create","id":10,"options":{"ask":"\\ud83d\\ude00"}}')
        )
        assert (await wire.recv_for(10))["type"] == "ack"
