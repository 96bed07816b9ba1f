"""A throwaway OpenSSH server on 127.0.0.1, for tests and benchmarks.

    with running_sshd() as sshd:
        dialer = SshDialer(sshd.host, port=sshd.port, user=sshd.user,
                           identity=(sshd.client_key,), host_key=sshd.host_key)

It has its own host key, client key, `authorized_keys` and config (key-only
login, no PAM) in a temporary folder, and touches nothing of the system's ssh
setup (see "sshd on loopback, for tests" in ../shared/RECIPES.md). `sshd`
needs its privilege-separation folder `/run/sshd`: as root we create it if it
is missing, or run sshd in a mount namespace of its own with a private `/run`.

This module imports nothing from the tests, so the benchmarks can load it by
path. `sshd_unavailable()` says why sshd cannot run here (or None).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

__all__ = ["SSHD", "Sshd", "keygen", "running_sshd", "sshd_unavailable"]

#: The server binary (openssh-server).
SSHD = "/usr/sbin/sshd"
#: Seconds to wait for sshd to accept connections.
START_TIMEOUT = 10.0

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_ed25519
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
LogLevel ERROR
"""


@attrs.frozen
class Sshd:
    """A running throwaway sshd.

    Attributes:
        port: the port it listens on (127.0.0.1).
        user: the user it lets in (the one running the tests).
        dir: its folder: keys, config, `authorized_keys`, `log`.
        client_key: the private key `authorized_keys` accepts.
        host_key: its host key as an OpenSSH public key line (`ssh-ed25519 AAAA...`).
        host_fingerprint: the same key's `SHA256:...` fingerprint.
    """

    port: int
    user: str
    dir: Path
    client_key: str
    host_key: str
    host_fingerprint: str
    host: str = "127.0.0.1"

    @property
    def known_hosts_line(self) -> str:
        """The line a `known_hosts` file holds for this server."""
        return f"[{self.host}]:{self.port} {self.host_key}\n"

    def log(self) -> str:
        """What sshd wrote to its stderr so far (errors only)."""
        try:
            return (self.dir / "log").read_text(errors="replace")
        except OSError:
            return ""


def sshd_unavailable() -> str | None:
    """Why a throwaway sshd cannot run here, or None if it can."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (apt-get install openssh-client)"
    if not os.path.isdir("/run/sshd") and os.geteuid() != 0:
        return "sshd needs /run/sshd, and only root may create it"
    return None


def keygen(path: Path, comment: str = "latis-test") -> str:
    """Make an ed25519 key pair at `path` (and `path`.pub); return the public line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return Path(f"{path}.pub").read_text().strip()


def fingerprint(path: Path) -> str:
    """The `SHA256:...` fingerprint of the public key file at `path`."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _argv(config: Path) -> list[str]:
    sshd = [SSHD, "-D", "-e", "-f", str(config)]
    if os.path.isdir("/run/sshd"):
        return sshd
    with contextlib.suppress(OSError):
        os.makedirs("/run/sshd", mode=0o755)
        return sshd
    # /run is read-only here: a private /run in a mount namespace of its own.
    script = 'mount -t tmpfs none /run && mkdir -p /run/sshd && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *sshd]


@contextlib.contextmanager
def running_sshd() -> Iterator[Sshd]:
    """Start a throwaway sshd on 127.0.0.1 (a free port); stop it on exit.

    Raises:
        RuntimeError: sshd did not start (its log is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="latis-sshd-") as tmp:
        folder = Path(tmp)
        host_key = keygen(folder / "host_ed25519", "latis-test-host")
        client_line = keygen(folder / "client_ed25519", "latis-test-client")
        (folder / "authorized_keys").write_text(client_line + "\n")
        port = _free_port()
        config = folder / "sshd_config"
        config.write_text(CONFIG.format(port=port, dir=folder))
        with open(folder / "log", "wb") as log:
            process = subprocess.Popen(
                _argv(config), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _listening(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"sshd did not start on 127.0.0.1:{port}: "
                        f"{(folder / 'log').read_text(errors='replace').strip()}"
                    )
                time.sleep(0.01)
            yield Sshd(
                port=port,
                user=getpass.getuser(),
                dir=folder,
                client_key=str(folder / "client_ed25519"),
                host_key=" ".join(host_key.split()[:2]),
                host_fingerprint=fingerprint(folder / "host_ed25519.pub"),
            )
        finally:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
