"""`latis top`: the screen driven by textual's own pilot, against a real daemon and
real `latis-unit` processes (echo agents); once under tmux at 80x24; and its plain
output off a terminal.

The pilot runs textual's loop (asyncio) in the test's thread, as `latis top`
does; the daemon is reached through the feed's trio thread, as in use.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from test_cli import Home, home  # noqa: F401  (the fixture: a latis home of its own)

from latis_cli.top._feed import open_feed

textual = pytest.importorskip("textual")

from textual.pilot import Pilot  # noqa: E402
from textual.widgets import DataTable, Input, Static  # noqa: E402

from latis_cli.top._screen import TopApp  # noqa: E402

WORDS = " ".join(f"w{i}" for i in range(40))
#: How long a test waits for what the screen should come to show (a bound, not a measure).
PATIENCE = 30.0


@pytest.fixture
def fleet(home: Home, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:  # noqa: F811
    """A home with two echo units, `asker` (asks "Sure?" first) and `slow`, both up;
    this process uses it (as `latis top` run there would)."""
    (home.path / "latis.toml").write_text(
        "".join(
            f'[units.{name}]\nagent = "echo"\n[units.{name}.agent_options]\n{option}\n'
            f'[units.{name}.provisioner]\ntype = "process"\n\n'
            for name, option in (("asker", 'ask = "Sure?"'), ("slow", 'delay = "0.2"'))
        )
    )
    home.ok("unit", "up", "asker")
    home.ok("unit", "up", "slow")
    monkeypatch.setenv("LATIS_HOME", str(home.path))
    monkeypatch.delenv("LATIS_CONFIG", raising=False)
    monkeypatch.chdir(home.path)
    yield home


def drive(
    scenario: Callable[[TopApp, Pilot[None]], Awaitable[None]],
    timeout: float = 2.0,
    refresh: float = 0.5,
) -> TopApp:
    """Run `latis top`'s screen at 80x24 under the pilot; `scenario` drives it."""
    with open_feed(timeout) as feed:
        app = TopApp(feed, refresh=refresh)

        async def main() -> None:
            async with app.run_test(size=(80, 24)) as pilot:
                await scenario(app, pilot)

        asyncio.run(main())
    return app


