"""The acp adapter's errors: what the agent answered (`AcpError`), that it is
gone (`AgentExited`), and the JSON-RPC errors the client answers the agent's
requests with (`_RpcError` and the codes)."""

from __future__ import annotations

from typing import Any

import orjson

# JSON-RPC error codes.
INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002
SERVER_BUSY = -32000


class AcpError(Exception):
    """The agent answered a request with an error (or broke the protocol)."""

    def __init__(self, message: str, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


class AgentExited(AcpError):
    """The agent process ended (or was ended): nothing more can be asked of it."""


class _RpcError(Exception):
    """Answer the agent's request with this JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _rpc_error(error: Any) -> AcpError:
    """An `AcpError` from a JSON-RPC error object, with the agent's details."""
    if not isinstance(error, dict):
        return AcpError(f"the agent answered with a malformed error: {error!r}")
    message = str(error.get("message") or "error")
    code = error.get("code")
    data = error.get("data")
    details = data.get("details") if isinstance(data, dict) else None
    if isinstance(details, str) and details and details not in message:
        message = f"{message}: {details}"
    elif data is not None and details is None:
        text = orjson.dumps(data).decode()
        message = f"{message} {text[:500]}"
    return AcpError(f"{message} (ACP error {code})", code if isinstance(code, int) else None, data)
