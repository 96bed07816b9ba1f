"""The `container` provisioner: a `latis-unit` in a container, through the podman
or docker CLI.

The unit listens on a unix socket in a host folder that is bind-mounted into
the container: the unit's run dir on the host is `/run/latis` inside, so the
controller dials `RUN_DIR/unit.sock` on the host, which still works after the
controller restarts. The socket is made 0600 by the unit, so the unit must
run as the controller's uid: root with rootful podman run by root, or any
user with rootless podman (its root is the calling user). With a rootful
docker daemon and a controller that is not root, pass `--user UID:GID` in
`extra_args`.

Every engine command runs with a timeout, and its own message ends up in the
`ProvisionError` on failure. The container is created with `--init` by
default, so it stops at once on `stop` (the init forwards SIGTERM to the
unit, which exits cleanly), and labelled `latis.unit=UNIT`; a container of
that name that carries another label is never touched.

Resources: `container` (its id).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio
from latis_transports.unix import UnixDialer

from latis_core._plugins.provision import (
    OneAtATime,
    ProvisionContext,
    ProvisionError,
    ProvisionState,
    ProvisionStatus,
)

from .container_engine import _fix_for, _stderr_summary
from .container_image import CONTAINERFILE, build_image
from .process import SOCKET_NAME, socket_answers, socket_path_problem

__all__ = ["ContainerOptions", "ContainerProvisioner"]

#: Where the unit's run dir is mounted inside the container.
CONTAINER_RUN_DIR = "/run/latis"
#: The label that marks a container as a unit's.
LABEL = "latis.unit"
#: The engines looked for on PATH, in this order.
ENGINES = ("podman", "docker")
#: How many lines of the container's log an error shows.
LOG_TAIL_LINES = 20

_STATES = {
    "created": ProvisionState.CREATED,
    "configured": ProvisionState.CREATED,
    "initialized": ProvisionState.CREATED,
    "running": ProvisionState.RUNNING,
    "paused": ProvisionState.RUNNING,
    "restarting": ProvisionState.RUNNING,
    "stopping": ProvisionState.RUNNING,
    "exited": ProvisionState.STOPPED,
    "stopped": ProvisionState.STOPPED,
    "dead": ProvisionState.STOPPED,
    "removing": ProvisionState.STOPPED,
}


def _default_command() -> list[str]:
    return ["latis-unit"]


@attrs.define
class ContainerOptions:
    """The `container` provisioner's config table.

    Attributes:
        image: the image to run (it must hold the unit's command).
        engine: "podman" or "docker" (or a path to either); by default
            whichever is on PATH, podman first.
        mounts: bind mounts, "HOST:CONTAINER[:ro]".
        env: environment variables in the container.
        workdir: the unit's working directory in the container.
        command: the unit's command, to which `--listen unix:/run/latis/unit.sock
            --name UNIT --agent AGENT [-o K=V]...` are added.
        name: the container's name (default "latis-UNIT").
        network: the container's network (`--network`): "host" by default, which
            needs no network plugin (a stock host's default bridge may fail:
            `cni plugin bridge failed`) and lets the agent reach its APIs; the
            unit listens only on its unix socket, so no port opens. "none"
            cuts the agent off; any engine network name works.
        extra_args: more arguments for `ENGINE create`, before the image.
        init: run an init as PID 1 (`--init`), which passes SIGTERM on.
        timeout: seconds any engine command may take.
        create_timeout: seconds `ENGINE create` may take (it may pull the image).
        ready_timeout: seconds `start` waits for the unit's socket to answer.
        stop_timeout: seconds `ENGINE stop` waits before SIGKILL (`stop -t`).
    """

    image: str
    engine: str | None = None
    mounts: list[str] = attrs.field(factory=list)
    env: dict[str, str] = attrs.field(factory=dict)
    workdir: str | None = None
    command: list[str] = attrs.field(factory=_default_command)
    name: str | None = None
    network: str = "host"
    extra_args: list[str] = attrs.field(factory=list)
    init: bool = True
    timeout: float = 60.0
    create_timeout: float = 600.0
    ready_timeout: float = 30.0
    stop_timeout: int = 5


@attrs.frozen
class _Found:
    """A container as `ENGINE container inspect` sees it."""

    id: str
    status: str
    exit_code: str
    label: str


def _selinux_enforcing() -> bool:
    try:
        return Path("/sys/fs/selinux/enforce").read_text().strip() == "1"
    except OSError:
        return False


class ContainerProvisioner(OneAtATime):
    """Runs a unit in a podman or docker container, reached on a bind-mounted socket."""

    #: The recipe for an image holding `latis-unit` (`latis image build`).
    build_image = staticmethod(build_image)
    CONTAINERFILE = CONTAINERFILE

    Options = ContainerOptions

    def __init__(self, options: ContainerOptions, context: ProvisionContext) -> None:
        self.options = options
        self.context = context
        #: The unit's socket, on the host.
        self.socket: Path = context.run_dir / SOCKET_NAME
        #: The container's name.
        self.name: str = options.name or "latis-" + re.sub(r"[^A-Za-z0-9_.-]", "-", context.unit)
        self._engine_path: str | None = None
        super().__init__()

    def __repr__(self) -> str:
        return f"<ContainerProvisioner unit={self.context.unit!r} name={self.name!r}>"

    def _error(self, message: str) -> ProvisionError:
        return ProvisionError(f"container provisioner for unit {self.context.unit!r}: {message}")

    # --- the engine

    def _engine(self) -> str:
        """The engine's executable, found on PATH."""
        if self._engine_path is None:
            wanted = self.options.engine
            if wanted:
                path = shutil.which(wanted)
                if path is None:
                    raise self._error(f"the container engine {wanted!r} is not on PATH")
            else:
                found = [p for p in map(shutil.which, ENGINES) if p]
                if not found:
                    raise self._error(
                        "no container engine: neither podman nor docker is on PATH"
                        " (install one, or set `engine` to its path)"
                    )
                path = found[0]
            self._engine_path = path
        return self._engine_path

    @property
    def _engine_name(self) -> str:
        return os.path.basename(self._engine())

    async def _run(
        self, args: Sequence[str], *, seconds: float | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `ENGINE *args`; on failure (if `check`) raise ProvisionError with its stderr."""
        argv = [self._engine(), *args]
        what = f"{self._engine_name} {args[0]}"
        if seconds is None:
            seconds = self.options.timeout
        try:
            with trio.fail_after(seconds):
                result = await trio.run_process(
                    argv, capture_stdout=True, capture_stderr=True, check=False
                )
        except trio.TooSlowError:
            raise self._error(f"{what} took more than {seconds:g} s, and was stopped") from None
        except OSError as exc:
            raise self._error(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        if check and result.returncode != 0:
            summary = _stderr_summary(result.stderr, result.returncode)
            raise self._error(f"{what} failed: {summary}{_fix_for(summary)}")
        return result

    async def _inspect(self, ref: str) -> _Found | None:
        """The container `ref` (an id or a name), or None if there is none."""
        template = (
            "{{.Id}}\t{{.State.Status}}\t{{.State.ExitCode}}\t"
            f'{{{{index .Config.Labels "{LABEL}"}}}}'
        )
        result = await self._run(["container", "inspect", "-f", template, ref], check=False)
        if result.returncode != 0:
            if b"no such" in result.stderr.lower():
                return None
            raise self._error(
                f"{self._engine_name} container inspect failed:"
                f" {_stderr_summary(result.stderr, result.returncode)}"
            )
        fields = result.stdout.decode().strip().split("\t")
        fields += [""] * (4 - len(fields))
        return _Found(*fields[:4])

    async def _find(self) -> _Found | None:
        """Our container: the one recorded, else the one of our name if it is labelled
        as this unit's (it is then recorded). Another container of our name is an error."""
        resources = self.context.resources
        recorded = resources.get("container")
        if recorded:
            found = await self._inspect(recorded)
            if found is not None:
                return found
            resources.clear()  # removed behind our back
        found = await self._inspect(self.name)
        if found is None:
            return None
        if found.label != self.context.unit:
            label = f"labelled {LABEL}={found.label}" if found.label else f"without a {LABEL} label"
            raise self._error(
                f"a container named {self.name!r} exists ({found.id[:12]}, {label}) and is"
                " not this unit's: remove it, or set `name` to another"
            )
        resources.set("container", found.id)
        return found

    async def _log_tail(self, ref: str) -> str:
        result = await self._run(["logs", "--tail", str(LOG_TAIL_LINES), ref], check=False)
        text = (result.stdout + result.stderr).decode("utf-8", "replace").rstrip()
        if result.returncode != 0 or not text:
            return "; its log is empty"
        return f"; the end of its log ({self._engine_name} logs):\n{text}"

    # --- the work (callers hold the lock)

    def _create_args(self, run_dir: Path) -> list[str]:
        options = self.options
        relabel = ":z" if _selinux_enforcing() else ""
        args = ["create", "--name", self.name, "--label", f"{LABEL}={self.context.unit}"]
        if options.init:
            args.append("--init")
        args += ["-v", f"{run_dir}:{CONTAINER_RUN_DIR}{relabel}"]
        for mount in options.mounts:
            args += ["-v", mount]
        for key, value in options.env.items():
            args += ["-e", f"{key}={value}"]
        if options.workdir:
            args += ["-w", options.workdir]
        if options.network:
            args += ["--network", options.network]
        listen = f"unix:{CONTAINER_RUN_DIR}/{SOCKET_NAME}"
        return [
            *args,
            *options.extra_args,
            options.image,
            *options.command,
            *self.context.unit_args(listen=listen),
        ]

    async def _create(self) -> None:
        """Create the container (not started) unless ours exists; record its id."""
        if await self._find() is not None:
            return
        problem = socket_path_problem(self.socket)
        if problem:
            raise self._error(problem)
        run_dir = self.context.ensure_run_dir()
        result = await self._run(self._create_args(run_dir), seconds=self.options.create_timeout)
        lines = result.stdout.decode().split()
        if not lines:
            raise self._error(f"{self._engine_name} create printed no container id")
        self.context.resources.set("container", lines[-1])

    async def _start(self) -> None:
        """Create the container if needed and start it; return once the unit answers."""
        await self._create()
        found = await self._find()
        if found is None:  # removed between the two calls
            raise self._error(f"the container {self.name!r} vanished as it was created")
        started = found.status != "running"
        if found.status == "paused":
            await self._run(["unpause", found.id])
        elif started:
            await self._run(["start", found.id])
        await self._wait_ready(found.id, started)

    async def _wait_ready(self, ref: str, started: bool) -> None:
        deadline = trio.current_time() + self.options.ready_timeout
        next_look = trio.current_time() + 0.25
        while True:
            try:
                if await socket_answers(self.socket):
                    return
            except PermissionError as exc:
                raise self._error(
                    f"may not connect to {self.socket} ({exc.strerror or exc}): the unit in"
                    " the container must run as this user (rootless podman, or"
                    " `extra_args = ['--user', 'UID:GID']`)"
                ) from exc
            now = trio.current_time()
            if now >= next_look:
                next_look = now + 0.25
                found = await self._inspect(ref)
                if found is None:
                    raise self._error(f"the container {self.name!r} vanished as it started")
                if found.status not in ("running", "created", "configured", "initialized"):
                    raise self._error(
                        f"the container {found.id[:12]} {found.status} (exit status"
                        f" {found.exit_code}) before its unit listened" + await self._log_tail(ref)
                    )
            if now >= deadline:
                tail = await self._log_tail(ref)
                if started:
                    await self._run(["stop", "-t", str(self.options.stop_timeout), ref])
                raise self._error(
                    f"the unit did not answer on {self.socket} within"
                    f" {self.options.ready_timeout:g} s" + tail
                )
            await trio.sleep(0.02)

    async def _stop(self) -> None:
        """Stop the container (`ENGINE stop -t stop_timeout`); keep it."""
        found = await self._find()
        if found is None or _STATES.get(found.status) != ProvisionState.RUNNING:
            return
        stop_timeout = self.options.stop_timeout
        await self._run(
            ["stop", "-t", str(stop_timeout), found.id],
            seconds=self.options.timeout + stop_timeout,
        )

    async def _destroy(self) -> None:
        """Remove the container (`ENGINE rm -f`) and the run dir; forget the id."""
        found = await self._find()
        if found is not None:
            result = await self._run(["rm", "-f", found.id], check=False)
            if result.returncode != 0 and b"no such" not in result.stderr.lower():
                raise self._error(
                    f"{self._engine_name} rm failed:"
                    f" {_stderr_summary(result.stderr, result.returncode)}"
                )
        self.context.resources.clear()
        run_dir = self.context.run_dir
        await trio.to_thread.run_sync(lambda: shutil.rmtree(run_dir, ignore_errors=True))

    async def status(self) -> ProvisionStatus:
        """The container's state (`ENGINE container inspect`); ABSENT if there is none."""
        found = await self._find()
        if found is None:
            return ProvisionStatus(ProvisionState.ABSENT)
        state = _STATES.get(found.status, ProvisionState.STOPPED)
        detail = f"container {found.id[:12]}, {found.status}"
        if found.status == "exited":
            detail += f" ({found.exit_code})"
        return ProvisionStatus(state, detail)

    def dialer(self) -> UnixDialer:
        """Dial the unit's socket in the host folder mounted at /run/latis."""
        return UnixDialer(self.socket)
