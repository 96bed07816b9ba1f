"""A structured question (`elicitation/create`, form mode): the question the
human sees, with its JSON schema, and the response an answer makes.

ACP's elicitation is an unstable part of the protocol (agent-client-protocol
0.12 of the Python SDK has it; the client announces `elicitation: {form: {}}`
in its capabilities). The answer, given in the inbox, is JSON (an object with
the schema's properties), or for a schema of one property its value as text;
`decline`/`no` declines and `cancel` cancels.
"""

from __future__ import annotations

from typing import Any

import orjson

_DECLINE = frozenset({"decline", "no", "n", "reject", "deny"})
_CANCEL = frozenset({"cancel"})


def _question(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The question's text and its data (`schema`, `mode`, the tool call it is for)."""
    schema = params.get("requestedSchema")
    message = params.get("message")
    data: dict[str, Any] = {"mode": params.get("mode") or "form"}
    if isinstance(schema, dict):
        data["schema"] = schema
    if isinstance(params.get("toolCallId"), str):
        data["tool_call"] = params["toolCallId"]
    if isinstance(params.get("url"), str):
        data["url"] = params["url"]
    return (str(message) if message else "The agent asks for details"), data


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
    schema = params.get("requestedSchema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if text.startswith("{"):
        try:
            content = orjson.loads(text)
        except orjson.JSONDecodeError:
            content = None
        if isinstance(content, dict):
            return {"action": "accept", "content": content}
    if isinstance(properties, dict) and len(properties) == 1:
        ((name, spec),) = properties.items()
        return {"action": "accept", "content": {name: _coerce(text, spec)}}
    return {"action": "accept", "content": {"answer": text}}
