"""A newcomer's first hour (issue 11), through the real `latis` CLI and a real daemon.

Each test starts from a fresh `LATIS_HOME` (the `home` fixture of test_cli) and
runs the CLI as a subprocess, as a user types it: the issue's numbered items in
order, each asserting what the user reads, the exit status of ../shared/CLI.md
(0 ok, 1 error, 2 usage, 4 auth, 6 unit unreachable, 130 Ctrl-C) and that no
`Traceback` reaches stderr. Item 6 (a conversation continues) is
tests/test_conversation.py; item 9 (PROTOCOL.md's open points) is
tests/test_protocol_points.py; item 10 (`latis_core.connect(URL)`) is
tests/test_library_connect.py.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_cli import UNIT, Home
from test_cli import home as home  # noqa: F401 (the fixture: a fresh LATIS_HOME)
from units import listening_process

#: Exit statuses (../shared/CLI.md, `latis help exit-codes`).
OK, ERROR, USAGE, AUTH, CMDR_UNREACHABLE, UNIT_UNREACHABLE, INTERRUPTED = 0, 1, 2, 4, 5, 6, 130


def said(result: Any) -> str:
    """What a finished command wrote to stderr, checked for tracebacks."""
    assert "Traceback" not in result.stderr, result.stderr
    return str(result.stderr)


def failed(home: Home, status: int, *args: str, **kwargs: Any) -> str:
    """Run `latis ARGS`, expecting exit `status`; its stderr (which has no traceback)."""
    result = home.run(*args, **kwargs)
    assert result.returncode == status, (args, result.stdout, result.stderr)
    return said(result)


def wait_for(check: Any, what: str, timeout: float = 30) -> None:
    """Poll `check()` until it is true (a deadline only against a hang, not a timing test)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def unit_pids(home: Home, name: str) -> list[int]:
    """The pids of the process-provisioned unit `name` of `home`."""
    marker = f"{home.path}/run/units/{name}/unit.sock".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker in f.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def units(home: Home) -> dict[str, dict[str, Any]]:
    return {u["unit"]: u for u in home.json("status")["units"]}


@contextmanager
def listening_unit(home: Home) -> Iterator[int]:
    """`latis-unit --listen tcp://127.0.0.1:0` (echo agent, plain TCP); the port it got."""
    with listening_process(home.path, "tcp://127.0.0.1:0") as unit:
        assert unit.port is not None
        yield unit.port


# ---- 1. every failure is a message and an exit status ---------------------------------------


