"""`latis unit add|enroll|list|up|down|destroy|scale|status` (the enrollment's life is
in `_enrollments`), `latis connect`, `latis listeners`,
`latis init`."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from cyclopts import App, Parameter

from . import _complete
from ._cmdr import ERROR, OK, USAGE
from ._run import run_with_cmdr

#: A unit name argument, completed from the config.
_UnitName = Annotated[str, Parameter(completer=_complete.units)]

unit_app = App(
    name="unit",
    help="Units: the agent endpoints cmdr provisions and connects to.",
    help_format="plaintext",
)


def _pairs(pairs: tuple[str, ...], what: str) -> dict[str, str] | None:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            print(f"latis: {what} {pair!r} is not KEY=VALUE", file=sys.stderr)
            return None
        options[key] = value
    return options


def _config_path() -> Path:
    from latis_core import find_config

    return find_config(os.environ.get("LATIS_CONFIG") or None) or Path("latis.toml")


@unit_app.command
def add(
    name: str,
    *,
    provisioner: str | None = None,
    image: str | None = None,
    agent: str = "echo",
    option: Annotated[tuple[str, ...], Parameter(name=["--option", "-o"])] = (),
    dial: str | None = None,
    dial_option: tuple[str, ...] = (),
    set_: Annotated[tuple[str, ...], Parameter(name="--set")] = (),
    accept: str | None = None,
    address: str | None = None,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Add a unit to the config file (it is appended: comments and order stay).

    The file is the one in use (`--config`, `LATIS_CONFIG`, `./latis.toml`
    upward, the user config), else a new `./latis.toml`. A running daemon
    picks the unit up at once.

    With `--accept URL` the unit dials in to cmdr's listener at URL (TLS on
    unless the URL says `?tls=0`): cmdr enrolls it and prints the one line to
    run on the unit (on stdout; it holds the unit's secret).

    For example:
      latis unit add box --provisioner container --image localhost/latis-unit:1
      latis unit add fast --provisioner process --agent echo -o delay=0
      latis unit add shared --dial unix --dial-option path=/run/shared/unit.sock
      latis unit add b2 --provisioner container --image img --set engine=docker
      latis unit add edge --accept tcp://0.0.0.0:7447 --address cmdr.example.com
      latis unit add gpu --dial tcp --dial-option host=gpu1 --dial-option port=7447
      latis unit add gpu --dial tcp://gpu1:7447      (the same: an address)

    Args:
        name: the unit's name.
        provisioner: process, container, ... (none: the unit already runs).
        image: the container image (with --provisioner container).
        agent: the agent the unit runs.
        option: an agent option KEY=VALUE (repeatable).
        dial: how cmdr reaches it: a type (local, unix, ...) or an address, as `latis
            connect` takes it; default: what the provisioner gives.
        dial_option: a dialer option KEY=VALUE (repeatable).
        set_: a provisioner option KEY=VALUE (repeatable).
        accept: the unit dials in to cmdr's listener at this address.
        address: (with --accept) the host the unit dials (default: the
            listener's, else this machine's name).
        json_output: (with --accept) print the enrollment as a JSON object.
    """
    from latis_core import ConfigError, add_unit

    agent_options = _pairs(option, "option")
    dial_options = _pairs(dial_option, "dial option")
    prov_options = _pairs(set_, "provisioner option")
    if agent_options is None or dial_options is None or prov_options is None:
        return USAGE
    table: dict[str, Any] = {"agent": agent}
    if agent_options:
        table["agent_options"] = agent_options
    if provisioner == "process":
        # It runs here, with this machine's agents: one not installed would only
        # show when the unit first starts (elsewhere, in an image or on another
        # host, the agents are that side's to know).
        from latis_core import agent_names

        if agent not in (known := agent_names()):
            print(f"latis: --agent {agent!r}: no such agent here, where a process unit "
                  f"runs (agents: {', '.join(known)}; `latis agents available`)",
                  file=sys.stderr)
            return USAGE
    if provisioner is not None:
        prov: dict[str, Any] = {"type": provisioner, **prov_options}
        if image is not None:
            prov["image"] = image
        table["provisioner"] = prov
    elif image is not None or prov_options:
        print("latis: --image and --set need --provisioner", file=sys.stderr)
        return USAGE
    if dial is not None:
        try:
            # An address (`tcp://gpu1:7447`, as `latis connect` takes) or a type.
            spelled = _dial_table(dial) if ":" in dial else {"type": dial}
        except (ValueError, ImportError, LookupError) as exc:
            print(f"latis: --dial: {exc}", file=sys.stderr)
            return USAGE
        table["dial"] = {**spelled, **dial_options}
    if accept is not None:
        try:
            table["accept"] = [_accept_table(accept)]
        except (ValueError, ImportError, LookupError) as exc:
            print(f"latis: --accept: {exc}", file=sys.stderr)
            return USAGE
    if not {"provisioner", "dial", "accept"} & set(table):
        print(f"latis: unit {name!r} needs a way to be reached: --provisioner TYPE (cmdr "
              "starts it), --dial ADDRESS (it listens) or --accept URL (it dials in)",
              file=sys.stderr)
        return USAGE
    path = _config_path()
    before = path.read_bytes() if path.exists() else None
    try:
        add_unit(path, name, table)
    except ConfigError as exc:
        print(f"latis: {exc}", file=sys.stderr)
        return ERROR
    status = _reload_daemon()
    if status == OK and accept is not None:
        status = enroll(name, address=address, json_output=json_output)
    if status != OK:
        # A unit that cannot be served is not left behind in the file.
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)
        _reload_daemon()
        print(f"latis: unit {name!r} not added: {path} is as it was", file=sys.stderr)
        return status
    print(f"added unit {name!r} to {path}", file=sys.stderr)
    return OK


