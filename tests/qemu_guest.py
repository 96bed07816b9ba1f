"""Tiny QEMU guests for the qemu and libvirt provisioners' tests and benchmark.

A Debian kernel is taken from its package (`apt-get download`, unpacked into
the cache, never installed) and booted with a busybox initramfs built here:
see ../shared/RECIPES.md, "QEMU: a tiny guest under TCG". The guests:

- `echo_guest`: the cloud kernel (fastest to boot), a TCP echo on guest port
  7000 and an echo on the virtio port `org.latis.unit`; writes GUEST_WROTE at
  the start of its disk if it has one; prints READY on the serial console
  (~2 s under TCG).
- `unit_guest`: the generic kernel (the cloud one has no 9p), the host's root
  shared read-only over 9p, and this venv's real `latis-unit` run in a chroot,
  listening on guest port 7000 with a token file (first prompt ~16 s).
- `script_guest`: the same, running a host shell script in the chroot instead.

Built files are cached in `$LATIS_QEMU_CACHE` or `~/.cache/latis/qemu`.
Nothing here needs pytest: a missing piece raises `GuestUnavailable`, which
the tests turn into a skip with its reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

#: Busybox applets the guests' /init uses.
APPLETS = ("sh", "mount", "insmod", "ip", "cat", "nc", "sleep", "poweroff", "chroot", "mkdir",
           "echo", "ls", "sync")
#: virtio modules for the echo guest, in modules.dep order (a wrong order: "unknown symbol").
ECHO_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
                "virtio_pci", "virtio_console", "virtio_blk", "failover", "net_failover",
                "virtio_net")
#: The same plus 9p, for the guest that runs the host's Python.
UNIT_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
                "virtio_pci", "virtio_console", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p",
                "failover", "net_failover", "virtio_net")
#: The guest port its unit (or echo) listens on.
GUEST_PORT = 7000
#: The virtio-serial port's name (the qemu provisioner's default `channel`).
CHANNEL = "org.latis.unit"

_PREAMBLE = """#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "INIT_RAN" > /dev/ttyS0
for m in {modules}; do insmod /lib/modules/$m.ko; done
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
"""

ECHO_INIT = _PREAMBLE + """
if [ -b /dev/vda ]; then echo GUEST_WROTE > /dev/vda; sync; echo "WROTE" > /dev/ttyS0; fi
nc -ll -p {port} -e /bin/cat &
VP=
while [ -z "$VP" ]; do
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat $d/name 2>/dev/null)" = {channel} ] && VP=/dev/${{d##*/}}
  done; [ -n "$VP" ] || sleep 0.05
done
( while true; do cat <>$VP >&0; sleep 0.1; done ) &
echo "READY" > /dev/ttyS0
while true; do sleep 3600; done
"""

UNIT_INIT = _PREAMBLE + """
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
mount -t tmpfs tmp /host/run
echo "HOST_MOUNTED" > /dev/ttyS0
HOME=/run chroot /host {command} > /dev/ttyS0 2>&1 &
while true; do sleep 3600; done
"""


class GuestUnavailable(Exception):
    """A guest cannot be built here (the message says what is missing)."""


@attrs.frozen
class Guest:
    """A bootable guest: the qemu provisioner's `kernel`, `initrd` and `append`."""

    kernel: Path
    initrd: Path
    append: str = "console=ttyS0 quiet panic=-1"

    def options(self, **more: object) -> dict[str, object]:
        """The qemu provisioner's options for this guest, and `more`."""
        return {"kernel": str(self.kernel), "initrd": str(self.initrd), "append": self.append,
                "accel": "tcg", **more}


def cache_dir() -> Path:
    """Where kernels and initramfs images are kept."""
    path = Path(os.environ.get("LATIS_QEMU_CACHE") or Path.home() / ".cache/latis/qemu")
    path.mkdir(parents=True, exist_ok=True)
    return path


