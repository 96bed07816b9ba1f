"""The `tart` provisioner: a unit in a macOS (or Linux) VM on Apple silicon, through
the `tart` CLI (Apple's Virtualization.framework; tart runs on macOS only).

The VM is cloned from `image` (a local VM or an OCI image: `tart clone`),
sized (`tart set --cpu --memory --disk-size`), and run headless (`tart run
--no-graphics`, a process in a session of its own that lives as long as the
VM, its output in LOG_DIR/UNIT.tart.log). Once `tart ip` answers, the unit is
started inside through `tart exec -i` (the Tart Guest Agent, in Cirrus Labs'
images) with the same script a cloud instance gets as user-data: it writes
the enrollment line and starts `latis-unit --connect …`, which dials cmdr.
`start_unit = "none"` leaves starting the unit to the image (a LaunchDaemon).

Every tart command runs with a timeout; its own message ends up in the
`ProvisionError`. A VM of our name that this unit did not make is never
touched (tart has no labels: the name is recorded before `tart clone`).

Resources: `vm` (its name), `pid` (of `tart run`, while it runs), `ip`, and
`enrollment`/`enrollment_url` (the line the unit proves, given again at each
start of the VM: the unit does not outlive the VM's processes).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import trio

from latis_core import (
    ProvisionContext,
    ProvisionError,
    ProvisionState,
    ProvisionStatus,
    __version__,
)
from latis_core._plugins.provision import OneAtATime

from .dialhome import DialHome, DialsHome, unit_script

__all__ = ["TartOptions", "TartProvisioner"]

_STATES = {
    "running": ProvisionState.RUNNING,
    "stopped": ProvisionState.STOPPED,
    "suspended": ProvisionState.STOPPED,
}


@attrs.define
class TartOptions:
    """The `tart` provisioner's config table.

    Attributes:
        image: what to clone: a local VM's name or an OCI image
            ("ghcr.io/cirruslabs/macos-sequoia-base:latest").
        name: the VM's name (default "latis-UNIT").
        cpu: virtual CPUs (`tart set --cpu`).
        memory: memory in MiB (`tart set --memory`).
        disk_size: disk size in GB (`tart set --disk-size`).
        tart: the tart executable (a name on PATH, or a path).
        run_args: more arguments for `tart run` (e.g. ["--dir", "src:~/src"]).
        start_unit: "exec" (start the unit through `tart exec`) or "none"
            (the image starts it).
        unit_command: the path of `latis-unit` in the VM; default: the one on
            PATH, else pip-install `package` into UNIT_DIR/venv.
        package: what pip installs in the VM when it has no latis-unit.
        install: shell lines run in the VM before the unit starts.
        unit_dir: the unit's folder in the VM (secret, log, pid).
        cmdr_address: the host name the VM dials (in the enrollment URL).
        connect: cmdr's listener URL (with `secret_file`; see `dialhome`).
        secret_file: a file with the enrollment line (with `connect`).
        timeout: seconds any tart command may take.
        clone_timeout: seconds `tart clone` may take (it may pull an image).
        ip_timeout: seconds to wait for the VM's IP (`tart ip --wait`).
        stop_timeout: seconds `tart stop` waits for a clean shutdown.
    """

    image: str
    name: str | None = None
    cpu: int | None = None
    memory: int | None = None
    disk_size: int | None = None
    tart: str = "tart"
    run_args: list[str] = attrs.field(factory=list)
    start_unit: Literal["exec", "none"] = "exec"
    unit_command: str | None = None
    package: str = f"latis[websocket]=={__version__}"
    install: str | None = None
    unit_dir: str = "/Users/admin/.latis"
    cmdr_address: str | None = None
    connect: str | None = None
    secret_file: str | None = None
    timeout: float = 60.0
    clone_timeout: float = 1800.0
    ip_timeout: int = 120
    stop_timeout: int = 30


def _stderr_summary(stderr: bytes, returncode: int) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    text = "\n".join([line for line in lines if line][-5:])
    return text or f"exit status {returncode}, and nothing on stderr"


class TartProvisioner(DialsHome, OneAtATime):
    """Runs a unit in a tart VM; the unit dials home."""

    Options = TartOptions
    options: TartOptions

    def __init__(self, options: TartOptions, context: ProvisionContext) -> None:
        self.options = options
        self.context = context
        #: The VM's name.
        self.name: str = options.name or "latis-" + re.sub(r"[^A-Za-z0-9_.-]", "-",
                                                           context.unit)
        self._run: trio.Process | None = None
        super().__init__()

    def __repr__(self) -> str:
        return f"<TartProvisioner unit={self.context.unit!r} vm={self.name!r}>"

    def _error(self, message: str) -> ProvisionError:
        return ProvisionError(f"tart provisioner for unit {self.context.unit!r}: {message}")

    def _tart(self) -> str:
        path = shutil.which(self.options.tart)
        if path is None:
            raise self._error(f"{self.options.tart!r} is not on PATH (tart runs on macOS "
                              "on Apple silicon: brew install cirruslabs/cli/tart)")
        return path

    async def _call(self, args: Sequence[str], *, seconds: float | None = None,
                    stdin: bytes | None = None, check: bool = True
                    ) -> subprocess.CompletedProcess[bytes]:
        """Run `tart *args`; on failure (if `check`) raise ProvisionError with tart's words."""
        argv = [self._tart(), *args]
        seconds = self.options.timeout if seconds is None else seconds
        try:
            with trio.fail_after(seconds):
                result = await trio.run_process(argv, stdin=stdin, capture_stdout=True,
                                                capture_stderr=True, check=False)
        except trio.TooSlowError:
            raise self._error(f"tart {args[0]} took more than {seconds:g} s, and was "
                              "stopped") from None
        except OSError as exc:
            raise self._error(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        if check and result.returncode != 0:
            raise self._error(f"tart {args[0]} failed: "
                              f"{_stderr_summary(result.stderr, result.returncode)}")
        return result

    async def _vm(self) -> dict[str, Any] | None:
        """Our VM as `tart list` shows it, or None. A VM of our name that this unit
        did not make is an error."""
        result = await self._call(["list", "--format", "json", "--source", "local"])
        try:
            listed = json.loads(result.stdout or b"[]")
        except ValueError as exc:
            raise self._error(f"tart list printed no JSON: {exc}") from exc
        found = next((vm for vm in listed if vm.get("Name") == self.name), None)
        recorded = self.context.resources.get("vm")
        if found is None:
            return None
        if recorded != self.name:
            raise self._error(f"a VM named {self.name!r} exists and was not made for this "
                              "unit: delete it, or set `name` to another")
        return dict(found)

    async def _enrollment(self) -> DialHome:
        """The unit's enrollment: the recorded one, else a new one (recorded)."""
        resources = self.context.resources
        line, url = resources.get("enrollment"), resources.get("enrollment_url")
        if line and url:
            return DialHome(self.context.unit, url, line)
        dial_home = await self._dial_home()
        resources.set("enrollment", dial_home.secret)
        resources.set("enrollment_url", dial_home.url)
        return dial_home

    async def _create(self) -> None:
        """Clone and size the VM unless ours exists."""
        if await self._vm() is not None:
            return
        o = self.options
        self.context.resources.set("vm", self.name)  # before the clone: see the docstring
        self._say(f"cloning {o.image} as VM {self.name}")
        await self._call(["clone", o.image, self.name], seconds=o.clone_timeout)
        sizes = []
        for flag, value in (("--cpu", o.cpu), ("--memory", o.memory),
                            ("--disk-size", o.disk_size)):
            if value is not None:
                sizes += [flag, str(value)]
        if sizes:
            await self._call(["set", self.name, *sizes])

    async def _start(self) -> None:
        """Create the VM if needed, run it, wait for its IP, and start the unit in it."""
        await self._create()
        vm = await self._vm()
        if vm is None:
            raise self._error(f"the VM {self.name!r} vanished as it was made")
        if vm.get("State") != "running":
            await self._spawn_run()
        self._say(f"waiting for the IP of VM {self.name}")
        result = await self._call(["ip", self.name, "--wait", str(self.options.ip_timeout)],
                                  seconds=self.options.ip_timeout + self.options.timeout)
        self.context.resources.set("ip", result.stdout.decode().strip())
        if self.options.start_unit == "exec":
            dial_home = await self._enrollment()
            o = self.options
            script = unit_script(dial_home, self.context, unit_dir=o.unit_dir,
                                 unit_command=o.unit_command, package=o.package,
                                 install=o.install, service="background")
            self._say(f"starting unit {self.context.unit!r} in VM {self.name}")
            # On stdin, so the enrollment line is in no process list.
            await self._call(["exec", "-i", self.name, "sh", "-s"], stdin=script.encode(),
                             seconds=self.options.clone_timeout)

    async def _spawn_run(self) -> None:
        log_dir = self.context.log_dir
        await trio.Path(log_dir).mkdir(parents=True, exist_ok=True)
        log = await trio.to_thread.run_sync(
            lambda: open(log_dir / f"{self.context.unit}.tart.log", "ab")  # noqa: SIM115
        )
        try:
            # A session of its own: the VM outlives the controller, and its terminal.
            self._run = await trio.lowlevel.open_process(
                [self._tart(), "run", "--no-graphics", *self.options.run_args, self.name],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        except OSError as exc:
            raise self._error(f"cannot run tart: {exc.strerror or exc}") from exc
        finally:
            log.close()
        self.context.resources.set("pid", str(self._run.pid))

    async def _stop(self) -> None:
        """`tart stop` (a clean shutdown, then a hard one after `stop_timeout`)."""
        vm = await self._vm()
        if vm is not None and vm.get("State") == "running":
            self._say(f"stopping VM {self.name}")
            await self._call(["stop", self.name, "--timeout", str(self.options.stop_timeout)],
                             seconds=self.options.timeout + self.options.stop_timeout)
        if self._run is not None:
            with trio.move_on_after(self.options.timeout):
                await self._run.wait()
            self._run = None
        self.context.resources.set("pid", "")
        self.context.resources.set("ip", "")

    async def _destroy(self) -> None:
        """Stop the VM and `tart delete` it; forget it."""
        if await self._vm() is not None:
            await self._stop()
            await self._call(["delete", self.name])
        self.context.resources.clear()

    async def status(self) -> ProvisionStatus:
        """The VM's state in `tart list`; ABSENT if there is none."""
        vm = await self._vm()
        if vm is None:
            return ProvisionStatus(ProvisionState.ABSENT)
        state = str(vm.get("State", ""))
        detail = f"VM {self.name}, {state}"
        ip = self.context.resources.get("ip")
        if state == "running" and ip:
            detail += f", ip {ip}"
        return ProvisionStatus(_STATES.get(state, ProvisionState.STOPPED), detail)

    def dialer(self) -> None:
        """None: the unit dials home (cmdr waits for it on its `accept` listener)."""
        return None