def _plugin_table(kind: str, options: Any) -> dict[str, Any]:
    """A dial or accept table: its type and the options that are not the defaults."""
    import attrs

    table: dict[str, Any] = {"type": kind}
    for field in attrs.fields(type(options)):
        value = getattr(options, field.name)
        if value != field.default:
            table[field.name] = value
    return table


def _dial_table(url: str) -> dict[str, Any]:
    """The dial table for an address (as `latis connect` takes it)."""
    from latis_core import dialer_from_url

    return _plugin_table(*dialer_from_url(url))


def _accept_table(url: str) -> dict[str, Any]:
    """The accept table for a listener address: its options that are not the defaults.

    A listener open to the network speaks TLS unless the URL says `?tls=0`,
    except where a unit of the config listens at the same address already:
    the new unit joins that listener as it is (what its table spells holds).
    """
    from urllib.parse import parse_qs, urlsplit

    import attrs

    from latis_core import listener_from_url

    kind, listener = listener_from_url(url)
    table = _plugin_table(kind, listener)
    if "tls" in (f.name for f in attrs.fields(type(listener))):
        if "tls" in parse_qs(urlsplit(url).query):
            table["tls"] = listener.tls  # spelled out, even as the default
        elif not _listens_at(kind, listener):
            table["tls"] = True
    return table


def _listens_at(kind: str, listener: Any) -> bool:
    """Whether a unit of the config has a listener of `kind` at `listener`'s address."""
    from latis_core import ConfigError, load_config

    try:
        config = load_config(os.environ.get("LATIS_CONFIG") or None)
    except ConfigError:
        return False  # `unit add` says what is wrong with the file

    def address(options: Any) -> tuple[Any, ...]:
        return tuple(getattr(options, key, None) for key in ("host", "port", "path"))

    return any(
        accept.type == kind and address(accept.options) == address(listener)
        for unit in config.units.values()
        for accept in unit.accept
    )


