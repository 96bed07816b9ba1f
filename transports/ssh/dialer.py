"""`SshDialer`: the ssh transport's options (validated and converted as attrs
fields) and its `ssh://` URLs; `connect()` hands over to `connection`."""

from __future__ import annotations

import base64
import binascii
import os
import re
import shlex
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import attrs

from .addresses import _where
from .connection import _open

if TYPE_CHECKING:
    from .stream import SshStream


_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}=?")


def _argv(value: str | Sequence[str]) -> tuple[str, ...]:
    # A string is split as a shell would (config and URLs give one).
    return tuple(shlex.split(value)) if isinstance(value, str) else tuple(value)


def _paths(value: str | Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(os.fspath(path) for path in value)


def _optional_path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)


def _check_host_key(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    fields = value.split()
    if len(fields) == 1 and _FINGERPRINT.fullmatch(value):
        return
    if len(fields) >= 2 and not fields[0].startswith("SHA256:"):
        try:
            base64.b64decode(fields[1], validate=True)
        except (binascii.Error, ValueError):
            pass
        else:
            return
    raise ValueError(
        f"host_key must be an OpenSSH public key line ('ssh-ed25519 AAAA...') or a "
        f"SHA256 fingerprint ('SHA256:' and 43 base64 characters), not {value!r}"
    )


def _check_command(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value or not value[0]:
        raise ValueError("an ssh dialer needs a command to run on the host")


def _check_port(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 < value < 65536:
        raise ValueError(f"port must be within 1-65535, not {value}")


def _check_host(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or any(c.isspace() for c in value) or value.startswith("-"):
        raise ValueError(f"not a host name: {value!r}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_URL_SINGLE = {"command", "host_key", "accept_new", "known_hosts", "connect_timeout", "grace"}


@attrs.frozen
class SshDialer:
    """Dial a unit by running its command on a host over ssh.

    Attributes:
        host: the host name or address (an alias from ~/.ssh/config works).
        user: who to log in as (default: the ssh config's `User`, or ours).
        port: the ssh port.
        command: the unit's command line on the host (a string is split as
            by a shell).
        identity: private key files to log in with, and only these; by default
            the usual keys in ~/.ssh and those of the ssh agent.
        known_hosts: the known_hosts file (default ~/.ssh/known_hosts).
        host_key: the host's key, pinned: an OpenSSH public key line
            (`ssh-ed25519 AAAA...`) or the `SHA256:...` fingerprint of the key
            it presents. Then known_hosts is not used.
        accept_new: trust on first use: accept the key of a host that
            known_hosts does not know, and add it there. A changed key is
            always refused.
        connect_timeout: seconds to log in and start the command.
        grace: seconds the command gets to exit after its stdin closes, before
            SIGTERM (and as long again before SIGKILL).
    """

    host: str = attrs.field(validator=_check_host)
    user: str | None = None
    port: int = attrs.field(default=22, validator=_check_port)
    command: tuple[str, ...] = attrs.field(
        default=("latis-unit", "--stdio"), converter=_argv, validator=_check_command
    )
    identity: tuple[str, ...] = attrs.field(default=(), converter=_paths)
    known_hosts: str | None = attrs.field(default=None, converter=_optional_path)
    host_key: str | None = attrs.field(default=None, validator=_check_host_key)
    accept_new: bool = False
    connect_timeout: float = attrs.field(default=15.0)
    grace: float = attrs.field(default=5.0)

    def __attrs_post_init__(self) -> None:
        if self.host_key is not None and self.accept_new:
            raise ValueError("host_key pins the host's key: accept_new does not apply to it")
        if not self.connect_timeout > 0:
            raise ValueError(f"connect_timeout must be above 0, not {self.connect_timeout}")
        if not self.grace >= 0:
            raise ValueError(f"grace must be 0 or more, not {self.grace}")

    def connect(self) -> AbstractAsyncContextManager[SshStream]:
        """Log in, start the command, and yield a stream to its stdin and stdout.

        Leaving the block ends the command (see the module's docstring) and
        the connection, also when the block is cancelled.

        Raises:
            ConnectError: the connection, the host key, the login, or starting
                the command failed; the message names user@host:port and why.
        """
        return _open(self)

    def describe(self) -> str:
        """Say where this dialer goes: `ssh: user@host:port`."""
        return f"ssh: {_where(self.user, self.host, self.port)}"

    @classmethod
    def from_url(cls, url: str) -> SshDialer:
        """Make a dialer from `ssh://[user@]host[:port][?key=value&...]`.

        Keys: `command` (split as by a shell), `host_key`, `accept_new` (1 or
        0), `identity` (may repeat), `known_hosts`, `connect_timeout`, `grace`.
        Values are percent-decoded; `+` stays a plus (base64 has them), so
        write a space as `%20`.

        Raises:
            ValueError: `url` is not such a URL, or a value is wrong.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"not an ssh URL: {url!r}: {exc}") from None
        if parts.scheme != "ssh":
            raise ValueError(f"not an ssh URL (ssh://[user@]host[:port]): {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        if parts.password is not None:
            raise ValueError(f"{url!r} has a password: latis logs in with keys only")
        if parts.path not in ("", "/") or parts.fragment:
            raise ValueError(f"an ssh URL has no path or fragment: {url!r}")
        options: dict[str, Any] = {}
        identity: list[str] = []
        for item in parts.query.split("&") if parts.query else ():
            key, sep, raw = item.partition("=")
            value = unquote(raw)
            if not sep:
                raise ValueError(f"{item!r} in {url!r} is not key=value")
            if key == "identity":
                identity.append(value)
                continue
            if key not in _URL_SINGLE:
                known = ", ".join(sorted(_URL_SINGLE | {"identity"}))
                raise ValueError(f"unknown option {key!r} in {url!r} (known: {known})")
            if key in options:
                raise ValueError(f"{key!r} given twice in {url!r}")
            options[key] = value
        if "accept_new" in options:
            flag = options["accept_new"].lower()
            if flag not in _TRUE | _FALSE:
                raise ValueError(f"accept_new must be 1 or 0, not {options['accept_new']!r}")
            options["accept_new"] = flag in _TRUE
        if "command" in options:
            try:
                options["command"] = shlex.split(options["command"])
            except ValueError as exc:
                raise ValueError(f"cannot split command {options['command']!r}: {exc}") from None
        for key in ("connect_timeout", "grace"):
            if key in options:
                try:
                    options[key] = float(options[key])
                except ValueError:
                    raise ValueError(f"{key} must be a number of seconds") from None
        if identity:
            options["identity"] = identity
        return cls(
            host=parts.hostname,
            user=unquote(parts.username) if parts.username else None,
            port=22 if port is None else port,
            **options,
        )
