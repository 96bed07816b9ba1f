"""The inbox: every question the agents ask, seen and answered from any CLI.

The real `latis` CLI and daemon in a fresh `LATIS_HOME`, real `latis-unit`
processes: the echo agent's `ask` (a free-text question) and the ACP test
agent tests/acp_agents/hitl_agent.py (permission requests with options, and
`elicitation/create`), written with the real ACP SDK.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hitl import (
    Lines,
    acp_unit,
    echo_unit,
    new_session,
    open_items,
    prompt_of,
    start_prompt,
    wait_ended,
    wait_question,
    write_config,
)
from test_cli import LATIS, Home
from test_cli import home as home  # noqa: F401 (the fixture: a fresh LATIS_HOME)


@contextmanager
def watching_a_question(home: Home) -> Iterator[tuple[str, Lines, dict[str, Any]]]:
    """`inbox watch --json` running, a session on the unit `asker` (it asks "Go?"), a
    prompt sent there: the session, the watch, and the watch's first line (stopped after)."""
    write_config(home, echo_unit("asker", ask="Go?"))
    sid = new_session(home, "asker")
    watch = Lines(home, "inbox", "watch", "--json")
    try:
        start_prompt(home, sid, "the plan")
        yield sid, watch, json.loads(watch.line())
    finally:
        watch.stop()


