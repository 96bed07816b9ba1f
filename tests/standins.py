"""Stand-ins for the clouds that tests and benchmarks run on loopback: moto's EC2
server and kmock's Kubernetes API emulator, each in a process of its own.

Neither is the real thing (../shared/RECIPES.md): moto keeps EC2's API and
state machine in memory but runs nothing (user-data is stored, not run), and
kmock is a JSON store behind the Kubernetes HTTP API (no scheduling, no pod
status, label selectors ignored). The tests play the part of the machine:
they run what the instance or the pod would run, here.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

#: A kmock emulator with pods and secrets declared (kmock 404s a kind until then).
KMOCK = """
import asyncio, sys, kmock
async def main(port):
    async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s, port=port) as srv:
        k8s.resources['v1/pods'] = {}
        k8s.resources['v1/secrets'] = {}
        print("URL", srv.url, flush=True)
        await asyncio.Event().wait()
asyncio.run(main(int(sys.argv[1])))
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_http(url: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"the stand-in exited ({process.returncode})") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing answers at {url} after {seconds:g} s") from None
            time.sleep(0.05)


class Moto:
    """A moto server on loopback, and boto3 clients for it."""

    region = "us-east-1"

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def reset(self) -> None:
        """Forget every instance, tag and image change (`POST /moto-api/reset`)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def ec2(self) -> Any:
        """A bare boto3 EC2 client for the server."""
        import boto3

        return boto3.client("ec2", endpoint_url=self.url, region_name=self.region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def options(self, **changes: Any) -> dict[str, Any]:
        """The `cloud-aws` options that point at this server."""
        return {"instance_type": "t3.small", "ami": "ami-12c6146b", "region": self.region,
                "endpoint_url": self.url, "poll": 0.05, **changes}


@contextlib.contextmanager
def moto_server() -> Iterator[Moto]:
    """Run `moto_server -H 127.0.0.1 -p PORT` until the block ends."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/moto-api/", process)
        yield Moto(port)
    finally:
        _stop(process)


@contextlib.contextmanager
def aws_credentials() -> Iterator[None]:
    """Fake credentials in the environment (boto3's chain finds them first)."""
    names = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_SESSION_TOKEN": "testing"}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Kmock:
    """A kmock Kubernetes emulator on loopback."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def api(self) -> Any:
        """A bare CoreV1Api of the official client for the emulator."""
        import kubernetes

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))


@contextlib.contextmanager
def kmock_server() -> Iterator[Kmock]:
    """Run a kmock emulator (pods and secrets declared) until the block ends."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", KMOCK, str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("URL "):
            raise RuntimeError(f"kmock did not start (exit {process.wait()})")
        yield Kmock(line.split()[1])
    finally:
        _stop(process)


async def run_pod(kmock: Kmock, namespace: str, name: str) -> trio.Process:
    """Run pod `name` here as a kubelet would: its Secret volumes written where the
    pod mounts them, its env, its command and args. The caller ends the process."""
    api = kmock.api()
    pod = await trio.to_thread.run_sync(api.read_namespaced_pod, name, namespace)
    [container] = pod.spec.containers
    for volume in pod.spec.volumes or []:
        if volume.secret is None:
            continue
        [mount] = [m for m in container.volume_mounts if m.name == volume.name]
        secret = await trio.to_thread.run_sync(api.read_namespaced_secret,
                                               volume.secret.secret_name, namespace)
        folder = trio.Path(mount.mount_path)
        await folder.mkdir(parents=True, exist_ok=True)
        for key, value in (secret.data or {}).items():
            await (folder / key).unlink(missing_ok=True)  # another pod's, mode 0400
            await (folder / key).write_bytes(base64.b64decode(value))
            await (folder / key).chmod(volume.secret.default_mode or 0o644)
    env = {**os.environ, **{e.name: e.value for e in container.env or []}}
    return await trio.lowlevel.open_process([*container.command, *container.args], env=env)


async def run_user_data(script: str, path: Path) -> None:
    """Run an instance's user-data script here, as cloud-init runs it (to its end)."""
    await trio.Path(path).write_text(script)
    await trio.run_process(["sh", str(path)])


def kill_pid_file(path: Path) -> None:
    """SIGTERM the process whose pid the file holds (a unit the user-data started)."""
    try:
        os.kill(int(path.read_text()), signal.SIGTERM)
    except (OSError, ValueError):
        pass
