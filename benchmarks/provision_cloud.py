#!/usr/bin/env python
"""Cloud provisioners: time from provisioner start to the first prompt answered,
beside the platform's floor, all in one run.

    python benchmarks/provision_cloud.py            # 5 rounds per row (~15 s)
    python benchmarks/provision_cloud.py --quick    # 2 rounds per row (or --short)
    python benchmarks/provision_cloud.py --json     # also print the numbers as JSON (last line)

Stand-ins (tests/standins.py): a moto EC2 server and a kmock Kubernetes API
emulator, each a process on loopback. Neither runs anything, so this script
plays the machine, as the tests do: it runs the instance's user-data (or the
pod's command line, with its Secret) here, and the real `latis-unit` dials
a real controller's websocket listener (TLS). Rows:

- `ec2_floor`: a bare boto3 `run_instances` (client made beforehand).
- `ec2_handoff`: from `Controller.up` of a cloud-aws unit to the moment the
  instance (played here) starts its user-data: the provisioner's own share.
- `ec2_latis`: `Controller.up` of a cloud-aws unit (enroll, run_instances,
  wait for `running`, the user-data run here, `latis-unit` start, dial-in over
  wss, proof) to the first prompt's answer.
- `k8s_floor`: a bare `create_namespaced_pod` with the official client.
- `k8s_handoff`: from `Controller.up` of a kubernetes unit to the moment the
  pod's command starts here.
- `k8s_latis`: `Controller.up` of a kubernetes unit (enroll, Secret and pod
  made, the pod's command run here) to the first prompt's answer.

The latis rows are dominated by `latis-unit`'s own start (a Python process:
imports, then TLS and the websocket handshake), which a real instance or pod
pays too, after its boot or image pull (which the stand-ins have none of).
Progress goes to stderr, the table to stdout. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent / "tests"))
from standins import (  # noqa: E402
    Kmock,
    Moto,
    aws_credentials,
    kill_pid_file,
    kmock_server,
    moto_server,
    run_pod,
    run_user_data,
)

import latis_core  # noqa: E402
from latis_core import StateStore, parse_config, paths  # noqa: E402

UNIT_COMMAND = str(Path(sys.executable).with_name("latis-unit"))
LISTENER = """
[[units.{unit}.accept]]
type = "websocket"
host = "127.0.0.1"
port = 0
tls = true
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def first_prompt(
    config: str, unit: str, play: Callable[[Any], Awaitable[float]]
) -> tuple[float, float]:
    """Seconds from `Controller.up(unit)` to its first prompt's answer, and to the
    hand-off (when `play(provisioner)`, playing the machine meanwhile, starts the
    unit: it returns that moment). A fresh LATIS_HOME and controller each time."""
    home = Path(tempfile.mkdtemp(prefix="lbc", dir="/tmp"))
    os.environ["LATIS_HOME"] = str(home)
    try:
        with StateStore(paths().state_file) as state:
            async with latis_core.open_controller(parse_config(config), state) as ctl:
                rt = ctl.units[unit]
                assert rt.provisioner is not None  # (the controller gave it its enroller)
                start = time.perf_counter()
                handoff: list[float] = []

                async def machine() -> None:
                    handoff.append(await play(rt.provisioner))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(machine)
                    await ctl.up(unit)
                session = await ctl.create_session(unit)
                record = await ctl.start_prompt(session["session"], "hello")
                async for _ in ctl.follow(record.id):
                    pass
                took = time.perf_counter() - start
                await ctl.destroy(unit)
                return took, handoff[0] - start
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def ec2_latis(moto: Moto, workdir: Path) -> tuple[float, float]:
    unit_dir = workdir / f"instance-{uuid.uuid4().hex[:6]}"
    config = f"""
[daemon]
dial_in_timeout = 60
[units.cloud1]
provisioner = {{ type = "cloud-aws", instance_type = "t3.small", ami = "ami-12c6146b", \
region = "{moto.region}", endpoint_url = "{moto.url}", poll = 0.05, cmdr_address = "127.0.0.1", \
service = "background", unit_dir = "{unit_dir}", unit_command = "{UNIT_COMMAND}" }}
""" + LISTENER.format(unit="cloud1")

    async def be_the_instance(provisioner: Any) -> float:
        # Polled: the machine learns of itself only by looking (no event to wait on).
        while not (instance := provisioner.context.resources.get("instance")):  # noqa: ASYNC110
            await trio.sleep(0.005)
        script = await provisioner.user_data_of(instance)
        now = time.perf_counter()
        await run_user_data(script, workdir / "user-data.sh")
        return now

    try:
        return await first_prompt(config, "cloud1", be_the_instance)
    finally:
        kill_pid_file(unit_dir / "cloud1.pid")


