#!/usr/bin/env python3
"""A stand-in `tart` for tests (tart runs on macOS only): it appends each command
line to $FAKE_TART_LOG (one JSON array a line) and keeps its VMs in the JSON
file $FAKE_TART_STATE. `run` lasts until `stop`; `ip` prints 127.0.0.1;
`exec` runs the command here, as the guest agent would run it in the VM.
Errors are worded as tart words them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_TART_STATE"])


def load() -> dict[str, dict[str, object]]:
    try:
        return dict(json.loads(STATE.read_text()))
    except (OSError, ValueError):
        return {}


def save(vms: dict[str, dict[str, object]]) -> None:
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(vms))
    tmp.replace(STATE)


def fail(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


def need(vms: dict[str, dict[str, object]], name: str) -> dict[str, object]:
    if name not in vms:
        fail(f'the specified VM "{name}" does not exist')
    return vms[name]


def main(args: list[str]) -> None:
    with open(os.environ["FAKE_TART_LOG"], "a") as log:
        log.write(json.dumps(args) + "\n")
    vms = load()
    command, rest = args[0], args[1:]
    names = [a for a in rest if not a.startswith("-")]
    if command == "list":
        print(json.dumps([{"Name": n, "Source": "local", **vm} for n, vm in vms.items()]))
    elif command == "clone":
        source, name = names[0], names[1]
        if source.startswith("missing"):
            fail(f'the specified VM "{source}" does not exist')
        if name in vms:
            fail(f'VM "{name}" already exists')
        vms[name] = {"State": "stopped", "CPU": 4, "Memory": 8192}
        save(vms)
    elif command == "set":
        vm = need(vms, names[0])
        for flag, key in (("--cpu", "CPU"), ("--memory", "Memory"), ("--disk-size", "Disk")):
            if flag in rest:
                vm[key] = int(rest[rest.index(flag) + 1])
        save(vms)
    elif command == "run":
        name = names[-1]
        need(vms, name)["State"] = "running"
        save(vms)
        while load().get(name, {}).get("State") == "running":
            time.sleep(0.05)
    elif command == "ip":
        deadline = time.monotonic() + 10
        while need(load(), names[0]).get("State") != "running":
            if time.monotonic() > deadline:
                fail(f'no IP address found for "{names[0]}", is your VM running?')
            time.sleep(0.02)
        print("127.0.0.1")
    elif command == "exec":
        at = next(i for i, a in enumerate(rest) if not a.startswith("-"))
        if need(vms, rest[at]).get("State") != "running":
            fail(f'VM "{rest[at]}" is not running')
        sys.exit(subprocess.run(rest[at + 1:]).returncode)
    elif command == "stop":
        need(vms, names[0])["State"] = "stopped"
        save(vms)
    elif command == "delete":
        need(vms, names[0])
        del vms[names[0]]
        save(vms)
    else:
        fail(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
