"""What provisioners whose units dial home share: the enrollment, the unit's
command line, and the shell script that starts it on a fresh machine. Public:
cloud provisioner plugins (cloud-gcp, cloud-azure, …) build on it too.

A unit started on a cloud instance, a pod or a VM has no address cmdr knows:
it dials cmdr's listener (`latis-unit --connect URL --secret-file FILE`) and
proves the enrollment cmdr issued for it. The provisioner gets that
enrollment in one of two ways:

- from the controller, through an *enroller* (`DialsHome.set_enroller`): an
  async callable `(unit, address) -> dict` with the shape of
  `DialIns.enroll`'s answer (`urls`, `secret`, `fingerprint`). The
  provisioner calls it only when it makes a new machine, never for one that
  already runs (a new enrollment revokes the old one, which the running
  machine still proves);
- from its own options, `connect` (the URL) and `secret_file` (a file on the
  controller's host holding the line `latis unit enroll NAME` printed), for
  a controller that does not pass an enroller.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any, Literal

import attrs
import trio

from latis_core import ProvisionContext, ProvisionError
from latis_core._plugins.provision import Enroller

__all__ = ["DialHome", "DialsHome", "Enroller", "Orphan", "unit_script"]


@attrs.frozen
class Orphan:
    """Something a provisioner made for a unit that is not in config (any more):
    what `orphans(units)` returns, for `latis unit list`.

    Attributes:
        unit: the unit it was made for (its tag or label).
        resource: what it is, as the back end names it ("i-0abc…", "latis-box").
        state: its state in the back end's words ("running", "Pending").
        detail: more, for people (type, address, namespace).
    """

    unit: str
    resource: str
    state: str
    detail: str = ""


@attrs.frozen
class DialHome:
    """Where a unit dials and the enrollment line it proves (never shown in reprs)."""

    unit: str
    url: str
    secret: str = attrs.field(repr=False)

    def argv(self, context: ProvisionContext, secret_path: str) -> list[str]:
        """`latis-unit`'s arguments (without the command) for this unit."""
        args = ["--connect", self.url, "--secret-file", secret_path, "--name", self.unit,
                "--agent", context.agent]
        for key, value in context.agent_options.items():
            args += ["-o", f"{key}={value}"]
        if context.agent_command:
            args += ["--", *context.agent_command]
        return args


class DialsHome:
    """A mixin for provisioners whose units dial home; see the module's docstring.

    Subclasses have `self.context` and `_error(message)`, and options with
    `cmdr_address`, `connect` and `secret_file`.
    """

    context: ProvisionContext
    options: Any
    _enroller: Enroller | None = None
    #: Called with a short line at each step (the controller's progress), if set.
    progress: Callable[[str], None] | None = None

    def _error(self, message: str) -> ProvisionError:
        raise NotImplementedError

    def set_enroller(self, enroller: Enroller | None) -> None:
        """Take the controller's way to enroll a unit (called when a new machine is made)."""
        self._enroller = enroller

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    async def _dial_home(self, unit: str | None = None) -> DialHome:
        """A fresh enrollment for `unit` (default: this provisioner's unit)."""
        unit = unit or self.context.unit
        options = self.options
        if self._enroller is not None:
            try:
                enrolled = await self._enroller(unit, options.cmdr_address)
            except (LookupError, ValueError) as exc:
                raise self._error(f"cannot enroll unit {unit!r}: {exc}") from exc
            urls = list(enrolled.get("urls") or [])
            if not urls or not enrolled.get("secret"):
                raise self._error(f"the enrollment of unit {unit!r} has no URL or no secret")
            return DialHome(unit, options.connect or urls[0], str(enrolled["secret"]))
        if options.connect and options.secret_file:
            path = await trio.Path(options.secret_file).expanduser()
            try:
                line = (await path.read_text()).strip()
            except OSError as exc:
                raise self._error(f"cannot read secret_file {str(path)!r}: "
                                  f"{exc.strerror or exc}") from exc
            if not line.startswith("latis-enroll-"):
                raise self._error(f"secret_file {str(path)!r} holds no enrollment line "
                                  "(the one `latis unit enroll NAME` prints)")
            return DialHome(unit, options.connect, line)
        raise self._error(
            "its unit dials home, but there is no enrollment to give it: the controller "
            "passes one (set_enroller), or set both `connect` (cmdr's listener URL) and "
            "`secret_file` (the enrollment line from `latis unit enroll NAME`)"
        )


