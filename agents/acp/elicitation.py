"""A structured question (`elicitation/create`, form mode): the question the
human sees, with its JSON schema, and the response an answer makes.

ACP's elicitation is an unstable part of the protocol (agent-client-protocol
0.12 of the Python SDK has it; the client announces `elicitation: {form: {}}`
in its capabilities). The answer, given in the inbox, is JSON (an object with
the schema's properties), or text: for a schema of one property its value; else
one of the choices of the one property that has choices (`enum`, or `oneOf` /
`anyOf` of `const`s, as claude-agent-acp renders Claude's AskUserQuestion: the
question's options are the inbox item's options); else the value of the one
free-text property (AskUserQuestion's "Other" field). `decline`/`no` declines
and `cancel` cancels.
"""

from __future__ import annotations

from typing import Any

import orjson

_DECLINE = frozenset({"decline", "no", "n", "reject", "deny"})
_CANCEL = frozenset({"cancel"})


def _question(params: dict[str, Any]) -> tuple[str, list[str], dict[str, Any]]:
    """The question's text, its options (the choices of its one property that has
    choices, if there is just one such) and its data (`schema`, `mode`, the tool
    call it is for)."""
    schema = params.get("requestedSchema")
    message = params.get("message")
    data: dict[str, Any] = {"mode": params.get("mode") or "form"}
    if isinstance(schema, dict):
        data["schema"] = schema
    if isinstance(params.get("toolCallId"), str):
        data["tool_call"] = params["toolCallId"]
    if isinstance(params.get("url"), str):
        data["url"] = params["url"]
    with_choices = [c for c in _properties(params).values() if _choices(c)]
    options = [const for const, _ in _choices(with_choices[0])] if len(with_choices) == 1 else []
    return (str(message) if message else "The agent asks for details"), options, data


def _properties(params: dict[str, Any]) -> dict[str, Any]:
    schema = params.get("requestedSchema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return properties if isinstance(properties, dict) else {}


def _choices(spec: Any) -> list[tuple[str, str]]:
    """A property's choices as (value, title): its `enum`, or the `const`s of its
    `oneOf`/`anyOf` (of `items` for an array)."""
    if not isinstance(spec, dict):
        return []
    if spec.get("type") == "array" and isinstance(spec.get("items"), dict):
        spec = spec["items"]
    if isinstance(spec.get("enum"), list):
        return [(str(v), str(v)) for v in spec["enum"]]
    found = []
    for key in ("oneOf", "anyOf"):
        for option in spec.get(key) or ():
            if isinstance(option, dict) and "const" in option:
                found.append((str(option["const"]), str(option.get("title") or option["const"])))
    return found


def _coerce(value: str, spec: Any) -> Any:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "boolean":
        return value.strip().casefold() in ("y", "yes", "true", "1", "on")
    if kind in ("integer", "number"):
        try:
            return int(value) if kind == "integer" else float(value)
        except ValueError:
            return value
    return value


def _response(params: dict[str, Any], answer: str) -> dict[str, Any]:
    """The `elicitation/create` response for the human's answer."""
    text = answer.strip()
    folded = text.casefold()
    if folded in _CANCEL:
        return {"action": "cancel"}
    if folded in _DECLINE:
        return {"action": "decline"}
    properties = _properties(params)
    if text.startswith("{"):
        try:
            content = orjson.loads(text)
        except orjson.JSONDecodeError:
            content = None
        if isinstance(content, dict):
            return {"action": "accept", "content": content}
    if len(properties) == 1:
        ((name, spec),) = properties.items()
        picked = _pick(text, spec)
        return {
            "action": "accept",
            "content": {name: _coerce(text, spec) if picked is None else picked},
        }
    picks = [(name, _pick(text, spec)) for name, spec in properties.items()]
    picks = [(name, value) for name, value in picks if value is not None]
    if len(picks) == 1:
        return {"action": "accept", "content": dict(picks)}
    free = [
        name
        for name, spec in properties.items()
        if isinstance(spec, dict) and spec.get("type") == "string" and not _choices(spec)
    ]
    if len(free) == 1:
        return {"action": "accept", "content": {free[0]: text}}
    return {"action": "accept", "content": {"answer": text}}


def _pick(text: str, spec: Any) -> Any:
    """The value of the choice of `spec` that `text` names (by value or title, any
    case; a list of it for an array), or None."""
    folded = text.casefold()
    for value, title in _choices(spec):
        if folded in (value.casefold(), title.casefold()):
            return [value] if isinstance(spec, dict) and spec.get("type") == "array" else value
    return None
