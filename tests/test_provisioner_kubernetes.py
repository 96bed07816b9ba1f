"""The `kubernetes` provisioner with the official client against kmock over real HTTP.

No real API server runs on these machines (../shared/RECIPES.md): kmock is an
in-memory store behind the Kubernetes HTTP API, with no scheduling, no pod
status and label selectors ignored. So these tests check the objects the
provisioner makes and deletes, and the last one plays the kubelet: it mounts
the pod's Secret where the pod spec says, and runs the pod's own command line
here, whose real `latis-unit` dials a real controller and answers a prompt.
"""

from __future__ import annotations

import base64
import itertools
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

pytest.importorskip("kubernetes")
pytest.importorskip("kmock")

from latis_provisioners.kubernetes import KubernetesProvisioner, object_name  # noqa: E402
from standins import Kmock, free_port, run_pod  # noqa: E402

import latis_core  # noqa: E402
from latis_core import (  # noqa: E402
    MemoryResources,
    ProvisionContext,
    ProvisionError,
    ProvisionState,
    StateStore,
    parse_config,
    paths,
)

pytestmark = pytest.mark.timeout(60)

Make = Callable[..., KubernetesProvisioner]


class Enroller:
    """Stands in for the controller's enrollment: a distinct line per call, counted."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.numbers = itertools.count()

    async def __call__(self, unit: str, address: str | None) -> Mapping[str, Any]:
        self.calls.append(unit)
        n = next(self.numbers)
        return {"urls": [f"wss://{address or 'cmdr'}:8443/latis?fingerprint=sha256:ab"],
                "secret": f"latis-enroll-1:u{n:016x}:" + "s" * 43}


@pytest.fixture
def namespace() -> str:
    """A namespace of this test's own (kmock's state outlives a test)."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make(kmock: Kmock, namespace: str, tmp_path: Path) -> Make:
    def make(name: str = "box", recorded_in: MemoryResources | None = None,
             enroller: Enroller | None = None, **options: Any) -> KubernetesProvisioner:
        options = {"image": "registry.example/latis-unit:1", "host": kmock.url,
                   "namespace": namespace, **options}
        context = ProvisionContext(name, "echo", {}, tmp_path / "run", tmp_path / "log",
                                   recorded_in if recorded_in is not None else MemoryResources())
        p = KubernetesProvisioner(KubernetesProvisioner.Options(**options), context)
        p.set_enroller(enroller or Enroller())
        return p

    return make


def pods(kmock: Kmock, namespace: str) -> dict[str, Any]:
    return {p.metadata.name: p for p in kmock.api().list_namespaced_pod(namespace).items}


def secrets(kmock: Kmock, namespace: str) -> dict[str, Any]:
    return {s.metadata.name: s for s in kmock.api().list_namespaced_secret(namespace).items}


def enrollment_of(secret: Any) -> str:
    return base64.b64decode(secret.data["enrollment"]).decode().strip()


async def test_start_makes_a_pod_that_dials_home_with_its_secret(
    make: Make, kmock: Kmock, namespace: str
) -> None:
    """`start` makes the unit's Secret and a pod spec'd as asked whose command dials home."""
    enroller = Enroller()
    p = make(enroller=enroller, resources={"limits": {"cpu": "500m", "memory": "256Mi"}},
             labels={"team": "agents"}, service_account="units",
             node_selector={"pool": "agents"}, env={"MODEL": "small"},
             tolerations=[{"key": "agents", "operator": "Exists", "effect": "NoSchedule"}],
             cmdr_address="cmdr.example")
    await p.start()
    [pod] = pods(kmock, namespace).values()
    assert pod.metadata.name == "latis-box"
    assert pod.metadata.labels == {"team": "agents", "latis.io/managed": "true",
                                   "latis.io/unit": "box", "latis.io/group": "box",
                                   "app.kubernetes.io/managed-by": "latis"}
    spec = pod.spec
    assert spec.service_account_name == "units" and spec.node_selector == {"pool": "agents"}
    assert spec.tolerations[0].key == "agents" and spec.tolerations[0].effect == "NoSchedule"
    assert spec.restart_policy == "Always"
    [container] = spec.containers
    assert container.image == "registry.example/latis-unit:1"
    assert container.command == ["latis-unit"]
    assert container.args == [
        "--connect", "wss://cmdr.example:8443/latis?fingerprint=sha256:ab",
        "--secret-file", "/var/run/latis/enrollment", "--name", "box", "--agent", "echo"]
    assert container.resources.limits == {"cpu": "500m", "memory": "256Mi"}
    assert [(e.name, e.value) for e in container.env] == [("MODEL", "small")]
    assert container.volume_mounts[0].mount_path == "/var/run/latis"
    assert spec.volumes[0].secret.secret_name == "latis-box"
    secret = secrets(kmock, namespace)["latis-box"]
    assert enrollment_of(secret).startswith("latis-enroll-1:u0000000000000000:")
    assert enroller.calls == ["box"]
    await p.start()  # there already: nothing new, no new enrollment
    assert len(pods(kmock, namespace)) == 1 and enroller.calls == ["box"]
    status = await p.status()
    assert status.state is ProvisionState.CREATED  # kmock reports no phase: Pending
    assert status.detail == f"1 of 1 pods in {namespace}: 1 Pending"


