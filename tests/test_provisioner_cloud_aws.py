"""The `cloud-aws` provisioner against a real moto EC2 server on loopback.

moto keeps EC2's API, tags, states and user-data but runs no instance, so the
last test plays the instance: it takes the user-data the provisioner gave
EC2 and runs that script here, and the real `latis-unit` it starts dials a
real controller's websocket listener (TLS, cmdr's CA pinned), proves its
enrollment and answers a prompt.
"""

from __future__ import annotations

import base64
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

from latis_provisioners.cloud_aws import CloudAwsProvisioner  # noqa: E402
from provisioning import recorded  # noqa: E402
from standins import Moto, aws_credentials, kill_pid_file, run_user_data  # noqa: E402

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

#: An enrollment line of the right shape, for the tests that run no controller.
LINE = "latis-enroll-1:u0123456789abcdef:" + "s" * 43

Make = Callable[..., CloudAwsProvisioner]


@pytest.fixture
def make(moto: Moto, ec2: Any, tmp_path: Path) -> Iterator[Make]:
    """Builds provisioners for unit NAME (default 'box') against the moto server."""
    secret = tmp_path / "enrollment"
    secret.write_text(LINE + "\n")

    def make(name: str = "box", resources: MemoryResources | None = None,
             **options: Any) -> CloudAwsProvisioner:
        options = moto.options(**{
            "connect": "wss://cmdr.example:8443/latis?fingerprint=sha256:ab",
            "secret_file": str(secret), **options})
        context = ProvisionContext(name, "echo", {}, tmp_path / "run", tmp_path / "log",
                                   resources if resources is not None else MemoryResources())
        return CloudAwsProvisioner(CloudAwsProvisioner.Options(**options), context)

    with aws_credentials():
        yield make


def instances(ec2: Any) -> list[dict[str, Any]]:
    return [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]


def tags_of(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def user_data(ec2: Any, instance_id: str) -> str:
    reply = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(reply["UserData"]["Value"]).decode()


async def test_start_runs_a_tagged_instance_whose_user_data_dials_home(
    make: Make, ec2: Any
) -> None:
    """`start` runs one instance, tagged as the unit's, whose user-data starts it dialing home."""
    p = make(tags={"team": "agents"}, subnet=None, key_name=None)
    await p.start()
    [instance] = instances(ec2)
    assert instance["State"]["Name"] == "running"
    assert recorded(p)["instance"] == instance["InstanceId"]
    assert tags_of(instance) == {"Name": "latis-box", "team": "agents", "latis:unit": "box",
                                 "latis:managed": "true", "latis:fleet": "default"}
    assert instance["InstanceType"] == "t3.small" and instance["ImageId"] == "ami-12c6146b"
    assert instance["ClientToken"].startswith("latis-box-")
    script = user_data(ec2, instance["InstanceId"])
    assert script.startswith("#!/bin/sh\n")
    assert f"<<'LATIS_ENROLLMENT'\n{LINE}\nLATIS_ENROLLMENT\n" in script
    assert ("--connect 'wss://cmdr.example:8443/latis?fingerprint=sha256:ab' --secret-file"
            " /var/lib/latis/box.secret --name box --agent echo") in script
    status = await p.status()
    assert status.state is ProvisionState.RUNNING
    assert instance["InstanceId"] in status.detail
    await p.start()  # running already: nothing new
    assert len(instances(ec2)) == 1


async def test_spot_security_groups_key_and_profile_reach_ec2(
    moto: Moto, make: Make, ec2: Any
) -> None:
    """`spot`, `security_groups`, `key_name` and `iam_profile` are in the run EC2 records."""
    group = ec2.create_security_group(GroupName="units", Description="latis units")["GroupId"]
    ec2.create_key_pair(KeyName="ops")
    iam = boto3.client("iam", endpoint_url=moto.url, region_name=moto.region)
    iam.create_instance_profile(InstanceProfileName="unit-role")
    p = make(spot=True, security_groups=[group], key_name="ops", iam_profile="unit-role")
    await p.start()
    [instance] = instances(ec2)
    assert instance["InstanceLifecycle"] == "spot"
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group]
    assert instance["KeyName"] == "ops"
    assert instance["IamInstanceProfile"]["Arn"].endswith("/unit-role")
    assert "spot" in (await p.status()).detail


