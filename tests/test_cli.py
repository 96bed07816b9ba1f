"""The `latis` command, driven as a real subprocess, daemon and units included.

Each test gets a home of its own (`LATIS_HOME`: config, state, sockets, logs)
in a short /tmp path (unix socket paths are limited to 107 bytes), runs the
CLI from there, and stops its daemon and units at the end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

LATIS = [sys.executable, "-m", "latis_cli"]
UNIT = [sys.executable, "-m", "latis_core._unit.cli"]
WORDS = " ".join(f"w{i}" for i in range(40))


class Home:
    """One isolated latis installation: run commands in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {**os.environ, "LATIS_HOME": str(path), "NO_COLOR": "1", "COLUMNS": "120"}
        self.env.pop("LATIS_CONFIG", None)

    def run(self, *args: str, input: str | None = None, timeout: float = 60) -> Any:
        return subprocess.run(
            [*LATIS, *args], capture_output=True, text=True, env=self.env, cwd=self.path,
            input=input, timeout=timeout,
        )

    def ok(self, *args: str, **kwargs: Any) -> Any:
        result = self.run(*args, **kwargs)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*LATIS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=self.env, cwd=self.path,
        )

    def add_slow_unit(self, name: str = "slow", delay: str = "0.05") -> None:
        self.ok("unit", "add", name, "--provisioner", "process", "-o", f"delay={delay}")

    def daemon_pid(self) -> int | None:
        return self.json("daemon", "status")["pid"] if self.run(
            "daemon", "status").returncode == 0 else None