class TestFailuresAreMessages:
    def test_an_agent_whose_cli_is_missing(self, home: Home) -> None:
        """A `command` agent whose CLI is not installed: one paragraph naming the agent, the
        session and the unit, and where to look; exit 1, for prompt and for attach alike."""
        (home.path / "latis.toml").write_text(
            '[units.cl]\nagent = "command"\nagent_options = { preset = "claude" }\n'
            'provisioner = { type = "process", env = { PATH = "/nonexistent" } }\n'
        )
        message = failed(home, ERROR, "prompt", "-u", "cl", "hello")
        assert "the agent failed: CommandFailed: cannot start 'claude'" in message
        assert re.search(r"\(session \S+ on unit cl\)", message)
        assert "latis agents available" in message
        assert len(message.splitlines()) <= 4
        again = failed(home, ERROR, "attach")
        assert "cannot start 'claude'" in again and "on unit cl" in again

    def test_a_question_stdin_cannot_answer_waits_for_attach(self, home: Home) -> None:
        """A question with stdin not a terminal (and empty): the prompt waits, the message says
        `latis attach SID` (exit 1); attach then answers it and gets the whole answer."""
        home.ok("unit", "add", "asker", "--provisioner", "process", "-o", "ask=Go on?")
        message = failed(home, ERROR, "prompt", "-u", "asker", "the plan", input="")
        sid = re.search(r"latis attach (\S+)", message)
        assert sid, message
        assert home.json("session", "ls")[0]["state"] == "waiting"
        answered = home.ok("attach", sid.group(1), input="yes\n")
        assert answered.stdout.strip().endswith("yes the plan")
        assert home.json("session", "ls")[0]["state"] == "idle"

    def test_ctrl_c_during_coordinate_exits_130(self, home: Home) -> None:
        """Ctrl-C in the middle of `coordinate`: a line saying so, exit 130, no traceback."""
        home.ok("unit", "add", "slow", "--provisioner", "process", "-o", "delay=0.2")
        home.ok("unit", "up", "slow")
        words = " ".join(f"w{i}" for i in range(100))
        running = home.popen("coordinate", "--agents", "slow,local", words)
        wait_for(
            lambda: any(a["state"] == "busy" for a in home.json("status")["active"]),
            "the coordination's prompt is busy",
        )
        running.send_signal(signal.SIGINT)
        _, stderr = running.communicate(timeout=30)
        assert running.returncode == INTERRUPTED, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr

    def test_a_prompt_file_that_is_not_there(self, home: Home) -> None:
        """`--file /nope.md` says it cannot read it, exit 2 (usage), and sends nothing."""
        message = failed(home, USAGE, "prompt", "--file", str(home.path / "nope.md"))
        assert "cannot read the prompt from" in message and "No such file" in message
        assert home.json("session", "ls") == []

    def test_debug_prints_the_traceback_too(self, home: Home) -> None:
        """`--debug` (or LATIS_DEBUG=1) prints the traceback of a failure as well."""
        (home.path / "latis.toml").write_text(
            '[units.gone]\ndial = { type = "unix", path = "/nonexistent/unit.sock" }\n'
        )
        plain = failed(home, UNIT_UNREACHABLE, "prompt", "-u", "gone", "hi")
        assert "unit 'gone'" in plain
        debug = home.run("--debug", "prompt", "-u", "gone", "hi")
        assert debug.returncode == UNIT_UNREACHABLE and "Traceback" in debug.stderr


# ---- 2. the daemon serves the config the user means -----------------------------------------


