"""The approval policy: `[[policy]]` rules that cmdr applies to every agent's
questions before they reach the inbox, each automatic answer logged with its rule.

The real `latis` CLI and daemon in a fresh `LATIS_HOME`; the questions come from
real `latis-unit` processes: the ACP test agent tests/acp_agents/hitl_agent.py
(permission requests for a command, or for a file, written with the real ACP
SDK) and the echo agent's `ask`.
"""

from __future__ import annotations

from hitl import (
    acp_unit,
    echo_unit,
    new_session,
    open_items,
    start_prompt,
    wait_ended,
    wait_question,
    write_config,
)
from test_cli import Home
from test_cli import home as home  # noqa: F401 (the fixture: a fresh LATIS_HOME)

RULES = r"""
[[policy]]
name = "tests-may-run"
unit = "acp"
kind = "execute"
command = '^make (test|check)\b'
action = "allow"

[[policy]]
name = "no-env-files"
tool = "Edit *"
path = "*.env"
action = "deny"
"""


def test_rules_answer_without_a_person_and_are_logged(home: Home) -> None:
    """A command the allow rule matches runs, a file the deny rule matches is refused
    (the agent gets the refusal), and neither reaches the inbox; `latis inbox log`
    names the rule of each. A question no rule matches waits for a person (the
    default is ask), and the log says a person answered it."""
    write_config(home, RULES, acp_unit("acp"))
    sid = new_session(home, "acp")
    start_prompt(home, sid, "run make test")
    assert wait_ended(home, sid)["answer"] == "ran: make test"
    start_prompt(home, sid, "edit config/prod.env")
    assert wait_ended(home, sid)["answer"] == "refused: config/prod.env"
    assert open_items(home) == []

    start_prompt(home, sid, "run make deploy")  # the allow rule's pattern does not match
    item = wait_question(home, sid)
    assert item["details"]["command"] == "make deploy"
    home.ok("inbox", "answer", item["id"], "reject")
    assert wait_ended(home, sid)["answer"] == "refused: make deploy"

    log = home.json("inbox", "log")
    assert [(i["question"], i["answer"], i["answered_by"], i.get("rule")) for i in log] == [
        ("Run make test", "Allow", "rule tests-may-run", "tests-may-run"),
        ("Edit config/prod.env", "Reject", "rule no-env-files", "no-env-files"),
        ("Run make deploy", "Reject", "inbox", None),
    ]
    assert log[1]["details"]["path"] == "config/prod.env"
    text = home.ok("inbox", "log").stdout
    assert "rule tests-may-run" in text and "rule no-env-files" in text
    # What the daemon runs by, URLs and all, is in `daemon status --json`.
    assert [r["name"] for r in home.json("daemon", "status")["policy"]] == [
        "tests-may-run",
        "no-env-files",
    ]


def test_the_first_matching_rule_decides(home: Home) -> None:
    """Rules are tried in order: an `ask` rule before a catch-all `allow` sends its
    questions to a person; the catch-all answers the rest."""
    write_config(
        home,
        """
[[policy]]
name = "ask-before-deleting"
command = '\\brm\\b'
action = "ask"

[[policy]]
name = "anything-on-acp"
unit = "ac*"
action = "allow"
""",
        acp_unit("acp"),
    )
    sid = new_session(home, "acp")
    start_prompt(home, sid, "run rm -rf build")
    item = wait_question(home, sid)
    assert item["question"] == "Run rm -rf build"
    home.ok("inbox", "answer", item["id"], "allow-once")
    assert wait_ended(home, sid)["answer"] == "ran: rm -rf build"
    start_prompt(home, sid, "edit notes.txt")
    assert wait_ended(home, sid)["answer"] == "edited: notes.txt"
    by = [(i["question"], i["answered_by"]) for i in home.json("inbox", "log")]
    assert by == [("Run rm -rf build", "inbox"), ("Edit notes.txt", "rule anything-on-acp")]


def test_a_rule_answers_any_agents_question(home: Home) -> None:
    """The policy is cmdr's, the same for every agent: a rule by agent answers the
    echo agent's free-text question too (with the rule's word)."""
    write_config(
        home,
        """
[[policy]]
name = "echo-is-harmless"
agent = "echo"
action = "deny"
""",
        echo_unit("asker", ask="Proceed?"),
    )
    sid = new_session(home, "asker")
    start_prompt(home, sid, "the plan")
    assert wait_ended(home, sid)["answer"] == "deny the plan"
    [logged] = home.json("inbox", "log")
    assert (logged["question"], logged["rule"]) == ("Proceed?", "echo-is-harmless")


def test_a_bad_rule_is_a_config_error(home: Home) -> None:
    """A rule with an unknown action, key or a pattern that is no regular expression
    is refused with the file's line and the rule's place; cmdr does not start."""
    write_config(home, '[[policy]]\naction = "maybe"\ncommand = "("\nwho = "me"\n')
    result = home.run("unit", "list")
    assert result.returncode == 1
    for said in (
        ":2: policy[0].action: expected one of allow, deny, ask",
        ":3: policy[0].command: not a regular expression",
        ":4: policy[0].who: unknown key",
    ):
        assert said in result.stderr
    assert "Traceback" not in result.stderr
