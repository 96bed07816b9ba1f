"""The tcp transport, and a unit that listens: TLS, pins, tokens, and its refusals.

Real `latis-unit --listen tcp://…` processes on loopback; cmdr's side is the
real tcp dialer and `latis_core.connect`. After each refusal the unit still
serves a controller that proves its token.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from latis_transports.tcp import TcpDialer, TcpListener
from units import UNIT, ListeningUnit, conversation
from units import listening_unit as listening

import latis_core
from latis_core import CertificateAuthority, ConnectError

TOKEN = "a-token-of-thirty-two-characters"


class Unit:
    """A `latis-unit --listen tcp://127.0.0.1:0` and a dialer for it."""

    def __init__(self, found: ListeningUnit) -> None:
        assert found.port is not None
        self.port = found.port
        self.fingerprint = found.fingerprint

    def dialer(self, **changes: Any) -> TcpDialer:
        options: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        if self.fingerprint:
            options["fingerprint"] = self.fingerprint
        return TcpDialer(**(options | changes))


@asynccontextmanager
async def listening_unit(tmp_path: Path, *args: str) -> AsyncIterator[Unit]:
    async with listening(tmp_path, "tcp://127.0.0.1:0", *args) as found:
        yield Unit(found)


def token_file(tmp_path: Path, text: str = TOKEN, mode: int = 0o600) -> Path:
    path = tmp_path / f"token-{mode:o}-{len(text)}"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


# ---- the transport ----------------------------------------------------------------------


async def test_plain_tcp_on_loopback_needs_no_token(tmp_path: Path) -> None:
    async with listening_unit(tmp_path) as unit:
        async with unit.dialer().connect() as stream, latis_core.connect(stream) as client:
            assert client.agent.name == "echo"
            await conversation(client)


async def test_nothing_listens_is_a_connect_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError, match=rf"cannot connect to tcp://127.0.0.1:{port}: "):
        async with TcpDialer("127.0.0.1", port).connect():
            pass


async def test_url_forms() -> None:
    d = TcpDialer.from_url("tcp://box:9000?fingerprint=sha256:" + "a" * 64)
    assert (d.host, d.port, d.uses_tls) == ("box", 9000, True)
    assert TcpDialer.from_url("tcp://[::1]").port == 7447
    assert TcpListener.from_url("tcp://0.0.0.0:0?tls=1").tls is True
    with pytest.raises(ValueError, match="unknown option 'pin'"):
        TcpDialer.from_url("tcp://box:1?pin=x")
    with pytest.raises(ValueError, match="the port is not a number"):
        TcpDialer.from_url("tcp://box:http")
    with pytest.raises(ValueError, match="no host"):
        TcpDialer.from_url("tcp://:80")


# ---- TLS ----------------------------------------------------------------------------


async def test_tls_with_the_printed_fingerprint(tmp_path: Path) -> None:
    """`--tls` makes a self-signed certificate once and prints its pin; a pinned dialer
    gets through, any other pin does not (and nothing was sent)."""
    async with listening_unit(tmp_path, "--tls") as unit:
        assert unit.fingerprint is not None
        async with unit.dialer().connect() as stream, latis_core.connect(stream) as client:
            await conversation(client)
        with pytest.raises(ConnectError, match="does not match the pinned sha256:0000"):
            async with unit.dialer(fingerprint="sha256:" + "0" * 64).connect():
                pass
        with pytest.raises(ConnectError, match="TLS with tcp://127.0.0.1:.* failed.*pin the"):
            async with unit.dialer(fingerprint=None, tls=True).connect():
                pass  # system CAs know no self-signed certificate
        clear = unit.dialer(fingerprint=None).url()
        with pytest.raises(ConnectError, match=r"during the handshake \(a unit that listens with"
                                               r" --tls needs its pin"):
            async with latis_core.connect(clear, handshake_timeout=5):
                pass  # clear text: the unit hangs up on our hello
        async with unit.dialer().connect() as stream, latis_core.connect(stream) as client:
            assert await client.ping() > 0  # the unit serves on after the refused ones
    async with listening_unit(tmp_path, "--tls") as again:
        assert again.fingerprint == unit.fingerprint  # kept: the pin stays good


async def test_tls_verified_against_a_ca_and_mtls(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    server = ca.files("unit", "unit", ["127.0.0.1"])
    client = ca.files("client", "cmdr", ["cmdr.latis.invalid"], server=False, client=True)
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    async with listening_unit(
        tmp_path, "--tls-cert", str(server.cert), "--tls-key", str(server.key),
        "--tls-client-ca", str(ca.cert_file),
    ) as unit:
        mtls = {"ca": str(ca.cert_file), "cert": str(client.cert), "key": str(client.key)}
        async with unit.dialer(**mtls).connect() as stream, latis_core.connect(stream) as c:
            await conversation(c)
        with pytest.raises(ConnectError, match="self-signed certificate in certificate chain"):
            async with unit.dialer(**(mtls | {"ca": str(other.cert_file)})).connect():
                pass
        with pytest.raises((ConnectError, latis_core.ConnectionClosed)):
            # No client certificate: the unit ends TLS (TLS 1.3 says so after the handshake).
            async with unit.dialer(ca=str(ca.cert_file)).connect() as stream, \
                    latis_core.connect(stream, handshake_timeout=5):
                pass
        async with unit.dialer(**mtls).connect() as stream, latis_core.connect(stream) as c:
            assert await c.ping() > 0  # the unit serves on after the refused ones


# ---- the token ------------------------------------------------------------------------


async def test_token_is_proven_both_ways(tmp_path: Path) -> None:
    async with listening_unit(tmp_path, "--token-file", str(token_file(tmp_path))) as unit:
        async with unit.dialer().connect() as stream, latis_core.connect(
            stream, token=TOKEN.encode()
        ) as client:
            await conversation(client)


async def test_wrong_or_missing_token_is_refused_and_the_unit_goes_on(tmp_path: Path) -> None:
    async with listening_unit(tmp_path, "--token-file", str(token_file(tmp_path))) as unit:
        with pytest.raises(ConnectError, match=r"unauthorized: wrong or missing proof"):
            async with unit.dialer().connect() as stream, latis_core.connect(
                stream, token=b"not-the-token-not-the-token"
            ):
                pass
        with pytest.raises(ConnectError, match="asks for proof of its token: give the token"):
            async with unit.dialer().connect() as stream, latis_core.connect(stream):
                pass
        async with unit.dialer().connect() as stream, latis_core.connect(
            stream, token=TOKEN.encode()
        ) as client:
            await conversation(client)


async def test_a_unit_that_does_not_ask_for_the_token_is_not_trusted(tmp_path: Path) -> None:
    """cmdr holds a token for the unit; a listener that does not ask is someone else."""
    async with listening_unit(tmp_path) as unit:
        with pytest.raises(ConnectError, match="did not ask for its token"):
            async with unit.dialer().connect() as stream, latis_core.connect(
                stream, token=TOKEN.encode()
            ):
                pass


async def test_an_impostor_that_cannot_prove_the_token_back_is_refused() -> None:
    """A listener that asks for proof (and gets cmdr's) but cannot prove the token back
    is not the unit: cmdr refuses it after the handshake, before any request."""
    from latis_transports import socket_stream_pair

    from latis_core._wire.auth import new_challenge

    ours, theirs = socket_stream_pair()

    async def impostor() -> None:
        decoder = latis_core.FrameDecoder()

        async def recv() -> dict[str, Any]:
            while (payload := decoder.next_frame()) is None:
                decoder.feed(await theirs.receive_some())
            return orjson.loads(payload)  # type: ignore[no-any-return]

        assert (await recv())["type"] == "hello"
        await theirs.send_all(frame({"type": "error", "id": 0, "code": "auth_required",
                                     "message": "prove it",
                                     "auth": {"challenge": new_challenge()}}))
        second = await recv()
        assert second["auth"]["proof"] and second["auth"]["challenge"]  # cmdr's proof
        await theirs.send_all(frame({"type": "hello", "id": 0, "protocol": 1, "role": "unit",
                                     "unit": "gpu", "agent": {"name": "x", "version": ""},
                                     "capabilities": [], "auth": {"proof": "made-up"}}))
        await closes(theirs)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(impostor)
        with pytest.raises(ConnectError, match="did not prove it knows the token"):
            async with latis_core.connect(ours, token=TOKEN.encode()):
                pass


def frame(obj: dict[str, Any]) -> bytes:
    payload = orjson.dumps(obj)
    return struct.pack(">I", len(payload)) + payload


async def closes(stream: trio.abc.Stream, timeout: float = 10) -> bool:
    with trio.move_on_after(timeout):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def test_before_the_proof_nothing_but_hello_gets_through(tmp_path: Path) -> None:
    """To a unit with a token: a request first, an oversized frame, or silence, each
    closes the connection; the unit then still serves a controller with the token."""
    async with listening_unit(
        tmp_path, "--token-file", str(token_file(tmp_path)), "--handshake-timeout", "1"
    ) as unit:
        async with unit.dialer().connect() as stream:
            await stream.send_all(frame({"type": "session.create", "id": 1}))
            assert await closes(stream)
        async with unit.dialer().connect() as stream:
            await stream.send_all(struct.pack(">I", 1 << 20) + b"{")
            assert await closes(stream)
        async with unit.dialer().connect() as stream:
            hello = {"type": "hello", "id": 0, "protocol": 1, "role": "cmdr"}
            await stream.send_all(frame(hello))  # answered with auth_required …
            await stream.send_all(frame({"type": "ping", "id": 1}))  # … then not a hello
            assert await closes(stream)
        async with unit.dialer().connect() as stream:
            assert await closes(stream, timeout=5)  # silent past --handshake-timeout 1
        async with unit.dialer().connect() as stream, latis_core.connect(
            stream, token=TOKEN.encode()
        ) as client:
            await conversation(client)


def test_token_file_must_be_private_and_long(tmp_path: Path) -> None:
    for path, says in (
        (token_file(tmp_path, mode=0o644), "may be read by others (mode 0644)"),
        (token_file(tmp_path, text="short"), "holds 5 characters; at least 16"),
        (tmp_path / "missing", "cannot read the token file"),
    ):
        result = subprocess.run(
            [*UNIT, "--listen", "tcp://127.0.0.1:0", "--token-file", str(path)],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 2
        assert says in result.stderr


async def test_controller_dials_a_unit_with_token_file_and_pin_from_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dial table's token_file and fingerprint: what `latis unit add --dial tcp` writes."""
    from latis_core._cmdr.config import parse_config
    from latis_core._cmdr.state import StateDB

    monkeypatch.setenv("LATIS_HOME", str(tmp_path / "cmdr-home"))
    secret = token_file(tmp_path)
    async with listening_unit(tmp_path, "--tls", "--token-file", str(secret)) as unit:
        config = parse_config(
            f"""
            [units.gpu.dial]
            type = "tcp"
            host = "127.0.0.1"
            port = {unit.port}
            fingerprint = "{unit.fingerprint}"
            token_file = "{secret}"
            """.replace("\n            ", "\n")
        )
        with StateDB(tmp_path / "state.db") as state:
            async with latis_core.open_controller(config, state) as ctl:
                session = await ctl.create_session("gpu")
                record = await ctl.start_prompt(session["session"], "through cmdr")
                events = [e async for e in ctl.follow(record.id)]
                assert "".join(e[1].text for e in events if e[0] == "chunk") == "through cmdr"
