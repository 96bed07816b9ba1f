"""`_HostKeyCheck`: the ssh transport's decision on the host keys asyncssh could
not match itself (pinned keys, known_hosts, trust on first use), and recording
a key accepted on first use."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .addresses import _known_hosts_pattern

if TYPE_CHECKING:
    import asyncssh

    from .dialer import SshDialer


log = logging.getLogger("latis.transport.ssh")


class _HostKeyCheck:
    """Decides on the host keys that asyncssh could not match itself.

    With a pinned key line, asyncssh trusts that key only; with a pinned
    fingerprint, or by known_hosts, every key it does not trust comes here:
    one that known_hosts knows another key for has changed; one it does not
    know is new (accepted with `accept_new`, and added to the file once the
    login succeeds).
    """

    def __init__(self, dialer: SshDialer, where: str) -> None:
        self.dialer = dialer
        self.where = where
        path = dialer.known_hosts or os.path.join("~", ".ssh", "known_hosts")
        self.path = Path(path).expanduser()
        self.known: Any = None
        #: Why the key was refused, for the ConnectError.
        self.refusal: str | None = None
        #: (host, port, key) to add to known_hosts once logged in.
        self.new: tuple[str, int, Any] | None = None

    def known_hosts(self) -> Any:
        """The `known_hosts` argument for asyncssh."""
        import asyncssh

        pin = self.dialer.host_key
        if pin is not None:
            if pin.startswith("SHA256:"):
                return ([], [], [])
            return ([asyncssh.import_public_key(pin)], [], [])
        if self.path.exists():
            self.known = asyncssh.read_known_hosts(str(self.path))
            return self.known
        return ([], [], [])

    def validate(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        import asyncssh

        fingerprint = key.get_fingerprint("sha256")
        presented = f"{key.get_algorithm()} key {fingerprint}"
        pin = self.dialer.host_key
        if pin is not None:
            if pin == fingerprint:
                return True
            pinned = pin if pin.startswith("SHA256:") else self._fingerprint_of(pin)
            self.refusal = (
                f"its host key ({presented}) is not the pinned host_key ({pinned}): "
                f"refusing to connect"
            )
            return False
        trusted: Sequence[asyncssh.SSHKey] = ()
        if self.known is not None:
            trusted = asyncssh.match_known_hosts(
                self.known, host, addr, None if port == 22 else port
            )[0]
        pattern = _known_hosts_pattern(host, port)
        if trusted:
            self.refusal = (
                f"its host key has CHANGED: it presents an {presented}, but {self.path} "
                f"holds another key for {pattern}. Someone may be intercepting the "
                f"connection, or the host was reinstalled; if you know it was, remove "
                f"the old key (ssh-keygen -R '{pattern}' -f {self.path}) and connect again"
            )
            return False
        if self.dialer.accept_new:
            self.new = (host, port, key)
            return True
        keyscan = f"ssh-keyscan -p {port} {host}" if port != 22 else f"ssh-keyscan {host}"
        self.refusal = (
            f"the host is unknown: its {presented} is not in {self.path}. Trust it on "
            f"first use with accept_new = true, or pin it (once checked) with "
            f'host_key = "{fingerprint}", or add it to known_hosts: '
            f"{keyscan} >> {self.path}"
        )
        return False

    @staticmethod
    def _fingerprint_of(line: str) -> str:
        import asyncssh

        try:
            return str(asyncssh.import_public_key(line).get_fingerprint("sha256"))
        except (asyncssh.KeyImportError, ValueError):
            return line

    def record(self) -> None:
        """Add the key accepted on first use to known_hosts (a warning if we cannot)."""
        if self.new is None:
            return
        host, port, key = self.new
        fields = key.export_public_key("openssh").decode().split()
        line = f"{_known_hosts_pattern(host, port)} {fields[0]} {fields[1]}\n"
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as file:
                if file.tell() > 0 and not self.path.read_bytes().endswith(b"\n"):
                    line = "\n" + line
                file.write(line)
        except OSError as exc:
            log.warning("could not add %s's host key to %s: %s", self.where, self.path, exc)
            return
        log.warning(
            "%s: added its %s key %s to %s (accept_new)",
            self.where,
            key.get_algorithm(),
            key.get_fingerprint("sha256"),
            self.path,
        )
