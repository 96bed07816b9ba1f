#!/usr/bin/env python
"""The qemu provisioner's start-up under TCG, beside the platform's floor, in one run.

    python benchmarks/provision_qemu.py             # 3 interleaved rounds (~90 s)
    python benchmarks/provision_qemu.py --quick     # 1 round (~30 s)
    python benchmarks/provision_qemu.py --json      # also the numbers as JSON (last line)

Rows (the guests are tests/qemu_guest.py's; one guest runs at a time):

- `F6` bare `qemu-system-x86_64` (the recipe's command line, `-serial stdio`)
  booting the busybox echo guest, from exec to its READY line: the floor.
- `qemu_echo_ready` `QemuProvisioner.start` for the same guest, returning once
  the guest answers on its forwarded port (ready = "auto").
- `F7` bare QEMU booting the guest that runs a real `latis-unit` (host root
  over 9p), from exec to the first prompt answered through the forwarded port.
- `qemu_unit_prompt` `QemuProvisioner.start` for that guest, then the first
  prompt answered (the seed's tcp dialer, with the unit's token).

Progress goes to stderr, the table to stdout. It never asserts on a number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from latis_provisioners.qemu import QemuProvisioner
from latis_transports.tcp import TcpDialer

import latis_core
from latis_core import MemoryResources, ProvisionContext

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent / "tests"))
from qemu_guest import (  # noqa: E402
    CHANNEL,
    GUEST_PORT,
    HOST_ROOT_SHARE,
    Guest,
    GuestUnavailable,
    echo_guest,
    unit_guest,
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bare_argv(guest: Guest, port: int, memory: str, shares: bool, channel: str) -> list[str]:
    """The recipe's QEMU command line (RECIPES.md), console on stdout; the virtio port
    on the unix socket `channel` (the echo guest waits for it)."""
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", memory, "-smp", "1",
            "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", guest.append,
            "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=ch0,path={channel},server=on,wait=off",
            "-device", f"virtserialport,chardev=ch0,name={CHANNEL}"]
    if shares:
        argv += ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                 "readonly=on,multidevs=remap"]
    return argv


async def prompt_once(port: int, token: bytes) -> None:
    """One session and one prompt on the unit at 127.0.0.1:`port`."""
    async with TcpDialer("127.0.0.1", port).connect() as stream:
        async with latis_core.connect(stream, token=token) as unit:
            session = await unit.create_session()
            await session.prompt("hi").text()


async def first_prompt(port: int, token: bytes, seconds: float = 120.0) -> None:
    """Retry `prompt_once` until it succeeds (slirp accepts before the guest listens)."""
    with trio.fail_after(seconds):
        while True:
            try:
                await prompt_once(port, token)
                return
            except (OSError, latis_core.ConnectError, trio.BrokenResourceError):
                await trio.sleep(0.2)


async def bare(guest: Guest, memory: str, until: Callable[[int], Awaitable[None]] | None,
               shares: bool = False) -> float:
    """Seconds from exec of a bare QEMU to READY on its console (or to `until(port)`)."""
    port = free_port()
    channel = tempfile.mktemp(prefix="lpq", suffix=".sock", dir="/tmp")
    argv = bare_argv(guest, port, memory, shares, channel)
    start = time.perf_counter()
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        if until is None:
            assert process.stdout is not None
            seen = b""
            with trio.fail_after(120):
                while b"\nREADY" not in seen:
                    data = await process.stdout.receive_some()
                    if not data:
                        raise RuntimeError("QEMU exited before READY")
                    seen = seen[-64:] + data
        else:
            await until(port)
        return time.perf_counter() - start
    finally:
        process.kill()
        await process.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(channel)


async def provisioned(options: dict[str, Any], after: Callable[[int], Awaitable[None]] | None,
                      port: int) -> float:
    """Seconds from `QemuProvisioner.start` to its return (and then `after(port)`)."""
    with tempfile.TemporaryDirectory(prefix="lpq", dir="/tmp") as tmp:
        context = ProvisionContext("box", "echo", {}, Path(tmp) / "run", Path(tmp) / "log",
                                   MemoryResources())
        provisioner = QemuProvisioner(QemuProvisioner.Options(**options), context)
        start = time.perf_counter()
        try:
            await provisioner.start()
            if after is not None:
                await after(port)
            return time.perf_counter() - start
        finally:
            provisioner.options.stop_timeout = 0.1
            await provisioner.destroy()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", "--short", action="store_true",
                        help="one round instead of three")
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args()
    rounds = 1 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="lpq", dir="/tmp") as tmp:
        token_file = Path(tmp) / "unit.token"
        token_file.write_text(secrets.token_urlsafe(24))
        token_file.chmod(0o600)
        token = token_file.read_text().encode()
        try:
            echo, unit = echo_guest(), unit_guest(token_file)
        except GuestUnavailable as exc:
            log(f"no QEMU guest here: {exc}")
            sys.exit(1)
        runs: dict[str, list[float]] = {"F6": [], "qemu_echo_ready": [], "F7": [],
                                        "qemu_unit_prompt": []}

        async def unit_prompt(port: int) -> None:
            await first_prompt(port, token)

        for n in range(rounds):
            log(f"round {n + 1}/{rounds}: F6")
            runs["F6"].append(await bare(echo, "256M", None))
            log(f"round {n + 1}/{rounds}: qemu_echo_ready")
            port = free_port()
            runs["qemu_echo_ready"].append(await provisioned(
                echo.options(ports=[f"{port}:{GUEST_PORT}"], memory="256M"), None, port))
            log(f"round {n + 1}/{rounds}: F7")
            runs["F7"].append(await bare(unit, "1G", unit_prompt, shares=True))
            log(f"round {n + 1}/{rounds}: qemu_unit_prompt")
            port = free_port()
            runs["qemu_unit_prompt"].append(await provisioned(
                unit.options(ports=[f"{port}:{GUEST_PORT}"], memory="1G",
                             shares=[HOST_ROOT_SHARE]), unit_prompt, port))
    what = {
        "F6": "bare QEMU, busybox guest: exec to READY on the console",
        "qemu_echo_ready": "provisioner start, same guest, until its port answers",
        "F7": "bare QEMU, real latis-unit guest: exec to first prompt answered",
        "qemu_unit_prompt": "provisioner start to first prompt answered, same guest",
    }
    floors = {"qemu_echo_ready": "F6", "qemu_unit_prompt": "F7"}
    medians = {row: statistics.median(values) for row, values in runs.items()}
    result = await trio.run_process(["qemu-system-x86_64", "--version"], capture_stdout=True)
    version = result.stdout.decode().split("\n")[0]
    print(f"qemu provisioner under TCG ({rounds} interleaved round(s)); {version};"
          f" {os.cpu_count()} CPUs\n")
    print(f"{'row':<18} {'what':<64} {'median':>8} {'runs':<22} x floor")
    for row, values in runs.items():
        ratio = f"{medians[row] / medians[floors[row]]:.2f}x {floors[row]}" if row in floors else ""
        each = " ".join(f"{v:.1f}" for v in values)
        print(f"{row:<18} {what[row]:<64} {medians[row]:>7.2f}s {each:<22} {ratio}")
    if args.json:
        print(json.dumps({"runs": runs, "median": medians}))


if __name__ == "__main__":
    trio.run(main)