async def until(pilot: Pilot[None], check: Callable[[], Any], what: str) -> Any:
    """Let the screen run until `check()` is truthy; return it."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        await pilot.pause(0.05)
    app = pilot.app
    raise AssertionError(
        f"the screen never showed {what}; it shows:\n"
        f"{app.query_one('#bar', Static).render()}\n"
        f"stream: {app.stream_text.plain!r}"
    )


def cells(app: TopApp, table: str) -> list[list[str]]:
    widget = app.query_one(f"#{table}", DataTable)
    return [[str(c) for c in widget.get_row_at(i)] for i in range(widget.row_count)]


def column(app: TopApp, table: str, name: str) -> list[str]:
    widget = app.query_one(f"#{table}", DataTable)
    index = [c.key.value for c in widget.ordered_columns].index(name)
    return [row[index] for row in cells(app, table)]


def text_of(app: TopApp, widget: str) -> str:
    return str(app.query_one(widget, Static).render())


def stream(app: TopApp) -> str:
    return app.stream_text.plain


async def select(pilot: Pilot[None], app: TopApp, table: str, key: str) -> None:
    """Focus `table` and put its cursor on row `key`."""
    widget = app.query_one(f"#{table}", DataTable)
    widget.focus()
    keys = [row.key.value for row in widget.ordered_rows]
    widget.move_cursor(row=keys.index(key))
    await pilot.pause()


def session_of(where: Home, unit: str) -> dict[str, Any]:
    [found] = [s for s in where.json("session", "list", "--all") if s["unit"] == unit]
    return dict(found)


@pytest.mark.slow
def test_the_tables_fill_and_a_question_is_answered_from_the_screen(fleet: Home) -> None:
    """Units and sessions fill; a waiting question shows in the inbox, is answered
    with `a`, and the prompt goes on to its end, followed live in the stream pane."""
    fleet.ok("prompt", "--unit", "asker", "--detach", "the plan")
    sid = session_of(fleet, "asker")["session"]

    async def scenario(app: TopApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "slow" in column(app, "units", "unit"), "the units")
        units = {row[0]: row for row in cells(app, "units")}
        assert units["asker"][1:4] == ["process", "connected", "1"]
        assert units["asker"][4] == "1 waiting"
        assert units["slow"][2:4] == ["connected", "0"]
        await until(pilot, lambda: column(app, "inbox", "question") == ["Sure?"], "the question")
        [session] = [row for row in cells(app, "sessions") if row[0] == sid]
        assert session[1:5] == ["asker", "echo", "waiting", "the plan"]
        assert "1 waiting" in text_of(app, "#bar")

        await select(pilot, app, "sessions", sid)
        await pilot.press("enter")  # follow it
        await until(pilot, lambda: "? Sure?" in stream(app), "the question in the stream")
        await pilot.press("a")
        assert "Sure?" in text_of(app, "#ask-label")
        await pilot.press(*"yes indeed", "enter")
        await until(pilot, lambda: "yes indeed the plan" in stream(app), "the answer go on")
        await until(pilot, lambda: "[complete]" in stream(app), "the prompt's end")
        await until(pilot, lambda: not cells(app, "inbox"), "the inbox empty")
        await until(pilot, lambda: column(app, "sessions", "state") == ["idle"], "it idle")

    drive(scenario)
    [prompt] = fleet.json("session", "show", sid)["prompts"]
    assert (prompt["answer"], prompt["state"]) == ("yes indeed the plan", "complete")
    [item] = [i for i in fleet.json("inbox", "log") if i["session"] == sid]
    assert item["answered_by"] == "top"


@pytest.mark.slow
def test_a_new_prompt_streams_and_a_cancel_reaches_the_unit(fleet: Home) -> None:
    """`n` on a unit opens a session there and sends the prompt, which streams live
    into the pane; `c` cancels it on the unit, which stops producing."""

    async def scenario(app: TopApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "slow" in column(app, "units", "unit"), "the units")
        await select(pilot, app, "units", "slow")
        await pilot.press("n")
        assert "new session on unit slow" in text_of(app, "#ask-label")
        app.query_one("#ask-input", Input).value = WORDS
        await pilot.press("enter")
        await until(pilot, lambda: "w0 w1 w2" in stream(app), "the answer stream")
        assert "w39" not in stream(app)
        await until(pilot, lambda: "busy" in column(app, "sessions", "state"), "it busy")
        await select(pilot, app, "sessions", column(app, "sessions", "session")[0])
        await pilot.press("c")
        await until(pilot, lambda: "[cancelled]" in stream(app), "the cancel")
        await until(pilot, lambda: column(app, "sessions", "state") == ["idle"], "it idle")

    drive(scenario)
    session = session_of(fleet, "slow")["session"]
    [prompt] = fleet.json("session", "show", session)["prompts"]
    assert prompt["state"] == "cancelled" and 0 < prompt["chunks"] < 40
    time.sleep(0.5)
    [again] = fleet.json("session", "show", session)["prompts"]
    assert again["chunks"] == prompt["chunks"], "the unit kept producing"


@pytest.mark.slow
def test_filter_and_keys_work_while_cmdr_does_not_answer(fleet: Home) -> None:
    """With the daemon stopped dead (SIGSTOP), calls time out with a note on the
    status line, and the screen still takes keys: `/` filters, `escape` clears."""
    pid = fleet.daemon_pid()
    assert pid is not None

    async def scenario(app: TopApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: len(cells(app, "units")) == 3, "the units")
        os.kill(pid, signal.SIGSTOP)
        try:
            await until(pilot, lambda: "did not answer" in text_of(app, "#bar"), "a note")
            await pilot.press("slash", *"slo")
            await until(pilot, lambda: column(app, "units", "unit") == ["slow"], "the filter")
            assert "filter: slo" in text_of(app, "#bar")
            await pilot.press("escape")
            await until(pilot, lambda: len(cells(app, "units")) == 3, "the filter cleared")
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(pilot, lambda: "did not answer" not in text_of(app, "#bar"), "it back")

    drive(scenario, timeout=0.5, refresh=0.2)


@pytest.mark.slow
def test_it_connects_again_when_cmdr_restarts(fleet: Home) -> None:
    """`latis daemon restart` under a running screen: it says so, connects again by
    itself, and what happens after the restart shows up."""

    async def scenario(app: TopApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: len(cells(app, "units")) == 3, "the units")
        await asyncio.to_thread(fleet.ok, "daemon", "restart")
        await until(pilot, lambda: "connected to cmdr again" in text_of(app, "#bar"), "it back")
        await asyncio.to_thread(fleet.ok, "prompt", "--unit", "asker", "--detach", "again")
        await until(pilot, lambda: column(app, "inbox", "question") == ["Sure?"], "the question")
        await until(pilot, lambda: column(app, "sessions", "state") == ["waiting"], "it waits")

    drive(scenario)


@pytest.mark.slow
def test_off_a_terminal_it_prints_the_tables_once(fleet: Home) -> None:
    """Piped, `latis top` prints units, sessions and the inbox once, like `latis status`;
    --json gives the same rows as objects."""
    fleet.ok("prompt", "--unit", "asker", "--detach", "the plan")
    sid = session_of(fleet, "asker")["session"]
    deadline = time.monotonic() + PATIENCE
    while not fleet.json("inbox") and time.monotonic() < deadline:
        time.sleep(0.05)
    result = fleet.ok("top")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["unit", "provisioner", "connection", "sessions", "load"]
    assert ["asker", "process", "connected", "1", "1", "waiting"] in [ln.split() for ln in lines]
    assert any(ln.split()[:4] == [sid, "asker", "echo", "waiting"] for ln in lines)
    assert any(ln.split()[:4] == ["1.0", "asker", sid, "Sure?"] for ln in lines)
    assert "\x1b" not in result.stdout and "Traceback" not in result.stderr
    data = json.loads(fleet.ok("top", "--json").stdout)
    [waiting] = data["inbox"]
    assert (waiting["session"], waiting["question"]) == (sid, "Sure?")
    assert {u["unit"]: u["connection"] for u in data["units"]}["slow"] == "connected"


@pytest.mark.slow
def test_under_tmux_at_80x24(fleet: Home) -> None:
    """In a real terminal (tmux, 80x24) the screen shows every pane and the keys;
    `q` quits with status 0."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    fleet.ok("prompt", "--unit", "asker", "--detach", "the plan")
    socket = str(fleet.path / "tmux.sock")
    env = {k: v for k, v in fleet.env.items() if k != "NO_COLOR"}
    command = (
        f"cd {shlex.quote(str(fleet.path))} && "
        + " ".join(shlex.quote(a) for a in [sys.executable, "-m", "latis_cli", "top"])
        + f"; echo exit=$? > {shlex.quote(str(fleet.path / 'top.status'))}"
    )
    tmux = ["tmux", "-S", socket]
    subprocess.run(
        [
            *tmux,
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            "-e",
            f"LATIS_HOME={fleet.path}",
            "sh",
            "-c",
            command,
        ],
        check=True,
        env=env,
        timeout=30,
    )
    try:
        deadline = time.monotonic() + PATIENCE
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p"], capture_output=True, text=True, env=env, timeout=30
            ).stdout
            if "Sure?" in screen and "quit" in (screen.splitlines() or [""])[-1]:
                break
            time.sleep(0.1)
        lines = screen.splitlines()
        assert len(lines) == 24 and max(len(line) for line in lines) <= 80, screen
        assert "Sure?" in screen and "waiting" in screen, screen
        for pane in ("units", "sessions", "inbox", "stream"):
            assert pane in screen, screen
        for key in ("filter", "open", "answer", "cancel", "new prompt", "quit"):
            assert key in lines[-1], screen
        subprocess.run([*tmux, "send-keys", "q"], check=True, env=env, timeout=30)
        status = fleet.path / "top.status"
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status.read_text().strip() == "exit=0"
    finally:
        subprocess.run([*tmux, "kill-server"], env=env, timeout=30, capture_output=True)


def test_help_names_the_keys() -> None:
    """`latis top --help` says what each key does and how it degrades off a terminal."""
    result = subprocess.run(
        [sys.executable, "-m", "latis_cli", "top", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0
    for words in ("`/` filter", "`enter` open", "`a` answer", "`c` cancel", "`q` quit", "--once"):
        assert words in result.stdout


def test_a_feed_event_once_the_screen_is_gone_is_dropped() -> None:
    """What the feed says while the app closes (its tables already gone) is dropped,
    not a crash: seen once under load, as `NoMatches: '#units'` at the end of a run."""
    from latis_cli.top._screen import FeedEvent

    app = TopApp(None, refresh=1.0)  # type: ignore[arg-type]  (never run: no screen)
    for kind, data in (("status", []), ("states", {"s1": "busy"}), ("inbox", [])):
        app.on_feed_event(FeedEvent(kind, data))
    assert app.status is None  # nothing was taken in
