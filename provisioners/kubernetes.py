"""The `kubernetes` provisioner: units as pods that dial home.

Each unit is one pod whose container runs `latis-unit --connect URL
--secret-file FILE`: the pod dials cmdr's listener from inside the cluster,
so cmdr needs no route into the cluster (the fleet default in the design).
The unit's enrollment line is a Secret of the pod's name, mounted read-only
at `secret_mount`; the URL it dials is an annotation on that Secret, so a
pod deleted by `stop` comes back with the same enrollment.

`replicas` makes one labelled group of units: member 0 is the unit itself,
member i its unit `UNIT-i`, each a pod with its own enrollment (a Deployment
cannot give identical pods distinct secrets, so this provisioner is the
group's replica controller; `restartPolicy: Always` restarts a unit that
exits). `scale(n)` grows or shrinks the group.

The official `kubernetes` client (the `kubernetes` extra) is blocking: every
call runs in a worker thread. (kubernetes-asyncio is asyncio-only; latis runs
on trio.) Configuration: `host` (an API URL, with `token_file`/`ca_file`),
else in-cluster when running in a pod, else the kubeconfig (`kubeconfig`,
`context`, or the client's defaults: KUBECONFIG, ~/.kube/config).

Pods and Secrets are labelled `latis.io/managed=true`, `latis.io/unit=UNIT`
and `latis.io/group=GROUP`. Label selectors are sent *and* applied here
(cheap, and right against servers that ignore them).

Resources: `namespace`, `replicas` (once started or scaled).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

import attrs
import trio

from latis_core import (
    ProvisionContext,
    ProvisionError,
    ProvisionState,
    ProvisionStatus,
)
from latis_core._plugins.provision import OneAtATime

from .dialhome import DialHome, DialsHome, Orphan

__all__ = ["KubernetesOptions", "KubernetesProvisioner", "Orphan"]

_T = TypeVar("_T")

MANAGED_LABEL = "latis.io/managed"
UNIT_LABEL = "latis.io/unit"
GROUP_LABEL = "latis.io/group"
#: The Secret annotation that holds the URL the unit dials.
CONNECT_ANNOTATION = "latis.io/connect"
#: The key of the enrollment line in the Secret (and the file name in the mount).
SECRET_KEY = "enrollment"
CONTAINER = "unit"

_PHASES = {
    "Pending": ProvisionState.CREATED,
    "Running": ProvisionState.RUNNING,
    "Succeeded": ProvisionState.STOPPED,
    "Failed": ProvisionState.STOPPED,
}


def _default_command() -> list[str]:
    return ["latis-unit"]


@attrs.define
class KubernetesOptions:
    """The `kubernetes` provisioner's config table.

    Attributes:
        image: the container image; it holds `latis-unit` (with the websocket
            extra for a ws:// listener) and the agent.
        namespace: where the pods and secrets go.
        replicas: units in the group (member 0 is the unit, member i `UNIT-i`).
        command: the unit's command in the image; its arguments are added.
        resources: the container's `requests` and `limits` ({"requests":
            {"cpu": "250m", "memory": "256Mi"}}).
        labels: more labels on the pods.
        service_account: the pods' service account.
        node_selector: the pods' node selector.
        tolerations: the pods' tolerations, as in a pod spec (camelCase keys).
        env: environment variables in the container.
        image_pull_policy: "Always", "IfNotPresent" or "Never".
        image_pull_secrets: names of Secrets for a private registry.
        secret_mount: where the enrollment Secret is mounted in the container.
        host: the API server's URL (a stand-in, or a cluster without kubeconfig).
        token_file: a bearer token for `host`.
        ca_file: the CA bundle for `host` (else the system's).
        verify_ssl: check `host`'s certificate.
        kubeconfig: the kubeconfig file (default: KUBECONFIG, ~/.kube/config).
        context: the kubeconfig context (default: its current one).
        cmdr_address: the host name the pods dial (in the enrollment URL).
        connect: cmdr's listener URL (with `secret_file`; see `dialhome`).
        secret_file: a file with the enrollment line (with `connect`; one unit only).
        request_timeout: seconds one API request may take.
    """

    image: str
    namespace: str = "default"
    replicas: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    command: list[str] = attrs.field(factory=_default_command)
    resources: dict[str, dict[str, str]] = attrs.field(factory=dict)
    labels: dict[str, str] = attrs.field(factory=dict)
    service_account: str | None = None
    node_selector: dict[str, str] = attrs.field(factory=dict)
    tolerations: list[dict[str, Any]] = attrs.field(factory=list)
    env: dict[str, str] = attrs.field(factory=dict)
    image_pull_policy: str | None = None
    image_pull_secrets: list[str] = attrs.field(factory=list)
    secret_mount: str = "/var/run/latis"
    host: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    verify_ssl: bool = True
    kubeconfig: str | None = None
    context: str | None = None
    cmdr_address: str | None = None
    connect: str | None = None
    secret_file: str | None = None
    request_timeout: float = 30.0


def object_name(unit: str) -> str:
    """The pod's (and its Secret's) name for `unit`: a DNS label."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"latis-{unit}".lower())[:63]
    return name.rstrip("-")