class TestAQuestionInTheInbox:
    def test_seen_and_answered_from_another_cli(self, home: Home) -> None:
        """The echo agent asks; `latis inbox` in another process lists it (unit, session,
        agent, question, options, since, prompt); answered there, the prompt goes on
        and the prompt's own CLI, still waiting at its question, says so."""
        write_config(home, echo_unit("asker", ask="Which database?"))
        sid = new_session(home, "asker")
        waiting = Lines(
            home, "prompt", "--session", sid, "migrate it", stdin=subprocess.PIPE
        )  # stdin stays open: this CLI waits too
        try:
            item = wait_question(home, sid)
            assert item["unit"] == "asker" and item["agent"] == "echo"
            assert item["question"] == "Which database?"
            assert item["options"] == [] and item["kind"] is None
            assert (item["state"], item["a2a_state"]) == ("open", "input-required")
            assert item["answered_by"] is None and item["since"] > 0
            assert item["id"] == f"{item['prompt']}.0"
            table = home.ok("inbox").stdout
            assert item["id"] in table and "Which database?" in table
            assert "(free text)" in table and sid in table

            answered = home.ok("inbox", "answer", item["id"], "the staging one")
            assert f"answered {item['id']}" in answered.stderr
            code, out, err = waiting.finish()
        finally:
            waiting.stop()
        assert code == 0, err
        assert out == "the staging one migrate it\n"
        assert "answered elsewhere" in err and "Traceback" not in err
        assert prompt_of(home, sid)["state"] == "complete"
        nothing = home.ok("inbox")
        assert nothing.stdout == "" and "nothing waits for an answer" in nothing.stderr
        [logged] = home.json("inbox", "log")
        assert (logged["id"], logged["answer"], logged["answered_by"]) == (
            item["id"],
            "the staging one",
            "inbox",
        )
        assert logged["answered_at"] >= logged["since"]

    def test_a_script_that_cannot_answer_is_given_the_questions_inbox_id(
        self, home: Home
    ) -> None:
        """`latis prompt --json` with nothing on stdin: the question's event carries
        its inbox id (the prompt's id, a dot, its number), the CLI leaves (exit 1)
        and the prompt waits; that id answers it from another command. Without
        --json the message names the command that answers it."""
        write_config(home, echo_unit("asker", ask="Which database?"))
        sid = new_session(home, "asker")
        left = home.run("prompt", "--json", "--session", sid, "migrate it")
        assert left.returncode == 1, left.stderr
        events = [json.loads(line) for line in left.stdout.splitlines()]
        asked = next(event for event in events if event["type"] == "input")
        assert events[-1] == {"type": "waiting", "session": sid}
        [item] = open_items(home)
        assert asked["id"] == item["id"] == f"{item['prompt']}.0"
        home.ok("inbox", "answer", asked["id"], "staging")
        assert wait_ended(home, sid)["state"] == "complete"
        plain = home.run("prompt", "--session", sid, "again")
        [item] = open_items(home)
        assert f"`latis inbox answer {item['id']} ANSWER` answers it" in plain.stderr

    def test_permission_by_option_id_name_or_number(self, home: Home) -> None:
        """A permission request lists its options; it is answered by an option's id or
        its name (any case); anything else is refused, naming them, and the question
        stays open."""
        write_config(home, acp_unit("acp"))
        sid = new_session(home, "acp")
        expected = []
        for answer, said in (
            ("reject-once", "refused: make deploy"),
            ("ALLOW", "ran: make deploy"),
        ):
            start_prompt(home, sid, "run make deploy")
            item = wait_question(home, sid)
            assert (item["kind"], item["options"]) == ("permission", ["Allow", "Reject"])
            assert item["question"] == "Run make deploy"
            assert item["details"]["command"] == "make deploy"
            assert item["details"]["option_ids"] == ["allow-once", "reject-once"]
            wrong = home.run("inbox", "answer", item["id"], "perhaps")
            assert wrong.returncode == 1
            assert "takes one of: Allow, Reject" in wrong.stderr
            assert [i["id"] for i in open_items(home)] == [item["id"]]
            home.ok("inbox", "answer", item["id"], answer)
            assert wait_ended(home, sid)["answer"] == said
            expected.append(said)
        assert [p["answer"] for p in home.json("session", "show", sid)["prompts"]] == expected

    def test_elicitation_is_a_form_answered_with_json(self, home: Home) -> None:
        """An ACP `elicitation/create` is a question of kind `form` carrying its schema;
        a JSON answer is the content the agent gets; `decline` declines."""
        write_config(home, acp_unit("acp"))
        sid = new_session(home, "acp")
        start_prompt(home, sid, "elicit")
        item = wait_question(home, sid)
        assert (item["kind"], item["options"]) == ("form", [])
        assert item["question"] == "Which branch, and how many replicas?"
        schema = item["details"]["schema"]
        assert schema["properties"]["count"]["type"] == "integer"
        assert schema["required"] == ["branch"]
        home.ok("inbox", "answer", item["id"], '{"branch": "main", "count": 2}')
        assert wait_ended(home, sid)["answer"] == 'accept {"branch": "main", "count": 2}'
        start_prompt(home, sid, "elicit")
        home.ok("inbox", "answer", wait_question(home, sid)["id"], "decline")
        assert wait_ended(home, sid)["answer"] == "decline"

    def test_a_form_with_choices_lists_them_as_options(self, home: Home) -> None:
        """A form whose one choice field is a `oneOf` of titled options (as
        claude-agent-acp renders Claude's AskUserQuestion) lists the choices as the
        item's options: a choice is answered by its name or title; other text goes
        to the form's one free-text field."""
        write_config(home, acp_unit("acp"))
        sid = new_session(home, "acp")
        for answer, content in (
            ("blue — COOL", '{"colour": "Blue"}'),
            ("green, please", '{"colour_custom": "green, please"}'),
        ):
            start_prompt(home, sid, "choose")
            item = wait_question(home, sid)
            assert (item["question"], item["kind"], item["options"]) == (
                "Which colour?",
                "form",
                ["Red", "Blue"],
            )
            assert "Red, Blue" in home.ok("inbox").stdout
            home.ok("inbox", "answer", item["id"], answer)
            assert wait_ended(home, sid)["answer"] == f"accept {content}"