def _pids_under(path: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if str(path).encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _daemons_of(home: Home) -> list[int]:
    found = []
    marker = f"LATIS_HOME={home.path}".encode()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"-m\x00latis_core._cmdr" not in f.read():
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read().split(b"\x00"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.fixture
def home() -> Iterator[Home]:
    path = Path(tempfile.mkdtemp(prefix="lt", dir="/tmp"))
    here = Home(path)
    try:
        yield here
    finally:
        # Shown by pytest only when the test fails: what the daemon and units said.
        for log in sorted((path / "log").glob("*.log")):
            print(f"---- {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        here.run("daemon", "stop", timeout=30)
        for pid in _pids_under(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


class TestFirstRun:
    def test_a_prompt_works_with_no_config(self, home: Home) -> None:
        """On a fresh install, `latis prompt` starts cmdr and the built-in local unit."""
        result = home.ok("prompt", "hello from latis")
        assert result.stdout == "hello from latis\n"
        assert "started cmdr" in result.stderr
        status = home.json("status")
        assert status["daemon"]["running"]
        [local] = status["units"]
        assert (local["unit"], local["provisioner"], local["connection"]) == (
            "local", "process", "connected",
        )

    def test_init_then_unit_add(self, home: Home) -> None:
        """init writes a config that works; unit add appends to it; a duplicate is refused."""
        home.ok("init")
        text = (home.path / "latis.toml").read_text()
        assert "[units.demo" in text and "container" in text
        home.add_slow_unit()
        names = [u["unit"] for u in home.json("unit", "list")]
        assert {"local", "demo", "slow"} <= set(names)
        again = home.run("unit", "add", "slow", "--provisioner", "process")
        assert again.returncode == 1
        assert "slow" in again.stderr and "already" in again.stderr
        assert (home.path / "latis.toml").read_text().startswith(text)  # comments kept


class TestDailyFlow:
    def test_up_session_prompt_list_show_status(self, home: Home) -> None:
        """unit up, session new, a streamed prompt, session list/show and status, end to end."""
        home.add_slow_unit(delay="0.05")
        home.ok("unit", "up", "slow")
        sid = home.ok("session", "new", "--unit", "slow").stdout.strip()
        assert len(sid) >= 8
        proc = home.popen("prompt", "--session", sid, WORDS)
        started = time.monotonic()
        assert proc.stdout is not None
        first = proc.stdout.read(3)
        assert first == "w0 "
        assert time.monotonic() - started < 2.0, "the answer was not streamed"  # 40 x 0.05 s
        rest, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert first + rest == WORDS + "\n"
        sessions = home.json("session", "list")
        assert [(s["session"], s["unit"], s["state"]) for s in sessions] == [(sid, "slow", "idle")]
        shown = home.json("session", "show", sid)
        [prompt] = shown["prompts"]
        assert (prompt["text"], prompt["answer"], prompt["state"]) == (WORDS, WORDS, "complete")
        status = home.json("status")
        [slow] = [u for u in status["units"] if u["unit"] == "slow"]
        assert slow["connection"] == "connected" and slow["sessions"] == {sid: "idle"}
        text = home.ok("session", "show", sid).stdout
        assert f"> {WORDS}" in text and WORDS in text

    def test_status_alone_prints_what_the_parsed_command_prints(self, home: Home) -> None:
        """`latis status` (and `--json`) alone on the command line run before the parser is
        built; with a global option first they go through it: the same table, the same
        JSON, and `--help` still answers."""
        home.add_slow_unit()
        home.ok("unit", "up", "slow")
        fast, parsed = home.ok("status"), home.ok("--no-color", "status")
        assert fast.stdout == parsed.stdout and fast.stderr == parsed.stderr
        assert "slow" in fast.stdout and "connected" in fast.stdout
        def seen_aside(data: dict[str, Any]) -> dict[str, Any]:
            for unit in data["units"]:
                unit.pop("last_seen")  # (a heartbeat may move it between the two)
            return data

        assert seen_aside(home.json("status")) == seen_aside(home.json("--no-color", "status"))
        assert "What runs where" in home.ok("status", "--help").stdout

    def test_prompt_text_alone_does_what_the_parsed_command_does(self, home: Home) -> None:
        """`latis prompt TEXT` alone on the command line runs before the parser is built
        (it is the command run most); with a global option first it goes through the
        parser: the same answer on the same current session, the same refusals, and
        options after `prompt` still work."""
        home.add_slow_unit(delay="0")
        sid = home.ok("session", "new", "--unit", "slow").stdout.strip()
        fast, parsed = home.ok("prompt", "one two"), home.ok("--no-color", "prompt", "one two")
        assert fast.stdout == parsed.stdout == "one two\n"
        assert fast.stderr == parsed.stderr == ""
        shown = home.json("session", "show", sid)
        assert [p["answer"] for p in shown["prompts"]] == ["one two", "one two"]
        for text in ("", "  "):
            quick, slow = home.run("prompt", text), home.run("--no-color", "prompt", text)
            assert quick.returncode == slow.returncode == 2  # usage
            assert quick.stderr == slow.stderr == "latis: the prompt is empty; nothing was sent\n"
        # ... and the short form is short: the parser's package is not even imported.
        imports = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "latis_cli", "prompt", ""],
            capture_output=True, text=True, env=home.env, cwd=home.path, timeout=60,
        ).stderr
        assert "latis_cli._answer" in imports and "cyclopts" not in imports
        # Not the short form: the parser reads the options.
        first = home.ok("prompt", "--json", "three").stdout.splitlines()[0]
        assert json.loads(first) == {"type": "session", "session": sid}
        assert "Send a prompt" in home.ok("prompt", "--help").stdout

    def test_a_command_line_loads_only_its_command(self, home: Home) -> None:
        """A command's module is imported when it runs: `latis session ls` loads no
        other command's. Help on them all still gives each one's summary, with or
        without global options first, and so does a word that is no command."""
        run = ("import atexit, sys; atexit.register(lambda: print(*sorted(m for m in sys.modules"
               " if m.startswith(('latis_cli.', 'cyclopts.completion'))), file=sys.stderr));"
               " sys.argv = ['latis', "
               "'--no-color', 'session', 'ls']; from latis_cli import main; main()")
        modules = subprocess.run(
            [sys.executable, "-c", run], capture_output=True, text=True, env=home.env,
            cwd=home.path, timeout=60,
        ).stderr.split()
        assert "latis_cli._sessions" in modules
        assert "latis_cli._coordinate" not in modules and "latis_cli._units" not in modules
        assert "cyclopts.completion.install" not in modules
        summaries = ("Follow a session's last prompt", "Stored coordinations", "The agents "
                     "behind the units", "What runs where")
        for args in (["--help"], ["--debug", "--config", "latis.toml", "-h"], ["help"]):
            shown = home.ok(*args).stdout
            assert all(summary in shown for summary in summaries), (args, shown)
        assert "rotate" in home.ok("unit", "--help").stdout  # (`_enrollments`' commands)
        script = home.path / "completion.bash"
        subprocess.run(  # (it adds its loader to ~/.bashrc: this home's)
            [*LATIS, "--install-completion", "--shell", "bash", "--output", str(script)],
            env={**home.env, "HOME": str(home.path)}, cwd=home.path, capture_output=True,
            timeout=60, check=True,
        )
        assert all(word in script.read_text() for word in ("coordination", "rotate", "attach"))
        wrong = home.run("sesion", "ls")
        assert wrong.returncode == 2 and "session" in wrong.stderr + wrong.stdout

    def test_a_config_that_is_not_there_is_refused_by_every_command(self, home: Home) -> None:
        """`--config PATH` naming no file is a usage error (exit 2, the path said),
        also for the commands that do not read the config (`status`, `session ls`:
        they would otherwise answer as if it were not named)."""
        for args in (["status"], ["session", "ls"], ["prompt", "hi"], ["unit", "add", "x"]):
            result = home.run("--config", "nope.toml", *args)
            assert result.returncode == 2, (args, result.stderr)
            assert result.stderr == (
                "latis: nope.toml: config file does not exist (named by --config)\n")
        folder = home.run("--config", str(home.path), "status")
        assert folder.returncode == 2 and "config file is not a file" in folder.stderr
        assert not (home.path / "nope.toml").exists()

    def test_ctrl_c_cancels_the_prompt_on_the_unit(self, home: Home) -> None:
        """SIGINT mid-stream cancels the prompt on the unit: it stops, the session is idle."""
        home.add_slow_unit(delay="0.1")
        sid = home.ok("session", "new", "--unit", "slow").stdout.strip()
        proc = home.popen("prompt", "--session", sid, WORDS)
        assert proc.stdout is not None
        assert proc.stdout.read(3) == "w0 "
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "cancelling" in err
        [prompt] = home.json("session", "show", sid)["prompts"]
        assert prompt["state"] == "cancelled"
        assert 0 < prompt["chunks"] < 40
        time.sleep(0.5)
        [again] = home.json("session", "show", sid)["prompts"]
        assert again["chunks"] == prompt["chunks"], "the unit kept producing"
        assert home.json("session", "list")[0]["state"] == "idle"

    def test_detach_then_attach_misses_nothing(self, home: Home) -> None:
        """A detached prompt runs on; attach replays what was missed, then follows live."""
        home.add_slow_unit(delay="0.03")
        sid = home.ok("session", "new", "--unit", "slow").stdout.strip()
        detached = home.ok("prompt", "--session", sid, "--detach", WORDS)
        assert detached.stdout == ""
        assert f"latis attach {sid}" in detached.stderr
        time.sleep(0.3)  # some chunks come while nobody follows
        attached = home.ok("attach", sid)
        assert attached.stdout == WORDS + "\n"

    def test_daemon_restart_in_the_middle(self, home: Home) -> None:
        """Stopping cmdr mid-prompt loses nothing: the running unit is re-attached."""
        home.add_slow_unit(delay="0.05")
        sid = home.ok("session", "new", "--unit", "slow").stdout.strip()
        unit_before = home.json("unit", "status", "slow")["provision_detail"]
        home.ok("prompt", "--session", sid, "--detach", WORDS)
        time.sleep(0.4)
        home.ok("daemon", "stop")
        assert home.json("status")["daemon"]["running"] is False
        time.sleep(0.3)  # the unit goes on alone
        attached = home.ok("attach", sid)  # starts a new cmdr, which re-attaches
        assert attached.stdout == WORDS + "\n"
        assert home.json("unit", "status", "slow")["provision_detail"] == unit_before
        [prompt] = home.json("session", "show", sid)["prompts"]
        assert (prompt["state"], prompt["chunks"], prompt["answer"]) == ("complete", 40, WORDS)

    def test_coordinate_two_units(self, home: Home) -> None:
        """coordinate sends one task to two units, streams both, and gathers the results."""
        home.add_slow_unit("a", delay="0.01")
        home.add_slow_unit("b", delay="0.02")
        result = home.ok("coordinate", "--agents", "a,b", "compare these notes")
        assert "[a] compare these notes" in result.stdout
        assert "[b] compare these notes" in result.stdout
        assert "== a (complete) ==" in result.stdout and "== b (complete) ==" in result.stdout
        lines = [json.loads(x) for x in home.ok(
            "coordinate", "--agents", "a,b", "--json", "x y").stdout.splitlines()]
        replies = {x["unit"]: x["text"] for x in lines if x["type"] == "reply"}
        assert replies == {"a": "x y", "b": "x y"}
        assert lines[-1]["type"] == "result" and lines[-1]["outcome"] == "complete"

    def test_unit_down_and_destroy(self, home: Home) -> None:
        """down stops the unit's process; destroy removes what was made."""
        home.add_slow_unit()
        home.ok("unit", "up", "slow")
        detail = home.json("unit", "status", "slow")["provision_detail"]
        pid = int(detail.split()[-1])
        assert _alive(pid)
        home.ok("unit", "down", "slow")
        assert not _alive(pid)
        status = home.json("unit", "status", "slow")
        assert (status["connection"], status["provision"]) == ("disconnected", "stopped")
        refused = home.run("unit", "destroy", "slow")
        assert refused.returncode == 2 and "--yes" in refused.stderr
        home.ok("unit", "destroy", "slow", "--yes")
        assert home.json("unit", "status", "slow")["provision"] == "absent"


class TestOutputAndErrors:
    def test_prompt_json_is_ndjson(self, home: Home) -> None:
        """`prompt --json` prints one JSON object per event: the session first, then the
        chunks, then the outcome."""
        lines = [json.loads(x) for x in home.ok("prompt", "--json", "a b").stdout.splitlines()]
        assert [(x["type"], x.get("text")) for x in lines] == [
            ("session", None), ("chunk", "a "), ("chunk", "b"), ("outcome", None),
        ]
        assert lines[0]["session"]
        assert lines[-1]["outcome"] == "complete"
        detached = [json.loads(x) for x in home.ok("prompt", "--json", "--detach", "c").stdout
                    .splitlines()]
        assert detached == [{"type": "session", "session": lines[0]["session"]},
                            {"type": "detached", "session": lines[0]["session"]}]

    def test_prompt_from_stdin_and_file(self, home: Home) -> None:
        """The prompt may come from stdin or from a file (`--file -`: stdin)."""
        assert home.ok("prompt", input="from stdin\n").stdout == "from stdin\n"
        (home.path / "task.md").write_text("from a file")
        assert home.ok("prompt", "--file", "task.md").stdout == "from a file\n"
        assert home.ok("prompt", "--file", "-", input="dash\n").stdout == "dash\n"

    def test_a_prompt_that_is_not_utf8_or_given_twice_is_refused(self, home: Home) -> None:
        """Bytes that are not UTF-8 (stdin, a file), the prompt from two places, a session
        and a unit, a prompt over the frame limit: exit 2 with what was wrong, and nothing
        starts the daemon."""
        (home.path / "latin1.md").write_bytes(b"caf\xe9\n")
        (home.path / "big.md").write_bytes(b"x" * (17 << 20))
        stdin = subprocess.run([*LATIS, "prompt"], input=b"\xff\xfe bad\n", capture_output=True,
                               env=home.env, cwd=home.path, timeout=60)
        assert stdin.returncode == 2
        assert stdin.stderr.decode() == (
            "latis: the prompt (stdin) is not UTF-8 text; nothing was sent\n")
        for args, said in (
            (["--file", "latin1.md"], "the prompt (latin1.md) is not UTF-8 text"),
            (["--file", "latin1.md", "also this"], "--file and TEXT exclude each other"),
            (["-s", "S", "--unit", "local", "hi"], "--session and --unit exclude each other"),
            (["--file", "big.md"], "the prompt is 17,825,792 bytes; a prompt is at most"),
        ):
            result = home.run("prompt", *args)
            assert (result.returncode, result.stdout) == (2, ""), result
            assert said in result.stderr
        assert not (home.path / "run" / "cmdr.pid").exists()

    def test_a_reader_that_goes_away_ends_the_command_quietly(self, home: Home) -> None:
        """`latis prompt ... | head -c 5`: no message (no "a bug?"), exit 1."""
        home.ok("session", "new", "-o", "repeat=5000")
        with subprocess.Popen([*LATIS, "prompt", "a b c d e f g h"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=home.env, cwd=home.path) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.read(5) == b"a b c"
            proc.stdout.close()
            assert proc.wait(timeout=60) == 1
            assert proc.stderr.read() == b""

    def test_a_prompt_cancelled_elsewhere_says_so(self, home: Home) -> None:
        """Its session closed by another command: exit 3, and a line that says why (it
        ended silently)."""
        sid = home.ok("session", "new", "-o", "delay=0.1").stdout.strip()
        with subprocess.Popen([*LATIS, "prompt", " ".join(["w"] * 300)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=home.env, cwd=home.path) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.read(2) == "w "  # streaming
            home.ok("session", "destroy", sid)
            assert proc.wait(timeout=60) == 3
            said = proc.stderr.read()
        assert f"cancelled elsewhere (by another client, or as session {sid} closed" in said

    def test_a_unit_taken_down_under_a_prompt_cancels_it(self, home: Home) -> None:
        """`unit down` (or `rm`) while a prompt runs there: the prompt ends `cancelled`,
        exit 3, not `unit_lost` with "bring it back with latis unit up"."""
        home.ok("unit", "add", "pp", "--provisioner", "process", "-o", "delay=0.1")
        sid = home.ok("session", "new", "--unit", "pp").stdout.strip()
        with subprocess.Popen([*LATIS, "prompt", "-s", sid, " ".join(["w"] * 300)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=home.env, cwd=home.path) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.read(2) == "w "
            home.ok("unit", "down", "pp")
            assert proc.wait(timeout=60) == 3
            said = proc.stderr.read()
        assert "its unit stopped" in said and "was lost" not in said
        assert home.json("session", "show", sid)["prompts"][-1]["state"] == "cancelled"

    def test_question_answered_from_stdin(self, home: Home) -> None:
        """An agent's question is answered from stdin when it is not a terminal."""
        home.ok("unit", "add", "asker", "--provisioner", "process", "-o", "ask=Sure?")
        result = home.ok("prompt", "--unit", "asker", "the plan", input="yes indeed\n")
        assert result.stdout == "yes indeed the plan\n"

    def test_session_options_reach_the_agent(self, home: Home) -> None:
        """session new takes -o KEY=VALUE session options; a malformed one, one the agent
        does not know (a typo: it was dropped silently) or a bad value is a usage error
        that says which."""
        assert home.ok("session", "new", "-o", "repeat=2").stdout.strip()
        assert home.ok("prompt", "twice").stdout == "twice twice\n"
        bad = home.run("session", "new", "-o", "nonsense")
        assert bad.returncode == 2 and "not KEY=VALUE" in bad.stderr
        typo = home.run("session", "new", "-o", "dealy=0.5")
        assert typo.returncode == 2
        assert ("latis: session options: echo agent: unknown option 'dealy' (did you mean "
                "'delay'? known: ask, delay, remember, repeat) (unit local)") in typo.stderr
        wrong = home.run("session", "new", "-o", "delay=abc")
        assert wrong.returncode == 2 and "option 'delay' must be a number" in wrong.stderr
        assert "Traceback" not in wrong.stderr and "PATH" not in wrong.stderr

    def test_connector(self, home: Home) -> None:
        """--connector checks the way a unit is reached, or connects to an address."""
        assert home.ok("session", "new", "--connector", "local").stdout.strip()
        wrong = home.run("session", "new", "--connector", "ssh")
        assert wrong.returncode == 1
        assert "unit 'local' is reached by local, not ssh" in wrong.stderr
        socket = home.path / "run" / "units" / "local" / "unit.sock"
        via = home.json("session", "new", "--connector", f"unix:{socket}")
        assert via["unit"].startswith("unix-")

    def test_unknown_unit(self, home: Home) -> None:
        """A unit that is not in config: exit 1, and the message lists the units there are."""
        result = home.run("prompt", "--unit", "nope", "x")
        assert result.returncode == 1
        assert "no unit 'nope'" in result.stderr and "local" in result.stderr

    def test_unreachable_unit(self, home: Home) -> None:
        """A unit that cannot be reached: exit 6, and the message says how it was dialed."""
        home.ok("unit", "add", "gone", "--dial", "unix", "--dial-option",
                f"path={home.path}/nothing.sock")
        result = home.run("prompt", "--unit", "gone", "x")
        assert result.returncode == 6, result.stderr
        assert "nothing.sock" in result.stderr
        # Off a terminal a table's row is one line, its long error too (for grep).
        home.env["COLUMNS"] = "80"
        [row] = [line for line in home.ok("status").stdout.splitlines()
                 if line.startswith(" gone ")]
        assert "FAILED" in row and "nothing.sock" in row and len(row) > 80

    def test_unit_add_takes_an_address_to_dial(self, home: Home) -> None:
        """`unit add --dial URL` (as `latis connect` takes it) writes the type and its
        options; the unit is reached there; an address latis does not know: exit 2."""
        socket = home.path / "run" / "units" / "local" / "unit.sock"
        home.ok("prompt", "start the local unit")
        home.ok("unit", "add", "again", "--dial", f"unix:{socket}")
        assert f'[units.again.dial]\ntype = "unix"\npath = "{socket}"' in (
            home.path / "latis.toml").read_text()
        assert home.ok("prompt", "--unit", "again", "by address").stdout == "by address\n"
        wrong = home.run("unit", "add", "other", "--dial", "nope://x")
        assert wrong.returncode == 2 and "'nope://x' is not an address latis knows" in wrong.stderr

    def test_two_clis_start_one_daemon(self, home: Home) -> None:
        """Two commands that start cmdr at the same moment start one daemon."""
        procs = [home.popen("session", "new") for _ in range(3)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        assert sum("started cmdr" in err for _, err in outs) == 1
        assert len(_daemons_of(home)) == 1

    def test_help_has_examples_and_no_colour_off_a_terminal(self, home: Home) -> None:
        """--help leads with examples; piped output has no escape codes."""
        for args in (("--help",), ("prompt", "--help"), ("unit", "add", "--help")):
            text = home.ok(*args).stdout
            assert "latis " in text and "\x1b[" not in text

    def test_plugins_and_agents(self, home: Home) -> None:
        """plugins lists the built-in plugins; agents list shows each unit's agent."""
        plugins = home.json("plugins")
        assert "echo" in plugins["agents"]
        assert {"local", "unix"} <= set(plugins["transports"])
        assert {"process", "container"} <= set(plugins["provisioners"])
        available = home.json("agents", "available")
        assert {"echo", "command", "acp", "openai", "python"} <= set(available["adapters"])
        assert {"claude", "codex", "gemini"} <= {a["agent"] for a in available["agents"]}
        home.ok("unit", "up")
        [local] = home.json("agents", "list")
        assert local["adapter"] == "echo"
        assert local["agent"]["name"] == "echo"


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_container_unit_through_the_cli(podman: str, home: Home) -> None:
    """A unit in a real podman container: up, a prompt through it, destroy."""
    from podman_image import IMAGE, UNIT_COMMAND, python_mounts

    name = f"box{os.getpid()}"
    (home.path / "latis.toml").write_text(
        f"[units.{name}.provisioner]\n"
        'type = "container"\n'
        f'image = "{IMAGE}"\n'
        f"command = {json.dumps(UNIT_COMMAND)}\n"
        f"mounts = {json.dumps(python_mounts())}\n"
    )
    try:
        result = home.ok("prompt", "--unit", name, "hello from a container", timeout=120)
        assert result.stdout == "hello from a container\n"
        status = home.json("unit", "status", name)
        assert status["provision"] == "running"
    finally:
        home.run("unit", "destroy", name, "--yes", timeout=120)
    listed = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert f"latis-{name}" not in listed


class TestUnitCommand:
    def test_needs_a_way_to_serve(self) -> None:
        """Without --stdio or --listen, latis-unit says how to serve and exits 2."""
        result = subprocess.run(UNIT, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert "--stdio" in result.stderr

    def test_unknown_agent_lists_known_ones(self) -> None:
        """An unknown agent is a usage error that lists the agents there are."""
        result = subprocess.run([*UNIT, "--stdio", "--agent", "nope"], capture_output=True,
                                text=True, input="", timeout=30)
        assert result.returncode == 2
        assert "unknown agent 'nope' (known: acp, command, echo, openai, python" in result.stderr

    @pytest.mark.parametrize(
        ("option", "says"),
        [
            ("delay=soon", "option 'delay' must be a number of seconds, got 'soon'"),
            ("colour=red", "unknown option 'colour' (known: ask, delay, remember, repeat)"),
            ("oops", "option 'oops' is not KEY=VALUE"),
        ],
    )
    def test_bad_agent_options(self, option: str, says: str) -> None:
        """A bad agent option is a usage error that names the option."""
        result = subprocess.run([*UNIT, "--stdio", "-o", option], capture_output=True,
                                text=True, input="", timeout=30)
        assert result.returncode == 2
        assert says in result.stderr

    def test_logs_go_to_stderr_only(self) -> None:
        """Nothing but frames reaches stdout; with no input the unit exits 0 at once."""
        result = subprocess.run([*UNIT, "--stdio", "--log-level", "debug"], capture_output=True,
                                text=True, input="", timeout=30)
        assert result.returncode == 0
        assert result.stdout == ""

    def test_listen_wide_without_a_token_is_refused(self) -> None:
        """Beyond loopback, a unit without a token refuses to listen (it says how to fix it)."""
        result = subprocess.run([*UNIT, "--listen", "tcp://0.0.0.0:1"], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 2
        assert "refusing to listen on tcp://0.0.0.0:1 without a token" in result.stderr
        assert "--token-file" in result.stderr and "--insecure" in result.stderr

    def test_unknown_address_lists_the_known_ones(self) -> None:
        result = subprocess.run([*UNIT, "--listen", "gopher://x:1"], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 2
        assert "'gopher://x:1' is not an address latis knows" in result.stderr
        assert "tcp://" in result.stderr and "unix:" in result.stderr and "quic://" in result.stderr

    def test_connect_needs_a_secret_file(self) -> None:
        result = subprocess.run([*UNIT, "--connect", "tcp://127.0.0.1:1"], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 2
        assert "--connect needs --secret-file FILE" in result.stderr
        # The error first, then a one-line usage: not under eleven lines of options.
        first, usage = result.stderr.splitlines()
        assert first.startswith("latis-unit: error: --connect needs --secret-file FILE")
        assert usage.startswith("usage: latis-unit --stdio | --listen ADDRESS | --connect URL")

    def test_version_and_help(self) -> None:
        """--version prints the version; --help shows examples."""
        import latis_core

        version = subprocess.run([*UNIT, "--version"], capture_output=True, text=True)
        assert version.stdout.strip() == f"latis-unit {latis_core.__version__}"
        helped = subprocess.run([*UNIT, "--help"], capture_output=True, text=True)
        assert "latis-unit --stdio --agent echo" in helped.stdout


class TestConnectByAddress:
    """`latis connect URL` adds a unit by address, for as long as the daemon runs."""

    @pytest.fixture
    def listening(self, home: Home) -> Iterator[Any]:
        """Start `latis-unit --listen ADDRESS ARGS`; return (port, TLS pin) it printed."""
        started: list[subprocess.Popen[str]] = []

        def start(address: str, *args: str) -> tuple[int | None, str | None]:
            env = {**home.env, "LATIS_HOME": str(home.path / "unit-home")}
            process = subprocess.Popen(
                [*UNIT, "--listen", address, "--agent", "echo", *args],
                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
            )
            started.append(process)
            assert process.stderr is not None
            said = ""
            while "listening on" not in said:
                line = process.stderr.readline()
                assert line, f"the unit exited: {said}"
                said += line
            port = re.search(r"\(port (\d+)\)", said)
            pin = re.search(r"TLS certificate (sha256:[0-9a-f]{64})", said)
            return (int(port.group(1)) if port else None, pin.group(1) if pin else None)

        yield start
        for process in started:
            process.terminate()
            process.wait(10)

    def connected(self, home: Home, url: str, *args: str) -> None:
        """Connect the daemon to `url` as unit `edge`; a prompt there comes back whole."""
        result = home.ok("connect", url, "--name", "edge", *args)
        assert "unit edge: connected" in result.stderr
        assert home.ok("prompt", "--unit", "edge", "over the wire").stdout == "over the wire\n"
        units = {u["unit"]: u for u in home.json("status")["units"]}
        assert units["edge"]["connection"] == "connected"

    def test_unix(self, home: Home, listening: Any) -> None:
        path = home.path / "edge.sock"
        listening(f"unix:{path}")
        self.connected(home, f"unix:{path}")

    def test_tcp_with_tls_and_a_token(self, home: Home, listening: Any) -> None:
        token = home.path / "edge.token"
        token.write_text("a-token-long-enough-for-this")
        token.chmod(0o600)
        port, pin = listening("tcp://127.0.0.1:0", "--tls", "--token-file", str(token))
        url = f"tcp://127.0.0.1:{port}?fingerprint={pin}"
        wrong = home.run("connect", url, "--name", "edge")
        assert wrong.returncode == 4  # auth (latis help exit-codes), not 6
        assert "asks for proof of its token" in wrong.stderr
        assert "--token-file to latis connect" in wrong.stderr
        other = home.path / "other.token"
        other.write_text("another-token-long-enough-too")
        other.chmod(0o600)
        refused = home.run("connect", url, "--name", "edge", "--token-file", str(other))
        assert refused.returncode == 4 and "unauthorized" in refused.stderr
        self.connected(home, url, "--token-file", str(token))

    def test_websocket(self, home: Home, listening: Any) -> None:
        port, _ = listening("ws://127.0.0.1:0/latis")
        self.connected(home, f"ws://127.0.0.1:{port}/latis")

    def test_quic(self, home: Home, listening: Any) -> None:
        port, pin = listening("quic://127.0.0.1:0")
        self.connected(home, f"quic://127.0.0.1:{port}?fingerprint={pin}")

    def test_local_command(self, home: Home) -> None:
        self.connected(home, "local:" + shlex.join([*UNIT, "--stdio", "--agent", "echo"]))

    def test_ssh(self, home: Home) -> None:
        from sshd import running_sshd, sshd_unavailable

        why = sshd_unavailable()
        if why is not None:
            pytest.skip(why)
        with running_sshd() as server:
            query = urlencode({
                "identity": server.client_key, "host_key": server.host_key,
                "command": shlex.join([*UNIT, "--stdio", "--agent", "echo"]),
            }, quote_via=quote)
            self.connected(home, f"ssh://{server.user}@127.0.0.1:{server.port}?{query}")
            home.ok("unit", "down", "edge")