@unit_app.command
def enroll(
    name: str,
    *,
    address: str | None = None,
    ttl: float | None = None,
    approve: bool | None = None,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Enroll a unit that dials in: print the one line to run on it.

    A new enrollment replaces the unit's last one (whose secret stops
    working). The line goes to stdout and holds the unit's secret: send it
    privately. It writes the secret to a file (mode 0600) and starts
    `latis-unit --connect`, which dials cmdr and proves the secret without
    sending it, pinning cmdr's CA when the listener speaks TLS.

    For example:
      latis unit enroll edge
      latis unit enroll edge --address cmdr.example.com
      latis unit enroll edge --json | jq -r .secret
      latis unit enroll edge --ttl 600 --approve

    Args:
        name: the unit (it needs an accept entry).
        address: the host the unit dials (default: the listener's, else this machine's name).
        ttl: seconds within which the line must be used a first time; 0: no limit
            (default `[daemon] enrollment_ttl`, an hour).
        approve: the unit waits, once it dialed, until `latis unit accept NAME`
            (default `[daemon] approve_units`).
        json_output: print the enrollment as a JSON object.
    """

    async def work(cmdr: Any) -> int:

        data = await cmdr.unit_enroll(name, address, ttl=ttl, approve=approve)
        return print_enrollment(data, json_output, f"enrolled unit {name!r} "
                                f"({data['enrollment']}); run this on it")

    return run_with_cmdr(work)


def print_enrollment(data: dict[str, Any], json_output: bool, saying: str) -> int:
    """Print an enrollment: as JSON, or `saying` on stderr and the line on stdout."""
    if json_output:
        print(json.dumps(data, indent=2))
        return OK
    print(f"{saying} (it holds the unit's secret):", file=sys.stderr)
    print(data["command"])
    return OK


def _reload_daemon() -> int:
    """Make a running daemon read the config again (its exit status; OK if none runs)."""
    from ._cmdr import daemon_pid

    if daemon_pid() is None:
        return OK

    async def reload(cmdr: Any) -> int:
        from ._run import config_mismatch, config_path

        wanted = config_path()
        data = await cmdr.config_use(wanted)
        if not data.get("match", True):
            print(config_mismatch(data.get("config"), wanted).replace(
                "latis: ", "latis: note: ", 1), file=sys.stderr)
            return OK
        await cmdr.config_reload()
        return OK

    return run_with_cmdr(reload, autostart=False, config=False)


#: Provisioners whose units live on this machine and leave nothing behind elsewhere.
_LOCAL_PROVISIONERS = frozenset({"process", "container"})


@unit_app.command(name=["list", "ls"])
def list_units(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """List the units in config, with how each runs and is reached, then the orphans:
    what provisioners made for units no longer in config (a VM, an instance, a pod,
    found by its tag, label or name), when cmdr runs.

    `latis unit rm NAME --yes` destroys an orphan. In JSON, each unit has
    `"orphan": false`; each orphan `"orphan": true`, its `provisioner`,
    `resource`, `state` and `detail`.

    For example:
      latis unit list
      latis unit list --json
      latis unit list --json | jq '.[] | select(.orphan)'

    Args:
        json_output: print a JSON array.
    """
    from latis_core import ConfigError, load_config

    try:
        config = load_config(os.environ.get("LATIS_CONFIG") or None)
    except ConfigError as exc:
        print(f"latis: {exc}", file=sys.stderr)
        return ERROR
    rows: list[dict[str, Any]] = []
    for name, unit in sorted(config.units.items()):
        rows.append(
            {
                "unit": name,
                "agent": unit.agent,
                "provisioner": unit.provisioner.type if unit.provisioner else None,
                "dial": unit.dial.type if unit.dial else None,
                "accept": [a.type for a in unit.accept],
                "orphan": False,
            }
        )
    remote = {u.provisioner.type for u in config.units.values()
              if u.provisioner is not None} - _LOCAL_PROVISIONERS
    orphans = _orphans(bool(remote))
    if json_output:
        print(json.dumps(rows + [{"orphan": True} | o for o in orphans], indent=2))
        return OK
    from ._console import print_table

    print_table(("unit", "agent", "provisioner", "dial", "accept"),
                [(row["unit"], row["agent"], row["provisioner"] or "-", row["dial"] or "-",
                  ", ".join(row["accept"]) or "-") for row in rows])
    if orphans:
        print("orphans: made by latis for units not in config (`latis unit rm NAME --yes` "
              "destroys one):", file=sys.stderr)
        print_table(("orphan", "provisioner", "resource", "state", "detail"),
                    [(row["unit"], row["provisioner"], row["resource"] or "-",
                      row["state"] or "-", row["detail"]) for row in orphans])
    source = config.source or "built-in defaults"
    print(f"config: {source}", file=sys.stderr)
    return OK


def _orphans(say_why_not: bool) -> list[dict[str, Any]]:
    """The orphans a running cmdr finds (none if it does not run: listing starts
    nothing); `say_why_not`: say so on stderr then."""
    from ._cmdr import daemon_pid

    if daemon_pid() is None:
        if say_why_not:
            print("orphans: not looked for: cmdr does not run (`latis daemon start`)",
                  file=sys.stderr)
        return []
    found: list[dict[str, Any]] = []

    async def work(cmdr: Any) -> int:
        from ._run import check_config

        if await check_config(cmdr) is not None:
            print("orphans: not looked for: cmdr serves another config file", file=sys.stderr)
            return OK
        data = await cmdr.unit_orphans()
        found.extend(data["orphans"])
        for error in data["errors"]:
            print(f"latis: could not look for orphans: {error}", file=sys.stderr)
        return OK

    run_with_cmdr(work, autostart=False, config=False)
    return found


def _unit_call(
    method: Callable[[Any], Any], name: str, verb: str, json_output: bool = False
) -> int:
    """Run `method(cmdr)(name, progress)` (a unit method of the daemon client).

    On a terminal, each step shows as it comes (the provisioner's too: a VM that
    boots, an instance that dials home); nothing does with `json_output`, which
    prints the answer as a JSON object instead.
    """

    async def work(cmdr: Any) -> int:
        from ._console import progress

        with progress(f"{verb} unit {name!r}", keep=True, quiet=json_output) as say:
            data = await method(cmdr)(name, say)
        if json_output:
            print(json.dumps(data or {}, indent=2))
            return OK
        said = data.get("connection", "done") if data else "done"
        if data and data.get("provision"):
            said = f"{data['provision']}" + (f" ({data['provision_detail']})"
                                             if data.get("provision_detail") else "")
            said += f", {data['connection']}: not waiting for it"
        print(f"unit {name}: {said}", file=sys.stderr)
        return OK

    return run_with_cmdr(work)


@unit_app.command
def up(
    name: _UnitName = "local",
    *,
    wait: Annotated[bool, Parameter(negative="--no-wait")] = True,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Provision the unit (if it has a provisioner), start it and connect to it.

    On a terminal it shows each step while it waits (a VM may take minutes to
    boot; a cloud unit that dials home, until it has dialed in). With
    --no-wait it returns once the unit's platform took the request (QEMU runs,
    EC2 took the run, the pods are made) and connects later, when first used.

    For example:
      latis unit up box
      latis unit up vm --no-wait
      latis unit up cloud1 --json

    Args:
        name: the unit.
        wait: wait until the unit is ready and connected (--no-wait: do not).
        json_output: print the result as a JSON object (and no progress).
    """
    return _unit_call(lambda cmdr: functools.partial(cmdr.unit_up, wait=wait), name,
                      "bringing up", json_output)