def qemu_problem() -> str | None:
    """Why a QEMU guest cannot run here, or None."""
    missing = [tool for tool in ("qemu-system-x86_64", "cpio", "dpkg-deb", "apt-get")
               if shutil.which(tool) is None]
    if missing:
        return (f"{', '.join(missing)} not found (.ci/run installs them: apt-get install"
                " qemu-system-x86 busybox-static cpio kmod)")
    if _busybox() is None:
        return "no static busybox (apt-get install busybox-static)"
    return None


def _busybox() -> Path | None:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.isfile(path):
            return Path(path)
    return None


def _run(argv: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        words = (result.stderr or result.stdout)[-500:]
        raise GuestUnavailable(f"{' '.join(argv)} failed: {words}")
    return result.stdout


def _package(meta: str) -> str:
    """The versioned kernel package a meta package depends on."""
    for line in _run(["apt-cache", "depends", meta]).splitlines():
        word = line.split(":", 1)[-1].strip()
        if "Depends:" in line and word.startswith("linux-image-"):
            return word
    raise GuestUnavailable(f"apt-cache depends {meta} names no linux-image package")


def kernel(flavour: str) -> tuple[Path, Path]:
    """The kernel of `flavour` ("cloud" or "generic"): its vmlinuz and modules folder,
    downloaded and unpacked once (apt-get download needs apt-get update first)."""
    cache = cache_dir()
    meta = "linux-image-cloud-amd64" if flavour == "cloud" else "linux-image-amd64"
    package = _package(meta)
    tree = cache / package
    if not tree.is_dir():
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            _run(["apt-get", "download", package], cwd=cache)
            debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            raise GuestUnavailable(f"apt-get download {package} left no .deb in {cache}")
        partial = cache / f".{package}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        _run(["dpkg-deb", "-x", str(debs[-1]), str(partial)])
        partial.rename(tree)
    version = package.removeprefix("linux-image-")
    vmlinuz = tree / "boot" / f"vmlinuz-{version}"
    modules = tree / "lib" / "modules" / version
    if not vmlinuz.is_file() or not modules.is_dir():
        raise GuestUnavailable(f"{package} holds no {vmlinuz.name} or modules")
    return vmlinuz, modules


def initrd(
    init: str, modules_dir: Path, modules: tuple[str, ...], where: Path | None = None
) -> Path:
    """A gzipped initramfs: busybox, `modules` (plain .ko) and `init` as /init; built
    once per content, in `where` (default: the cache)."""
    key = hashlib.sha256(f"{init}\0{modules_dir}\0{modules}".encode()).hexdigest()[:16]
    out = (where or cache_dir()) / f"initrd-{key}.gz"
    if out.is_file():
        return out
    busybox = _busybox()
    if busybox is None:
        raise GuestUnavailable("no static busybox (apt-get install busybox-static)")
    found = {path.name.removesuffix(".ko"): path for path in modules_dir.rglob("*.ko")}
    root = out.parent / f".root-{key}"
    shutil.rmtree(root, ignore_errors=True)
    for folder in ("bin", "lib/modules", "proc", "sys", "dev", "host", "tmp"):
        (root / folder).mkdir(parents=True)
    shutil.copy(busybox, root / "bin/busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for name in modules:
        # Module files use '-' or '_' as it came; insmod is given the name as listed.
        path = found.get(name) or found.get(name.replace("_", "-"))
        if path is None:
            raise GuestUnavailable(f"the kernel in {modules_dir} has no module {name}")
        shutil.copy(path, root / "lib/modules" / f"{name}.ko")
    (root / "init").write_text(init)
    (root / "init").chmod(0o755)
    partial = out.with_suffix(".partial")
    with open(partial, "wb") as file:
        subprocess.run("find . | cpio -o -H newc --quiet | gzip -1", shell=True, cwd=root,
                       stdout=file, check=True)
    partial.rename(out)
    shutil.rmtree(root, ignore_errors=True)
    return out


def echo_guest() -> Guest:
    """The cloud kernel with a busybox echo on guest port 7000 and on the channel."""
    problem = qemu_problem()
    if problem:
        raise GuestUnavailable(problem)
    vmlinuz, modules = kernel("cloud")
    init = ECHO_INIT.format(modules=" ".join(ECHO_MODULES), port=GUEST_PORT, channel=CHANNEL)
    return Guest(vmlinuz, initrd(init, modules, ECHO_MODULES))


def unit_guest(token_file: Path, name: str = "box", agent: str = "echo") -> Guest:
    """The generic kernel running this venv's `latis-unit` (host root over 9p, read-only),
    listening on guest port 7000 and asking for the token in `token_file` (a host path)."""
    problem = qemu_problem()
    if problem:
        raise GuestUnavailable(problem)
    unit = Path(sys.prefix) / "bin" / "latis-unit"
    if not unit.is_file():
        raise GuestUnavailable(f"{unit} is missing (pip install -e . in this venv)")
    vmlinuz, modules = kernel("generic")
    command = (f"{unit} --listen tcp://0.0.0.0:{GUEST_PORT} --token-file {token_file}"
               f" --name {name} --agent {agent}")
    init = UNIT_INIT.format(modules=" ".join(UNIT_MODULES), command=command)
    # Its init names a per-run token file: built beside it, not in the cache.
    return Guest(vmlinuz, initrd(init, modules, UNIT_MODULES, where=token_file.parent))


def script_guest(script: Path) -> Guest:
    """The generic kernel with the host root over 9p, running the host's shell script
    `script` in a chroot of it (so what it runs can be written after the guest is built)."""
    problem = qemu_problem()
    if problem:
        raise GuestUnavailable(problem)
    vmlinuz, modules = kernel("generic")
    init = UNIT_INIT.format(modules=" ".join(UNIT_MODULES), command=f"/bin/sh {script}")
    return Guest(vmlinuz, initrd(init, modules, UNIT_MODULES, where=script.parent))


def channel_unit_script(name: str = "box", agent: str = "echo") -> str:
    """A `script_guest` script serving this venv's `latis-unit --stdio` on the virtio
    port named CHANNEL: found by its name (no udev), opened once read-write (a second
    open is EBUSY), and a new unit for each host connection (a unit exits on EOF, when
    the host hangs up)."""
    unit = Path(sys.prefix) / "bin" / "latis-unit"
    return f"""
VP=
while [ -z "$VP" ]; do
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat $d/name 2>/dev/null)" = {CHANNEL} ] && VP=/dev/${{d##*/}}
  done; [ -n "$VP" ] || sleep 0.05
done
while true; do {unit} --stdio --name {name} --agent {agent} <>$VP >&0; sleep 0.1; done
"""


#: The qemu provisioner's `shares` entry for the host root, read-only, that the
#: unit guest mounts as `hostroot`.
HOST_ROOT_SHARE = "/:hostroot:ro"




async def echoes(connect: Callable[[], Awaitable[trio.abc.Stream]], data: bytes) -> bytes:
    """What the echo guest sends back for `data` on a new connection, retried for up to
    15 s: the guest reopens its virtio port after each host disconnect, and the port
    drops what arrives while it is closed, so one try may get nothing."""
    got = b""
    with trio.move_on_after(15):
        while True:
            got = b""
            async with await connect() as stream:
                await stream.send_all(data)
                with trio.move_on_after(1.5):
                    while len(got) < len(data):
                        chunk = await stream.receive_some(len(data) - len(got))
                        if not chunk:
                            break
                        got += chunk
            if got == data:
                return got
            await trio.sleep(0.2)
    return got


if __name__ == "__main__":  # fetch both kernels, build the echo guest: CI does it ahead
    print(echo_guest())
    print(kernel("generic")[0])