def _label_value(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:63].strip("-_.")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class KubernetesProvisioner(DialsHome, OneAtATime):
    """Runs a unit (or a group of `replicas` units) as pods that dial home."""

    Options = KubernetesOptions
    options: KubernetesOptions
    #: The options that say where `orphans` looks: one look serves a namespace.
    orphan_scope: ClassVar[tuple[str, ...]] = ("host", "kubeconfig", "context", "namespace")

    def __init__(self, options: KubernetesOptions, context: ProvisionContext) -> None:
        self.options = options
        self.context = context
        self._api: Any = None
        self._api_lock = trio.Lock()
        super().__init__()

    def __repr__(self) -> str:
        return f"<KubernetesProvisioner unit={self.context.unit!r}>"

    def _error(self, message: str) -> ProvisionError:
        return ProvisionError(f"kubernetes provisioner for unit {self.context.unit!r}: {message}")

    @property
    def namespace(self) -> str:
        return self.context.resources.get("namespace") or self.options.namespace

    @property
    def replicas(self) -> int:
        """Units in the group: the recorded count (after `scale`), else the option."""
        recorded = self.context.resources.get("replicas")
        return int(recorded) if recorded else self.options.replicas

    def member_unit(self, index: int) -> str:
        """The unit name of member `index` (member 0 is this provisioner's unit)."""
        return self.context.unit if index == 0 else f"{self.context.unit}-{index}"

    def member_units(self, replicas: int | None = None) -> list[str]:
        """The unit names of a group of `replicas` (default: the current count)."""
        count = self.replicas if replicas is None else replicas
        return [self.member_unit(i) for i in range(count)]

    # --- the API (every call in a thread) -----------------------------------------------

    def _make_api(self) -> Any:
        try:
            import kubernetes
        except ImportError as exc:
            raise self._error("the kubernetes client is not installed "
                              "(pip install 'latis[kubernetes]')") from exc
        o = self.options
        client, config = kubernetes.client, kubernetes.config
        try:
            if o.host:
                configuration = client.Configuration()
                configuration.host = o.host
                configuration.verify_ssl = o.verify_ssl
                if o.ca_file:
                    configuration.ssl_ca_cert = o.ca_file
                if o.token_file:
                    with open(os.path.expanduser(o.token_file)) as file:
                        token = file.read().strip()
                    configuration.api_key = {"authorization": f"Bearer {token}"}
                api_client = client.ApiClient(configuration)
            elif not (o.kubeconfig or o.context) and os.environ.get("KUBERNETES_SERVICE_HOST"):
                configuration = client.Configuration()
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration)
                api_client = client.ApiClient(configuration)
            else:
                api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=o.kubeconfig, context=o.context)
        except (config.ConfigException, OSError) as exc:
            raise self._error(f"no way to reach a cluster: {exc}") from exc
        return client.CoreV1Api(api_client)

    async def _call(self, what: str, call: Callable[[Any], _T]) -> _T:
        """Run `call(api)` in a thread; the API's errors become ProvisionErrors."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        async with self._api_lock:
            if self._api is None:
                self._api = await trio.to_thread.run_sync(self._make_api)
        api = self._api
        try:
            return await trio.to_thread.run_sync(functools.partial(call, api))
        except ApiException as exc:
            raise self._error(f"{what} failed: {_api_message(exc)}") from exc
        except HTTPError as exc:
            raise self._error(f"{what} failed: {exc}") from exc

    async def _read(self, kind: str, name: str) -> Any | None:
        """The pod or secret `name`, or None if there is none."""
        from kubernetes.client.exceptions import ApiException

        namespace = self.namespace

        def call(api: Any) -> Any:
            read = api.read_namespaced_pod if kind == "pod" else api.read_namespaced_secret
            try:
                return read(name, namespace, _request_timeout=self.options.request_timeout)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        return await self._call(f"reading {kind} {name}", call)

    async def _delete(self, kind: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        namespace = self.namespace

        def call(api: Any) -> None:
            delete = api.delete_namespaced_pod if kind == "pod" else api.delete_namespaced_secret
            try:
                delete(name, namespace, _request_timeout=self.options.request_timeout)
            except ApiException as exc:
                if exc.status != 404:
                    raise

        await self._call(f"deleting {kind} {name}", call)

    async def _list(self, kind: str, labels: dict[str, str]) -> list[Any]:
        """Pods or secrets with all of `labels` (filtered here too)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        namespace = self.namespace

        def call(api: Any) -> list[Any]:
            list_ = api.list_namespaced_pod if kind == "pod" else api.list_namespaced_secret
            reply = list_(namespace, label_selector=selector,
                          _request_timeout=self.options.request_timeout)
            return list(reply.items)

        items = await self._call(f"listing {kind}s", call)
        return [i for i in items
                if all((i.metadata.labels or {}).get(k) == v for k, v in labels.items())]

    async def _create_object(self, kind: str, body: dict[str, Any]) -> None:
        """Create a pod or secret; one that exists already (a race) is fine."""
        from kubernetes.client.exceptions import ApiException

        namespace = self.namespace

        def call(api: Any) -> None:
            create = api.create_namespaced_pod if kind == "pod" else api.create_namespaced_secret
            try:
                create(namespace, body, _request_timeout=self.options.request_timeout)
            except ApiException as exc:
                if exc.status != 409:
                    raise

        await self._call(f"creating {kind} {body['metadata']['name']}", call)

    # --- one member ---------------------------------------------------------------------

    def labels(self, unit: str) -> dict[str, str]:
        """The labels of member `unit`'s pod and secret."""
        return {**self.options.labels, MANAGED_LABEL: "true", UNIT_LABEL: _label_value(unit),
                GROUP_LABEL: _label_value(self.context.unit),
                "app.kubernetes.io/managed-by": "latis"}

    def _ours(self, obj: Any, unit: str) -> bool:
        return bool((obj.metadata.labels or {}).get(UNIT_LABEL) == _label_value(unit))

    def secret_body(self, dial_home: DialHome) -> dict[str, Any]:
        """The Secret holding a member's enrollment line."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": object_name(dial_home.unit), "labels": self.labels(dial_home.unit),
                         "annotations": {CONNECT_ANNOTATION: dial_home.url}},
            "type": "Opaque",
            "data": {SECRET_KEY: _b64(dial_home.secret + "\n")},
        }

    def pod_body(self, dial_home: DialHome) -> dict[str, Any]:
        """The pod of a member: its container runs `latis-unit --connect …`."""
        o = self.options
        name = object_name(dial_home.unit)
        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": o.image,
            "command": list(o.command),
            "args": dial_home.argv(self.context, f"{o.secret_mount}/{SECRET_KEY}"),
            "env": [{"name": k, "value": v} for k, v in o.env.items()],
            "volumeMounts": [{"name": "latis-enrollment", "mountPath": o.secret_mount,
                              "readOnly": True}],
        }
        if o.resources:
            container["resources"] = o.resources
        if o.image_pull_policy:
            container["imagePullPolicy"] = o.image_pull_policy
        spec: dict[str, Any] = {
            "containers": [container],
            "restartPolicy": "Always",
            "volumes": [{"name": "latis-enrollment",
                         "secret": {"secretName": name, "defaultMode": 0o400}}],
        }
        if o.service_account:
            spec["serviceAccountName"] = o.service_account
        if o.node_selector:
            spec["nodeSelector"] = o.node_selector
        if o.tolerations:
            spec["tolerations"] = o.tolerations
        if o.image_pull_secrets:
            spec["imagePullSecrets"] = [{"name": s} for s in o.image_pull_secrets]
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": self.labels(dial_home.unit)},
                "spec": spec}

    async def _ensure_member(self, index: int) -> None:
        """Member `index`'s Secret (enrolled once) and pod, unless they exist."""
        unit = self.member_unit(index)
        name = object_name(unit)
        pod = await self._read("pod", name)
        if pod is not None:
            if not self._ours(pod, unit):
                raise self._error(f"a pod named {name!r} in namespace {self.namespace!r} is "
                                  f"not unit {unit!r}'s (no {UNIT_LABEL}={unit} label)")
            if (pod.status and pod.status.phase) not in ("Succeeded", "Failed"):
                return
            await self._delete("pod", name)  # ended: make it again
        secret = await self._read("secret", name)
        if secret is not None and self._ours(secret, unit):
            url = (secret.metadata.annotations or {}).get(CONNECT_ANNOTATION)
            line = base64.b64decode((secret.data or {}).get(SECRET_KEY, "")).decode().strip()
            dial_home = DialHome(unit, url or "", line)
            if not line.startswith("latis-enroll-"):
                raise self._error(f"the secret {name!r} holds no enrollment line under "
                                  f"{SECRET_KEY!r}: delete it, and `start` enrolls the unit again")
        else:
            if secret is not None:
                raise self._error(f"a secret named {name!r} in namespace {self.namespace!r} "
                                  f"is not unit {unit!r}'s")
            dial_home = await self._dial_home(unit)
            await self._create_object("secret", self.secret_body(dial_home))
        if not dial_home.url:
            raise self._error(f"the secret {name!r} has no {CONNECT_ANNOTATION} annotation")
        self._say(f"creating pod {name} for unit {unit!r}")
        await self._create_object("pod", self.pod_body(dial_home))

    async def _remove_member(self, unit: str, *, secret: bool) -> None:
        await self._delete("pod", object_name(unit))
        if secret:
            await self._delete("secret", object_name(unit))

    # --- the group ----------------------------------------------------------------------

    async def _create(self) -> None:
        """As `start`: a pod runs as soon as it exists."""
        await self._start()

    async def _start(self) -> None:
        """Make every member's pod (and enrollment) that is missing."""
        self.context.resources.set("namespace", self.namespace)
        self.context.resources.set("replicas", str(self.replicas))
        for index in range(self.replicas):
            await self._ensure_member(index)

    async def _stop(self) -> None:
        """Delete the group's pods; keep their enrollments, so `start` makes the same units."""
        for pod in await self._list("pod", {GROUP_LABEL: _label_value(self.context.unit),
                                            MANAGED_LABEL: "true"}):
            await self._delete("pod", pod.metadata.name)

    async def _destroy(self) -> None:
        """Delete the group's pods and secrets; forget the group."""
        group = {GROUP_LABEL: _label_value(self.context.unit), MANAGED_LABEL: "true"}
        for kind in ("pod", "secret"):
            for obj in await self._list(kind, group):
                await self._delete(kind, obj.metadata.name)
        self.context.resources.clear()

    async def scale(self, replicas: int) -> list[str]:
        """Make the group `replicas` units: new members are enrolled and started, the
        highest-numbered ones beyond it deleted (pod and enrollment). Returns the
        members' unit names. The controller enrolls new members through the enroller
        (so they must be units it knows) and forgets the removed ones."""
        if replicas < 0:
            raise self._error(f"cannot scale to {replicas} replicas")
        async with self._lock:
            group = {GROUP_LABEL: _label_value(self.context.unit), MANAGED_LABEL: "true"}
            self.context.resources.set("namespace", self.namespace)
            self.context.resources.set("replicas", str(replicas))
            keep = set(map(_label_value, self.member_units(replicas)))
            for kind in ("pod", "secret"):
                for obj in await self._list(kind, group):
                    if obj.metadata.labels.get(UNIT_LABEL) not in keep:
                        self._say(f"deleting {kind} {obj.metadata.name}")
                        await self._delete(kind, obj.metadata.name)
            for index in range(replicas):
                await self._ensure_member(index)
            return self.member_units(replicas)

    async def status(self) -> ProvisionStatus:
        """The group's pods: RUNNING when all run, ABSENT when there are none."""
        pods = await self._list("pod", {GROUP_LABEL: _label_value(self.context.unit),
                                        MANAGED_LABEL: "true"})
        if not pods:
            return ProvisionStatus(ProvisionState.ABSENT)
        phases = [(p.status.phase if p.status else None) or "Pending" for p in pods]
        states = {_PHASES.get(phase, ProvisionState.STOPPED) for phase in phases}
        if states == {ProvisionState.RUNNING} and len(pods) >= self.replicas:
            state = ProvisionState.RUNNING
        elif ProvisionState.STOPPED in states:
            state = ProvisionState.STOPPED
        else:
            state = ProvisionState.CREATED
        counts = ", ".join(f"{phases.count(p)} {p}" for p in sorted(set(phases)))
        return ProvisionStatus(state, f"{len(pods)} of {self.replicas} pods in "
                                      f"{self.namespace}: {counts}")

    def dialer(self) -> None:
        """None: the pods dial home (cmdr waits for them on its `accept` listener)."""
        return None

    async def orphans(self, units: Iterable[str]) -> list[Orphan]:
        """Pods latis made in the namespace whose unit and group are not in `units`."""
        known = {_label_value(u) for u in units}
        found = []
        for pod in await self._list("pod", {MANAGED_LABEL: "true"}):
            labels = pod.metadata.labels or {}
            if labels.get(UNIT_LABEL) in known or labels.get(GROUP_LABEL) in known:
                continue
            phase = (pod.status.phase if pod.status else None) or "Pending"
            found.append(Orphan(labels.get(UNIT_LABEL, ""), pod.metadata.name, phase,
                                f"namespace {self.namespace}"))
        return sorted(found, key=lambda o: (o.unit, o.resource))


def _api_message(exc: Any) -> str:
    """The API server's own words: its Status message, else the HTTP status."""
    try:
        body = json.loads(exc.body)
        message = body.get("message") or body.get("reason")
    except (TypeError, ValueError, AttributeError):
        message = None
    return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")