async def test_stop_deletes_the_pod_and_start_brings_back_the_same_unit(
    make: Make, kmock: Kmock, namespace: str
) -> None:
    """`stop` deletes the pod but keeps its enrollment; `start` makes it again with it."""
    enroller = Enroller()
    p = make(enroller=enroller)
    await p.start()
    before = enrollment_of(secrets(kmock, namespace)["latis-box"])
    await p.stop()
    assert pods(kmock, namespace) == {}
    assert (await p.status()).state is ProvisionState.ABSENT
    await p.start()
    assert list(pods(kmock, namespace)) == ["latis-box"]
    assert enrollment_of(secrets(kmock, namespace)["latis-box"]) == before
    assert enroller.calls == ["box"]


async def test_scale_grows_and_shrinks_the_labelled_group(
    make: Make, kmock: Kmock, namespace: str
) -> None:
    """`scale(n)` makes members UNIT-1… with their own enrollments, and deletes those beyond n."""
    enroller = Enroller()
    resources = MemoryResources()
    p = make("grp", recorded_in=resources, enroller=enroller)
    await p.start()
    assert await p.scale(3) == ["grp", "grp-1", "grp-2"]
    found = pods(kmock, namespace)
    assert sorted(found) == ["latis-grp", "latis-grp-1", "latis-grp-2"]
    assert {pod.metadata.labels["latis.io/group"] for pod in found.values()} == {"grp"}
    assert found["latis-grp-2"].spec.containers[0].args[5] == "grp-2"  # --name
    lines = {enrollment_of(s) for s in secrets(kmock, namespace).values()}
    assert len(lines) == 3 and enroller.calls == ["grp", "grp-1", "grp-2"]
    assert resources.get("replicas") == "3"
    assert make("grp", recorded_in=resources).member_units() == ["grp", "grp-1", "grp-2"]
    assert await p.scale(1) == ["grp"]
    assert list(pods(kmock, namespace)) == ["latis-grp"]
    assert list(secrets(kmock, namespace)) == ["latis-grp"]


async def test_destroy_deletes_pods_and_secrets_and_forgets(
    make: Make, kmock: Kmock, namespace: str
) -> None:
    """`destroy` deletes every pod and Secret of the group; a second `destroy` does nothing."""
    p = make(replicas=2)
    await p.start()
    assert len(pods(kmock, namespace)) == 2
    await p.destroy()
    assert pods(kmock, namespace) == {} and secrets(kmock, namespace) == {}
    assert p.context.resources.get("replicas") is None
    await p.destroy()


async def test_orphans_are_latis_pods_of_units_not_given(make: Make) -> None:
    """`orphans` lists pods latis made whose unit (or group) is not given."""
    for name in ("a", "b"):
        await make(name).start()
    await make("c", replicas=2).start()
    found = await make("a").orphans(["a", "c"])
    assert [(o.unit, o.resource) for o in found] == [("b", "latis-b")]


