"""The library's first line (issue 11, item 10): `latis_core.connect(ADDRESS)` takes what
`latis connect` takes, with the same options (`token_file`, `fingerprint`), and so does
the blocking facade. Real `latis-unit` processes on loopback."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from units import UNIT, conversation, listening_process, listening_unit

import latis_core
from latis_core import ConnectError, blocking


def _token(tmp_path: Path) -> Path:
    token = tmp_path / "unit.token"
    token.write_text("a-token-long-enough-for-this\n")
    token.chmod(0o600)
    return token


async def test_tcp_in_one_line(tmp_path: Path) -> None:
    """`connect("tcp://HOST:PORT")` dials, greets and serves the whole conversation."""
    async with listening_unit(tmp_path, "tcp://127.0.0.1:0") as unit:
        async with latis_core.connect(f"tcp://127.0.0.1:{unit.port}") as client:
            await conversation(client)


async def test_unix_and_local(tmp_path: Path) -> None:
    """`unix:PATH` and `local:COMMAND` are addresses too."""
    path = tmp_path / "unit.sock"
    async with listening_unit(tmp_path, f"unix:{path}"):
        async with latis_core.connect(f"unix:{path}") as client:
            await conversation(client)
    command = "local:" + shlex.join([*UNIT, "--stdio", "--agent", "echo", "-o", "delay=0.01"])
    async with latis_core.connect(command) as client:
        await conversation(client)


async def test_tls_pin_and_token_as_arguments(tmp_path: Path) -> None:
    """`fingerprint=` pins the unit's certificate and `token_file=` proves its token, as
    `latis connect URL --token-file` does; without the token the unit refuses."""
    token = _token(tmp_path)
    async with listening_unit(
        tmp_path, "tcp://127.0.0.1:0", "--tls", "--token-file", str(token)
    ) as unit:
        url = f"tcp://127.0.0.1:{unit.port}"
        async with latis_core.connect(
            url, fingerprint=unit.fingerprint, token_file=token
        ) as client:
            assert await client.create_session()
        with pytest.raises(ConnectError, match="proof"):
            async with latis_core.connect(url, fingerprint=unit.fingerprint):
                pass
        with pytest.raises(ValueError, match="given twice"):
            async with latis_core.connect(
                f"{url}?fingerprint={unit.fingerprint}", fingerprint=unit.fingerprint
            ):
                pass


async def test_an_address_latis_does_not_know(tmp_path: Path) -> None:
    """A scheme no transport dials is a ValueError naming the address."""
    with pytest.raises(ValueError, match="carrier"):
        async with latis_core.connect("carrier://pigeon:1"):
            pass


def test_blocking_connect_takes_an_address(tmp_path: Path) -> None:
    """`blocking.connect(URL, token_file=, fingerprint=)`, from code that is not async."""
    token = _token(tmp_path)
    with listening_process(
        tmp_path, "tcp://127.0.0.1:0", "--tls", "--token-file", str(token)
    ) as unit:
        with blocking.connect(
            f"tcp://127.0.0.1:{unit.port}", token_file=str(token), fingerprint=unit.fingerprint
        ) as client:
            assert client.agent.name == "echo"
            session = client.create_session()
            assert session.prompt("from a notebook").text() == "from a notebook"
    command = "local:" + shlex.join([*UNIT, "--stdio", "--agent", "echo", "-o", "ask=Sure?"])
    with blocking.connect(command) as client:
        answer = client.create_session().prompt("go", on_input=lambda q: "yes").text()
        assert answer == "yes go"