async def test_create_runs_the_instance_without_waiting(make: Make, ec2: Any) -> None:
    """`create` (what `unit up --no-wait` calls) runs and records the instance and returns."""
    said: list[str] = []
    p = make()
    p.progress = said.append
    await p.create()
    [instance] = instances(ec2)
    assert recorded(p)["instance"] == instance["InstanceId"]
    assert said == ["running an EC2 t3.small instance for unit 'box'"]
    await p.create()
    assert len(instances(ec2)) == 1


async def test_destroy_terminates_and_forgets(make: Make, ec2: Any) -> None:
    """`destroy` terminates the instance and forgets it; a second `destroy` does nothing."""
    p = make()
    await p.start()
    [instance] = instances(ec2)
    await p.destroy()
    assert recorded(p) == {}
    [after] = instances(ec2)
    assert after["InstanceId"] == instance["InstanceId"]
    assert after["State"]["Name"] in ("shutting-down", "terminated")
    assert (await p.status()).state is ProvisionState.ABSENT
    await p.destroy()


async def test_stop_then_start_keeps_the_instance(make: Make, ec2: Any) -> None:
    """`stop` stops the instance and `start` starts the same one again."""
    p = make()
    await p.start()
    await p.stop()
    assert (await p.status()).state is ProvisionState.STOPPED
    await p.start()
    [instance] = instances(ec2)
    assert instance["State"]["Name"] == "running"
    assert recorded(p)["instance"] == instance["InstanceId"]


async def test_an_instance_terminated_elsewhere_is_replaced(make: Make, ec2: Any) -> None:
    """An instance terminated behind the provisioner's back reads as absent; `start` runs anew."""
    p = make()
    await p.start()
    first = recorded(p)["instance"]
    ec2.terminate_instances(InstanceIds=[first])
    assert (await p.status()).state is ProvisionState.ABSENT
    await p.start()
    assert recorded(p)["instance"] != first
    assert sorted(i["State"]["Name"] for i in instances(ec2))[0] == "running"


async def test_a_crash_before_recording_gives_no_second_instance(make: Make, ec2: Any) -> None:
    """A controller that lost what it recorded finds the unit's instance by its tags."""
    first = make()
    await first.start()
    [instance] = instances(ec2)
    # The crash: the token and enrollment were recorded, run_instances ran, the id was not.
    resources = MemoryResources({"client_token": instance["ClientToken"],
                                 "enrollment": LINE, "enrollment_url": "wss://x/"})
    again = make(resources=resources)
    await again.start()
    assert [i["InstanceId"] for i in instances(ec2)] == [instance["InstanceId"]]
    assert resources.get("instance") == instance["InstanceId"]
    await make().start()  # nothing recorded at all
    assert len(instances(ec2)) == 1


async def test_a_retried_run_reuses_its_token_and_enrollment(make: Make, ec2: Any) -> None:
    """A run whose answer was lost is sent again with the same ClientToken and secret."""
    resources = MemoryResources({"client_token": "latis-box-retry",
                                 "enrollment": LINE, "enrollment_url": "wss://cmdr:1/latis"})
    p = make(resources=resources, secret_file="/nonexistent")  # no new enrollment is read
    await p.start()
    [instance] = instances(ec2)
    assert instance["ClientToken"] == "latis-box-retry"
    assert "--connect wss://cmdr:1/latis" in user_data(ec2, instance["InstanceId"])
    assert not resources.get("client_token") and not resources.get("enrollment")


async def test_orphans_are_the_fleets_instances_of_units_not_given(
    make: Make, ec2: Any
) -> None:
    """`orphans` lists instances tagged by latis, in its fleet, whose unit is not given."""
    for name in ("a", "b", "c"):
        await make(name).start()
    await make("d", fleet="other").start()
    ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)  # not latis's
    await make("c").destroy()
    found = await make("a").orphans(["a"])
    assert [o.unit for o in found] == ["b"]
    assert found[0].state == "running" and found[0].resource.startswith("i-")
    assert await make("a").orphans(["a", "b"]) == []


async def test_aws_errors_name_the_unit_and_carry_aws_words(make: Make, ec2: Any) -> None:
    """A refused call raises ProvisionError with the unit's name and AWS's code and message."""
    p = make(subnet="subnet-12345678")
    with pytest.raises(ProvisionError) as caught:
        await p.start()
    message = str(caught.value)
    assert message.startswith("cloud-aws provisioner for unit 'box': run_instances failed: "
                              "InvalidSubnetID.NotFound: ")
    assert "subnet-12345678" in message
    assert instances(ec2) == []


