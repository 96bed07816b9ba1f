"""The `latis` and `latis-unit` commands, run as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

LATIS = [sys.executable, "-m", "latis_cli"]
UNIT = [sys.executable, "-m", "latis_core._unit_cli"]
ENV = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=60, **kwargs)


class TestPrompt:
    def test_streams_the_answer(self) -> None:
        """`latis prompt TEXT` prints the agent's answer and exits 0."""
        result = run([*LATIS, "prompt", "hello from latis"])
        assert result.returncode == 0, result.stderr
        assert result.stdout == "hello from latis\n"

    def test_prompt_from_stdin_and_file(self, tmp_path: object) -> None:
        """The prompt may come from stdin or from a file."""
        assert run([*LATIS, "prompt"], input="from stdin\n").stdout == "from stdin\n"
        task = tmp_path / "task.md"  # type: ignore[operator]
        task.write_text("from a file")
        assert run([*LATIS, "prompt", "--file", str(task)]).stdout == "from a file\n"

    def test_json_is_one_object_per_line(self) -> None:
        """`--json` prints NDJSON: one chunk per line, then the outcome."""
        result = run([*LATIS, "prompt", "--json", "a b"])
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [(x["type"], x.get("text")) for x in lines] == [
            ("response.chunk", "a "),
            ("response.chunk", "b"),
            ("outcome", None),
        ]
        assert lines[-1]["outcome"] == "complete"

    def test_ctrl_c_cancels_the_prompt(self) -> None:
        """Ctrl-C cancels the prompt on the unit and exits 3 (cancelled)."""
        proc = subprocess.Popen(
            [*LATIS, "prompt", "-o", "delay=0.2", "one two three four five six seven eight"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert proc.stdout is not None
        first = proc.stdout.read(4)
        assert first == "one "
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, err
        assert "cancelling" in err
        assert "eight" not in out

    def test_bad_agent_option(self) -> None:
        """A malformed -o is a usage error (exit 2) that says what is wrong."""
        result = run([*LATIS, "prompt", "-o", "delay", "x"])
        assert result.returncode == 2
        assert "'delay' is not KEY=VALUE" in result.stderr

    def test_unknown_agent(self) -> None:
        """An agent that does not exist: the unit cannot start, exit 6 with the reason."""
        result = run([*LATIS, "prompt", "--agent", "nope", "x"])
        assert result.returncode == 6
        assert "exited with code 2" in result.stderr

    def test_help_leads_with_examples(self) -> None:
        """`latis prompt --help` shows examples."""
        result = run([*LATIS, "prompt", "--help"])
        assert result.returncode == 0
        assert 'latis prompt "hello there"' in result.stdout
        assert "\x1b[" not in result.stdout, "colour when stdout is not a terminal"


class TestAgents:
    def test_list(self) -> None:
        """`latis agents list` lists the echo agent, in text and in JSON."""
        assert "echo" in run([*LATIS, "agents", "list"]).stdout.split()
        assert "echo" in json.loads(run([*LATIS, "agents", "list", "--json"]).stdout)


class TestUnitCommand:
    def test_needs_a_way_to_serve(self) -> None:
        """Without --stdio, latis-unit says how to serve and exits 2."""
        result = run(UNIT)
        assert result.returncode == 2
        assert "--stdio" in result.stderr

    def test_unknown_agent_lists_known_ones(self) -> None:
        """An unknown agent is a usage error that lists the agents there are."""
        result = run([*UNIT, "--stdio", "--agent", "nope"], input="")
        assert result.returncode == 2
        assert "unknown agent 'nope' (known: echo" in result.stderr

    @pytest.mark.parametrize(
        ("option", "says"),
        [
            ("delay=soon", "option 'delay' must be a number of seconds, got 'soon'"),
            ("colour=red", "unknown option 'colour' (known: ask, delay, repeat)"),
            ("oops", "option 'oops' is not KEY=VALUE"),
        ],
    )
    def test_bad_agent_options(self, option: str, says: str) -> None:
        """A bad agent option is a usage error that names the option."""
        result = run([*UNIT, "--stdio", "-o", option], input="")
        assert result.returncode == 2
        assert says in result.stderr

    def test_logs_go_to_stderr_only(self) -> None:
        """Nothing but frames reaches stdout; with no input the unit exits 0 at once."""
        started = time.monotonic()
        result = run([*UNIT, "--stdio", "--log-level", "debug"], input="")
        assert result.returncode == 0
        assert result.stdout == ""
        assert time.monotonic() - started < 10

    def test_version_and_help(self) -> None:
        """--version prints the version; --help shows examples."""
        import latis_core

        assert run([*UNIT, "--version"]).stdout.strip() == f"latis-unit {latis_core.__version__}"
        assert "latis-unit --stdio --agent echo" in run([*UNIT, "--help"]).stdout