@unit_app.command
def scale(
    name: _UnitName,
    replicas: int,
    *,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Make a unit's group so many units (a provisioner that scales: kubernetes).

    Member 0 is the unit itself, member i the unit NAME-i: each its own pod,
    enrollment and sessions. New members dial in once their pods run; the
    highest-numbered ones beyond REPLICAS are deleted, with their sessions.

    For example:
      latis unit scale fleet 3
      latis unit scale fleet 0
      latis unit scale fleet 5 --json

    Args:
        name: the group's unit.
        replicas: how many units the group has.
        json_output: print the result as a JSON object.
    """
    if replicas < 0:
        print(f"latis: replicas must be 0 or more, not {replicas}", file=sys.stderr)
        return USAGE

    async def work(cmdr: Any) -> int:
        from ._console import progress

        with progress(f"scaling unit {name!r}", keep=True, quiet=json_output) as say:
            data = await cmdr.unit_scale(name, replicas, say)
        if json_output:
            print(json.dumps(data, indent=2))
        else:
            members = ", ".join(data["members"]) or "none"
            print(f"unit {name}: {len(data['members'])} units ({members})", file=sys.stderr)
        return OK

    return run_with_cmdr(work)


@unit_app.command
def down(name: _UnitName = "local") -> int:
    """Disconnect from the unit and stop it (its sessions end with it).

    For example:
      latis unit down box

    Args:
        name: the unit.
    """
    return _unit_call(lambda cmdr: cmdr.unit_down, name, "stopping")


@unit_app.command
def destroy(name: _UnitName, *, yes: bool = False) -> int:
    """Stop the unit and remove everything its provisioner made.

    Asks for the name to be typed back on a terminal, unless --yes.

    For example:
      latis unit destroy box --yes

    Args:
        name: the unit.
        yes: do not ask.
    """
    if not yes:
        if not sys.stdin.isatty():
            print("latis: destroying needs --yes when not on a terminal", file=sys.stderr)
            return USAGE
        if input(f"type the unit's name to destroy it ({name}): ").strip() != name:
            print("latis: not destroyed", file=sys.stderr)
            return ERROR
    return _unit_call(lambda cmdr: cmdr.unit_destroy, name, "destroying")


@unit_app.command(name="rm")
def remove(name: str, *, yes: bool = False) -> int:
    """Remove a unit: stop it, destroy what its provisioner made, forget it, and take it
    out of the config file (the rest of the file stays as written).

    A unit with a provisioner asks for its name to be typed back on a
    terminal, unless --yes. Sessions of the unit are closed; their
    transcripts stay.

    For example:
      latis unit rm far
      latis unit rm box --yes

    Args:
        name: the unit.
        yes: do not ask.
    """
    from latis_core import ConfigError, load_config, remove_unit

    path = _config_path()
    try:
        config = load_config(os.environ.get("LATIS_CONFIG") or None)
    except ConfigError as exc:
        print(f"latis: {exc}", file=sys.stderr)
        return ERROR
    unit = config.units.get(name)
    in_file = unit is not None and unit.line is not None
    if unit is not None and unit.provisioner is not None and not yes:
        if not sys.stdin.isatty():
            print(f"latis: unit {name!r} has a provisioner ({unit.provisioner.type}): removing "
                  "destroys what it made; add --yes when not on a terminal", file=sys.stderr)
            return USAGE
        if input(f"type the unit's name to remove it ({name}): ").strip() != name:
            print("latis: not removed", file=sys.stderr)
            return ERROR

    async def work(cmdr: Any) -> int:
        from ._console import progress

        with progress(f"removing unit {name!r}") as say:
            await cmdr.unit_remove(name, say)
        return OK

    status = run_with_cmdr(work)
    if status != OK:
        return status
    if in_file:
        try:
            remove_unit(path, name)
        except ConfigError as exc:
            print(f"latis: {exc}", file=sys.stderr)
            return ERROR
        print(f"removed unit {name!r} from {path}", file=sys.stderr)
    else:
        print(f"removed unit {name!r}", file=sys.stderr)
    return OK


@unit_app.command(name="status")
def unit_status(
    name: _UnitName = "local", *, json_output: Annotated[bool, Parameter(name="--json")] = False
) -> int:
    """Show one unit: provisioner state, connection, agent, sessions.

    For example:
      latis unit status box
      latis unit status box --json

    Args:
        name: the unit.
        json_output: print a JSON object.
    """

    async def work(cmdr: Any) -> int:

        data = await cmdr.status()
        for entry in data["units"]:
            if entry["unit"] == name:
                if json_output:
                    print(json.dumps(entry, indent=2))
                else:
                    for key in ("unit", "provisioner", "provision", "provision_detail",
                                "connection", "how", "error"):
                        if entry.get(key) is not None:
                            print(f"{key:18} {entry[key]}")
                    agent = entry.get("agent")
                    if agent:
                        print(f"{'agent':18} {agent['name']} {agent['version']}")
                    print(f"{'sessions':18} {len(entry.get('sessions', []))}")
                return OK
        print(f"latis: no unit {name!r}", file=sys.stderr)
        return ERROR

    return run_with_cmdr(work)


def connect(
    target: str,
    *,
    name: str | None = None,
    token_file: str | None = None,
) -> int:
    """Connect cmdr to a unit: one from config by name, or one at an address.

    An address adds a unit for as long as the daemon runs: a unit that
    listens (`tcp://HOST:PORT`, `unix:PATH`, `ws://…`, `wss://…`,
    `quic://HOST:PORT`; TLS pins go in the query, `?fingerprint=sha256:…`),
    one reached over ssh (`ssh://USER@HOST`) or in a running container
    (`container://NAME`), or one started over its stdio (`local:COMMAND`).

    For example:
      latis connect box
      latis connect unix:/run/shared/unit.sock --name shared
      latis connect "local:latis-unit --stdio --agent echo" --name scratch
      latis connect "tcp://gpu1:7447?fingerprint=sha256:ab12…" --token-file ~/.t
      latis connect ssh://me@build-box --name build
      latis connect container://my-agent-ctr

    Args:
        target: a unit's name, or an address.
        name: the name for a unit given by address.
        token_file: the token a unit that listens asks cmdr to prove (`latis-unit --token-file`).
    """

    # The daemon reads the file: give it a path that means the same there.
    token_path = os.path.abspath(os.path.expanduser(token_file)) if token_file else None
    if token_path is not None and not os.path.isfile(token_path):
        print(f"latis: no such file: {token_file} (--token-file)", file=sys.stderr)
        return USAGE

    async def work(cmdr: Any) -> int:
        from ._console import progress

        with progress(f"connecting to {target}") as say:
            data = await cmdr.unit_connect(target, name=name, token_file=token_path,
                                            progress=say)
        print(f"unit {data['unit']}: {data['connection']} ({data['how']})", file=sys.stderr)
        return OK

    return run_with_cmdr(work)


def init(path: Path = Path("latis.toml"), *, force: bool = False) -> int:
    """Write a commented latis.toml that shows every provisioner, dialer, listener and agent.

    For example:
      latis init
      latis init ~/.config/latis/config.toml

    Args:
        path: where to write it.
        force: overwrite a file that exists.
    """
    from latis_core import init_text

    if path.exists() and not force:
        print(f"latis: {path} exists (use --force to overwrite)", file=sys.stderr)
        return ERROR
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(init_text())
    print(f"wrote {path}", file=sys.stderr)
    return OK


def listeners(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """cmdr's listeners for units that dial in: where, TLS, accepted, refused (and why).

    For example:
      latis listeners
      latis listeners --json | jq '.[].refused'

    Args:
        json_output: print a JSON array.
    """

    async def work(cmdr: Any) -> int:

        rows = (await cmdr.status())["listeners"]
        if json_output:
            print(json.dumps(rows, indent=2))
            return OK
        if not rows:
            print("no listeners: no unit has an accept entry", file=sys.stderr)
            return OK
        from ._console import print_table

        def refused(row: dict[str, Any]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(row["refused"].items())) or "0"

        print_table(("listener", "port", "tls", "accepted", "refused", "error"),
                    [(row["listener"], str(row["port"] or "-"), "yes" if row["tls"] else "no",
                      str(row["accepted"]), refused(row), row["error"] or "") for row in rows])
        return OK

    return run_with_cmdr(work)