async def test_a_unit_without_an_enrollment_is_refused(moto: Moto, ec2: Any,
                                                       tmp_path: Path) -> None:
    """Without an enroller or connect/secret_file, `start` says what the unit needs."""
    context = ProvisionContext("box", "echo", {}, tmp_path, tmp_path, MemoryResources())
    p = CloudAwsProvisioner(CloudAwsProvisioner.Options(**moto.options()), context)
    with pytest.raises(ProvisionError, match="unit 'box': its unit dials home, but"):
        await p.start()
    assert instances(ec2) == []


# ---- the seed's fourth example, and the whole way home ----------------------------------

SEED = """
[units.cloud1]
provisioner = { type = "cloud-aws", instance_type = "t3.small", ami = "ami-0abcdef1234567890" }
[[units.cloud1.accept]]
type = "websocket"
host = "0.0.0.0"
port = 8443
"""


def test_the_seed_example_loads() -> None:
    """The seed's cloud example reads as a cloud-aws unit that dials in over websocket."""
    unit = parse_config(SEED).units["cloud1"]
    assert unit.provisioner is not None and unit.provisioner.type == "cloud-aws"
    options = unit.provisioner.options
    assert (options.instance_type, options.ami, options.spot) == (
        "t3.small", "ami-0abcdef1234567890", False)
    assert [a.type for a in unit.accept] == ["websocket"] and unit.dial is None


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lca", dir="/tmp"))
    monkeypatch.setenv("LATIS_HOME", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def cloud_config(moto: Moto, unit_dir: Path) -> str:
    unit_command = str(Path(sys.executable).with_name("latis-unit"))
    return f"""
[daemon]
dial_in_timeout = 30

[units.cloud1]
agent = "echo"
provisioner = {{ type = "cloud-aws", instance_type = "t3.small", ami = "ami-12c6146b", \
region = "{moto.region}", endpoint_url = "{moto.url}", poll = 0.05, \
cmdr_address = "127.0.0.1", service = "background", unit_dir = "{unit_dir}", \
unit_command = "{unit_command}" }}
[[units.cloud1.accept]]
type = "websocket"
host = "127.0.0.1"
port = 0
tls = true
"""


@pytest.fixture
async def playing_the_instance(tmp_path: Path) -> AsyncIterator[Path]:
    """A unit dir for the script the instance runs; its unit is killed at teardown."""
    unit_dir = tmp_path / "instance"
    yield unit_dir
    kill_pid_file(unit_dir / "cloud1.pid")


async def test_the_instance_dials_home_over_websocket_and_answers(
    moto: Moto, ec2: Any, home: Path, playing_the_instance: Path
) -> None:
    """The instance's own user-data, run here, starts a unit that dials cmdr and answers."""
    unit_dir = playing_the_instance
    with StateStore(paths().state_file) as state:
        async with latis_core.open_controller(
            parse_config(cloud_config(moto, unit_dir)), state
        ) as ctl:
            rt = ctl.units["cloud1"]
            assert isinstance(rt.provisioner, CloudAwsProvisioner)
            # The controller's part (see the docs): the enroller, and progress lines.
            rt.provisioner.set_enroller(ctl.dialins.enroll)
            said: list[str] = []
            rt.provisioner.progress = said.append

            async def be_the_instance() -> None:
                with trio.fail_after(30):
                    while not (instance_id := rt.provisioner.context.resources.get("instance")):
                        await trio.sleep(0.02)
                script = await rt.provisioner.user_data_of(instance_id)
                await run_user_data(script, unit_dir.parent / "user-data.sh")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(be_the_instance)
                await ctl.up("cloud1")
            assert rt.state == "connected"
            assert rt.via is not None and "dialed in on" in rt.via
            assert said[0].startswith("running an EC2 t3.small instance for unit 'cloud1'")
            session = await ctl.create_session("cloud1")
            record = await ctl.start_prompt(session["session"], "hello from the cloud")
            events = [e async for e in ctl.follow(record.id)]
            assert "".join(e[1].text for e in events if e[0] == "chunk") == "hello from the cloud"
            assert events[-1][0] == "end" and events[-1][1]["outcome"] == "complete"
            secret = (unit_dir / "cloud1.secret").read_text().strip()
            assert secret.startswith("latis-enroll-1:")
            assert (unit_dir / "cloud1.secret").stat().st_mode & 0o777 == 0o600
            await ctl.destroy("cloud1")
    [instance] = instances(ec2)
    assert instance["State"]["Name"] in ("shutting-down", "terminated")
