"""The controller and the cmdr daemon in-process, with real unit processes."""

from __future__ import annotations

import collections
import gc
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import types
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from latis_transports import open_unix

import latis_core
from latis_core import ErrorCode, RequestError
from latis_core._cmdr.api import Method
from latis_core._cmdr.config import parse_config
from latis_core._cmdr.daemon import (
    QUIET_EVERY,
    QUIET_YOUNG,
    Daemon,
    DaemonRunning,
    _collect_when_quiet,
    serve_daemon,
)
from latis_core._cmdr.state import StateDB
from latis_core._os.paths import paths

WORDS = " ".join(f"w{i}" for i in range(30))
CONFIG = """
[units.slow]
agent_options = { delay = "0.02" }
[units.slow.provisioner]
type = "process"
[units.fast.provisioner]
type = "process"
[units.gone.dial]
type = "unix"
path = "/nonexistent/unit.sock"
"""


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ld", dir="/tmp"))
    monkeypatch.setenv("LATIS_HOME", str(path))
    try:
        yield path
    finally:
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if str(path).encode() in f.read():
                        os.kill(int(entry), signal.SIGKILL)
            except (OSError, ValueError):
                continue
        shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def controller(home: Path) -> AsyncIterator[latis_core.Controller]:
    config = parse_config(CONFIG)
    with StateDB(paths().state_file) as state:
        async with latis_core.open_controller(config, state) as ctl:
            yield ctl


@asynccontextmanager
async def daemon(home: Path) -> AsyncIterator[Daemon]:
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve_daemon, parse_config(CONFIG))
        yield running
        running.stop.set()


@asynccontextmanager
async def client(home: Path) -> AsyncIterator[latis_core.UnitClient]:
    async with open_unix(paths().socket) as stream, latis_core.connect(stream) as unit:
        yield unit


async def call(unit: latis_core.UnitClient, method: str, **params: Any) -> Any:
    peer = unit.peer
    reply = await peer.request(latis_core.Call(peer.next_id(), method, params or None))
    return reply.data  # type: ignore[union-attr]


async def collect(ctl: latis_core.Controller, prompt_id: int, after: int = -1) -> list[Any]:
    return [event async for event in ctl.follow(prompt_id, after)]