class TestTheDaemonFollowsTheConfig:
    def test_init_after_the_first_prompt_is_served(self, home: Home) -> None:
        """A daemon started on the built-in config takes the file `latis init` wrote later."""
        home.ok("prompt", "hi")
        home.ok("init")
        assert home.ok("prompt", "-u", "demo", "from the file").stdout == "from the file\n"
        assert home.json("daemon", "status")["config"] == str(home.path / "latis.toml")

    def test_daemon_reload_takes_the_file_and_says_what_is_wrong(self, home: Home) -> None:
        """`daemon reload` on a daemon serving the built-in config takes the file written
        since; a file with a mistake is named with its line (exit 1), the old config served."""
        home.ok("prompt", "hi")
        config = home.path / "latis.toml"
        config.write_text('[units.x]\nprovisioner = { type = "proces" }\n')
        message = failed(home, ERROR, "daemon", "reload")
        assert "latis.toml:2: unit 'x': provisioner.type: unknown provisioner 'proces'" in message
        config.write_text('[units.x]\nprovisioner = { type = "process" }\n')
        reload = said(home.ok("daemon", "reload"))
        assert f"cmdr read {config} again" in reload and "added: x" in reload
        assert home.ok("prompt", "-u", "x", "served").stdout == "served\n"
        # A served file that stops reading: `daemon status` names it and says what is wrong.
        config.write_text("[units.x\n")
        shown = home.ok("daemon", "status").stdout
        assert f"config: {config}\n  it no longer reads" in shown and "latis.toml:1:" in shown
        status = home.json("daemon", "status")
        assert status["config"] == str(config) and "latis.toml:1:" in status["config_error"]
        assert status["notify"] is not None

    def test_reload_says_what_it_did_not_do(self, home: Home) -> None:
        """A listener that cannot listen, a listener no unit names any more, a connected
        unit whose table changed (kept as it was): `daemon reload` says each."""
        config = home.path / "latis.toml"
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            config.write_text('[units.x]\nprovisioner = { type = "process" }\n'
                              '[units.edge]\naccept = [{ type = "tcp", host = "127.0.0.1", '
                              'port = 0 }]\n')
            home.ok("prompt", "-u", "x", "hi")
            config.write_text('[units.x]\nprovisioner = { type = "process" }\n'
                              'agent_options = { repeat = "2" }\n'
                              '[units.busy]\naccept = [{ type = "tcp", host = "127.0.0.1", '
                              f'port = {port} }}]\n')
            shown = said(home.ok("daemon", "reload"))
        assert "added: busy" in shown and "removed: edge" in shown
        assert "changed but connected, kept as they were: x" in shown
        assert f"note: unit busy: tcp: 127.0.0.1:{port} does not listen:" in shown
        assert "no unit names it now; it listens until a daemon restart" in shown
        home.ok("unit", "down", "x")
        home.ok("daemon", "reload")
        assert home.ok("prompt", "-u", "x", "again").stdout == "again again\n"

    def test_a_config_the_daemon_would_refuse_is_shown_and_keeps_it_running(
        self, home: Home
    ) -> None:
        """`daemon restart` with a mistake in the file says where (exit 1) and leaves the
        running daemon as it is; a daemon that cannot start says why, not only "see the
        log" (exit 5)."""
        home.ok("prompt", "hi")
        pid = home.json("daemon", "status")["pid"]
        config = home.path / "latis.toml"
        config.write_text('[units.x]\nprovisioner = { type = "process" }\nmax_sessions = "two"\n')
        where = "latis.toml:3: unit 'x': max_sessions: expected a whole number above 0, got 'two'"
        message = failed(home, ERROR, "daemon", "restart")
        assert where in message and "the daemon was not restarted" in message
        assert home.json("daemon", "status")["pid"] == pid

        home.ok("daemon", "stop")
        message = failed(home, CMDR_UNREACHABLE, "daemon", "start")
        assert "cmdr exited at start (status 1): " in message and where in message
        assert f"(log: {home.path / 'log' / 'cmdr.log'})" in message

    @pytest.mark.slow
    def test_another_config_is_refused_with_the_way_out(self, home: Home) -> None:
        """A command reading another file than the daemon serves says both and how to switch;
        `daemon restart --config` switches, and `daemon status` names the file."""
        home.ok("unit", "add", "box", "--provisioner", "process")
        home.ok("prompt", "-u", "box", "hi")
        ex1 = home.path / "ex1.toml"
        ex1.write_text('[units.alpha]\nprovisioner = { type = "process" }\n')
        listed = home.ok("--config", "ex1.toml", "unit", "list", "--json")
        assert {u["unit"] for u in json.loads(listed.stdout)} == {"alpha", "local"}
        message = failed(home, ERROR, "--config", "ex1.toml", "prompt", "-u", "alpha", "hi")
        assert f"cmdr serves {home.path / 'latis.toml'}, but this command reads {ex1}" in message
        assert f"latis daemon restart --config {ex1}" in message
        home.env["LATIS_CONFIG"] = str(ex1)  # the same, from the environment
        assert f"reads {ex1}" in failed(home, ERROR, "prompt", "-u", "alpha", "hi")

        home.ok("daemon", "restart", "--config", str(ex1))
        assert home.json("daemon", "status")["config"] == str(ex1)
        assert f"config: {ex1}" in home.ok("daemon", "status").stdout
        assert home.ok("prompt", "-u", "alpha", "now").stdout == "now\n"

    @pytest.mark.slow
    def test_hand_edits_are_served_and_a_removed_unit_stops(self, home: Home) -> None:
        """A unit added by hand is served at the next command; one removed by hand is stopped
        at the next (here `daemon reload`), marked in `status`, and `unit rm` forgets it."""
        config = home.path / "latis.toml"
        home.ok("unit", "add", "extra", "--provisioner", "process")
        home.ok("unit", "up", "extra")
        assert unit_pids(home, "extra")
        kept = config.read_text()
        config.write_text(kept + '\n[units.hand]\nprovisioner = { type = "process" }\n')
        assert home.ok("prompt", "-u", "hand", "by hand").stdout == "by hand\n"

        config.write_text('[units.hand]\nprovisioner = { type = "process" }\n')
        reload = home.ok("daemon", "reload")
        assert "removed: extra" in said(reload)
        wait_for(lambda: not unit_pids(home, "extra"), "the removed unit's process ends")
        entry = units(home)["extra"]
        assert entry["connection"] == "disconnected" and not entry["in_config"]
        assert "not in config: latis unit rm extra" in home.ok("status").stdout
        assert "removed unit 'extra'" in said(home.ok("unit", "rm", "extra"))
        assert "extra" not in units(home) and "hand" in units(home)


