"""The `qemu` provisioner: a unit in a virtual machine, run by `qemu-system-x86_64`.

QEMU runs detached, in a session of its own (like the `process` provisioner's
unit), so the VM outlives the controller that started it. Everything QEMU
needs at run time sits in the unit's run dir (0700):

- `qmp.sock`: QEMU's QMP socket. `stop` asks the guest to power off (ACPI
  `system_powerdown`), after `stop_timeout` tells QEMU to `quit`, and kills it
  if even that goes unanswered.
- `unit.sock`: a virtio-serial port (named `org.latis.unit` by default, see
  `channel`) whose host end is this unix socket, reached by `ChannelDialer`
  (a unix socket, one connection at a time, each to a guest end opened afresh:
  QMP says when the guest has its end open). The guest finds the port by its
  name in `/sys/class/virtio-ports/*/name`. Only this user may open the socket
  (the run dir is 0700): no token needed.

The guest's serial console and QEMU's own stderr are appended to
`LOG_DIR/UNIT.log`; a failed start quotes its end. A disk `image` is opened
with `-snapshot` by default, so a disposable unit never writes its base image.
`ports` are forwarded from the host's loopback to the guest (user-mode
networking, `hostfwd`). `start` returns once the guest answers (see `ready`).

What the guest runs is the image's business: its init starts `latis-unit`
(listening on a forwarded port or on the virtio port, or dialing cmdr at
10.0.2.2, the host as the guest sees it). `docs/provisioner-qemu.md` shows one.

Resources: `qmp` and `channel` (socket paths, from `create` on), `pid` and
`accel` (while it runs), `exit` (how the last run ended).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import ClassVar

import attrs
import orjson
import trio
from latis_transports.tcp import TcpDialer

from latis_core import (
    ConnectError,
    ProvisionContext,
    ProvisionError,
    ProvisionState,
    ProvisionStatus,
)

from ._detached import _CHILDREN, DetachedProvisioner, _Child, _cmdline, _spawn, read_tail
from .process import describe_exit, socket_path_problem

__all__ = [
    "ChannelDialer",
    "Orphan",
    "owned_by",
    "QemuOptions",
    "QemuProvisioner",
    "detect_accel",
    "find_orphans",
]

#: The QMP socket's name in the run dir.
QMP_NAME = "qmp.sock"
#: The virtio-serial channel's socket's name in the run dir.
CHANNEL_NAME = "unit.sock"
#: The id of the channel's chardev (QMP `query-chardev` says if the guest opened it).
CHARDEV = "latis"
#: Seconds a `ChannelDialer` waits for the guest to close its end after a connection.
CLOSE_WAIT = 5.0
#: The name the VM gets (`-name guest=...`): how an orphaned QEMU is recognised.
NAME_PREFIX = "latis-"
#: How often readiness and exits are polled, in seconds.
POLL = 0.05
#: Seconds one readiness probe may take.
PROBE_TIMEOUT = 3.0
#: Seconds between progress messages while the guest boots.
PROGRESS_EVERY = 5.0
#: Seconds QEMU gets to exit after `quit`, and a killed QEMU to vanish.
QUIT_GRACE = 5.0
#: A `hello` from cmdr, framed (DESIGN: 4-byte big-endian length, then JSON): any
#: frame back means a latis unit answers.
_HELLO = orjson.dumps({"type": "hello", "id": 0, "protocol": 1, "role": "cmdr"})
HELLO_FRAME = len(_HELLO).to_bytes(4, "big") + _HELLO

_MEMORY = re.compile(r"^[1-9][0-9]*[KMGT]?$")
_PORT = re.compile(r"^(?:(\d+):)?(\d+)$")


def _default_qemu() -> str:
    return "qemu-system-x86_64"


@attrs.define
class QemuOptions:
    """The `qemu` provisioner's config table.

    Attributes:
        image: a disk image (qcow2 or raw), the guest's boot disk, or with `kernel`
            its first disk (`/dev/vda`).
        format: the image's format; by default "qcow2" for `*.qcow2`, else "raw".
        kernel: a kernel to boot directly (`-kernel`), with `initrd` and `append`.
        initrd: the initial ramdisk for `kernel`.
        append: the kernel's command line.
        memory: the guest's memory: "512M", "16G" (QEMU's `-m`).
        cpus: virtual CPUs (`-smp`).
        ports: forwarded from the host's `bind` address to the guest: `9000`
            (host 9000 to guest 9000) or `"9000:7000"` (host 9000 to guest 7000).
        bind: the host address forwarded ports listen on.
        network: give the guest a virtio NIC with user-mode networking (the host
            is 10.0.2.2); off means no NIC at all (and no `ports`).
        accel: "auto" (kvm when usable, else tcg), "kvm" or "tcg".
        channel: the name of the virtio-serial port reached on `RUN_DIR/unit.sock`,
            or "" for none.
        snapshot: open `image` with `-snapshot` (writes are discarded when QEMU
            exits); false writes to the image itself.
        shares: host folders shared over 9p: `"PATH:TAG"` or `"PATH:TAG:ro"`
            (in the guest: `mount -t 9p -o trans=virtio,version=9p2000.L TAG DIR`).
        qemu: the QEMU binary (a name on PATH or a path).
        extra_args: more QEMU arguments, added last.
        ready: when `start` returns: "auto" (a latis unit answers `hello` on the
            first forwarded port; with no ports, the guest opens the channel),
            "console:TEXT" (TEXT shows on the serial console), or "none" (QEMU runs).
        ready_timeout: seconds `start` waits for `ready`.
        stop_timeout: seconds the guest gets to power off before QEMU is told to quit.
    """

    image: str | None = None
    format: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    memory: str = "512M"
    cpus: int = 1
    ports: list[int | str] = attrs.field(factory=list)
    bind: str = "127.0.0.1"
    network: bool = True
    accel: str = "auto"
    channel: str = "org.latis.unit"
    snapshot: bool = True
    shares: list[str] = attrs.field(factory=list)
    qemu: str = attrs.field(factory=_default_qemu)
    extra_args: list[str] = attrs.field(factory=list)
    ready: str = "auto"
    ready_timeout: float = 180.0
    stop_timeout: float = 10.0


@attrs.frozen
class Orphan:
    """A VM latis started that may have no unit left to own it."""

    #: The unit it was started for.
    unit: str
    #: What to show: "pid 4242 (qmp /run/.../qmp.sock)", "domain latis-box".
    detail: str
    #: The QEMU process, where known.
    pid: int | None = None
    #: The run dir of the unit it was started for (its sockets' folder), where known.
    run_dir: str | None = None
    #: What it is, as the back end names it ("pid 4242", "latis-box").
    resource: str = ""
    #: Its state in the back end's words ("running", "defined").
    state: str = ""


def detect_accel() -> tuple[str, str]:
    """The accelerator "auto" picks, and why: ("kvm", ...) only when /dev/kvm opens
    read-write *and* the CPU shows vmx or svm (a /dev/kvm without them, such as a
    paravirtual stand-in, hangs real guests), else ("tcg", the reason)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return "tcg", f"/dev/kvm cannot be opened ({exc.strerror or exc})"
    os.close(fd)
    try:
        with open("/proc/cpuinfo") as file:
            flags = {
                word
                for line in file
                if line.startswith("flags")
                for word in line.split(":", 1)[1].split()
            }
    except OSError:
        flags = set()
    if flags & {"vmx", "svm"}:
        return "kvm", "/dev/kvm opens and the CPU has hardware virtualization"
    return "tcg", "/dev/kvm opens but the CPU shows no vmx or svm flag"