async def ec2_floor(client: Any) -> float:
    start = time.perf_counter()
    await trio.to_thread.run_sync(lambda: client.run_instances(
        ImageId="ami-12c6146b", InstanceType="t3.small", MinCount=1, MaxCount=1))
    return time.perf_counter() - start


async def k8s_latis(kmock: Kmock, workdir: Path) -> tuple[float, float]:
    namespace = f"b-{uuid.uuid4().hex[:8]}"
    config = f"""
[daemon]
dial_in_timeout = 60
[units.pod1]
provisioner = {{ type = "kubernetes", image = "unit:1", host = "{kmock.url}", \
namespace = "{namespace}", secret_mount = "{workdir / namespace}", cmdr_address = "127.0.0.1" }}
""" + LISTENER.format(unit="pod1")
    pods: list[trio.Process] = []

    async def be_the_kubelet(provisioner: Any) -> float:
        api = kmock.api()
        while not await trio.to_thread.run_sync(  # noqa: ASYNC110
            lambda: api.list_namespaced_pod(namespace).items
        ):
            await trio.sleep(0.005)
        now = time.perf_counter()
        pods.append(await run_pod(kmock, namespace, "latis-pod1"))
        return now

    try:
        return await first_prompt(config, "pod1", be_the_kubelet)
    finally:
        for process in pods:
            process.terminate()
            await process.wait()


async def k8s_floor(api: Any, n: int) -> float:
    body = {"metadata": {"name": f"floor-{n}"},
            "spec": {"containers": [{"name": "c", "image": "unit:1"}]}}
    start = time.perf_counter()
    await trio.to_thread.run_sync(lambda: api.create_namespaced_pod("floor", body))
    return time.perf_counter() - start


def summary(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    q = (statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) >= 2
         else [ordered[0]] * 3)
    return {"median": statistics.median(ordered), "q1": q[0], "q3": q[2], "runs": ordered}


async def main(rounds: int) -> dict[str, dict[str, Any]]:
    rows = ("ec2_floor", "ec2_handoff", "ec2_latis", "k8s_floor", "k8s_handoff", "k8s_latis")
    times: dict[str, list[float]] = {row: [] for row in rows}
    workdir = Path(tempfile.mkdtemp(prefix="lbw", dir="/tmp"))
    try:
        with aws_credentials(), moto_server() as moto, kmock_server() as kmock:
            client, api = moto.ec2(), kmock.api()
            # Warm-ups, not measured: imports, the clients' first connections, moto's catalogue.
            await ec2_floor(client)
            await k8s_floor(api, -1)
            await ec2_latis(moto, workdir)
            for n in range(rounds):
                log(f"round {n + 1}/{rounds}")
                # Interleaved, so that noise hits floor and latis alike.
                times["ec2_floor"].append(await ec2_floor(client))
                total, handoff = await ec2_latis(moto, workdir)
                times["ec2_handoff"].append(handoff)
                times["ec2_latis"].append(total)
                times["k8s_floor"].append(await k8s_floor(api, n))
                total, handoff = await k8s_latis(kmock, workdir)
                times["k8s_handoff"].append(handoff)
                times["k8s_latis"].append(total)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {row: summary(values) for row, values in times.items()}


def table(results: dict[str, dict[str, Any]]) -> str:
    floors = {"ec2_handoff": "ec2_floor", "ec2_latis": "ec2_floor",
              "k8s_handoff": "k8s_floor", "k8s_latis": "k8s_floor"}
    lines = [f"{'row':<11} {'median':>10} {'runs (q1–q3)':>21} {'floor':>10} {'x floor':>8}"]
    for row, found in results.items():
        floor = floors.get(row)
        ratio = f"{found['median'] / results[floor]['median']:.0f}x" if floor else "–"
        lines.append(
            f"{row:<11} {found['median'] * 1000:>8.1f}ms "
            f"{found['q1'] * 1000:>9.1f}–{found['q3'] * 1000:<9.1f}ms "
            f"{floor or '–':>10} {ratio:>8}"
        )
    lines.append("*_handoff: Controller.up until the machine starts the unit (the provisioner's "
                 "share); *_latis: until the first prompt is answered by a real latis-unit "
                 "that dialed a wss listener (see the module docstring).")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", "--short", action="store_true", help="2 rounds per row")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="also print JSON (last line)")
    args = parser.parse_args()
    results = trio.run(main, 2 if args.quick else args.rounds)
    print(table(results))
    if args.json:
        print(json.dumps(results))