# ---- 3. destroy, then up again; unit rm ----------------------------------------------------


class TestDestroyThenUp:
    def test_a_provisioned_unit(self, home: Home) -> None:
        """`unit destroy` then a prompt: the unit is made again and answers."""
        home.ok("unit", "add", "demo", "--provisioner", "process")
        home.ok("prompt", "-u", "demo", "before")
        home.ok("unit", "destroy", "demo", "--yes")
        assert home.ok("prompt", "-u", "demo", "after").stdout == "after\n"

    def test_an_address_unit(self, home: Home) -> None:
        """A unit added by address survives destroy + up, and `unit rm` takes it away."""
        command = "local:" + shlex.join([*UNIT, "--stdio", "--agent", "echo"])
        home.ok("connect", command, "--name", "far")
        note = next(line for line in home.ok("status").stdout.splitlines() if "far" in line)
        assert "not in config: connected for this daemon's run (latis connect)" in note
        home.ok("unit", "destroy", "far", "--yes")
        assert home.ok("prompt", "-u", "far", "still here").stdout == "still here\n"
        home.ok("unit", "destroy", "far", "--yes")
        assert "unit far: connected" in said(home.ok("unit", "up", "far"))
        assert "removed unit 'far'" in said(home.ok("unit", "rm", "far"))
        assert "far" not in units(home)

    def test_a_failed_address_unit_is_marked_and_removable(self, home: Home) -> None:
        """An address that cannot be reached: exit 6, FAILED in `status`, gone after `unit rm`."""
        message = failed(home, UNIT_UNREACHABLE, "connect", "tcp://127.0.0.1:1", "--name", "bad")
        assert "unit 'bad'" in message and "cannot connect to tcp://127.0.0.1:1" in message
        assert re.search(r"^ *bad .*FAILED", home.ok("status").stdout, re.M)
        home.ok("unit", "rm", "bad")
        assert "bad" not in units(home)

    def test_a_retried_address_is_one_unit_and_names_are_not_taken_over(
        self, home: Home
    ) -> None:
        """Connecting to the same address again reuses its unit (no `tcp-2`, `tcp-3`, ...
        left FAILED); --name of a unit in config, or a bad name, is refused; a token file
        that is not there is a usage error; so is an agent a process unit would not find."""
        for _ in range(3):
            failed(home, UNIT_UNREACHABLE, "connect", "tcp://127.0.0.1:1")
        assert [name for name in units(home) if name.startswith("tcp-")] == ["tcp-1"]
        home.ok("unit", "add", "demo", "--provisioner", "process")
        taken = failed(home, ERROR, "connect", "tcp://127.0.0.1:2", "--name", "demo")
        assert "unit 'demo' exists already (in config" in taken
        assert "unit 'nodial' needs a way to be reached: --provisioner TYPE" in failed(
            home, USAGE, "unit", "add", "nodial")
        # A process unit runs here: an agent not installed here is refused at once.
        assert "--agent 'claud': no such agent here, where a process unit runs (agents: " \
            "acp, command, echo" in failed(
                home, USAGE, "unit", "add", "typo", "--provisioner", "process", "--agent", "claud")
        assert "typo" not in units(home)
        assert "bad unit name 'Bad_Name'" in failed(
            home, ERROR, "connect", "tcp://127.0.0.1:2", "--name", "Bad_Name")
        assert "no such file: /nonexistent (--token-file)" in failed(
            home, USAGE, "connect", "tcp://127.0.0.1:2", "--token-file", "/nonexistent")
        assert units(home)["demo"]["connection"] != "connected"

    def test_unit_rm_takes_a_unit_out_of_the_file(self, home: Home) -> None:
        """`unit rm` stops a provisioned unit and removes its table; the rest stays as written;
        off a terminal it needs --yes (exit 2)."""
        config = home.path / "latis.toml"
        config.write_text("# my units\n")
        home.ok("unit", "add", "box", "--provisioner", "process")
        home.ok("unit", "up", "box")
        assert "--yes" in failed(home, USAGE, "unit", "rm", "box")
        assert "removed unit 'box' from" in said(home.ok("unit", "rm", "box", "--yes"))
        assert config.read_text().strip() == "# my units"
        assert not unit_pids(home, "box") and "box" not in units(home)