def _systemd_quote(word: str) -> str:
    # systemd reads C-style double-quoted words; '%' starts a specifier and '$' a variable.
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def unit_script(
    dial_home: DialHome,
    context: ProvisionContext,
    *,
    unit_dir: str,
    unit_command: str | None,
    package: str,
    install: str | None = None,
    service: Literal["auto", "systemd", "background"] = "auto",
) -> str:
    """A POSIX shell script that installs `latis-unit` if needed, writes the
    enrollment secret (0600), and starts the unit so that it dials home.

    `unit_command` is the path of a `latis-unit` already on the machine; when
    None, the script uses the one on PATH, else makes a venv in UNIT_DIR/venv and
    pip-installs `package` there. Under systemd (`service`: auto finds out)
    the unit is a service that restarts; otherwise it runs detached with its
    pid in UNIT_DIR/UNIT.pid and its log in UNIT_DIR/UNIT.log.
    """
    unit = dial_home.unit
    q = shlex.quote
    secret_path = f"{unit_dir}/{unit}.secret"
    argv = dial_home.argv(context, secret_path)
    if unit_command is not None:
        find = f"LATIS_UNIT={q(unit_command)}"
    else:
        find = "\n".join([
            "LATIS_UNIT=$(command -v latis-unit || true)",
            'if [ -z "$LATIS_UNIT" ]; then',
            '    if [ ! -x "$LATIS_DIR/venv/bin/latis-unit" ]; then',
            '        python3 -m venv "$LATIS_DIR/venv"',
            f'        "$LATIS_DIR/venv/bin/pip" install --quiet {q(package)}',
            "    fi",
            '    LATIS_UNIT="$LATIS_DIR/venv/bin/latis-unit"',
            "fi",
        ])
    service_name = f"latis-unit-{unit}.service"
    pid = q(f"{unit_dir}/{unit}.pid")
    exec_args = " ".join(_systemd_quote(a) for a in argv)
    use_systemd = {
        "systemd": "true",
        "background": "false",
        "auto": "[ -d /run/systemd/system ]",
    }[service]
    lines = [
        "#!/bin/sh",
        f"# latis unit {unit}: written by a latis provisioner. Installs latis-unit if needed,",
        "# writes the enrollment secret and starts the unit, which dials cmdr's listener.",
        "set -eu",
        "umask 077",
        f"LATIS_DIR={q(unit_dir)}",
        'mkdir -p "$LATIS_DIR"',
        # A quoted heredoc: the line is written as is, and never appears in a process list.
        f"cat > {q(secret_path)} <<'LATIS_ENROLLMENT'",
        dial_home.secret,
        "LATIS_ENROLLMENT",
    ]
    if install:
        lines += ["# install (the provisioner's `install` option)", install]
    lines += [
        find,
        f"if {use_systemd}; then",
        f"    printf '%s\\n' '[Unit]' {q(f'Description=latis unit {unit}')}"
        " 'After=network-online.target' '' '[Service]'"
        f' "ExecStart=$LATIS_UNIT "{q(exec_args)}'
        " 'Restart=always' 'RestartSec=2' '' '[Install]' 'WantedBy=multi-user.target'"
        f" > /etc/systemd/system/{service_name}",
        "    systemctl daemon-reload",
        f"    systemctl enable --now --no-block {service_name}",
        "else",
        # Run twice (a VM started again), the script leaves a unit that runs alone.
        f"    if [ -f {pid} ] && kill -0 \"$(cat {pid})\" 2>/dev/null; then exit 0; fi",
        f"    set -- \"$LATIS_UNIT\" {' '.join(q(a) for a in argv)}",
        # A session of its own where there is setsid (Linux; macOS has none).
        '    if command -v setsid >/dev/null 2>&1; then set -- setsid "$@"; fi',
        f'    nohup "$@" >> {q(f"{unit_dir}/{unit}.log")} 2>&1 < /dev/null &',
        f"    echo $! > {pid}",
        "fi",
    ]
    return "\n".join(lines) + "\n"

