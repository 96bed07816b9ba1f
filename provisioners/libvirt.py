"""The `libvirt` provisioner: a unit in a libvirt domain, through libvirt-python.

The domain is defined from the options (memory, cpus, a kernel or a disk
image, a virtio-serial channel, 9p shares) or from a domain XML template the
user gives; either way latis adds a `<metadata>` element in its own namespace
(`NAMESPACE`) naming the unit, so that a domain latis defined is recognised,
and one it did not is never touched. `start` defines the domain if needed,
starts it and waits until it is ready; `stop` asks the guest to shut down
(ACPI) and destroys (hard stops) it after `stop_timeout`; `destroy` also
undefines it and removes the run dir. libvirt keeps running the domain
whatever happens to the controller.

The unit is reached on the host end of the domain's virtio-serial channel,
`RUN_DIR/unit.sock` (libvirt's `<channel type='unix'>`, bound by QEMU), with
the qemu provisioner's `ChannelDialer`: a unix socket, one connection at a time,
each to a guest end opened afresh (libvirt's live XML says when the guest has
it open: `state='connected'`). (libvirt 9.0 cannot forward user-mode network ports in XML,
so a unit that listens on TCP is reached through a network of the user's, or
dials cmdr at 10.0.2.2, the host as a user-network guest sees it.)

libvirt-python's calls block: each runs in a worker thread. Its errors become
`ProvisionError`s carrying libvirt's own message; libvirt's habit of printing
every error on stderr is switched off.

Resources: `domain` (its name), `uuid`, `uri`, `exit` (how the last run ended).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import string
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs
import trio

from latis_core import ProvisionContext, ProvisionError, ProvisionState, ProvisionStatus
from latis_core._plugins.provision import OneAtATime

from ._detached import read_tail
from .process import socket_path_problem
from .qemu import CHANNEL_NAME, ChannelDialer, Orphan, detect_accel, owned_by

__all__ = ["NAMESPACE", "LibvirtOptions", "LibvirtProvisioner", "find_orphans"]

#: The XML namespace of latis's `<metadata>` element.
NAMESPACE = "https://latis.dev/xmlns/libvirt/unit/1"
#: The prefix of that element.
PREFIX = "latis"
#: The serial console's file in the run dir.
CONSOLE_NAME = "console.log"
#: How often readiness and shutdowns are polled, in seconds.
POLL = 0.1
#: Seconds between progress messages while the guest boots.
PROGRESS_EVERY = 5.0

_T = TypeVar("_T")
_SIZE = re.compile(r"^([1-9][0-9]*)([KMGT]?)$")
_KIB = {"K": 1, "": 1024, "M": 1024, "G": 1024**2, "T": 1024**3}
_handler_set = False


def _libvirt() -> Any:
    """libvirt-python, with its printing of errors on stderr switched off.

    Raises:
        ImportError: it is not installed.
    """
    global _handler_set
    import libvirt

    if not _handler_set:
        # Without this, libvirt prints every error (even an expected "Domain not
        # found") on stderr; the exceptions carry the same words.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _handler_set = True
    return libvirt


@attrs.define
class LibvirtOptions:
    """The `libvirt` provisioner's config table.

    Attributes:
        uri: the libvirt connection URI ("qemu:///system", "qemu:///session",
            "test:///default" for libvirt's in-process test driver).
        name: the domain's name (default "latis-UNIT").
        template: a domain XML file to define instead of the built-in one; `$unit`,
            `$name`, `$run_dir`, `$channel` (the channel's socket) and `$console`
            are substituted, and latis adds its `<metadata>` element (and the name
            if the template has none).
        domain_type: the domain's type: "auto" ("kvm" when usable, "test" for a
            test:// URI, else "qemu", which is TCG), "kvm", "qemu" or "test".
        memory: the guest's memory: "512M", "16G".
        cpus: virtual CPUs.
        image: a disk image (qcow2 or raw): the boot disk, or with `kernel` `/dev/vda`.
        format: the image's format; by default "qcow2" for `*.qcow2`, else "raw".
        snapshot: the disk is `<transient/>`: writes are dropped when the domain stops.
        kernel: a kernel to boot directly, with `initrd` and `append`.
        initrd: the initial ramdisk for `kernel`.
        append: the kernel's command line.
        network: a virtio NIC on libvirt's user-mode network (the host is 10.0.2.2).
        channel: the name of the virtio-serial port whose host end is
            `RUN_DIR/unit.sock`, or "" for none.
        shares: host folders shared over 9p: `"PATH:TAG"` or `"PATH:TAG:ro"`.
        ready: when `start` returns: "auto" (the guest opens its end of the
            channel), "console:TEXT" (TEXT shows on the serial console, a file in
            the run dir), or "none" (the domain runs).
        ready_timeout: seconds `start` waits for `ready`.
        stop_timeout: seconds the guest gets to shut down before it is destroyed.
    """

    uri: str = "qemu:///system"
    name: str | None = None
    template: str | None = None
    domain_type: str = "auto"
    memory: str = "512M"
    cpus: int = 1
    image: str | None = None
    format: str | None = None
    snapshot: bool = True
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    network: bool = True
    channel: str = "org.latis.unit"
    shares: list[str] = attrs.field(factory=list)
    ready: str = "auto"
    ready_timeout: float = 180.0
    stop_timeout: float = 10.0


def _kib(memory: str) -> int:
    match = _SIZE.match(memory)
    if match is None:
        raise ValueError(f"memory {memory!r}: expected a size such as '512M' or '4G'")
    return int(match.group(1)) * _KIB[match.group(2)]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def _marker(unit: str, run_dir: Path) -> ET.Element:
    """latis's `<metadata>` child: which unit the domain is, and where its run dir is."""
    return ET.Element(f"{{{NAMESPACE}}}unit", {"name": unit, "run_dir": str(run_dir)})


def _unit_of(metadata: str) -> tuple[str | None, str | None]:
    """The unit named in latis's metadata element (as libvirt returns it), and its run
    dir; (None, None) if it does not read."""
    try:
        element = ET.fromstring(metadata)
    except ET.ParseError:
        return None, None
    return element.get("name"), element.get("run_dir")


def find_orphans(uri: str) -> list[Orphan]:
    """Every domain at `uri` whose metadata says latis defined it (blocking)."""
    libvirt = _libvirt()
    conn = libvirt.open(uri)
    try:
        found = []
        for domain in conn.listAllDomains():
            try:
                metadata = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)
            except libvirt.libvirtError:
                continue  # not ours: no latis metadata
            unit, run_dir = _unit_of(metadata)
            if unit is not None:
                state = "running" if domain.isActive() else "defined"
                found.append(Orphan(unit, f"domain {domain.name()} at {uri}, {state}",
                                    run_dir=run_dir, resource=domain.name(), state=state))
        return found
    finally:
        conn.close()


class LibvirtProvisioner(OneAtATime):
    """Runs a unit in a libvirt domain that latis defines and marks as its own."""

    Options = LibvirtOptions

    def __init__(self, options: LibvirtOptions, context: ProvisionContext) -> None:
        self.options = options
        self.context = context
        #: The domain's name.
        self.name: str = options.name or "latis-" + re.sub(r"[^A-Za-z0-9_.-]", "-", context.unit)
        #: The host end of the virtio-serial channel.
        self.channel: Path = context.run_dir / CHANNEL_NAME
        #: The guest's serial console.
        self.console: Path = context.run_dir / CONSOLE_NAME
        #: Called with a short line as `start` goes; the controller sets it.
        self.progress: Callable[[str], None] | None = None
        #: Whether `start` waits for `ready`; False (`latis unit up --no-wait`) returns
        #: once the domain runs.
        self.wait: bool = True
        self._conn: Any = None
        super().__init__()

    def __repr__(self) -> str:
        return f"<LibvirtProvisioner unit={self.context.unit!r} domain={self.name!r}>"

    def _error(self, message: str) -> ProvisionError:
        return ProvisionError(f"libvirt provisioner for unit {self.context.unit!r}: {message}")

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    # --- libvirt, in a worker thread

    async def _call(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        """Run the blocking `fn(*args)` in a thread; libvirt's errors become ProvisionError."""
        try:
            libvirt = _libvirt()
        except ImportError:
            raise self._error(
                "libvirt-python is not installed (pip install 'latis[libvirt]'; it builds"
                " against libvirt's headers: apt-get install libvirt-dev pkg-config gcc"
                " python3-dev)"
            ) from None
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except libvirt.libvirtError as exc:
            raise self._error(f"{what}: {exc}") from None

    def _connection(self) -> Any:
        """The connection to `uri`, opened once (blocking)."""
        if self._conn is None:
            self._conn = _libvirt().open(self.options.uri)
        return self._conn

    def _lookup(self) -> Any:
        """Our domain, or None if there is none (blocking). A domain of our name that
        latis did not define for this unit is an error."""
        libvirt = _libvirt()
        conn = self._connection()
        try:
            domain = conn.lookupByName(self.name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        try:
            metadata = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)
        except libvirt.libvirtError:
            metadata = ""
        if _unit_of(metadata)[0] != self.context.unit:
            raise ProvisionError(
                f"libvirt provisioner for unit {self.context.unit!r}: a domain named"
                f" {self.name!r} exists at {self.options.uri} and latis did not define it"
                " for this unit: remove it, or set `name` to another"
            )
        return domain

    def _domain_type(self) -> str:
        if self.options.domain_type != "auto":
            return self.options.domain_type
        if self.options.uri.startswith("test:"):
            return "test"
        return "kvm" if detect_accel()[0] == "kvm" else "qemu"

    def domain_xml(self) -> str:
        """The domain's XML: the template's or the built-in one, with latis's metadata."""
        options = self.options
        if options.template:
            values = {"unit": self.context.unit, "name": self.name,
                      "run_dir": str(self.context.run_dir), "channel": str(self.channel),
                      "console": str(self.console)}
            text = Path(os.path.expanduser(options.template)).read_text()
            root = ET.fromstring(string.Template(text).safe_substitute(values))
            if root.find("name") is None:
                _sub(root, "name", self.name)
        else:
            root = self._built_in()
        metadata = root.find("metadata")
        if metadata is None:
            metadata = _sub(root, "metadata")
        metadata.append(_marker(self.context.unit, self.context.run_dir))
        ET.register_namespace(PREFIX, NAMESPACE)
        return ET.tostring(root, encoding="unicode")

    def _built_in(self) -> ET.Element:
        options = self.options
        root = ET.Element("domain", {"type": self._domain_type()})
        _sub(root, "name", self.name)
        _sub(root, "memory", str(_kib(options.memory)), unit="KiB")
        _sub(root, "vcpu", str(options.cpus))
        os_ = _sub(root, "os")
        _sub(os_, "type", "hvm", arch="x86_64")
        if options.kernel:
            _sub(os_, "kernel", os.path.expanduser(options.kernel))
            if options.initrd:
                _sub(os_, "initrd", os.path.expanduser(options.initrd))
            if options.append:
                _sub(os_, "cmdline", options.append)
        else:
            _sub(os_, "boot", dev="hd")
        # Like QEMU's -no-reboot: a guest that reboots or crashes stops.
        _sub(root, "on_reboot", "destroy")
        _sub(root, "on_crash", "destroy")
        devices = _sub(root, "devices")
        if options.image:
            image = os.path.expanduser(options.image)
            disk = _sub(devices, "disk", type="file", device="disk")
            fmt = options.format or ("qcow2" if image.endswith(".qcow2") else "raw")
            _sub(disk, "driver", name="qemu", type=fmt)
            _sub(disk, "source", file=image)
            _sub(disk, "target", dev="vda", bus="virtio")
            if options.snapshot:
                _sub(disk, "transient")
        if options.network:
            interface = _sub(devices, "interface", type="user")
            _sub(interface, "model", type="virtio")
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=str(self.console))
        _sub(serial, "target", port="0")
        if options.channel:
            channel = _sub(devices, "channel", type="unix")
            _sub(channel, "source", mode="bind", path=str(self.channel))
            _sub(channel, "target", type="virtio", name=options.channel)
        for share in options.shares:
            path, tag, *ro = share.split(":")
            filesystem = _sub(devices, "filesystem", type="mount", accessmode="passthrough")
            _sub(filesystem, "source", dir=os.path.expanduser(path))
            _sub(filesystem, "target", dir=tag)
            if ro:
                _sub(filesystem, "readonly")
        return root

    # --- checks

    def _check(self) -> None:
        options = self.options
        if not options.template:
            if not (options.image or options.kernel):
                raise self._error("give `image` (a disk to boot), `kernel` (with `initrd`),"
                                  " both, or a `template`: neither is set")
            try:
                _kib(options.memory)
            except ValueError as exc:
                raise self._error(str(exc)) from None
            if options.cpus < 1:
                raise self._error(f"cpus must be at least 1, not {options.cpus}")
        elif not os.path.isfile(os.path.expanduser(options.template)):
            raise self._error(f"template {options.template!r}: no such file")
        if options.domain_type not in ("auto", "kvm", "qemu", "test"):
            raise self._error(f"domain_type {options.domain_type!r}: expected 'auto', 'kvm',"
                              " 'qemu' or 'test'")
        if not (options.ready in ("auto", "none") or options.ready.startswith("console:")):
            raise self._error(f"ready {options.ready!r}: expected 'auto', 'none' or 'console:TEXT'")
        if options.ready == "auto" and not options.channel:
            raise self._error("ready = 'auto' probes the channel: set `channel`, or `ready`")
        for share in options.shares:
            parts = share.split(":")
            if len(parts) not in (2, 3) or not all(parts[:2]) or parts[2:] not in ([], ["ro"]):
                raise self._error(f"share {share!r}: expected 'PATH:TAG' or 'PATH:TAG:ro'")
        problem = socket_path_problem(self.channel)
        if problem:
            raise self._error(problem)

    # --- the work (callers hold the lock)

    def _record(self, domain: Any, **values: str) -> None:
        resources = self.context.resources
        resources.clear()
        resources.set("domain", self.name)
        resources.set("uuid", domain.UUIDString())
        resources.set("uri", self.options.uri)
        for kind, value in values.items():
            resources.set(kind, value)

    async def _create(self) -> Any:
        """Define the domain unless ours exists; return it."""
        self._check()
        domain = await self._call(f"cannot look up domain {self.name!r}", self._lookup)
        if domain is None:
            self.context.ensure_run_dir()
            try:
                xml = self.domain_xml()
            except (OSError, ET.ParseError) as exc:
                raise self._error(f"template {self.options.template!r}: {exc}") from None

            def define() -> Any:
                return self._connection().defineXML(xml)

            domain = await self._call(f"cannot define domain {self.name!r}", define)
            self._record(domain)
        elif self.context.resources.get("uuid") is None:
            self._record(domain)
        return domain

    async def _start(self) -> None:
        """Define the domain if needed, start it unless it runs; return once ready."""
        domain = await self._create()
        started = False
        if not await self._call("isActive", domain.isActive):
            with contextlib.suppress(FileNotFoundError):
                self.console.unlink()  # a file of the last run would answer `console:`
            await self._call(f"cannot start domain {self.name!r}", domain.create)
            started = True
            self._record(domain)
            self._say(f"started domain {self.name!r} at {self.options.uri}")
        if self.wait:
            await self._wait_ready(domain, started)

    async def _is_ready(self) -> bool:
        ready = self.options.ready
        if ready == "none":
            return True
        if ready.startswith("console:"):
            return ready[len("console:") :] in read_tail(self.console, 0, lines=10_000)
        # Nothing is sent on the channel: a probe's bytes would reach the unit as the
        # start of the controller's connection (see qemu.ChannelDialer).
        return await self._channel_connected()

    def _channel_state(self) -> bool:
        """Whether the guest has its end of our channel open (blocking): libvirt keeps
        `state='connected'` on the channel's target in the live XML, from QEMU's
        VSERPORT_CHANGE events."""
        domain = self._lookup()
        if domain is None or not domain.isActive():
            return False
        root = ET.fromstring(domain.XMLDesc(0))
        for target in root.iterfind("devices/channel/target"):
            if target.get("name") == self.options.channel:
                return target.get("state") == "connected"
        return False

    async def _channel_connected(self) -> bool:
        return await self._call("cannot read the domain's XML", self._channel_state)

    async def _wait_ready(self, domain: Any, started: bool) -> None:
        start = trio.current_time()
        deadline = start + self.options.ready_timeout
        next_say = start + PROGRESS_EVERY
        while not await self._is_ready():
            if not await self._call("isActive", domain.isActive):
                self.context.resources.set("exit", "stopped before it was ready")
                raise self._error(f"domain {self.name!r} stopped before it was ready"
                                  + self._console_tail())
            now = trio.current_time()
            if now >= deadline:
                tail = self._console_tail()
                if started:
                    await self._shut_down(domain)
                    self.context.resources.set("exit", "failed to start")
                raise self._error(f"domain {self.name!r} was not ready ({self.options.ready})"
                                  f" within {self.options.ready_timeout:g} s" + tail)
            if now >= next_say:
                next_say = now + PROGRESS_EVERY
                self._say(f"waiting for unit {self.context.unit!r}: {now - start:.0f} s")
            await trio.sleep(POLL)

    def _console_tail(self) -> str:
        tail = read_tail(self.console)
        if not tail:
            return f"; its console ({self.console}) says nothing"
        return f"; the end of its console ({self.console}):\n{tail}"

    async def _shut_down(self, domain: Any) -> str:
        """ACPI shutdown, then destroy after `stop_timeout`; say how it ended."""
        if not await self._call("isActive", domain.isActive):
            return "not running"
        await self._call(f"cannot shut down domain {self.name!r}", domain.shutdown)
        deadline = trio.current_time() + self.options.stop_timeout
        while trio.current_time() < deadline:
            if not await self._call("isActive", domain.isActive):
                return "shut down"
            await trio.sleep(POLL)
        libvirt = _libvirt()

        def destroy() -> None:
            try:
                domain.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise  # "domain is not running": it stopped meanwhile

        await self._call(f"cannot destroy domain {self.name!r}", destroy)
        return f"destroyed after {self.options.stop_timeout:g} s"

    async def _stop(self) -> None:
        """Shut the domain down (ACPI, then destroy after `stop_timeout`); keep it defined."""
        domain = await self._call(f"cannot look up domain {self.name!r}", self._lookup)
        if domain is None:
            return
        how = await self._shut_down(domain)
        if how != "not running":
            self._record(domain, exit=how)

    async def _destroy(self) -> None:
        """Stop and undefine the domain, remove the run dir, forget it all."""
        domain = await self._call(f"cannot look up domain {self.name!r}", self._lookup)
        if domain is not None:
            await self._shut_down(domain)
            await self._call(f"cannot undefine domain {self.name!r}", domain.undefine)
        self.context.resources.clear()
        run_dir = self.context.run_dir
        await trio.to_thread.run_sync(lambda: shutil.rmtree(run_dir, ignore_errors=True))

    async def status(self) -> ProvisionStatus:
        """RUNNING, STOPPED (it ran), CREATED (defined, never started) or ABSENT."""
        domain = await self._call(f"cannot look up domain {self.name!r}", self._lookup)
        if domain is None:
            return ProvisionStatus(ProvisionState.ABSENT)
        where = f"domain {self.name} at {self.options.uri}"
        if await self._call("isActive", domain.isActive):
            return ProvisionStatus(ProvisionState.RUNNING, where)
        exit_ = self.context.resources.get("exit")
        if exit_ is not None:
            return ProvisionStatus(ProvisionState.STOPPED, f"{where}, stopped ({exit_})")
        return ProvisionStatus(ProvisionState.CREATED, f"{where}, not started")

    def dialer(self) -> ChannelDialer | None:
        """Dial the host end of the domain's virtio-serial channel, one connection at a
        time, each to a guest end opened afresh (see qemu.ChannelDialer); None without
        a channel (the unit can only dial cmdr)."""
        if not self.options.channel:
            return None
        return ChannelDialer(self.channel, self._channel_connected)

    #: One look at a `uri` serves every unit there.
    orphan_scope: ClassVar[tuple[str, ...]] = ("uri",)

    async def orphans(self, units: Iterable[str] | None = None) -> list[Orphan]:
        """Every domain at this provisioner's `uri` that latis defined (see
        `find_orphans`); given `units` (every unit in config), only those this
        controller defined (their run dir is beside this unit's) for a unit not
        among them: `latis unit list`."""
        found = await self._call("cannot list domains", find_orphans, self.options.uri)
        if units is None:
            return found
        return owned_by(found, units, self.context.run_dir)

    async def aclose(self) -> None:
        """Close the libvirt connection (the domain runs on)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await trio.to_thread.run_sync(conn.close)
