"""The approval policy: rules in config that answer an agent's question before
it reaches the inbox (docs/config.md, `[[policy]]`).

Each rule names an `action` (`allow`, `deny` or `ask`) and what it matches:
`unit`, `agent`, `kind` (the permission's kind: ACP's `edit`, `execute`, ...,
or the question's kind), `tool` (its title or name) and `path` (shell-style
globs), `command` (a regular expression searched in the command line). Every
key given must match; a key the question does not carry (no path, say) does
not match. The first rule that matches decides; with none, the answer is
`ask`: nothing is approved that a person did not approve or write a rule for.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = ["ACTIONS", "Rule", "choose_option", "decide", "facts_of", "parse_rules"]

#: What a rule may answer.
ACTIONS = ("allow", "deny", "ask")
_MATCH_KEYS = ("unit", "agent", "kind", "tool", "path", "command")
_RULE_KEYS = ("name", "action", *_MATCH_KEYS)

_ALLOW_WORDS = ("allow", "yes", "y", "approve", "ok", "accept")
_DENY_WORDS = ("deny", "reject", "no", "n", "decline", "refuse")


@attrs.frozen
class Rule:
    """One `[[policy]]` rule."""

    name: str
    action: str
    unit: str | None = None
    agent: str | None = None
    kind: str | None = None
    tool: str | None = None
    path: str | None = None
    command: str | None = None

    def matches(self, facts: Mapping[str, str | None]) -> bool:
        """Whether every key the rule gives matches the question's `facts`."""
        for key in _MATCH_KEYS:
            want = getattr(self, key)
            if want is None:
                continue
            have = facts.get(key)
            if have is None:
                return False
            if key == "command":
                if re.search(want, have) is None:
                    return False
            elif not fnmatch.fnmatchcase(have, want):
                return False
        return True


def parse_rules(value: object) -> tuple[list[Rule], list[tuple[tuple[str | int, ...], str]]]:
    """The rules of a `policy` array, and its problems as (path below it, message)."""
    rules: list[Rule] = []
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if type(value) is not list:
        return [], [((), "expected an array of tables ([[policy]])")]
    for index, table in enumerate(value):
        if type(table) is not dict:
            problems.append(((index,), "expected a table"))
            continue
        bad = False
        for key, item in table.items():
            if key not in _RULE_KEYS:
                problems.append(((index, key), f"unknown key (keys: {', '.join(_RULE_KEYS)})"))
                bad = True
            elif type(item) is not str:
                problems.append(((index, key), "expected a string"))
                bad = True
        action = table.get("action")
        if action not in ACTIONS:
            problems.append(((index, "action"), f"expected one of {', '.join(ACTIONS)}"))
            bad = True
        command = table.get("command")
        if isinstance(command, str):
            try:
                re.compile(command)
            except re.error as exc:
                problems.append(((index, "command"), f"not a regular expression: {exc}"))
                bad = True
        if not bad:
            fields = {k: table[k] for k in _MATCH_KEYS if k in table}
            name = table.get("name") or f"policy[{index}]"
            rules.append(Rule(name, str(action), **fields))
    return rules, problems


def facts_of(
    unit: str, agent: str, kind: str | None, data: Mapping[str, Any] | None
) -> dict[str, str | None]:
    """What rules match on, from a question and where it comes from."""
    data = data or {}

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    return {
        "unit": unit,
        "agent": agent,
        "kind": text("tool_kind") or kind,
        "tool": text("tool"),
        "path": text("path"),
        "command": text("command"),
    }


def decide(rules: Sequence[Rule], facts: Mapping[str, str | None]) -> tuple[str, Rule | None]:
    """The action for a question (`ask` when no rule matches) and the rule that gave it."""
    for rule in rules:
        if rule.matches(facts):
            return rule.action, rule
    return "ask", None


def choose_option(action: str, options: Sequence[str]) -> str:
    """The answer that carries `action` (allow or deny): the option that says
    so when there are options, else the word itself (adapters read it as yes/no)."""
    words = _ALLOW_WORDS if action == "allow" else _DENY_WORDS
    for option in options:
        folded = option.casefold()
        if folded in words or any(folded.startswith(w + " ") for w in words):
            return option
    return action