# ---- 4. the seed's transports are installed, and a broken plugin says why ------------------


def test_the_transports_are_installed_and_a_broken_plugin_says_why(
    home: Home, tmp_path: Path
) -> None:
    """ssh, websocket and quic load with latis; a plugin whose module is missing is marked
    unavailable in `latis plugins`, with the reason and the fix."""
    data = home.json("plugins")
    assert {"ssh", "websocket", "quic"} <= set(data["transports"])
    assert data["unavailable"] == {}
    dist = tmp_path / "latis_pigeon-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: latis-pigeon\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[latis.transports]\npigeon = latis_pigeon_missing:Transport\n"
    )
    home.env["PYTHONPATH"] = str(tmp_path)
    shown = home.ok("plugins")
    assert "pigeon (unavailable)" in shown.stdout
    assert "missing module 'latis_pigeon_missing'" in shown.stdout
    assert "fix: pip install latis_pigeon_missing" in shown.stdout
    assert "Traceback" not in shown.stderr


# ---- 5. options typed by their schema, from the command line --------------------------------


class TestTypedOptions:
    @pytest.mark.slow
    def test_dial_options_and_provisioner_options(self, home: Home) -> None:
        """`--dial-option port=N` and `--set ready_timeout=5` are numbers to the config."""
        with listening_unit(home) as port:
            home.ok(
                *f"unit add gpu --dial tcp --dial-option host=127.0.0.1 "
                f"--dial-option port={port}".split()
            )
            assert home.ok("prompt", "-u", "gpu", "typed").stdout == "typed\n"
        home.ok(*"unit add p --provisioner process --set ready_timeout=5 -o repeat=2".split())
        assert home.ok("prompt", "-u", "p", "twice").stdout == "twice twice\n"

    def test_text_that_is_not_a_number_is_refused(self, home: Home) -> None:
        """A value that does not read as its type: the key and the type, exit 1, file as it was."""
        config = home.path / "latis.toml"
        config.write_text("# mine\n")
        add = "unit add gpu --dial tcp --dial-option host=h --dial-option port=many"
        message = failed(home, ERROR, *add.split())
        assert "dial.port: expected an integer" in message
        assert config.read_text() == "# mine\n"


# ---- 7. the smaller things ------------------------------------------------------------------


