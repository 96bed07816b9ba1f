"""A permission question (`session/request_permission`): the labels the human
picks from, and the outcome an answer (an option's id or name, yes or no) picks."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("latis.agent.acp")

_YES = frozenset({"y", "yes", "allow", "ok", "approve", "true", "1"})
_NO = frozenset({"n", "no", "deny", "reject", "false", "0"})


def _tool_details(tool: Any, options: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What a permission request is about, for cmdr's approval policy and the
    inbox: the tool's title (`tool`), ACP kind (`tool_kind`: edit, execute, ...),
    the first path it touches and the command it runs, when it says."""
    details: dict[str, Any] = {"option_ids": [str(o.get("optionId")) for o in options]}
    if not isinstance(tool, dict):
        return details
    if isinstance(tool.get("title"), str):
        details["tool"] = tool["title"]
    if isinstance(tool.get("kind"), str):
        details["tool_kind"] = tool["kind"]
    raw = tool.get("rawInput")
    locations = tool.get("locations")
    if isinstance(locations, list) and locations and isinstance(locations[0], dict):
        if isinstance(locations[0].get("path"), str):
            details["path"] = locations[0]["path"]
    if isinstance(raw, dict):
        for key in ("path", "file_path", "abs_path"):
            if "path" not in details and isinstance(raw.get(key), str):
                details["path"] = raw[key]
        command = raw.get("command")
        if isinstance(command, list):
            command = " ".join(str(word) for word in command)
        if isinstance(command, str):
            details["command"] = command
    return details


def _option_labels(options: list[dict[str, Any]]) -> list[str]:
    """What the human picks from: the options' names, or their ids if names repeat."""
    names = [str(o.get("name") or o.get("optionId")) for o in options]
    if len(set(names)) == len(names):
        return names
    return [str(o.get("optionId")) for o in options]


def _choose(options: list[dict[str, Any]], answer: str) -> dict[str, Any]:
    """The outcome for the human's answer: the option whose id or name it is
    (or the first allow option for yes, reject option for no); for anything
    else the first reject option, or `cancelled` if there is none."""

    def selected(option: dict[str, Any]) -> dict[str, Any]:
        return {"outcome": "selected", "optionId": option.get("optionId")}

    def first(*kinds: str) -> dict[str, Any] | None:
        for kind in kinds:
            for option in options:
                if option.get("kind") == kind:
                    return option
        return None

    text = answer.strip()
    for key in ("optionId", "name"):
        for option in options:
            if option.get(key) == text:
                return selected(option)
    folded = text.casefold()
    for key in ("optionId", "name"):
        for option in options:
            if str(option.get(key, "")).casefold() == folded:
                return selected(option)
    if folded in _YES:
        allow = first("allow_once", "allow_always")
        return selected(allow) if allow is not None else {"outcome": "cancelled"}
    if folded not in _NO:
        log.info("permission answer %r matches no option: taken as no", answer)
    reject = first("reject_once", "reject_always")
    return selected(reject) if reject is not None else {"outcome": "cancelled"}
