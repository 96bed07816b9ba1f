"""The provisioners from the CLI: `latis` and its daemon as subprocesses, against the
stand-ins the provisioners' own tests use (a moto EC2 server, a kmock Kubernetes
API, QEMU with no guest to boot).

What is checked is what the controller and CLI add to the provisioners: the
controller enrolls units that dial home (nobody calls `set_enroller` here),
`latis unit list` shows what latis made for units no longer in config, `latis
unit rm` destroys it, `latis unit up --no-wait` returns before the unit is
ready, the provisioner's progress shows on a terminal (and not with --json),
and `latis unit scale` changes the pod count, each member a unit.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standins import Kmock, Moto, kill_pid_file

pytestmark = pytest.mark.timeout(120)

LATIS = [sys.executable, "-m", "latis_cli"]
UNIT_COMMAND = str(Path(sys.executable).with_name("latis-unit"))
LISTENER = """
[[units.{unit}.accept]]
type = "websocket"
host = "127.0.0.1"
port = 0
tls = true
"""
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


class Cli:
    """A latis home of its own (`LATIS_HOME`, with its `latis.toml`): run `latis` in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {
            **os.environ,
            **AWS,
            "LATIS_HOME": str(path),
            "NO_COLOR": "1",
            "COLUMNS": "160",
            "TERM": "xterm",
        }
        self.env.pop("LATIS_CONFIG", None)

    def config(self, text: str) -> None:
        (self.path / "latis.toml").write_text(text)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LATIS, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.path,
            timeout=timeout,
        )

    def ok(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def on_a_terminal(self, *args: str, timeout: float = 60) -> tuple[int, str, str]:
        """Run with stderr on a pseudo-terminal: exit status, stdout, and what the
        terminal showed."""
        main, side = pty.openpty()
        process = subprocess.Popen(
            [*LATIS, *args],
            stdout=subprocess.PIPE,
            stderr=side,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
            cwd=self.path,
        )
        os.close(side)
        shown = bytearray()
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: every writer closed its end
                break
            if not data:
                break
            shown += data
        os.close(main)
        stdout = process.stdout.read() if process.stdout else ""
        return process.wait(timeout), stdout, shown.decode(errors="replace")


@pytest.fixture
def cli() -> Iterator[Cli]:
    path = Path(tempfile.mkdtemp(prefix="lpw", dir="/tmp"))  # short: socket paths
    here = Cli(path)
    try:
        yield here
    finally:
        for log in sorted(path.glob("*/*.log")):
            print(f"---- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        here.run("daemon", "stop", timeout=30)
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if str(path).encode() in f.read():
                        os.kill(int(entry), signal.SIGKILL)
            except (OSError, ValueError):
                continue
        shutil.rmtree(path, ignore_errors=True)


# ---- cloud-aws, on moto -------------------------------------------------------------------


def cloud_unit(moto: Moto, name: str, unit_dir: Path) -> str:
    return f"""
[units.{name}]
agent = "echo"
provisioner = {{ type = "cloud-aws", instance_type = "t3.small", ami = "ami-12c6146b", \
region = "{moto.region}", endpoint_url = "{moto.url}", poll = 0.05, \
cmdr_address = "127.0.0.1", service = "background", unit_dir = "{unit_dir}", \
unit_command = "{UNIT_COMMAND}" }}
""" + LISTENER.format(unit=name)


def instances(ec2: Any, unit: str | None = None) -> list[dict[str, Any]]:
    filters = [{"Name": "tag:latis:unit", "Values": [unit]}] if unit else []
    reply = ec2.describe_instances(Filters=filters)
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def run_tagged(ec2: Any, tags: dict[str, str]) -> str:
    """An instance made by hand with these tags (as latis tags its own)."""
    reply = ec2.run_instances(
        ImageId="ami-12c6146b",
        InstanceType="t3.small",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )
    instance_id: str = reply["Instances"][0]["InstanceId"]
    return instance_id


def test_unit_list_shows_an_orphan_instance_and_rm_terminates_it(
    cli: Cli, moto: Moto, ec2: Any
) -> None:
    """An instance latis tagged for a unit that is no longer in config is listed as an
    orphan (not the configured unit's, not one latis did not make); `unit rm` ends it."""
    cli.config(cloud_unit(moto, "cloud1", cli.path / "instance"))
    orphan = run_tagged(
        ec2, {"latis:unit": "gone", "latis:managed": "true", "latis:fleet": "default"}
    )
    run_tagged(ec2, {"latis:unit": "cloud1", "latis:managed": "true", "latis:fleet": "default"})
    run_tagged(ec2, {"Name": "not latis's"})

    listed = cli.ok("unit", "list")
    assert "orphans: not looked for: cmdr does not run" in listed.stderr
    cli.ok("daemon", "start")
    rows = cli.json("unit", "list")
    assert [r["unit"] for r in rows if not r["orphan"]] == ["cloud1", "local"]
    [found] = [r for r in rows if r["orphan"]]
    assert (found["unit"], found["provisioner"], found["resource"]) == ("gone", "cloud-aws", orphan)
    assert found["state"] in ("pending", "running")
    table = cli.ok("unit", "list")
    assert "orphans: made by latis for units not in config" in table.stderr
    assert orphan in table.stdout

    removed = cli.ok("unit", "rm", "gone", "--yes")
    assert "removed unit 'gone'" in removed.stderr
    [instance] = instances(ec2, "gone")
    assert instance["State"]["Name"] in ("shutting-down", "terminated")
    assert not [r for r in cli.json("unit", "list") if r["orphan"]]
    # The configured unit's instance was left alone.
    [mine] = instances(ec2, "cloud1")
    assert mine["State"]["Name"] == "running"
    missing = cli.run("unit", "rm", "gone", "--yes")
    assert missing.returncode != 0 and "no unit 'gone'" in missing.stderr


def test_up_no_wait_returns_before_the_unit_dials_home_then_it_answers(
    cli: Cli, moto: Moto, ec2: Any
) -> None:
    """`up --no-wait` returns once EC2 took the run, with the controller's enrollment in
    the user-data and the steps shown on a terminal; the instance's script, run here,
    dials home, and `latis prompt -u` is answered."""
    unit_dir = cli.path / "instance"
    cli.config("[daemon]\ndial_in_timeout = 30\n" + cloud_unit(moto, "cloud1", unit_dir))
    status, _, shown = cli.on_a_terminal("unit", "up", "cloud1", "--no-wait")
    assert status == 0, shown
    assert "running an EC2 t3.small instance for unit 'cloud1'" in shown
    assert "not waiting for it" in shown
    assert "Traceback" not in shown
    entry = cli.json("unit", "status", "cloud1")
    assert entry["connection"] == "disconnected"  # nothing dialed in: nobody ran the instance
    [instance] = instances(ec2, "cloud1")
    reply = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
    script = base64.b64decode(reply["UserData"]["Value"]).decode()
    assert "latis-enroll-1:" in script and "--connect 'wss://127.0.0.1:" in script

    try:
        (cli.path / "user-data.sh").write_text(script)
        subprocess.run(["sh", str(cli.path / "user-data.sh")], check=True, timeout=30)
        answer = cli.ok("prompt", "-u", "cloud1", "hello from the cloud")
        assert answer.stdout == "hello from the cloud\n"
        entry = cli.json("unit", "status", "cloud1")
        assert entry["connection"] == "connected" and "dialing in" in entry["how"]
        cli.ok("unit", "destroy", "cloud1", "--yes")
    finally:
        kill_pid_file(unit_dir / "cloud1.pid")
    [instance] = instances(ec2, "cloud1")
    assert instance["State"]["Name"] in ("shutting-down", "terminated")


def test_json_up_shows_no_progress(cli: Cli, moto: Moto, ec2: Any) -> None:
    """With --json, `up` prints its answer on stdout and nothing on the terminal."""
    cli.config(cloud_unit(moto, "cloud2", cli.path / "instance"))
    status, stdout, shown = cli.on_a_terminal("unit", "up", "cloud2", "--no-wait", "--json")
    assert status == 0, shown
    data = json.loads(stdout)
    assert data["unit"] == "cloud2" and data["connection"] == "disconnected"
    assert data["provision"] in ("created", "running")
    assert data["provision_detail"].startswith("i-")
    assert "EC2" not in shown and "waiting" not in shown


# ---- kubernetes, on kmock -----------------------------------------------------------------


def pods(kmock: Kmock, namespace: str) -> list[str]:
    return sorted(p.metadata.name for p in kmock.api().list_namespaced_pod(namespace).items)


def test_scale_changes_the_pod_count_and_the_units(cli: Cli, kmock: Kmock) -> None:
    """`unit scale grp 3` makes three pods, each enrolled by the controller and a unit
    of its own; back to 1 deletes the others and forgets their units. A pod latis made
    for a unit not in config is an orphan; the group's members are not."""
    namespace = f"w-{uuid.uuid4().hex[:8]}"
    cli.config(
        f"""
[units.grp]
agent = "echo"
provisioner = {{ type = "kubernetes", image = "unit:1", host = "{kmock.url}", \
namespace = "{namespace}", cmdr_address = "127.0.0.1" }}
"""
        + LISTENER.format(unit="grp")
        + f"""
[units.lonely]
provisioner = {{ type = "kubernetes", image = "unit:1", host = "{kmock.url}", \
namespace = "{namespace}" }}
"""
    )
    scaled = cli.json("unit", "scale", "grp", "3")
    assert scaled["members"] == ["grp", "grp-1", "grp-2"]
    assert pods(kmock, namespace) == ["latis-grp", "latis-grp-1", "latis-grp-2"]
    api = kmock.api()
    for member in scaled["members"]:
        secret = api.read_namespaced_secret(f"latis-{member}", namespace)
        assert base64.b64decode(secret.data["enrollment"]).startswith(b"latis-enroll-1:")
    assert cli.json("unit", "status", "grp-2")["member_of"] == "grp"
    refused = cli.run("unit", "destroy", "grp-2", "--yes")
    assert refused.returncode != 0 and "latis unit scale grp N" in refused.stderr

    api.create_namespaced_pod(
        namespace,
        {
            "metadata": {
                "name": "latis-old",
                "labels": {
                    "latis.io/managed": "true",
                    "latis.io/unit": "old",
                    "latis.io/group": "old",
                },
            },
            "spec": {"containers": [{"name": "unit", "image": "unit:1"}]},
        },
    )
    orphans = [r for r in cli.json("unit", "list") if r["orphan"]]
    assert [(o["unit"], o["provisioner"], o["resource"]) for o in orphans] == [
        ("old", "kubernetes", "latis-old")
    ]

    shrunk = cli.ok("unit", "scale", "grp", "1")
    assert "unit grp: 1 units (grp)" in shrunk.stderr
    assert pods(kmock, namespace) == ["latis-grp", "latis-old"]
    gone = cli.run("unit", "status", "grp-1")
    assert gone.returncode != 0 and "no unit 'grp-1'" in gone.stderr

    # The controller enrolls units that dial home: one with no listener is told so.
    lonely = cli.run("unit", "up", "lonely")
    assert lonely.returncode != 0 and "accept entry" in lonely.stderr
    assert "Traceback" not in lonely.stderr
    cli.ok("unit", "destroy", "grp", "--yes")
    assert pods(kmock, namespace) == ["latis-old"]


# ---- qemu, with no guest to boot ------------------------------------------------------------


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64")
def test_a_vm_up_without_waiting_then_orphaned_then_removed(cli: Cli) -> None:
    """`up --no-wait` returns once QEMU runs (its guest, a blank disk, never gets
    ready); taken out of config while cmdr was stopped, the VM is an orphan in `unit
    list`, and `unit rm` stops it."""
    disk = cli.path / "blank.img"
    disk.write_bytes(bytes(1 << 20))
    vm = f"""
[units.vm]
agent = "echo"
provisioner = {{ type = "qemu", image = "{disk}", format = "raw", memory = "64M", \
accel = "tcg", network = false, stop_timeout = 1, ready_timeout = 600 }}
"""
    cli.config(vm)
    up = cli.ok("unit", "up", "vm", "--no-wait")
    assert "unit vm: running" in up.stderr and "not waiting for it" in up.stderr
    entry = cli.json("unit", "status", "vm")
    assert entry["connection"] == "disconnected" and entry["provision"] == "running"
    pid = int(entry["provision_detail"].split()[1].rstrip(","))
    assert _alive(pid)

    cli.ok("daemon", "stop")  # (the VM runs on)
    cli.config("")
    cli.ok("daemon", "start")
    rows = [r for r in cli.json("unit", "list") if r["orphan"]]
    assert [(r["unit"], r["provisioner"], r["resource"]) for r in rows] == [
        ("vm", "qemu", f"pid {pid}")
    ]
    cli.ok("unit", "rm", "vm", "--yes", timeout=90)
    assert not [r for r in cli.json("unit", "list") if r["orphan"]]
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie waits for its reaper only
    except FileNotFoundError:
        return False


# ---- libvirt, on its test driver (in the daemon's process) ----------------------------------


def test_a_domain_taken_out_of_config_is_an_orphan_until_removed(cli: Cli) -> None:
    """A domain of a unit that leaves config (the daemon reloads it: the domain is shut
    down, still defined) is an orphan in `unit list`; `unit rm` undefines it."""
    pytest.importorskip("libvirt")
    kernel = cli.path / "vmlinuz"
    kernel.write_bytes(b"")  # the test driver boots nothing
    cli.config(f"""
[units.dom]
agent = "echo"
provisioner = {{ type = "libvirt", uri = "test:///default", kernel = "{kernel}", ready = "none" }}
""")
    cli.ok("unit", "up", "dom", "--no-wait")
    assert cli.json("unit", "status", "dom")["provision"] == "running"
    cli.config("")
    [row] = [r for r in cli.json("unit", "list") if r["orphan"]]
    assert (row["unit"], row["provisioner"], row["resource"], row["state"]) == (
        "dom",
        "libvirt",
        "latis-dom",
        "defined",
    )
    cli.ok("unit", "rm", "dom", "--yes")
    assert not [r for r in cli.json("unit", "list") if r["orphan"]]