class TestSmallerThings:
    def test_help(self, home: Home) -> None:
        """Top-level help is plain (no ``` fences) and keeps each example on one line;
        `latis help CMD` is `latis CMD --help`; a typo gets a suggestion and exit 2."""
        from latis_cli._app import HELP

        home.env["COLUMNS"] = "80"
        top = home.ok("--help").stdout
        assert "```" not in top
        for line in HELP.splitlines():
            assert line.rstrip() in top
        assert home.ok("help", "prompt").stdout == home.ok("prompt", "--help").stdout
        assert home.ok("help", "unit", "add").stdout == home.ok("unit", "add", "--help").stdout
        assert "130  interrupted" in home.ok("help", "exit-codes").stdout
        assert "did you mean 'prompt'" in failed(home, USAGE, "help", "promt")

    def test_every_command_says_what_it_does(self, home: Home) -> None:
        """Each command in `latis --help` has its line of help (`top` and `web` too)."""
        home.env["COLUMNS"] = "120"
        panel = home.ok("--help").stdout.split("Commands")[1].split("╰")[0]
        rows = [line.strip("│ ").split(None, 1) for line in panel.splitlines()[1:]]
        named = [row for row in rows if row and not row[0].startswith("-")
                 and row[0][0].islower()]
        assert {"top", "web", "prompt", "coordinate"} <= {row[0] for row in named}
        assert all(len(row) == 2 for row in named), named

    def test_aliases(self, home: Home) -> None:
        """`latis ls`, `unit ls`, `unit rm`, `session ls`, `session rm` exist."""
        home.ok("prompt", "hi")
        assert json.loads(home.ok("ls", "--json").stdout)["units"]
        assert [u["unit"] for u in json.loads(home.ok("unit", "ls", "--json").stdout)] == ["local"]
        [session] = home.json("session", "ls")
        home.ok("session", "rm", session["session"])
        assert home.json("session", "ls") == []
        assert "--yes" in home.ok("unit", "rm", "--help").stdout

    def test_completion_offers_units_and_sessions_without_the_daemon(self, home: Home) -> None:
        """The shell's completion offers unit names from config and sessions (the current one
        marked) from state, also when the daemon is down."""
        home.ok("unit", "add", "box", "--provisioner", "process")
        sid = home.ok("session", "new").stdout.strip()
        home.ok("daemon", "stop")
        offered = home.ok("__complete", "prompt", "--unit", "").stdout.splitlines()
        assert {"box", "local"} <= set(offered)
        assert f"{sid}\tlocal, idle, current" in home.ok("__complete", "attach", "").stdout
        assert "box" in home.ok("__complete", "unit", "up", "").stdout.splitlines()

    @pytest.mark.slow
    def test_attach_has_a_detach_key(self, home: Home) -> None:
        """On a terminal, Ctrl-] leaves `attach` (exit 0) and the prompt runs on to its end."""
        home.ok("unit", "add", "slow", "--provisioner", "process", "-o", "delay=0.05")
        words = " ".join(f"w{i}" for i in range(60))
        home.ok("prompt", "-u", "slow", "--detach", words)
        primary, secondary = pty.openpty()
        attach = subprocess.Popen(
            [sys.executable, "-m", "latis_cli", "attach"],
            stdin=secondary,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=home.env,
            cwd=home.path,
        )
        os.close(secondary)
        try:
            assert attach.stdout is not None
            ready, _, _ = select.select([attach.stdout], [], [], 30)
            assert ready, "attach printed nothing"
            assert attach.stdout.read1(1024)  # type: ignore[attr-defined]
            os.write(primary, b"\x1d")
            _, stderr = attach.communicate(timeout=30)
        finally:
            os.close(primary)
            if attach.poll() is None:
                attach.kill()
        assert attach.returncode == OK, stderr
        assert b"detached; the prompt runs on" in stderr and b"Traceback" not in stderr
        [session] = home.json("session", "ls")
        wait_for(
            lambda: home.json("session", "ls")[0]["last_prompt"] == "complete",
            "the prompt ends on its own",
        )
        shown = home.json("session", "show", session["session"])
        assert shown["prompts"][0]["answer"] == words

    def test_an_empty_prompt_is_not_sent(self, home: Home) -> None:
        """An empty or blank prompt: exit 2 and nothing sent (no session opened)."""
        assert "the prompt is empty" in failed(home, USAGE, "prompt", "  ")
        assert "the prompt is empty" in failed(home, USAGE, "prompt", input="\n")
        assert home.json("session", "ls") == []

    def test_the_unit_help_lists_the_echo_options_and_the_exit_statuses(self) -> None:
        """`latis-unit --help` lists the echo agent's options and exit 4 for a refused unit."""
        text = subprocess.run([*UNIT, "--help"], capture_output=True, text=True).stdout
        for option in ("delay=SECONDS", "ask=QUESTION", "repeat=N", "remember=1"):
            assert option in text
        assert "4 when cmdr refuses the unit's enrollment" in " ".join(text.split())

    def test_the_image_recipe(self, home: Home) -> None:
        """`latis image build --print` is a Containerfile; without --base, exit 2 and why."""
        recipe = home.ok("image", "build", "--print").stdout
        assert "FROM ${BASE}" in recipe and 'CMD ["latis-unit", "--stdio"]' in recipe
        assert "--base IMAGE is required" in failed(home, USAGE, "image", "build")


# ---- 8. the seed's vocabulary ----------------------------------------------------------------