class TestController:
    async def test_prompt_is_stored_and_replayed(self, home: Path) -> None:
        """A prompt's chunks go to state as they come; a late follower gets them all."""
        async with controller(home) as ctl:
            data = await ctl.create_session("fast")
            record = await ctl.start_prompt(data["session"], WORDS)
            live = await collect(ctl, record.id)
            assert "".join(e[1].text for e in live if e[0] == "chunk") == WORDS
            assert live[-1] == ("end", {"outcome": "complete", "chunks": 30})
            late = await collect(ctl, record.id, after=24)
            assert [e[1].seq for e in late if e[0] == "chunk"] == [25, 26, 27, 28, 29]
            await ctl.flush()  # the state follows the controller by a batch
            [entry] = ctl.state.transcript(data["session"])
            assert (entry.prompt.state, len(entry.chunks)) == ("complete", 30)

    @pytest.mark.parametrize("spin", [0, 1])
    async def test_many_short_prompts_never_hang(
        self, home: Path, spin: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Prompt after prompt through the controller, each one comes back whole.

        The pump hops to a worker thread to store each batch, so the unit
        connection's idle reader and the pump keep trading the stream, at
        times in the very scheduler pass in which the reader was woken with
        data. That hand-over once lost the pump's wake-up (about one prompt
        in 25 hung with its answer already read). Without spinning (one CPU,
        or a unit that answers slowly) the leader sleeps in epoll at once.
        """
        monkeypatch.setattr("latis_core._io.peer.SPIN", spin)
        async with controller(home) as ctl:
            for _ in range(400):
                with trio.fail_after(10):
                    sid = (await ctl.create_session("fast"))["session"]
                    record = await ctl.start_prompt(sid, "hello there")
                    events = await collect(ctl, record.id)
                assert events[-1] == ("end", {"outcome": "complete", "chunks": 2})

    async def test_two_followers_and_a_cancel(self, home: Path) -> None:
        """Two followers see the same prompt; a cancel ends it for both, on the unit too."""
        async with controller(home) as ctl:
            sid = (await ctl.create_session("slow"))["session"]
            record = await ctl.start_prompt(sid, WORDS)
            seen: dict[int, list[Any]] = {}

            async def follow(n: int) -> None:
                seen[n] = await collect(ctl, record.id)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow, 1)
                nursery.start_soon(follow, 2)
                await trio.sleep(0.15)
                await ctl.cancel(record.id)
            assert seen[1] == seen[2]
            assert seen[1][-1][1]["outcome"] == "cancelled"
            assert 0 < seen[1][-1][1]["chunks"] < 30
            await ctl.flush()
            assert ctl.state.get_session(sid).state == "idle"  # type: ignore[union-attr]

    async def test_prompts_outlive_the_controller(self, home: Path) -> None:
        """A controller that stops mid-prompt leaves it running; the next one finishes it."""
        async with controller(home) as ctl:
            sid = (await ctl.create_session("slow"))["session"]
            record = await ctl.start_prompt(sid, WORDS)
            await trio.sleep(0.2)
        async with controller(home) as ctl:
            await ctl.reconnect_known()
            events = await collect(ctl, record.id)
            chunks = [e[1] for e in events if e[0] == "chunk"]
            assert [c.seq for c in chunks] == list(range(30))
            assert "".join(c.text for c in chunks) == WORDS
            assert events[-1][1]["outcome"] == "complete"

    async def test_a_unit_not_connected_says_how_it_was_meant_to_connect(
        self, home: Path
    ) -> None:
        """A unit that cannot be reached gives an error naming how it is dialed."""
        async with controller(home) as ctl:
            with pytest.raises(latis_core.ConnectError) as info:
                await ctl.create_session("gone")
            assert str(info.value).startswith(
                "unit 'gone' (dialed at unix: /nonexistent/unit.sock): cannot connect"
            )
            assert ctl.unit("gone").state == "unreachable"
            with pytest.raises(LookupError, match="no unit 'nope' in config"):
                ctl.unit("nope")


class TestDaemon:
    async def test_socket_and_folder_are_private(self, home: Path) -> None:
        """The daemon's socket is 0600, in a 0700 folder of ours."""
        async with daemon(home):
            where = paths()
            assert stat.S_IMODE(os.stat(where.run_dir).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(where.socket).st_mode) == 0o600

    async def test_a_silent_client_is_dropped_and_the_others_kept(self, home: Path) -> None:
        """The daemon keeps its clients' keep-alive clocks in one task: a client that
        says hello and then never answers is pinged and dropped; one that answers
        stays connected and is served after that."""
        config = parse_config("[daemon]\nheartbeat = 0.3\nheartbeat_timeout = 0.5\n" + CONFIG)
        async with trio.open_nursery() as nursery:
            running = await nursery.start(serve_daemon, config)
            assert running.heartbeats is not None
            async with client(home) as answering, open_unix(paths().socket) as mute:
                await mute.send_all(latis_core.encode_frame(latis_core.encode(
                    latis_core.Hello(role="cmdr"))))
                got = b""
                with trio.fail_after(10):
                    while data := await mute.receive_some():
                        got += data
                assert b'"ping"' in got
                await trio.sleep(1)  # the answering client gets pings meanwhile
                assert not answering.peer.closed
                assert await call(answering, "status")
            running.stop.set()

    async def test_another_user_is_refused(self, home: Path) -> None:
        """A connection from another uid is closed before a byte is read (SO_PEERCRED)."""
        if os.getuid() != 0:
            pytest.skip("needs root to act as another user")
        # An interpreter that user may run (ours may sit in root's 0700 home).
        python = "/usr/bin/python3"
        if not os.access(python, os.X_OK):
            pytest.skip("no /usr/bin/python3 for the other user to run")
        async with daemon(home):
            where = paths()
            hello = latis_core.encode_frame(latis_core.encode(latis_core.Hello()))
            code = (
                "import socket\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "try:\n"
                f"    s.connect({str(where.socket)!r})\n"
                "except PermissionError:\n"
                "    print('EACCES'); raise SystemExit\n"
                "try:\n"
                f"    s.sendall({hello!r})\n"
                "    print('read', repr(s.recv(100)))\n"
                "except (BrokenPipeError, ConnectionResetError):\n"
                "    print('closed')\n"
            )

            async def as_nobody() -> str:
                result = await trio.to_thread.run_sync(
                    lambda: subprocess.run(
                        [python, "-c", code], capture_output=True, text=True, timeout=30,
                        user=65534, group=65534, cwd="/",
                    )
                )
                assert not result.stderr, result.stderr
                return result.stdout.strip()

            # The folder (0700) and the socket (0600) keep others out ...
            assert await as_nobody() == "EACCES"
            # ... and with the door open on purpose, the uid check refuses them.
            for folder in (home, where.run_dir):
                os.chmod(folder, 0o755)
            os.chmod(where.socket, 0o666)
            assert await as_nobody() in ("closed", "read b''")
            async with client(home) as unit:  # we still get in
                assert unit.name == "cmdr"

    async def test_a_second_daemon_is_refused(self, home: Path) -> None:
        """Only one daemon runs per user: a second one stops at once and says who runs."""
        async with daemon(home):
            with pytest.raises(DaemonRunning, match=f"pid {os.getpid()}"):
                await serve_daemon(parse_config(CONFIG))

    async def test_sessions_and_prompts_through_the_daemon(self, home: Path) -> None:
        """Any latis client can use the daemon as one unit in front of all units."""
        async with daemon(home), client(home) as unit:
            assert unit.agent.name == "latis-cmdr"
            assert "cmdr" in unit.capabilities
            session = await unit.create_session(unit="fast")
            assert await session.prompt("through the daemon").text() == "through the daemon"
            info = await call(unit, "session.get", session=session.id)
            assert info["unit"] == "fast" and info["last_prompt"]["state"] == "complete"
            again = await session.reattach(info["last_prompt"]["id"])
            assert await again.text() == "through the daemon"
            # After its last chunk (`latis attach --after 100`): nothing, not "chunks missing".
            past = await session.reattach(info["last_prompt"]["id"], after=100)
            assert await past.text() == "" and past.outcome == "complete"
            state = await unit.state()
            assert state.sessions == {session.id: "idle"}

    async def test_a_client_that_falls_behind_gets_every_chunk_once(self, home: Path) -> None:
        """A long answer reaches a client that stops reading for a while whole, in order
        and once: the daemon writes a prompt's chunks to its client as they come, and
        when the client's connection backs up it goes on at the client's pace (another
        client, which follows the same prompt, gets it all too)."""
        config = parse_config(
            '[units.long]\nagent_options = { repeat = "4000" }\n'
            '[units.long.provisioner]\ntype = "process"\n'
        )
        words = 10
        async with trio.open_nursery() as nursery:
            running = await nursery.start(serve_daemon, config)
            async with client(home) as slow, client(home) as other:
                session = await slow.create_session(unit="long")
                stream = session.prompt(" ".join(f"w{i}" for i in range(words)))
                texts = [(await stream.__anext__()).text]
                info = await call(other, "session.get", session=session.id)
                follower = await latis_core.Session(other, session.id).reattach(
                    info["last_prompt"]["id"])
                await trio.sleep(1.0)  # `slow` reads nothing: its queue and the socket fill
                with trio.fail_after(60):
                    texts += [chunk.text async for chunk in stream]
                    followed = [chunk.text async for chunk in follower]
                assert stream.outcome == "complete"
                assert len(texts) == words * 4000
                assert texts[:words] == [f"w{i} " for i in range(words)]
                assert "".join(followed) == "".join(texts)
            running.stop.set()

    async def test_a_client_that_goes_away_stops_following_only(self, home: Path) -> None:
        """A client that hangs up mid-prompt stops following it, nothing more: the
        prompt runs to its end, a client that comes later reads it whole, and the
        daemon keeps nothing of the one that left on the prompt it followed."""
        words = " ".join(f"w{i}" for i in range(100))  # 2 s on the slow unit
        async with daemon(home) as running:
            async with client(home) as first:
                session = await first.create_session(unit="slow")
                stream = session.prompt(words)
                assert (await stream.__anext__()).seq == 0
            async with client(home) as later:
                info = await call(later, "session.get", session=session.id)
                prompt_id = info["last_prompt"]["id"]
                record = running.controller.prompts[prompt_id]
                assert record.end is None and not record.listeners  # running, unfollowed
                follower = await latis_core.Session(later, session.id).reattach(prompt_id)
                with trio.fail_after(20):
                    chunks = [chunk async for chunk in follower]
                assert [c.seq for c in chunks] == list(range(100))
                assert "".join(c.text for c in chunks) == words
                assert follower.outcome == "complete"

    async def test_a_failing_write_to_a_client_loses_nothing(
        self, home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A fault (injected) while the prompt's pump writes to a client is logged;
        that client's follower goes on reading the prompt itself, and the prompt runs
        on: the client gets the whole answer, once."""
        import latis_core._cmdr.daemon as daemon_module

        real = daemon_module._frames
        failures: list[int] = []

        def failing_once(client: Any, rid: Any, events: list[tuple[str, Any]]) -> Any:
            if not failures and any(kind == "chunk" for kind, _ in events):
                failures.append(len(events))
                raise RuntimeError("injected")
            return real(client, rid, events)

        monkeypatch.setattr(daemon_module, "_frames", failing_once)
        async with daemon(home), client(home) as unit:
            session = await unit.create_session(unit="slow")
            with trio.fail_after(30):
                assert await session.prompt(WORDS).text() == WORDS
            assert failures  # the fault was hit
            assert await session.prompt("and again").text() == "and again"

    async def test_errors_have_codes(self, home: Path) -> None:
        """Unknown units, methods and unreachable units get their own error codes."""
        async with daemon(home), client(home) as unit:
            cases = [
                (unit.create_session(unit="nope"), ErrorCode.UNKNOWN_UNIT, "no unit 'nope'"),
                (unit.create_session(unit="gone"), ErrorCode.UNREACHABLE, "nonexistent"),
                (call(unit, "nonsense"), ErrorCode.UNKNOWN_TYPE, "methods: agents.list"),
                (call(unit, "unit.up"), ErrorCode.BAD_MESSAGE, "params.unit"),
            ]
            for awaitable, code, says in cases:
                with pytest.raises(RequestError) as info:
                    await awaitable
                assert info.value.code == code
                assert says in info.value.message
            assert await unit.ping() > 0

    async def test_a_bad_client_does_not_hurt_the_others(self, home: Path) -> None:
        """A client that sends garbage gets errors; another client is served meanwhile."""
        async with daemon(home), client(home) as good:
            async with await trio.open_unix_socket(str(paths().socket)) as bad:
                await bad.send_all(struct.pack(">I", 5) + b"{oops")
                await bad.send_all(struct.pack(">I", 1 << 30))
                with trio.fail_after(5):
                    data = await bad.receive_some()
                assert b"bad_message" in data or b"frame_too_large" in data
            session = await good.create_session(unit="fast")
            assert await session.prompt("still here").text() == "still here"


# -- coordination, in the library and through the daemon ------------------------------


async def test_the_controller_coordinates_a_task_over_units(home: Path) -> None:
    """`Controller.coordinate` gives each agent its own session, a unit named twice two."""
    events: list[latis_core.CoordinationEvent] = []
    async with controller(home) as ctl:
        result = await ctl.coordinate("hello there", ["fast", "slow", "fast"], events.append)
    ended = result.agents
    assert result.outcome == "complete"
    assert [(e.agent, e.outcome) for e in ended] == [
        ("fast", "complete"), ("slow", "complete"), ("fast#2", "complete")]
    assert len({e.session for e in ended}) == 3
    for agent in ("fast", "slow", "fast#2"):
        text = "".join(e.text for e in events if e.agent == agent and e.type == "chunk")
        assert text == "hello there"


async def test_a_failing_agent_does_not_stop_the_others(home: Path) -> None:
    """An unreachable unit ends with its error while the other agents complete (with
    `require any`; under `all` the task has failed and the rest are cancelled)."""
    async with controller(home) as ctl:
        settings = latis_core.CoordinationSettings(require="any")
        result = await ctl.coordinate("hi", ["gone", "fast"], settings=settings)
    ended = result.agents
    assert ended[0].outcome == "error" and "gone" in (ended[0].error or "")
    assert ended[1].outcome == "complete"
    assert result.outcome == "complete"


async def test_the_daemon_client_streams_a_coordination(home: Path) -> None:
    """`DaemonClient.coordinate` runs in the daemon and hands over its events as they come."""
    events: list[latis_core.CoordinationEvent] = []
    async with daemon(home), latis_core.open_daemon(autostart=False) as cmdr:
        ended = (await cmdr.coordinate("ping pong", ["fast", "fast"], events.append)).agents
    assert [e.agent for e in ended] == ["fast", "fast#2"]
    assert {e.type for e in events} >= {"started", "chunk", "ended"}


async def test_a_coordination_without_on_event_gets_no_events_but_stores_them(
    home: Path,
) -> None:
    """A caller that wants the result alone (no `on_event`) is sent no event: the
    daemon still stores them all, and `coordination.get` shows them."""
    async with daemon(home), latis_core.open_daemon(autostart=False) as cmdr:
        chunks: list[Any] = []
        raw = await cmdr.call(Method.COORDINATE, lambda *chunk: chunks.append(chunk),
                              task="ping", agents=["fast", "fast"], events=False)
        assert raw["outcome"] == "complete" and chunks == []
        result = await cmdr.coordinate("pong", ["fast"])
        assert result.outcome == "complete"
        assert [a.outcome for a in result.agents] == ["complete"]
        stored = await cmdr.coordination_get(result.id)
    assert {e["type"] for e in stored["events"]} >= {"started", "prompt", "ended", "final"}


# ---- the collector -----------------------------------------------------------------------


async def test_the_daemon_collects_young_objects_while_no_prompt_streams(
    autojump_clock: Any,
) -> None:
    """The collector's young pass stops the daemon ~1 µs an object it finds alive
    (18-67 ms once 20,000 sessions were opened): the daemon runs it while no
    session is busy, not in the middle of a stream; while one is, it leaves the
    collector to its own thresholds."""
    ctl = types.SimpleNamespace(session_counts=collections.Counter(busy=1))
    gc.collect()
    gc.disable()  # (the test process's own thresholds would collect too)
    try:
        held = [[] for _ in range(QUIET_YOUNG + 1000)]  # objects the collector tracks
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect_when_quiet, ctl)
            await trio.sleep(3 * QUIET_EVERY)
            assert gc.get_count()[0] >= QUIET_YOUNG  # a prompt streams: left alone
            ctl.session_counts["busy"] = 0
            await trio.sleep(1.5 * QUIET_EVERY)
            assert gc.get_count()[0] < QUIET_YOUNG  # quiet: collected
            nursery.cancel_scope.cancel()
        assert len(held) == QUIET_YOUNG + 1000
    finally:
        gc.enable()


def test_tune_gc_sets_the_collector_as_the_daemon_runs_it() -> None:
    """`latis_core.tune_gc()` (the daemon's settings, public for a script that holds
    a fleet): what exists is frozen, young passes come every 50,000 allocations.
    In a process of its own: the test's collector is left as it is."""
    code = (
        "import gc, latis_core\n"
        "before = gc.get_threshold()\n"
        "latis_core.tune_gc()\n"
        "print(before, gc.get_threshold(), gc.get_freeze_count() > 1000)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split("\n")[0]
    assert out == "(700, 10, 10) (50000, 20, 10) True"
