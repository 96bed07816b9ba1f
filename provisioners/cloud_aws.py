"""The `cloud-aws` provisioner: a unit on an EC2 instance that dials home.

The instance runs `latis-unit --connect URL --secret-file FILE`, started by
its user-data (a shell script: `latis_provisioners.dialhome.unit_script`),
so it reaches cmdr's listener (websocket, tcp or quic) from wherever it is;
cmdr needs no route to it. The enrollment comes from the controller (see
`dialhome`), and is asked for only when a new instance is run.

EC2 through boto3 (the `aws` extra), credentials and region from boto3's
usual chain (environment, shared config and credentials files, `profile`,
an instance or task role). boto3 blocks: every call runs in a worker thread
(`trio.to_thread.run_sync`), so the controller's loop never waits on AWS.

Every instance is tagged `latis:unit=UNIT`, `latis:managed=true` and
`latis:fleet=FLEET`. Creation is idempotent three ways: the recorded
instance id; else an instance found by those tags (a controller that
crashed between `run_instances` and recording finds the instance it made);
else a new one, run with a `ClientToken` recorded *before* the call, so that
EC2 itself answers a retried call with the first instance. `orphans()` lists
the fleet's instances whose unit is not in config.

Resources: `instance` (its id), `region`, and while a run is in flight
`client_token` and `enrollment` (the line the instance was given, so a retry
gives the same one).
"""

from __future__ import annotations

import base64
import functools
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal, TypeVar

import attrs
import trio

from latis_core import (
    ProvisionContext,
    ProvisionError,
    ProvisionState,
    ProvisionStatus,
    __version__,
)
from latis_core._plugins.provision import OneAtATime

from .dialhome import DialHome, DialsHome, Orphan, unit_script

__all__ = ["CloudAwsOptions", "CloudAwsProvisioner", "Orphan"]

_T = TypeVar("_T")

#: Tags every instance carries.
UNIT_TAG = "latis:unit"
MANAGED_TAG = "latis:managed"
FLEET_TAG = "latis:fleet"
#: The instance states in which an instance still is (or may again be) the unit.
LIVE_STATES = ("pending", "running", "stopping", "stopped")

#: EC2 clients by (profile, region, endpoint_url); see `_make_client`.
_CLIENTS: dict[tuple[str | None, str | None, str | None], Any] = {}
_CLIENTS_LOCK = threading.Lock()

_STATES = {
    "pending": ProvisionState.CREATED,
    "running": ProvisionState.RUNNING,
    "stopping": ProvisionState.RUNNING,
    "stopped": ProvisionState.STOPPED,
    "shutting-down": ProvisionState.STOPPED,
    "terminated": ProvisionState.ABSENT,
}


@attrs.define
class CloudAwsOptions:
    """The `cloud-aws` provisioner's config table.

    Attributes:
        instance_type: the EC2 instance type ("t3.small").
        ami: the image id ("ami-…"); it needs python3 (with venv) unless
            `unit_command` names a `latis-unit` already in it.
        region: the AWS region (default: boto3's chain: AWS_REGION, config file).
        subnet: the subnet id to run in (default: the default VPC's).
        security_groups: ids ("sg-…") or, in the default VPC, names. The unit
            only dials out: no inbound rule is needed.
        key_name: an EC2 key pair, for ssh to the instance (the unit needs none).
        iam_profile: an instance profile, by name or ARN.
        tags: more tags on the instance (and its volumes).
        endpoint_url: the EC2 endpoint (a VPC endpoint, or a stand-in such as moto).
        profile: a profile of the shared AWS config files (default: the chain's).
        spot: run a one-time spot instance (stop is then refused by EC2).
        fleet: tagged `latis:fleet`; `orphans()` looks in this fleet only, so
            two controllers in one account keep apart.
        cmdr_address: the host name the instance dials (in the enrollment URL),
            when cmdr's listener binds 0.0.0.0.
        connect: cmdr's listener URL (with `secret_file`, when the controller
            passes no enrollment; see `dialhome`).
        secret_file: a file with the unit's enrollment line (with `connect`).
        unit_command: the path of a `latis-unit` in the image (then nothing is
            installed); default: the one on PATH, else pip-install `package`.
        package: what pip installs on the instance when it has no latis-unit.
        install: shell lines the user-data runs before starting the unit.
        unit_dir: where the instance keeps the secret, log and pid.
        service: "systemd" (a service that restarts), "background" (a detached
            process), or "auto" (systemd if it runs).
        imdsv2: require IMDSv2 tokens with a hop limit of 1, so that containers
            on the instance cannot read its user-data (which holds the secret).
        poll: seconds between looks while waiting for a state.
        start_timeout: seconds `start` waits for the instance to be running.
    """

    instance_type: str
    ami: str
    region: str | None = None
    subnet: str | None = None
    security_groups: list[str] = attrs.field(factory=list)
    key_name: str | None = None
    iam_profile: str | None = None
    tags: dict[str, str] = attrs.field(factory=dict)
    endpoint_url: str | None = None
    profile: str | None = None
    spot: bool = False
    fleet: str = "default"
    cmdr_address: str | None = None
    connect: str | None = None
    secret_file: str | None = None
    unit_command: str | None = None
    package: str = f"latis[websocket]=={__version__}"
    install: str | None = None
    unit_dir: str = "/var/lib/latis"
    service: Literal["auto", "systemd", "background"] = "auto"
    imdsv2: bool = True
    poll: float = 2.0
    start_timeout: float = 600.0