async def test_a_pod_that_is_not_the_units_is_left_alone(
    make: Make, kmock: Kmock, namespace: str
) -> None:
    """A pod of the unit's name without its label is an error naming the unit; it stays."""
    body = {"metadata": {"name": object_name("box"), "labels": {"app": "else"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}
    kmock.api().create_namespaced_pod(namespace, body)
    with pytest.raises(ProvisionError, match="unit 'box': a pod named 'latis-box' in namespace"):
        await make().start()
    assert list(pods(kmock, namespace)) == ["latis-box"]


async def test_an_unreachable_api_server_is_an_error_naming_the_unit(make: Make) -> None:
    """A refused connection raises ProvisionError naming the unit and what failed."""
    p = make(host=f"http://127.0.0.1:{free_port()}")
    p._make_api()  # the client is made; the server is not there
    with pytest.raises(ProvisionError,
                       match="kubernetes provisioner for unit 'box': reading pod latis-box"):
        await p.start()


def test_a_kubernetes_unit_loads_from_config() -> None:
    """A unit table with a kubernetes provisioner and a websocket accept loads."""
    config = parse_config("""
[units.fleet]
provisioner = { type = "kubernetes", image = "ghcr.io/example/unit:1", replicas = 3, \
tolerations = [{ key = "gpu", operator = "Exists", tolerationSeconds = 30 }], \
resources = { requests = { cpu = "250m" } } }
[[units.fleet.accept]]
type = "websocket"
port = 8443
""")
    options = config.units["fleet"].provisioner.options  # type: ignore[union-attr]
    assert options.replicas == 3
    assert options.tolerations == [{"key": "gpu", "operator": "Exists", "tolerationSeconds": 30}]
    assert options.resources == {"requests": {"cpu": "250m"}}


# ---- a pod dials home -----------------------------------------------------------------------


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lk8", dir="/tmp"))
    monkeypatch.setenv("LATIS_HOME", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[list[trio.Process]]:
    """The processes the test runs as pods; each is ended at teardown."""
    started: list[trio.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()


async def test_a_pod_dials_home_and_answers(
    kmock: Kmock, namespace: str, home: Path, tmp_path: Path, kubelet: list[trio.Process]
) -> None:
    """The pod spec's own command line, run here with its Secret, dials cmdr and answers."""
    config = f"""
[daemon]
dial_in_timeout = 30
[units.pod1]
agent = "echo"
provisioner = {{ type = "kubernetes", image = "unit:1", host = "{kmock.url}", \
namespace = "{namespace}", secret_mount = "{tmp_path / 'secret'}", cmdr_address = "127.0.0.1" }}
[[units.pod1.accept]]
type = "websocket"
host = "127.0.0.1"
port = 0
tls = true
"""
    with StateStore(paths().state_file) as state:
        async with latis_core.open_controller(parse_config(config), state) as ctl:
            rt = ctl.units["pod1"]
            assert isinstance(rt.provisioner, KubernetesProvisioner)
            rt.provisioner.set_enroller(ctl.dialins.enroll)  # the controller's part

            async def be_the_kubelet() -> None:
                api = kmock.api()
                with trio.fail_after(30):
                    while not await trio.to_thread.run_sync(
                        lambda: api.list_namespaced_pod(namespace).items
                    ):
                        await trio.sleep(0.02)
                kubelet.append(await run_pod(kmock, namespace, "latis-pod1"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(be_the_kubelet)
                await ctl.up("pod1")
            assert rt.state == "connected"
            session = await ctl.create_session("pod1")
            record = await ctl.start_prompt(session["session"], "hello from a pod")
            events = [e async for e in ctl.follow(record.id)]
            assert "".join(e[1].text for e in events if e[0] == "chunk") == "hello from a pod"
            await ctl.destroy("pod1")
    assert pods(kmock, namespace) == {} and secrets(kmock, namespace) == {}


async def test_a_scaled_group_dials_home_unit_by_unit(
    kmock: Kmock, namespace: str, home: Path, tmp_path: Path, kubelet: list[trio.Process]
) -> None:
    """Scaled to three, each member's pod dials in as its own unit and answers."""
    members = ["grp", "grp-1", "grp-2"]
    listener = '[[units.{}.accept]]\ntype = "websocket"\nhost = "127.0.0.1"\nport = 0\ntls = true\n'
    # The controller's part: the members are units it knows (config here), on one listener.
    config = f"""
[daemon]
dial_in_timeout = 30
[units.grp]
provisioner = {{ type = "kubernetes", image = "unit:1", host = "{kmock.url}", \
namespace = "{namespace}", secret_mount = "{tmp_path / 'secret'}", cmdr_address = "127.0.0.1" }}
{listener.format("grp")}
[units.grp-1]
{listener.format("grp-1")}
[units.grp-2]
{listener.format("grp-2")}
"""
    with StateStore(paths().state_file) as state:
        async with latis_core.open_controller(parse_config(config), state) as ctl:
            provisioner = ctl.units["grp"].provisioner
            assert isinstance(provisioner, KubernetesProvisioner)
            provisioner.set_enroller(ctl.dialins.enroll)
            assert await provisioner.scale(3) == members
            for member in members:
                # One kubelet at a time: each pod's Secret is mounted at the same path here.
                kubelet.append(await run_pod(kmock, namespace, object_name(member)))
                with trio.fail_after(30):
                    while ctl.units[member].client is None:
                        await trio.sleep(0.02)
            for member in members:
                session = await ctl.create_session(member)
                record = await ctl.start_prompt(session["session"], f"hello {member}")
                events = [e async for e in ctl.follow(record.id)]
                assert "".join(e[1].text for e in events if e[0] == "chunk") == f"hello {member}"
            await provisioner.destroy()
    assert pods(kmock, namespace) == {}
