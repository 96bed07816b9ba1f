"""The `openai` adapter's options: which there are, how each is checked (with a
message that names the option), the API key kept out of reprs and logs, and the
settings a session sends with each request.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "LOOPBACK",
    "OPTIONS",
    "SESSION_OPTIONS",
    "Secret",
    "Settings",
    "as_float",
    "as_int",
    "as_str",
    "check_base_url",
    "check_header",
    "completions_url",
    "option_error",
    "read_key",
]

#: The agent's options (besides `header.NAME`).
OPTIONS = (
    "api_key_env",
    "base_url",
    "max_tokens",
    "model",
    "retries",
    "system",
    "temperature",
    "timeout",
)
SESSION_OPTIONS = ("max_tokens", "model", "system", "temperature")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONVENTIONAL_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Headers `header.NAME` may not set: secrets go through api_key_env, and
#: these others httpx (or the adapter) must control.
_REFUSED_HEADERS = {
    "authorization": "secret",
    "proxy-authorization": "secret",
    "api-key": "secret",
    "x-api-key": "secret",
    "content-length": "framing",
    "content-type": "framing",
    "host": "framing",
    "transfer-encoding": "framing",
    "connection": "framing",
}
LOOPBACK = re.compile(r"^(localhost|127(\.\d{1,3}){3}|\[?::1\]?)$", re.IGNORECASE)



class Secret:
    """A value that does not show itself in reprs, str() or tracebacks' locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        """Return `text` with every occurrence of the secret masked."""
        return text.replace(self._value, "***") if self._value in text else text




def option_error(message: str) -> ValueError:
    return ValueError(f"openai agent: {message}")


def check_base_url(value: str) -> str:
    if not value:
        raise option_error("option 'base_url' is required, e.g. -o base_url=http://127.0.0.1:11434/v1")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise option_error(f"option 'base_url' is not a URL ({exc}): {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise option_error(
            f"option 'base_url' must be an http:// or https:// URL with a host, got {value!r}"
        )
    if parts.username is not None or parts.password is not None:
        # Not echoed: it holds credentials.
        raise option_error(
            "option 'base_url' must not hold credentials (user:password@): put the API key "
            "in an environment variable and name it with -o api_key_env=NAME"
        )
    if parts.fragment:
        raise option_error(f"option 'base_url' must not have a #fragment, got {value!r}")
    if parts.path.rstrip("/").endswith("/chat/completions"):
        raise option_error(
            f"option 'base_url' is the API root, without /chat/completions "
            f"(e.g. http://127.0.0.1:11434/v1), got {value!r}"
        )
    return value


def completions_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/") + "/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def as_float(name: str, value: Any, *, minimum: float, above: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise option_error(f"option {name!r} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise option_error(f"option {name!r} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < minimum or (above and number == minimum):
        bound = f"> {minimum:g}" if above else f">= {minimum:g}"
        raise option_error(f"option {name!r} must be a number {bound}, got {value!r}")
    return number


def as_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise option_error(f"option {name!r} must be a whole number, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise option_error(f"option {name!r} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise option_error(f"option {name!r} must be >= {minimum}, got {value!r}")
    return number


def as_str(name: str, value: Any, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise option_error(f"option {name!r} must be text, got {value!r}")
    if required and not value:
        raise option_error(f"option {name!r} must not be empty")
    return value


def read_key(name: str) -> Secret:
    if not _ENV_NAME.fullmatch(name):
        # Not echoed: a value that is no variable name may be the key itself.
        raise option_error(
            "option 'api_key_env' must be the NAME of an environment variable that holds "
            "the key (letters, digits and _), not the key itself"
        )
    shown = repr(name) if _CONVENTIONAL_ENV_NAME.fullmatch(name) else "named by api_key_env"
    value = os.environ.get(name)
    if value is None:
        raise option_error(f"environment variable {shown} (option api_key_env) is not set")
    value = value.strip()
    if not value:
        raise option_error(f"environment variable {shown} (option api_key_env) is empty")
    if any(c in value for c in "\r\n\0"):
        raise option_error(f"environment variable {shown} (option api_key_env) holds a line break")
    return Secret(value)


def check_header(name: str, value: str) -> None:
    if not _HEADER_NAME.fullmatch(name):
        raise option_error(f"option 'header.{name}': {name!r} is not a valid HTTP header name")
    why = _REFUSED_HEADERS.get(name.lower())
    if why == "secret":
        raise option_error(
            f"option 'header.{name}' is refused: options show on the command line; put the "
            f"key in an environment variable and name it with -o api_key_env=NAME"
        )
    if why is not None:
        raise option_error(f"option 'header.{name}' is refused: the adapter sets {name} itself")
    if any(c in value for c in "\r\n\0"):
        raise option_error(f"option 'header.{name}' must be one line")


class Settings:
    """What a session sends with each request (the agent's, overridden per session)."""

    __slots__ = ("max_tokens", "model", "system", "temperature")

    def __init__(
        self, model: str, system: str | None, temperature: float | None, max_tokens: int | None
    ) -> None:
        self.model = model
        self.system = system
        self.temperature = temperature
        self.max_tokens = max_tokens

    def override(self, options: Mapping[str, Any]) -> Settings:
        unknown = sorted(set(options) - set(SESSION_OPTIONS))
        if unknown:
            raise option_error(
                f"unknown session option {unknown[0]!r} (known: {', '.join(SESSION_OPTIONS)})"
            )
        new = Settings(self.model, self.system, self.temperature, self.max_tokens)
        if "model" in options:
            new.model = as_str("model", options["model"], required=True)
        if "system" in options:
            new.system = as_str("system", options["system"]) or None
        if "temperature" in options:
            new.temperature = as_float("temperature", options["temperature"], minimum=0)
        if "max_tokens" in options:
            new.max_tokens = as_int("max_tokens", options["max_tokens"], minimum=1)
        return new