@attrs.frozen
class _Found:
    id: str
    state: str
    tags: dict[str, str]
    detail: str


def _found(instance: dict[str, Any]) -> _Found:
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    parts = [instance["InstanceId"], instance["State"]["Name"], instance.get("InstanceType", "")]
    if instance.get("InstanceLifecycle") == "spot":
        parts.append("spot")
    if instance.get("PrivateIpAddress"):
        parts.append(instance["PrivateIpAddress"])
    return _Found(instance["InstanceId"], instance["State"]["Name"], tags,
                  ", ".join(p for p in parts if p))


class CloudAwsProvisioner(DialsHome, OneAtATime):
    """Runs a unit on an EC2 instance whose user-data starts it dialing home."""

    Options = CloudAwsOptions
    options: CloudAwsOptions
    #: The options that say where `orphans` looks: one look serves a fleet.
    orphan_scope: ClassVar[tuple[str, ...]] = ("profile", "region", "endpoint_url", "fleet")

    def __init__(self, options: CloudAwsOptions, context: ProvisionContext) -> None:
        self.options = options
        self.context = context
        #: Whether `start` waits for the instance to run; False (`latis unit up
        #: --no-wait`) returns once EC2 took the run (or start) request.
        self.wait: bool = True
        self._client: Any = None
        self._client_lock = trio.Lock()
        super().__init__()

    def __repr__(self) -> str:
        return f"<CloudAwsProvisioner unit={self.context.unit!r}>"

    def _error(self, message: str) -> ProvisionError:
        return ProvisionError(f"cloud-aws provisioner for unit {self.context.unit!r}: {message}")

    # --- EC2 (every call in a thread) -----------------------------------------------------

    def _make_client(self) -> Any:
        """An EC2 client, shared by the provisioners with the same profile, region and
        endpoint (making one loads botocore's service model: ~0.3 s; clients are
        thread-safe)."""
        o = self.options
        key = (o.profile, o.region, o.endpoint_url)
        with _CLIENTS_LOCK:
            client = _CLIENTS.get(key)
            if client is not None:
                return client
            try:
                import boto3
            except ImportError as exc:
                raise self._error("boto3 is not installed (pip install 'latis[aws]')") from exc
            session = boto3.session.Session(profile_name=o.profile, region_name=o.region)
            if session.region_name is None:
                raise self._error("no AWS region: set `region`, or AWS_REGION, or one in "
                                  "~/.aws/config")
            client = _CLIENTS[key] = session.client("ec2", endpoint_url=o.endpoint_url)
            return client

    async def _ec2(self, what: str, call: Callable[[Any], _T]) -> _T:
        """Run `call(client)` in a thread; AWS's errors become ProvisionErrors."""
        from botocore.exceptions import BotoCoreError, ClientError

        async with self._client_lock:
            if self._client is None:
                try:
                    self._client = await trio.to_thread.run_sync(self._make_client)
                except BotoCoreError as exc:
                    raise self._error(f"cannot make an EC2 client: {exc}") from exc
        client = self._client
        try:
            return await trio.to_thread.run_sync(functools.partial(call, client))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise self._error(f"{what} failed: {error.get('Code', '?')}: "
                              f"{error.get('Message', exc)}") from exc
        except BotoCoreError as exc:
            raise self._error(f"{what} failed: {exc}") from exc

    @staticmethod
    def _describe(client: Any, **kwargs: Any) -> list[dict[str, Any]]:
        found = []
        for page in client.get_paginator("describe_instances").paginate(**kwargs):
            for reservation in page["Reservations"]:
                found += reservation["Instances"]
        return found

    async def _lookup(self, instance_id: str) -> _Found | None:
        """The instance `instance_id`, or None if EC2 knows no such instance."""
        from botocore.exceptions import ClientError

        def call(client: Any) -> list[dict[str, Any]]:
            try:
                return self._describe(client, InstanceIds=[instance_id])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound":
                    return []
                raise

        found = await self._ec2("describe_instances", call)
        return _found(found[0]) if found else None

    async def _by_tags(self, unit: str | None, states: Iterable[str]) -> list[_Found]:
        """The fleet's instances (of `unit`, if given) in `states`."""
        filters = [
            {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
            {"Name": f"tag:{FLEET_TAG}", "Values": [self.options.fleet]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
        if unit is not None:
            filters.append({"Name": f"tag:{UNIT_TAG}", "Values": [unit]})
        found = await self._ec2("describe_instances",
                                lambda c: self._describe(c, Filters=filters))
        return [_found(i) for i in found]

    async def _find(self) -> _Found | None:
        """Our live instance: the one recorded, else one tagged as this unit's (recorded)."""
        resources = self.context.resources
        recorded = resources.get("instance")
        if recorded:
            found = await self._lookup(recorded)
            if found is not None and found.state in LIVE_STATES:
                return found
            resources.clear()  # terminated (or on its way), or gone, behind our back
        tagged = await self._by_tags(self.context.unit, LIVE_STATES)
        if not tagged:
            return None
        if len(tagged) > 1:
            ids = ", ".join(f.id for f in tagged)
            raise self._error(f"{len(tagged)} live instances are tagged {UNIT_TAG}="
                              f"{self.context.unit} in fleet {self.options.fleet!r} ({ids}): "
                              "terminate all but one")
        resources.set("instance", tagged[0].id)
        return tagged[0]

    async def _wait_state(self, instance_id: str, wanted: str, seconds: float) -> _Found:
        with trio.move_on_after(seconds):
            while True:
                found = await self._lookup(instance_id)
                if found is None or found.state == "terminated":
                    ended = found.state if found else "gone"
                    raise self._error(f"instance {instance_id} ended ({ended}) before it was "
                                      f"{wanted}")
                if found.state == wanted:
                    return found
                await trio.sleep(self.options.poll)
        raise self._error(f"instance {instance_id} was not {wanted} within {seconds:g} s")

    # --- the instance -------------------------------------------------------------------

    def tags(self) -> dict[str, str]:
        """The tags this unit's instance carries."""
        unit = self.context.unit
        return {"Name": f"latis-{unit}", **self.options.tags, UNIT_TAG: unit,
                MANAGED_TAG: "true", FLEET_TAG: self.options.fleet}

    def user_data(self, dial_home: DialHome) -> str:
        """The instance's user-data: the script that starts the unit dialing home."""
        o = self.options
        return unit_script(dial_home, self.context, unit_dir=o.unit_dir,
                           unit_command=o.unit_command, package=o.package, install=o.install,
                           service=o.service)

    def run_args(self, dial_home: DialHome, client_token: str) -> dict[str, Any]:
        """The arguments of `run_instances` for this unit."""
        o = self.options
        tags = [{"Key": k, "Value": v} for k, v in self.tags().items()]
        args: dict[str, Any] = {
            "ImageId": o.ami,
            "InstanceType": o.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": client_token,
            "UserData": self.user_data(dial_home),
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        if o.subnet:
            args["SubnetId"] = o.subnet
        ids = [g for g in o.security_groups if g.startswith("sg-")]
        names = [g for g in o.security_groups if not g.startswith("sg-")]
        if ids:
            args["SecurityGroupIds"] = ids
        if names:
            args["SecurityGroups"] = names
        if o.key_name:
            args["KeyName"] = o.key_name
        if o.iam_profile:
            key = "Arn" if o.iam_profile.startswith("arn:") else "Name"
            args["IamInstanceProfile"] = {key: o.iam_profile}
        if o.spot:
            args["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time",
                                "InstanceInterruptionBehavior": "terminate"},
            }
        if o.imdsv2:
            args["MetadataOptions"] = {"HttpTokens": "required", "HttpPutResponseHopLimit": 1,
                                       "HttpEndpoint": "enabled"}
        return args

    async def _create(self) -> None:
        """Run the instance unless ours exists; record its id. Does not wait for it."""
        await self._run_instance()

    async def _run_instance(self) -> _Found:
        found = await self._find()
        if found is not None:
            return found
        resources = self.context.resources
        # Recorded before the call: a retry after a crash sends the same token (EC2 then
        # answers with the first instance) and the same enrollment.
        token = resources.get("client_token")
        line = resources.get("enrollment")
        url = resources.get("enrollment_url")
        if not (token and line and url):
            dial_home = await self._dial_home()
            token = f"latis-{self.context.unit}-{secrets.token_hex(8)}"[-64:]
            resources.set("client_token", token)
            resources.set("enrollment", dial_home.secret)
            resources.set("enrollment_url", dial_home.url)
        else:
            dial_home = DialHome(self.context.unit, url, line)
        self._say(f"running an EC2 {self.options.instance_type} instance for unit "
                  f"{self.context.unit!r}")
        args = self.run_args(dial_home, token)
        reply = await self._ec2("run_instances", lambda c: c.run_instances(**args))
        instance = reply["Instances"][0]
        resources.set("instance", instance["InstanceId"])
        if self.options.region:
            resources.set("region", self.options.region)
        for key in ("client_token", "enrollment", "enrollment_url"):
            # (Resources has no delete: an empty value reads as none.)
            resources.set(key, "")
        return _found(instance)

    async def _start(self) -> None:
        """Run the instance if needed (or start it, if stopped); wait until it is running
        (unless `wait` is False)."""
        found = await self._run_instance()
        if found.state in ("stopping", "stopped"):
            if found.state == "stopping":
                found = await self._wait_state(found.id, "stopped", self.options.start_timeout)
            self._say(f"starting instance {found.id}")
            await self._ec2("start_instances", lambda c: c.start_instances(InstanceIds=[found.id]))
        if found.state != "running" and self.wait:
            self._say(f"waiting for instance {found.id} to run")
            await self._wait_state(found.id, "running", self.options.start_timeout)

    async def _stop(self) -> None:
        """Stop the instance (EBS-backed, on-demand instances only; spot ones EC2 refuses)."""
        found = await self._find()
        if found is None or found.state in ("stopping", "stopped"):
            return
        await self._ec2("stop_instances", lambda c: c.stop_instances(InstanceIds=[found.id]))

    async def _destroy(self) -> None:
        """Terminate the instance (no wait for `terminated`); forget it."""
        found = await self._find()
        if found is not None:
            self._say(f"terminating instance {found.id}")
            await self._ec2("terminate_instances",
                            lambda c: c.terminate_instances(InstanceIds=[found.id]))
        self.context.resources.clear()

    async def status(self) -> ProvisionStatus:
        """The instance's EC2 state; ABSENT if there is no live one."""
        found = await self._find()
        if found is None:
            return ProvisionStatus(ProvisionState.ABSENT)
        return ProvisionStatus(_STATES.get(found.state, ProvisionState.STOPPED), found.detail)

    def dialer(self) -> None:
        """None: the unit dials home (cmdr waits for it on its `accept` listener)."""
        return None

    async def orphans(self, units: Iterable[str]) -> list[Orphan]:
        """The fleet's live instances whose `latis:unit` tag is not one of `units`."""
        known = set(units)
        found = await self._by_tags(None, LIVE_STATES)
        return sorted(
            (Orphan(f.tags.get(UNIT_TAG, ""), f.id, f.state, f.detail)
             for f in found if f.tags.get(UNIT_TAG) not in known),
            key=lambda o: (o.unit, o.resource),
        )

    async def user_data_of(self, instance_id: str) -> str:
        """The user-data an instance was given (decoded), e.g. to check what it runs."""
        reply = await self._ec2(
            "describe_instance_attribute",
            lambda c: c.describe_instance_attribute(InstanceId=instance_id,
                                                    Attribute="userData"),
        )
        value = reply.get("UserData", {}).get("Value", "")
        return base64.b64decode(value).decode() if value else ""
