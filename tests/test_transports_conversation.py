"""One conversation over every dialer and every listener, each against the real thing.

Dialers (cmdr dials a unit): local (a child's stdio), unix, tcp, tcp with TLS and
a token, websocket, websocket with TLS, quic (real UDP), ssh (a real sshd on
loopback) and container (`podman exec` into a real container).

Listeners (the unit dials cmdr): tcp with TLS, websocket, websocket with TLS, quic
and unix, each run by a real controller; the unit is a real `latis-unit
--connect` process that proves its enrollment.

The conversation (`units.conversation`): the handshake, a session, a streamed
prompt, a prompt cancelled mid-stream, and the state after it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio
from podman_image import IMAGE, UNIT_COMMAND, podman_run, python_mounts
from sshd import Sshd, running_sshd, sshd_unavailable
from units import UNIT, conversation, listening_unit

import latis_core
from latis_core._cmdr.config import parse_config
from latis_core._cmdr.state import StateDB

TOKEN = "token-for-the-conversation-test"

Case = Callable[[Path], AbstractAsyncContextManager[latis_core.UnitClient]]


@pytest.fixture
def home() -> Iterator[Path]:
    # Short: unix socket paths must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="lc", dir="/tmp") as folder:
        yield Path(folder)


# ---- dialers: cmdr dials the unit ---------------------------------------------------------


@asynccontextmanager
async def dial_local(home: Path) -> AsyncIterator[latis_core.UnitClient]:
    async with latis_core.connect_local(options={"delay": "0.01"}) as unit:
        yield unit


@asynccontextmanager
async def dialed(url: str, token: bytes | None = None) -> AsyncIterator[latis_core.UnitClient]:
    _, dialer = latis_core.dialer_from_url(url)
    async with dialer.connect() as stream, latis_core.connect(stream, token=token) as unit:
        yield unit


@asynccontextmanager
async def dial_unix(home: Path) -> AsyncIterator[latis_core.UnitClient]:
    path = home / "u.sock"
    async with listening_unit(home, f"unix:{path}"), dialed(f"unix:{path}") as unit:
        yield unit


@asynccontextmanager
async def dial_tcp(home: Path) -> AsyncIterator[latis_core.UnitClient]:
    async with listening_unit(home, "tcp://127.0.0.1:0") as found:
        async with dialed(f"tcp://127.0.0.1:{found.port}") as unit:
            yield unit


@asynccontextmanager
async def dial_tcp_tls_token(home: Path) -> AsyncIterator[latis_core.UnitClient]:
    secret = home / "token"
    secret.write_text(TOKEN)
    secret.chmod(0o600)
    async with listening_unit(
        home, "tcp://0.0.0.0:0", "--tls", "--token-file", str(secret)
    ) as found:
        url = f"tcp://127.0.0.1:{found.port}?fingerprint={found.fingerprint}"
        async with dialed(url, TOKEN.encode()) as unit:
            yield unit


@asynccontextmanager
async def dial_websocket(home: Path) -> AsyncIterator[latis_core.UnitClient]:
    async with listening_unit(home, "ws://127.0.0.1:0/latis") as found:
        async with dialed(f"ws://127.0.0.1:{found.port}/latis") as unit:
            yield unit


@asynccontextmanager
async def dial_websocket_tls(home: Path) -> AsyncIterator[latis_core.UnitClient]:
    async with listening_unit(home, "ws://127.0.0.1:0/latis", "--tls") as found:
        url = f"wss://127.0.0.1:{found.port}/latis?fingerprint={found.fingerprint}"
        async with dialed(url) as unit:
            yield unit


@asynccontextmanager
async def dial_quic(home: Path) -> AsyncIterator[latis_core.UnitClient]:
    async with listening_unit(home, "quic://127.0.0.1:0") as found:
        url = f"quic://127.0.0.1:{found.port}?fingerprint={found.fingerprint}"
        async with dialed(url) as unit:
            yield unit


@asynccontextmanager
async def dial_ssh(home: Path) -> AsyncIterator[latis_core.UnitClient]:
    from latis_transports.ssh import SshDialer

    why = sshd_unavailable()
    if why is not None:
        pytest.skip(why)
    server: Sshd
    with running_sshd() as server:
        dialer = SshDialer(
            server.host, user=server.user, port=server.port, identity=(server.client_key,),
            host_key=server.host_key,
            command=(*UNIT, "--stdio", "--agent", "echo", "-o", "delay=0.01"),
        )
        async with dialer.connect() as stream, latis_core.connect(stream) as unit:
            yield unit


@asynccontextmanager
async def dial_container(home: Path) -> AsyncIterator[latis_core.UnitClient]:
    from latis_transports.container import ContainerDialer

    if podman_run("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.skip("no podman image (the podman fixture builds it)")
    name = f"latis-conv-{uuid.uuid4().hex[:8]}"
    mounts = [arg for mount in python_mounts() for arg in ("-v", mount)]
    sleeper = [sys.executable, "-c", "import time; time.sleep(100000)"]
    started = await trio.to_thread.run_sync(functools.partial(
        podman_run, "run", "-d", "--init", "--name", name, *mounts, IMAGE, *sleeper,
        check=False,
    ))
    if started.returncode != 0:
        pytest.skip(f"podman cannot run a container here: {started.stderr.strip()}")
    try:
        dialer = ContainerDialer(
            name, command=(*UNIT_COMMAND, "--stdio", "--agent", "echo", "-o", "delay=0.01")
        )
        async with dialer.connect() as stream, latis_core.connect(stream) as unit:
            yield unit
    finally:
        await trio.to_thread.run_sync(functools.partial(
            podman_run, "rm", "-f", "-t", "0", name, check=False
        ))


DIALERS: dict[str, Case] = {
    "local": dial_local,
    "unix": dial_unix,
    "tcp": dial_tcp,
    "tcp+tls+token": dial_tcp_tls_token,
    "websocket": dial_websocket,
    "websocket+tls": dial_websocket_tls,
    "quic": dial_quic,
    "ssh": dial_ssh,
    "container": dial_container,
}


@pytest.mark.parametrize("case", list(DIALERS))
async def test_dialer(case: str, home: Path, request: pytest.FixtureRequest) -> None:
    if case == "container":
        request.getfixturevalue("podman")
    async with DIALERS[case](home) as unit:
        await conversation(unit)


# ---- listeners: the unit dials cmdr --------------------------------------------------------

LISTENERS = {
    "tcp+tls": '{ type = "tcp", host = "127.0.0.1", port = 0, tls = true }',
    "websocket": '{ type = "websocket", host = "127.0.0.1", port = 0 }',
    "websocket+tls": '{ type = "websocket", host = "127.0.0.1", port = 0, tls = true }',
    "quic": '{ type = "quic", host = "127.0.0.1", port = 0 }',
    "unix": '{ type = "unix", path = "HOME/cmdr-units.sock" }',
}


@pytest.mark.parametrize("case", list(LISTENERS))
async def test_listener(case: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATIS_HOME", str(home / "cmdr-home"))
    table = LISTENERS[case].replace("HOME", str(home))
    config = parse_config(f'[units.edge]\nagent = "echo"\naccept = [{table}]\n')
    with StateDB(home / "state.db") as state:
        async with latis_core.open_controller(config, state) as ctl:
            enrolled = await ctl.dialins.enroll("edge", "127.0.0.1")
            secret = home / "secret"
            secret.write_text(enrolled["secret"])
            secret.chmod(0o600)
            env = {**os.environ, "LATIS_HOME": str(home / "unit-home")}
            argv = [*UNIT, "--connect", enrolled["urls"][0], "--secret-file", str(secret),
                    "--name", "edge", "--agent", "echo", "-o", "delay=0.01"]
            if case == "websocket":
                argv.append("--insecure")  # plain ws: fine on loopback, said anyway
            async with trio.open_nursery() as nursery:
                process = await nursery.start(functools.partial(
                    trio.run_process, argv, env=env, check=False, stderr=subprocess.DEVNULL
                ))
                rt = ctl.units["edge"]
                with trio.fail_after(20):
                    while rt.client is None:
                        await trio.sleep(0.01)
                await conversation(rt.client)
                process.terminate()
