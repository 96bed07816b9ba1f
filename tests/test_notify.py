"""Notifications: when a session starts waiting or a prompt ends, cmdr tells a person
by a command (the event as JSON on stdin), a desktop notification, or any URL
apprise knows; batched and rate-limited; secrets in URLs never shown.

The real `latis` CLI and daemon in a fresh `LATIS_HOME`, real `latis-unit`
processes (the echo agent), the real apprise posting to an HTTP server the test
runs on loopback. `notify-send` is a stand-in on PATH that writes down what it
was asked to show (a desktop is not there to look at).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hitl import (
    echo_unit,
    eventually,
    new_session,
    start_prompt,
    wait_ended,
    wait_question,
    write_config,
)
from test_cli import Home
from test_cli import home as home  # noqa: F401 (the fixture: a fresh LATIS_HOME)
from test_first_hour import unit_pids

pytest.importorskip("apprise", reason="notification URLs go through apprise (latis[notify])")

#: A notification command: appends what it reads on stdin, as one line, to argv[1].
RECORD = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().strip() + '\\n')"


def notify_table(
    *,
    events: str | None = None,
    urls: list[str] | None = None,
    command: Path | None = None,
    desktop: bool = False,
    batch: float = 0.5,
    interval: float = 0,
    table: str = "notify",
) -> str:
    lines = [f"[{table}]", f"batch = {batch}", f"interval = {interval}"]
    if command is not None:
        lines.append(f"command = {json.dumps([sys.executable, '-c', RECORD, str(command)])}")
    if urls is not None:
        lines.append(f"urls = {json.dumps(urls)}")
    if events is not None:
        lines.append(f"events = {events}")
    if desktop:
        lines.append("desktop = true")
    return "\n".join(lines) + "\n"


def received(path: Path, count: int) -> list[dict[str, Any]]:
    """The first `count` notifications the command got (waiting for them)."""

    def read() -> list[dict[str, Any]] | None:
        if not path.exists():
            return None
        got = [json.loads(line) for line in path.read_text().splitlines()]
        return got if len(got) >= count else None

    return eventually(read, f"{count} notification(s) in {path.name}")[:count]


class Hook:
    """A webhook receiver on loopback: what apprise's json:// posts to it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                self.send_response(500 if self.path.startswith("/broken") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_a_command_gets_each_event_as_json_on_stdin(home: Home) -> None:
    """A session starts waiting: the command reads that event (unit, session, agent,
    prompt, the question, the A2A state) on stdin; answered, the prompt completes:
    another notification says so."""
    notes = home.path / "notes.jsonl"
    write_config(home, notify_table(command=notes), echo_unit("asker", ask="Deploy now?"))
    sid = new_session(home, "asker")
    start_prompt(home, sid, "the plan")
    item = wait_question(home, sid)
    [waiting] = received(notes, 1)
    assert (waiting["type"], waiting["count"]) == ("latis.notification", 1)
    assert (waiting["title"], waiting["body"]) == ("latis: asker waiting", "Deploy now?")
    [event] = waiting["events"]
    assert {
        k: event[k]
        for k in ("event", "a2a_state", "unit", "session", "agent", "prompt", "question", "input")
    } == {
        "event": "waiting",
        "a2a_state": "input-required",
        "unit": "asker",
        "session": sid,
        "agent": "echo",
        "prompt": item["prompt"],
        "question": "Deploy now?",
        "input": 0,
    }
    home.ok("inbox", "answer", item["id"], "yes")
    wait_ended(home, sid)
    _, complete = received(notes, 2)
    [event] = complete["events"]
    assert (event["event"], event["a2a_state"], event["session"]) == ("complete", "completed", sid)
    assert complete["body"] == f"session {sid}"