def _parse_port(spec: int | str) -> tuple[int, int]:
    """`9000` or `"9000:7000"` as (host port, guest port)."""
    match = _PORT.match(str(spec).strip())
    if match is None:
        raise ValueError(f"port {spec!r}: expected PORT or 'HOSTPORT:GUESTPORT'")
    guest = int(match.group(2))
    host = int(match.group(1)) if match.group(1) else guest
    for port in (host, guest):
        if not 0 < port < 65536:
            raise ValueError(f"port {spec!r}: {port} is not a port from 1 to 65535")
    return host, guest


def _escape(value: str) -> str:
    """A value for QEMU's `key=value,...` syntax, where a comma is written twice."""
    return value.replace(",", ",,")


def _marker(argv: Sequence[str]) -> str | None:
    """The unit named by `-name guest=latis-UNIT` in a QEMU command line, or None."""
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "-name":
            for part in value.split(","):
                key, _, name = part.partition("=")
                if key == "guest" and name.startswith(NAME_PREFIX):
                    return name[len(NAME_PREFIX) :]
    return None


def _qmp_path(argv: Sequence[str]) -> str | None:
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "-qmp" and value.startswith("unix:"):
            return value[len("unix:") :].split(",", 1)[0]
    return None


def find_orphans() -> list[Orphan]:
    """Every QEMU on this machine that a `qemu` provisioner started (by its
    `-name guest=latis-UNIT`), whether or not a unit still records it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = _cmdline(int(entry.name))
        if not argv or "qemu-system" not in os.path.basename(argv[0]):
            continue
        unit = _marker(argv)
        if unit is not None:
            qmp_path = _qmp_path(argv)
            detail = f"pid {entry.name} (qmp {qmp_path})"
            run_dir = os.path.dirname(qmp_path) if qmp_path else None
            found.append(Orphan(unit, detail, int(entry.name), run_dir,
                                f"pid {entry.name}", "running"))
    return found


def owned_by(orphans: Iterable[Orphan], units: Iterable[str], run_dir: Path) -> list[Orphan]:
    """Those of `orphans` that a controller whose unit run dirs are `RUN_DIR/..`/NAME
    made (their run dir is under `run_dir`'s parent) for a unit not among `units`."""
    known, home = set(units), os.fspath(run_dir.parent)
    return [o for o in orphans if o.unit not in known and o.run_dir is not None
            and os.path.dirname(o.run_dir) == home]


class _Qmp:
    """One QMP conversation: the greeting, `qmp_capabilities`, then commands."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _message(self) -> dict[str, object]:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise OSError("QMP closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, object] = orjson.loads(line)
        return message

    async def execute(self, command: str) -> object:
        await self.stream.send_all(orjson.dumps({"execute": command}) + b"\n")
        while True:
            message = await self._message()
            if "event" in message:  # asynchronous events interleave with replies
                continue
            if "error" in message:
                raise OSError(f"QMP {command}: {message['error']}")
            return message.get("return")


async def qmp(path: Path, *commands: str, seconds: float = 5.0) -> list[object]:
    """Run `commands` on the QMP socket at `path`; return their results.

    Raises:
        OSError: QMP is not there, failed, or took more than `seconds`.
    """
    with trio.move_on_after(seconds):
        stream = await trio.open_unix_socket(os.fspath(path))
        async with stream:
            session = _Qmp(stream)
            await session._message()  # the greeting
            await session.execute("qmp_capabilities")
            return [await session.execute(command) for command in commands]
    raise OSError(f"QMP at {path} did not answer within {seconds:g} s")


async def channel_open(qmp_path: Path) -> bool:
    """Whether the guest has its end of the channel open: QMP `query-chardev` says
    whether the frontend of our chardev (the guest's virtio port) is open."""
    try:
        (chardevs,) = await qmp(qmp_path, "query-chardev", seconds=PROBE_TIMEOUT)
    except OSError:
        return False
    return isinstance(chardevs, list) and any(
        isinstance(c, dict) and c.get("label") == CHARDEV and c.get("frontend-open")
        for c in chardevs
    )


async def _wait_channel(
    guest_open: Callable[[], Awaitable[bool]], is_open: bool, seconds: float
) -> bool:
    """Wait up to `seconds` for the guest's end of the channel to be open (or closed);
    say whether it came to be. Polled often: the guest may reopen it within 0.1 s."""
    deadline = trio.current_time() + seconds
    while await guest_open() != is_open:
        if trio.current_time() >= deadline:
            return False
        await trio.sleep(0.02)
    return True


class ChannelDialer:
    """Dials the host end of the virtio channel, one connection at a time, each to a
    guest end opened afresh.

    The channel is one byte stream that outlives host connections: the guest learns
    that the host hung up only when it reads EOF, and a new connection's bytes may
    reach it first. So after a connection ends this dialer waits (up to
    `CLOSE_WAIT` s) for the guest to close its end (its unit exits on EOF), and
    before the next it waits for the guest to open it again.

    Args:
        socket: the channel's host end.
        guest_open: says whether the guest has its end open (QMP for QEMU, the live
            domain XML for libvirt).
        open_timeout: seconds to wait for the guest to open its end.
    """

    def __init__(
        self, socket: Path, guest_open: Callable[[], Awaitable[bool]], open_timeout: float = 60.0
    ) -> None:
        self.socket = socket
        self.guest_open = guest_open
        self.open_timeout = open_timeout
        self._lock = trio.Lock()

    def describe(self) -> str:
        return f"unix: {self.socket} (virtio channel)"

    def connect(self) -> AbstractAsyncContextManager[trio.abc.Stream]:
        return self._connect()

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[trio.abc.Stream]:
        async with self._lock:
            await _wait_channel(self.guest_open, True, self.open_timeout)
            try:
                stream = await trio.open_unix_socket(os.fspath(self.socket))
            except OSError as exc:
                raise ConnectError(
                    f"cannot connect to the virtio channel at {self.socket}:"
                    f" {exc.strerror or exc}"
                ) from exc
            try:
                yield stream
            finally:
                await stream.aclose()
                with trio.CancelScope(shield=True):  # also when the caller was cancelled
                    await _wait_channel(self.guest_open, False, CLOSE_WAIT)


async def _answers_hello(connect: Callable[[], Awaitable[trio.SocketStream]]) -> bool:
    """Whether the far end of a new connection answers a cmdr `hello` with any bytes."""
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            stream = await connect()
        except OSError:
            return False
        async with stream:
            try:
                await stream.send_all(HELLO_FRAME)
                # slirp accepts on the host even when nothing listens in the guest,
                # then closes: only bytes back prove a unit is there.
                return bool(await stream.receive_some(4))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return False
    return False


class QemuProvisioner(DetachedProvisioner):
    """Runs a unit in a QEMU virtual machine, detached, driven through QMP."""

    Options = QemuOptions

    def __init__(self, options: QemuOptions, context: ProvisionContext) -> None:
        self.options = options
        self.context = context
        #: QEMU's QMP socket.
        self.qmp: Path = context.run_dir / QMP_NAME
        #: The host end of the virtio-serial channel.
        self.channel: Path = context.run_dir / CHANNEL_NAME
        #: The log: QEMU's stderr and the guest's serial console.
        self.log: Path = context.log_dir / f"{context.unit}.log"
        #: Called with a short line as `start` goes ("booting the guest (tcg)…"); the
        #: controller sets it to its own progress callback.
        self.progress: Callable[[str], None] | None = None
        #: Whether `start` waits for `ready`; False (`latis unit up --no-wait`) returns
        #: once QEMU runs.
        self.wait: bool = True
        super().__init__()

    def __repr__(self) -> str:
        return f"<QemuProvisioner unit={self.context.unit!r} qmp={str(self.qmp)!r}>"

    def _error(self, message: str) -> ProvisionError:
        return ProvisionError(f"qemu provisioner for unit {self.context.unit!r}: {message}")

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    # --- options

    def _ports(self) -> list[tuple[int, int]]:
        try:
            return [_parse_port(spec) for spec in self.options.ports]
        except ValueError as exc:
            raise self._error(str(exc)) from None

    def _qemu(self) -> str:
        path = shutil.which(self.options.qemu)
        if path is None:
            raise self._error(
                f"{self.options.qemu} is not on PATH (install qemu-system-x86, or set `qemu`)"
            )
        return path

    def _check(self) -> None:
        """Refuse options that cannot work, before anything is made."""
        options = self.options
        if not (options.image or options.kernel):
            raise self._error("give `image` (a disk to boot), `kernel` (with `initrd`), or"
                              " both (a kernel booted with that disk): neither is set")
        for key in ("image", "kernel", "initrd"):
            value = getattr(options, key)
            if value and not os.path.isfile(os.path.expanduser(value)):
                raise self._error(f"{key} {value!r}: no such file")
        if not _MEMORY.match(options.memory):
            raise self._error(f"memory {options.memory!r}: expected a size such as '512M' or '4G'")
        if options.cpus < 1:
            raise self._error(f"cpus must be at least 1, not {options.cpus}")
        if options.accel not in ("auto", "kvm", "tcg"):
            raise self._error(f"accel {options.accel!r}: expected 'auto', 'kvm' or 'tcg'")
        if self._ports() and not options.network:
            raise self._error("`ports` need `network = true`")
        if not (options.ready in ("auto", "none") or options.ready.startswith("console:")):
            raise self._error(f"ready {options.ready!r}: expected 'auto', 'none' or 'console:TEXT'")
        if options.ready == "auto" and not (self._ports() or options.channel):
            raise self._error("ready = 'auto' needs `ports` or a `channel` to probe")
        for share in options.shares:
            parts = share.split(":")
            if len(parts) not in (2, 3) or not all(parts[:2]) or parts[2:] not in ([], ["ro"]):
                raise self._error(f"share {share!r}: expected 'PATH:TAG' or 'PATH:TAG:ro'")
        for path in (self.qmp, self.channel):
            problem = socket_path_problem(path)
            if problem:
                raise self._error(problem)

    def _accel(self) -> tuple[str, str]:
        if self.options.accel == "auto":
            return detect_accel()
        return self.options.accel, "as configured"

    def argv(self, accel: str) -> list[str]:
        """QEMU's command line for this unit, with accelerator `accel`."""
        options = self.options
        argv = [
            self._qemu(),
            "-name", f"guest={NAME_PREFIX}{self.context.unit}",
            "-no-user-config",
            "-accel", accel,
            "-m", options.memory,
            "-smp", str(options.cpus),
            "-display", "none",
            "-monitor", "none",
            "-no-reboot",  # a guest that reboots or panics (panic=-1) ends QEMU
            "-chardev", f"file,id=console,path={_escape(str(self.log))},append=on",
            "-serial", "chardev:console",
            "-qmp", f"unix:{_escape(str(self.qmp))},server=on,wait=off",
        ]
        if accel == "kvm":
            argv += ["-cpu", "host"]
        if options.image:
            image = os.path.expanduser(options.image)
            fmt = options.format or ("qcow2" if image.endswith(".qcow2") else "raw")
            argv += ["-drive", f"file={_escape(image)},if=virtio,format={fmt}"]
            if options.snapshot:
                argv.append("-snapshot")
        if options.kernel:
            argv += ["-kernel", os.path.expanduser(options.kernel)]
            if options.initrd:
                argv += ["-initrd", os.path.expanduser(options.initrd)]
            if options.append:
                argv += ["-append", options.append]
        if options.network:
            nic = "user,model=virtio-net-pci"
            for host, guest in self._ports():
                nic += f",hostfwd=tcp:{options.bind}:{host}-:{guest}"
            argv += ["-nic", nic]
        else:
            argv += ["-nic", "none"]
        if options.channel:
            argv += [
                "-device", "virtio-serial-pci",
                "-chardev",
                f"socket,id={CHARDEV},path={_escape(str(self.channel))},server=on,wait=off",
                "-device", f"virtserialport,chardev={CHARDEV},name={_escape(options.channel)}",
            ]
        for share in options.shares:
            path, tag, *ro = share.split(":")
            virtfs = (f"local,path={_escape(os.path.expanduser(path))},mount_tag={tag},"
                      "security_model=none,multidevs=remap")
            argv += ["-virtfs", virtfs + (",readonly=on" if ro else "")]
        return [*argv, *options.extra_args]

    # --- what is recorded

    def _record(self, **values: str | None) -> None:
        """Replace what is recorded with the sockets and `values` (a None is left out)."""
        resources = self.context.resources
        resources.clear()
        resources.set("qmp", str(self.qmp))
        if self.options.channel:
            resources.set("channel", str(self.channel))
        for kind, value in values.items():
            if value is not None:
                resources.set(kind, value)

    # --- the process

    def _is_ours(self, pid: int) -> bool:
        """Whether `pid` is alive and is our QEMU: a child we started for this QMP socket
        that has not exited, or a process whose command line names our QMP socket (a
        recorded pid that the system gave to another process is never signalled)."""
        child = _CHILDREN.get(pid)
        if child is not None:
            if self._reap(pid) is not None:
                return False
            if child.socket == self.qmp:
                return True
        argv = _cmdline(pid)
        return argv is not None and _qmp_path(argv) == str(self.qmp)

    async def _shut_down(self, pid: int) -> str:
        """Power the guest off (ACPI), then `quit`, then SIGKILL; say how it ended."""
        if not self._is_ours(pid):
            return describe_exit(self._reap(pid))
        how = "powered off"
        try:
            await qmp(self.qmp, "system_powerdown")
        except OSError:
            how = "QMP did not answer"
        else:
            if await self._wait_gone(pid, self.options.stop_timeout):
                return self._ended(pid, how)
            how = f"quit after {self.options.stop_timeout:g} s"
            with contextlib.suppress(OSError):
                # QEMU may exit before it answers `quit`.
                await qmp(self.qmp, "quit")
            if await self._wait_gone(pid, QUIT_GRACE):
                return self._ended(pid, how)
        if self._is_ours(pid):
            # Still ours, so still the leader of its own session: its pid is its group's.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            await self._wait_gone(pid, QUIT_GRACE)
            how = f"{how}; killed by SIGKILL"
        return self._ended(pid, how)

    def _ended(self, pid: int, how: str) -> str:
        """`how`, and the exit status if QEMU was our child (and it adds anything)."""
        code = self._reap(pid)
        if code is None or (code == -signal.SIGKILL and how.endswith("SIGKILL")):
            return how
        return f"{how}, {describe_exit(code)}"

    # --- the work (callers hold the lock)

    async def _create(self) -> None:
        """Check the options, make the run and log dirs and record the sockets."""
        self._check()
        self._qemu()
        self.context.ensure_run_dir()
        self.context.log_dir.mkdir(parents=True, exist_ok=True)
        if self.context.resources.get("qmp") is None:
            self._record()

    async def _start(self) -> None:
        """Boot the VM unless ours runs; return once it is ready (see `ready`)."""
        await self._create()
        running = self._recorded_pid()
        if running is not None and self._is_ours(running):
            if self.wait:
                await self._wait_ready(running, offset=None)
            return
        accel, why = self._accel()
        argv = self.argv(accel)
        # A stale socket would make QEMU fail ("Address already in use").
        for path in (self.qmp, self.channel):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        try:
            pid, offset = await trio.to_thread.run_sync(_spawn, argv, dict(os.environ), None,
                                                        self.log)
        except OSError as exc:
            raise self._error(
                f"cannot run {subprocess.list2cmdline(argv)}: {exc.strerror or exc}"
            ) from exc
        _CHILDREN[pid] = _Child(self.qmp)
        self._record(pid=str(pid), accel=accel)
        self._say(f"booting unit {self.context.unit!r} in QEMU (pid {pid}, {accel}: {why})")
        if self.wait:
            await self._wait_ready(pid, offset=offset)

    def _what_ready(self) -> str:
        """What `start` waits for, in words."""
        ports = self._ports()
        if self.options.ready != "auto":
            return self.options.ready
        if ports:
            return f"a hello answered on tcp {self.options.bind}:{ports[0][0]}"
        return f"the guest to open its port {self.options.channel!r}"

    async def _is_ready(self, offset: int | None) -> bool:
        ready = self.options.ready
        if ready == "none":
            try:
                await qmp(self.qmp, "query-status", seconds=PROBE_TIMEOUT)
            except OSError:
                return False
            return True
        if ready.startswith("console:"):
            text = read_tail(self.log, offset or 0, lines=10_000)
            if offset is None:  # since the last start's header line
                text = text.rsplit("\n--- ", 1)[-1]
            return ready[len("console:") :] in text
        ports = self._ports()
        if not ports:
            # Nothing is sent on the channel: a probe's bytes would reach the unit as
            # the start of the controller's connection (see ChannelDialer).
            return await channel_open(self.qmp)
        host, port = self.options.bind, ports[0][0]

        async def tcp() -> trio.SocketStream:
            return await trio.open_tcp_stream(host, port)

        return await _answers_hello(tcp)

    async def _wait_ready(self, pid: int, offset: int | None) -> None:
        """Wait until the guest is ready. If QEMU exits first, or time runs out (QEMU is
        then stopped, if this call started it), raise ProvisionError with its log.

        A probe is started every 0.2 s without waiting for the last one: one that is
        sent while the guest boots may hang until its timeout (slirp retries its SYN
        into the guest), and must not delay the next."""
        start = trio.current_time()
        deadline = start + self.options.ready_timeout
        next_say = start + PROGRESS_EVERY
        what = self._what_ready()
        ready = trio.Event()

        async def probe() -> None:
            if await self._is_ready(offset):
                ready.set()

        failure = ""
        async with trio.open_nursery() as nursery:
            while not ready.is_set():
                nursery.start_soon(probe)
                with trio.move_on_after(POLL * 4):
                    await ready.wait()
                if ready.is_set():
                    break
                if not self._is_ours(pid):
                    how = describe_exit(self._reap(pid))
                    self._record(exit=how)
                    self._forget(pid)
                    failure = (f"QEMU (pid {pid}) exited before the guest was ready ({how})"
                               + self._log_tail(offset))
                    break
                now = trio.current_time()
                if now >= deadline:
                    failure = (f"the guest (QEMU pid {pid}) was not ready ({what}) within"
                               f" {self.options.ready_timeout:g} s" + self._log_tail(offset))
                    break
                if now >= next_say:
                    next_say = now + PROGRESS_EVERY
                    self._say(f"waiting for unit {self.context.unit!r} ({what}):"
                              f" {now - start:.0f} s")
            nursery.cancel_scope.cancel()
        if not failure:
            return
        if self._is_ours(pid) and offset is not None:
            # Timed out, and this call started it: shut it down.
            how = await self._shut_down(pid)
            self._record(exit=f"failed to start, {how}")
            self._forget(pid)
        raise self._error(failure)

    async def _stop(self) -> None:
        """Shut the VM down (ACPI, then `quit` after `stop_timeout`, then SIGKILL)."""
        pid = self._recorded_pid()
        if pid is None:
            return
        how = await self._shut_down(pid)
        self._record(exit=how)
        self._forget(pid)
        for path in (self.qmp, self.channel):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _destroy(self) -> None:
        """Stop the VM, remove its run dir (sockets, any overlay), forget it all."""
        await self._stop()
        run_dir = self.context.run_dir
        await trio.to_thread.run_sync(lambda: shutil.rmtree(run_dir, ignore_errors=True))
        self.context.resources.clear()

    async def status(self) -> ProvisionStatus:
        """RUNNING ("pid N, tcg, running" from QMP); STOPPED; CREATED; ABSENT."""
        resources = self.context.resources
        pid = self._recorded_pid()
        if pid is not None:
            if self._is_ours(pid):
                detail = f"pid {pid}, {resources.get('accel') or 'accel unknown'}"
                try:
                    (state,) = await qmp(self.qmp, "query-status", seconds=PROBE_TIMEOUT)
                except OSError:
                    detail += ", QMP does not answer"
                else:
                    if isinstance(state, dict):
                        detail += f", {state.get('status')}"
                return ProvisionStatus(ProvisionState.RUNNING, detail)
            how = describe_exit(self._reap(pid))
            return ProvisionStatus(ProvisionState.STOPPED, f"pid {pid} is gone ({how})")
        exit_ = resources.get("exit")
        if exit_ is not None:
            return ProvisionStatus(ProvisionState.STOPPED, f"stopped ({exit_})")
        if resources.get("qmp") is not None:
            return ProvisionStatus(ProvisionState.CREATED, "not started")
        return ProvisionStatus(ProvisionState.ABSENT)

    def dialer(self) -> TcpDialer | ChannelDialer | None:
        """The first forwarded port if there is one, else the virtio channel (see
        `ChannelDialer`); None with neither (the unit can only dial cmdr)."""
        ports = self._ports()
        if ports:
            return TcpDialer(self.options.bind, ports[0][0])
        if not self.options.channel:
            return None
        qmp_path = self.qmp

        async def guest_open() -> bool:
            return await channel_open(qmp_path)

        return ChannelDialer(self.channel, guest_open)

    #: Where `orphans` looks does not depend on the options: one look serves every unit.
    orphan_scope: ClassVar[tuple[str, ...]] = ()

    async def orphans(self, units: Iterable[str] | None = None) -> list[Orphan]:
        """Every QEMU a `qemu` provisioner started on this machine (see `find_orphans`);
        given `units` (every unit in config), only those this controller started (their
        run dir is beside this unit's) for a unit not among them: `latis unit list`."""
        found = await trio.to_thread.run_sync(find_orphans)
        if units is None:
            return found
        return owned_by(found, units, self.context.run_dir)