#: The seed's four unit examples, as TOML, in the seed's own keys.
SEED = """
[units.dev-local]
agent = "echo"
provisioner = { type = "process" }
connection.dial = { via = "local" }

[units.box]
agent = "echo"
provisioner = { type = "container", image = "localhost/latis-unit:1" }

[units.vm1]
agent = "echo"
provisioner = { type = "qemu", image = "~/vms/unit.qcow2", memory = "1G", cpus = 1, ports = [9000] }
connection.dial = { via = "tcp", address = "localhost:9000" }

[units.cloud1]
agent = "echo"
provisioner = { type = "cloud-aws", instance_type = "t3.small", ami = "ami-0abcdef1234567890" }
connection.accept = { via = "websocket", address = "0.0.0.0:8443" }
"""


def test_the_seed_examples_load_as_written(home: Home) -> None:
    """The seed's four examples load with `connection.dial.via`, `address` and
    `connection.accept.via`; a unit dialed in those words answers a prompt."""
    config = home.path / "latis.toml"
    config.write_text(SEED)
    rows = {u["unit"]: u for u in json.loads(home.ok("unit", "list", "--json").stdout)}
    assert (rows["dev-local"]["provisioner"], rows["dev-local"]["dial"]) == ("process", "local")
    assert (rows["vm1"]["provisioner"], rows["vm1"]["dial"]) == ("qemu", "tcp")
    assert (rows["cloud1"]["provisioner"], rows["cloud1"]["accept"]) == ("cloud-aws", ["websocket"])
    assert rows["box"]["provisioner"] == "container"
    assert home.ok("prompt", "-u", "dev-local", "seed words").stdout == "seed words\n"
    with listening_unit(home) as port:
        with config.open("a") as out:
            out.write(
                f'\n[units.far]\nconnection.dial = {{ via = "tcp", address = '
                f'"127.0.0.1:{port}" }}\n'
            )
        assert home.ok("prompt", "-u", "far", "over tcp").stdout == "over tcp\n"
    config.write_text('[units.x]\nconnection.dial = { via = "carrier", address = "a:1" }\n')
    message = failed(home, ERROR, "unit", "list")
    assert "latis.toml:2: unit 'x': connection.dial.via" in message


# ---- 11. units that dial in share a listener -------------------------------------------------


def test_units_that_dial_in_share_the_listener(home: Home, tmp_path: Path) -> None:
    """`unit add --accept` at a listener of the config joins it, whatever options that one
    spells out; an option that differs is named and the file stays as it was. The enrolled
    unit says when it is connected; once revoked, it is refused with exit 4."""
    with listening_unit(home) as free:  # a port nobody uses once the unit stops
        pass
    config = home.path / "latis.toml"
    config.write_text(
        f'[units.a]\n[[units.a.accept]]\ntype = "tcp"\nhost = "127.0.0.1"\nport = {free}\n'
        "tls = true\nmax_pending_per_host = 4\n"
    )
    added = home.ok("unit", "add", "b", "--accept", f"tcp://127.0.0.1:{free}", "--json")
    assert "added unit 'b'" in said(added)
    enrollment = json.loads(added.stdout)
    assert len(home.json("listeners")) == 1
    before = config.read_text()
    message = failed(home, ERROR, "unit", "add", "c", "--accept", f"tcp://127.0.0.1:{free}?tls=0")
    assert "shared with unit 'a', which sets tls = true" in message
    assert config.read_text() == before

    secret = tmp_path / "secret"
    secret.write_text(enrollment["secret"] + "\n")
    secret.chmod(0o600)
    url = enrollment["urls"][0]
    dial_in = [*UNIT, "--connect", url, "--secret-file", str(secret), "--name", "b"]
    unit = subprocess.Popen(dial_in, stderr=subprocess.PIPE, text=True, env=home.env)
    try:
        assert unit.stderr is not None
        assert "connected to cmdr at" in unit.stderr.readline()
        assert home.ok("prompt", "-u", "b", "dialed in").stdout == "dialed in\n"
        home.ok("unit", "revoke", "b")
        _, stderr = unit.communicate(timeout=60)
    finally:
        if unit.poll() is None:
            unit.kill()
            unit.wait()
    assert unit.returncode == AUTH, stderr
    assert "refused this unit" in stderr and "Traceback" not in stderr