def test_a_burst_is_one_notification_and_failures_notify(home: Home) -> None:
    """Four prompts fail at once (their unit's process is killed under them): the unit's own
    `[units.NAME.notify]` gets one notification for the four, saying why each
    failed; the global table, which another unit uses, is not sent that burst."""
    fleet, solo = home.path / "fleet.jsonl", home.path / "solo.jsonl"
    write_config(
        home,
        notify_table(command=solo),
        echo_unit("fleet", delay="0.2"),
        notify_table(
            command=fleet, batch=1.0, interval=30, events='["failed"]', table="units.fleet.notify"
        ),
        echo_unit("solo"),
    )
    sessions = [new_session(home, "fleet") for _ in range(4)]
    for sid in sessions:
        start_prompt(home, sid, " ".join(f"w{i}" for i in range(300)))
    # (Killed: `unit down` would cancel them first, and cancelled is not failed.)
    for pid in unit_pids(home, "fleet"):
        os.kill(pid, signal.SIGKILL)
    [burst] = received(fleet, 1)
    assert burst["count"] == 4 and burst["body"] == "4 failed"
    assert burst["title"] == "latis: 4 events"
    assert sorted(e["session"] for e in burst["events"]) == sorted(sessions)
    for event in burst["events"]:
        assert (event["event"], event["a2a_state"]) == ("failed", "failed")
        assert event["error"].startswith("unit_lost: ")
    assert [wait_ended(home, sid)["state"] for sid in sessions] == ["error"] * 4

    home.ok("prompt", "--unit", "solo", "hello")
    [first] = received(solo, 1)  # the fleet's failures went to its own table only
    assert [(e["event"], e["unit"]) for e in first["events"]] == [("complete", "solo")]


def test_a_webhook_through_apprise_and_secrets_redacted(home: Home, hook: Hook) -> None:
    """A json:// URL posts each notification to the webhook, with the URL's user and
    password; a URL that fails, or that apprise does not know, is logged. The URLs'
    passwords and tokens are in neither cmdr's log (even at debug level) nor
    `daemon status --json`."""
    good = f"json://latis:s3cr3t-pw@127.0.0.1:{hook.port}/hooks/tok-3f9a"
    broken = f"json://127.0.0.1:{hook.port}/broken/tok-dead"
    typo = "jsn://127.0.0.1/typo/tok-typo"
    home.env["LATIS_LOG_LEVEL"] = "debug"
    write_config(home, notify_table(urls=[good, broken, typo]), echo_unit("solo"))
    assert home.ok("prompt", "--unit", "solo", "hello").stdout == "hello\n"

    posted = eventually(lambda: len(hook.requests) >= 2 and hook.requests, "two posts")
    by_path = {r["path"]: r for r in posted}
    ok = by_path["/hooks/tok-3f9a"]
    assert (
        ok["headers"]["Authorization"] == "Basic " + base64.b64encode(b"latis:s3cr3t-pw").decode()
    )
    assert ok["body"]["title"] == "latis: solo complete"
    assert ok["body"]["message"].startswith("session ")
    assert "/broken/tok-dead" in by_path

    shown = home.json("daemon", "status")["notify"]["global"]
    assert shown["urls"] == [
        f"json://***@127.0.0.1:{hook.port}/***",
        f"json://127.0.0.1:{hook.port}/***",
        "jsn://127.0.0.1/***",
    ]
    log = home.path / "log" / "cmdr.log"
    eventually(lambda: "not one apprise knows" in log.read_text(), "the typo in cmdr's log")
    logs = "".join(p.read_text() for p in (home.path / "log").glob("*.log"))
    assert f"notification to json://127.0.0.1:{hook.port}/*** failed" in logs
    assert "notification URL jsn://127.0.0.1/*** is not one apprise knows" in logs
    assert " DEBUG " in logs  # the log is at debug level indeed
    for secret in ("s3cr3t-pw", "tok-3f9a", "tok-dead", "tok-typo"):
        assert secret not in logs
        assert secret not in json.dumps(home.json("daemon", "status"))


def test_a_desktop_notification(home: Home) -> None:
    """`desktop = true` shows each notification with notify-send (here a stand-in on
    PATH that writes down its arguments)."""
    bin_dir, shown = home.path / "bin", home.path / "shown.txt"
    bin_dir.mkdir()
    script = bin_dir / "notify-send"
    script.write_text(f"#!/bin/sh\nprintf '%s|' \"$@\" >> {shown}\necho >> {shown}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    home.env["PATH"] = f"{bin_dir}{os.pathsep}{home.env['PATH']}"
    write_config(home, notify_table(desktop=True), echo_unit("solo"))
    sid = new_session(home, "solo")
    home.ok("prompt", "--session", sid, "hello")
    line = eventually(lambda: shown.exists() and shown.read_text(), "notify-send to run")
    assert line == f"--app-name=latis|latis: solo complete|session {sid}|\n"