class TestAnsweredOnce:
    def test_two_answer_at_once(self, home: Home) -> None:
        """Four CLIs answer the same question at the same moment: one answer counts,
        the others exit 1 and say by whom, when and what it was answered."""
        write_config(home, echo_unit("asker", ask="Go?"))
        sid = new_session(home, "asker")
        start_prompt(home, sid, "the plan")
        item = wait_question(home, sid)
        racers = [
            subprocess.Popen(
                [*LATIS, "inbox", "answer", item["id"], f"answer{n}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=home.env,
                cwd=home.path,
            )
            for n in range(4)
        ]
        results = [(r.wait(60), r.stderr.read() if r.stderr else "") for r in racers]
        won = [n for n, (code, _) in enumerate(results) if code == 0]
        assert len(won) == 1, results
        winner = f"answer{won[0]}"
        for code, err in results:
            if code != 0:
                assert code == 1 and "Traceback" not in err
                assert "already answered by inbox at 20" in err and f"'{winner}'" in err
        assert wait_ended(home, sid)["answer"] == f"{winner} the plan"
        [logged] = home.json("inbox", "log")
        assert (logged["answer"], logged["answered_by"]) == (winner, "inbox")

    def test_the_prompts_own_cli_and_the_inbox(self, home: Home) -> None:
        """The prompt's own CLI and the inbox answer together: whichever is first counts,
        for both (the prompt's output carries it); an inbox that lost is told it was
        the prompt."""
        write_config(home, echo_unit("asker", ask="Go?"))
        sid = new_session(home, "asker")
        own = Lines(home, "prompt", "--session", sid, "the plan", stdin=subprocess.PIPE)
        try:
            item = wait_question(home, sid)
            assert own.proc.stdin is not None
            inbox = subprocess.Popen(
                [*LATIS, "inbox", "answer", item["id"], "from-inbox"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=home.env,
                cwd=home.path,
            )
            own.proc.stdin.write("from-prompt\n")
            own.proc.stdin.flush()
            _, inbox_err = inbox.communicate(timeout=60)
            code, out, err = own.finish()
        finally:
            own.stop()
        assert code == 0, err
        [logged] = home.json("inbox", "log")
        assert logged["answered_by"] in ("inbox", "prompt")
        assert out == f"{logged['answer']} the plan\n"
        if logged["answered_by"] == "prompt":
            assert inbox.returncode == 1
            assert "already answered by prompt" in inbox_err and "'from-prompt'" in inbox_err
        else:  # the CLI's own answer, if it sent one, lost: the inbox's stands
            assert inbox.returncode == 0 and logged["answer"] == "from-inbox"


class TestTheInboxKeeps:
    def test_a_daemon_restart(self, home: Home) -> None:
        """A question stays in the inbox while cmdr is stopped and started again (same
        id, same `since`); answered after, the prompt goes on, on the same unit."""
        write_config(home, echo_unit("asker", ask="Go?"))
        sid = new_session(home, "asker")
        start_prompt(home, sid, "the plan")
        before = wait_question(home, sid)
        shown = home.ok("session", "show", sid).stdout
        assert f"? Go? -> (no answer yet: latis inbox answer {before['id']} ...)" in shown
        home.ok("daemon", "stop")
        # cmdr is gone: `status` reads the state file and still sees a waiting session.
        status = home.json("status")
        assert status["daemon"]["running"] is False
        [active] = status["active"]
        assert (active["session"], active["state"]) == (sid, "waiting")
        assert active["question"]["id"] == before["id"]
        after = wait_question(home, sid)  # starts cmdr, which re-attaches the unit
        assert {k: after[k] for k in ("id", "since", "question", "state")} == {
            k: before[k] for k in ("id", "since", "question", "state")
        }
        home.ok("inbox", "answer", after["id"], "yes")
        ended = wait_ended(home, sid)
        assert (ended["state"], ended["answer"]) == ("complete", "yes the plan")
        assert ended["inputs"] == [{"id": before["id"], "question": "Go?", "answer": "yes"}]

    def test_watch_follows_questions_and_answers(self, home: Home) -> None:
        """`inbox watch --json` prints a line when a question opens and when it is
        answered (by whom); Ctrl-C ends it with 130 and no traceback."""
        with watching_a_question(home) as (sid, watch, opened):
            assert opened["event"] == "open"
            assert (opened["item"]["session"], opened["item"]["question"]) == (sid, "Go?")
            home.ok("inbox", "answer", opened["item"]["id"], "sure")
            answered = json.loads(watch.line())
            assert answered["event"] == "answered"
            assert answered["item"]["id"] == opened["item"]["id"]
            assert (answered["item"]["answer"], answered["item"]["answered_by"]) == (
                "sure",
                "inbox",
            )
            watch.proc.send_signal(signal.SIGINT)
            code, _, err = watch.finish()
        assert code == 130 and "Traceback" not in err

    def test_a_question_whose_prompt_ended_is_ended_not_open(self, home: Home) -> None:
        """Its session closed before an answer: `watch` says `ended` (not `open` again),
        `inbox --json --all`-like lists show it `ended`/`canceled`, `session show` does not
        offer an answer that would fail, and a new `watch` does not list it."""
        with watching_a_question(home) as (sid, watch, opened):
            home.ok("session", "destroy", sid)
            ended = json.loads(watch.line())
            assert ended["event"] == "ended"
            assert ended["item"]["id"] == opened["item"]["id"]
            assert (ended["item"]["state"], ended["item"]["a2a_state"]) == ("ended", "canceled")
        shown = home.ok("session", "show", sid).stdout
        assert "? Go? -> (no answer: the prompt ended first)" in shown
        assert "latis inbox answer" not in shown
        again = Lines(home, "inbox", "watch", "--json")
        try:
            start_prompt(home, new_session(home, "asker"), "next")
            assert json.loads(again.line())["item"]["question"] == "Go?"  # the new one only
        finally:
            again.stop()

    def test_answer_ids_and_answers_are_checked_here(self, home: Home) -> None:
        """An id that is not PROMPT.INPUT, or an empty answer: exit 2, what is wrong, and
        the daemon is not even asked; an id past SQLite's integers is unknown, not a crash."""
        for bad in ("", "5", "abc", "5.0.0", "\u00b2.0", "1.x"):
            result = home.run("inbox", "answer", bad, "y")
            assert result.returncode == 2, (bad, result.stderr)
            assert "is not a question's id: they look like 12.0" in result.stderr
        empty = home.run("inbox", "answer", "5.0", "")
        assert (empty.returncode, empty.stderr) == (
            2, "latis: the answer to 5.0 is empty; nothing was sent\n")
        assert not (home.path / "run" / "cmdr.pid").exists()
        huge = home.run("inbox", "answer", "99999999999999999999.0", "y")
        assert huge.returncode == 1 and "Traceback" not in huge.stderr
        assert "not an inbox item id" in huge.stderr
        home.ok("daemon", "status")

    def test_watch_text_lines(self, home: Home) -> None:
        """Without --json, one readable line a change; an open question already in the
        inbox when watch starts is shown first."""
        write_config(home, echo_unit("asker", ask="Go?"))
        sid = new_session(home, "asker")
        start_prompt(home, sid, "the plan")
        item = wait_question(home, sid)
        watch = Lines(home, "inbox", "watch")
        try:
            assert watch.line() == f"{item['id']}  asker/{sid}  asks: Go?  [free text]\n"
            home.ok("inbox", "answer", item["id"], "sure")
            assert watch.line() == f"{item['id']}  answered by inbox: sure\n"
        finally:
            watch.proc.send_signal(signal.SIGINT)
            watch.finish()
            watch.stop()


class TestStates:
    def test_json_maps_states_to_a2a(self, home: Home) -> None:
        """`--json` gives each state its A2A task state: waiting is input-required
        (never done), busy is working, a complete prompt completed, a cancelled one
        canceled, a failed one failed."""
        write_config(
            home,
            echo_unit("asker", ask="Go?"),
            echo_unit("slow", delay="0.2"),
            acp_unit("acp", "echo_agent.py"),
        )
        asking = new_session(home, "asker")
        busy = new_session(home, "slow")
        start_prompt(home, asking, "x")
        start_prompt(home, busy, " ".join(f"w{i}" for i in range(300)))
        wait_question(home, asking)
        states = {s["session"]: (s["state"], s["a2a_state"]) for s in home.json("session", "list")}
        assert states[asking] == ("waiting", "input-required")
        assert states[busy] == ("busy", "working")
        active = {a["session"]: a["a2a_state"] for a in home.json("status")["active"]}
        assert active == {asking: "input-required", busy: "working"}

        home.ok("inbox", "answer", wait_question(home, asking)["id"], "ok")
        assert wait_ended(home, asking)["a2a_state"] == "completed"
        home.ok("session", "destroy", busy)  # cancels its prompt
        assert wait_ended(home, busy)["a2a_state"] == "canceled"

        failing = new_session(home, "acp")
        start_prompt(home, failing, "fail: on purpose")
        assert wait_ended(home, failing)["a2a_state"] == "failed"
        states = {s["session"]: (s["state"], s["a2a_state"]) for s in home.json("session", "list")}
        assert states[asking] == ("idle", "completed")
        assert states[failing] == ("idle", "failed")

    def test_a_second_prompt_leaves_the_first_as_it_was(self, home: Home) -> None:
        """A prompt to a session that waits for an answer, or is busy, is refused (exit 1,
        the question's inbox id, `latis attach`); nothing of it is stored, and the first
        prompt goes on: its session still waiting (not pruned as idle), then answered."""
        write_config(home, echo_unit("asker", ask="Go on?"), echo_unit("slow", delay="0.2"))
        asking = new_session(home, "asker")
        start_prompt(home, asking, "first")
        item = wait_question(home, asking)
        refused = home.run("prompt", "--session", asking, "second")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert f"latis inbox answer {item['id']} ANSWER" in refused.stderr
        assert f"latis attach {asking}" in refused.stderr
        shown = home.json("session", "show", asking)
        assert [p["text"] for p in shown["prompts"]] == ["first"]
        home.ok("session", "prune", "--idle", "0")
        states = {s["session"]: s["state"] for s in home.json("session", "list")}
        assert states[asking] == "waiting"
        home.ok("inbox", "answer", item["id"], "yes")
        assert wait_ended(home, asking)["state"] == "complete"

        busy = new_session(home, "slow")
        start_prompt(home, busy, " ".join(f"w{i}" for i in range(100)))
        refused = home.run("prompt", "--session", busy, "again")
        assert refused.returncode == 1
        assert f"session {busy!r} is busy with prompt" in refused.stderr
        states = {s["session"]: s["state"] for s in home.json("session", "list")}
        assert states[busy] == "busy"

    def test_status_shows_waiting_apart_from_busy(self, home: Home) -> None:
        """`status` counts waiting sessions apart from busy ones, with a line per
        waiting session (its question and how to answer it) and per busy one."""
        write_config(home, echo_unit("asker", ask="Deploy now?"), echo_unit("slow", delay="0.2"))
        asking = new_session(home, "asker")
        busy = new_session(home, "slow")
        start_prompt(home, busy, " ".join(f"w{i}" for i in range(300)))
        start_prompt(home, asking, "x")
        item = wait_question(home, asking)
        text = home.ok("status").stdout
        rows = {
            line.split()[0]: line.split()
            for line in text.splitlines()
            if line.split() and line.split()[0] in ("asker", "slow")
        }
        header = next(line.split() for line in text.splitlines() if line.split()[:1] == ["unit"])
        busy_col, waiting_col = header.index("busy"), header.index("waiting")
        assert (rows["asker"][busy_col], rows["asker"][waiting_col]) == ("0", "1")
        assert (rows["slow"][busy_col], rows["slow"][waiting_col]) == ("1", "0")
        assert (
            f"waiting  asker/{asking}  asks 'Deploy now?'" in text
            and f"latis inbox answer {item['id']} ...)" in text
        )
        assert f"busy     slow/{busy}" in text
        assert "context: not reported" in text  # the echo agent reports no usage
