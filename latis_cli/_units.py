"""`latis unit add|enroll|list|up|down|destroy|status`, `latis connect`, `latis listeners`,
`latis init`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

from cyclopts import App, Parameter

from ._cmdr import ERROR, OK, USAGE
from ._run import run_with_cmdr

unit_app = App(
    name="unit",
    help="Units: the agent endpoints cmdr provisions and connects to.",
    help_format="markdown",
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
    from latis_core._cmdr.config import find_config

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

    Examples
    --------
    ```
    latis unit add box --provisioner container --image localhost/latis-unit:1
    latis unit add fast --provisioner process --agent echo -o delay=0
    latis unit add shared --dial unix --dial-option path=/run/shared/unit.sock
    latis unit add box2 --provisioner container --image img --set engine=docker
    latis unit add edge --accept tcp://0.0.0.0:7447 --address cmdr.example.com
    latis unit add gpu --dial tcp --dial-option host=gpu1 --dial-option token_file=~/.t
    ```

    Args:
        name: the unit's name.
        provisioner: process, container, ... (none: the unit already runs).
        image: the container image (with --provisioner container).
        agent: the agent the unit runs.
        option: an agent option KEY=VALUE (repeatable).
        dial: how cmdr reaches it (local, unix, ...); default: what the provisioner gives.
        dial_option: a dialer option KEY=VALUE (repeatable).
        set_: a provisioner option KEY=VALUE (repeatable).
        accept: the unit dials in to cmdr's listener at this address.
        address: (with --accept) the host the unit dials (default: the
            listener's, else this machine's name).
        json_output: (with --accept) print the enrollment as a JSON object.
    """
    from latis_core._cmdr.config import ConfigError
    from latis_core._cmdr.config_write import add_unit

    agent_options = _pairs(option, "option")
    dial_options = _pairs(dial_option, "dial option")
    prov_options = _pairs(set_, "provisioner option")
    if agent_options is None or dial_options is None or prov_options is None:
        return USAGE
    table: dict[str, Any] = {"agent": agent}
    if agent_options:
        table["agent_options"] = agent_options
    if provisioner is not None:
        prov: dict[str, Any] = {"type": provisioner, **prov_options}
        if image is not None:
            prov["image"] = image
        table["provisioner"] = prov
    elif image is not None or prov_options:
        print("latis: --image and --set need --provisioner", file=sys.stderr)
        return USAGE
    if dial is not None:
        table["dial"] = {"type": dial, **dial_options}
    if accept is not None:
        try:
            table["accept"] = [_accept_table(accept)]
        except (ValueError, ImportError, LookupError) as exc:
            print(f"latis: --accept: {exc}", file=sys.stderr)
            return USAGE
    path = _config_path()
    try:
        add_unit(path, name, table)
    except ConfigError as exc:
        print(f"latis: {exc}", file=sys.stderr)
        return ERROR
    print(f"added unit {name!r} to {path}", file=sys.stderr)
    _reload_daemon()
    if accept is not None:
        return enroll(name, address=address, json_output=json_output)
    return OK


def _accept_table(url: str) -> dict[str, Any]:
    """The accept table for a listener address: its options that are not the defaults."""
    from urllib.parse import parse_qs, urlsplit

    import attrs

    from latis_core._plugins.registry import listener_from_url

    kind, listener = listener_from_url(url)
    table: dict[str, Any] = {"type": kind}
    for field in attrs.fields(type(listener)):
        value = getattr(listener, field.name)
        if value != field.default:
            table[field.name] = value
    if "tls" in (f.name for f in attrs.fields(type(listener))) and "tls" not in parse_qs(
        urlsplit(url).query
    ):
        table["tls"] = True  # a listener open to the network speaks TLS unless told not to
    return table


@unit_app.command
def enroll(
    name: str,
    *,
    address: str | None = None,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Enroll a unit that dials in: print the one line to run on it.

    A new enrollment replaces the unit's last one (whose secret stops
    working). The line goes to stdout and holds the unit's secret: send it
    privately. It writes the secret to a file (mode 0600) and starts
    `latis-unit --connect`, which dials cmdr and proves the secret without
    sending it, pinning cmdr's CA when the listener speaks TLS.

    Examples
    --------
    ```
    latis unit enroll edge
    latis unit enroll edge --address cmdr.example.com
    latis unit enroll edge --json | jq -r .secret
    ```

    Args:
        name: the unit (it needs an accept entry).
        address: the host the unit dials (default: the listener's, else this machine's name).
        json_output: print the enrollment as a JSON object.
    """

    async def work(cmdr: Any) -> int:
        from ._cmdr import call

        data = await call(cmdr, "unit.enroll", unit=name, address=address)
        if json_output:
            print(json.dumps(data, indent=2))
            return OK
        print(f"enrolled unit {name!r} ({data['enrollment']}); run this on it "
              f"(it holds the unit's secret):", file=sys.stderr)
        print(data["command"])
        return OK

    return run_with_cmdr(work)


def _reload_daemon() -> None:
    from ._cmdr import daemon_pid

    if daemon_pid() is None:
        return

    async def reload(cmdr: Any) -> int:
        from ._cmdr import call

        await call(cmdr, "config.reload")
        return OK

    run_with_cmdr(reload, autostart=False)


@unit_app.command(name="list")
def list_units(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """List the units in config, with how each runs and is reached.

    Examples
    --------
    ```
    latis unit list
    latis unit list --json
    ```

    Args:
        json_output: print a JSON array.
    """
    from latis_core._cmdr.config import ConfigError, load_config

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
            }
        )
    if json_output:
        print(json.dumps(rows, indent=2))
        return OK
    from rich.table import Table

    from ._console import out

    table = Table("unit", "agent", "provisioner", "dial", "accept", box=None)
    for row in rows:
        table.add_row(row["unit"], row["agent"], row["provisioner"] or "-",
                      row["dial"] or "-", ", ".join(row["accept"]) or "-")
    out().print(table)
    source = config.source or "built-in defaults"
    print(f"config: {source}", file=sys.stderr)
    return OK


def _unit_call(method: str, name: str, verb: str) -> int:
    async def work(cmdr: Any) -> int:
        from ._cmdr import call
        from ._console import progress

        with progress(f"{verb} unit {name!r}") as say:
            data = await call(cmdr, method, say, unit=name)
        print(f"unit {name}: {data.get('connection', 'done') if data else 'done'}",
              file=sys.stderr)
        return OK

    return run_with_cmdr(work)


@unit_app.command
def up(name: str = "local") -> int:
    """Provision the unit (if it has a provisioner), start it and connect to it.

    Examples
    --------
    ```
    latis unit up box
    ```

    Args:
        name: the unit.
    """
    return _unit_call("unit.up", name, "bringing up")


@unit_app.command
def down(name: str = "local") -> int:
    """Disconnect from the unit and stop it (its sessions end with it).

    Examples
    --------
    ```
    latis unit down box
    ```

    Args:
        name: the unit.
    """
    return _unit_call("unit.down", name, "stopping")


@unit_app.command
def destroy(name: str, *, yes: bool = False) -> int:
    """Stop the unit and remove everything its provisioner made.

    Asks for the name to be typed back on a terminal, unless --yes.

    Examples
    --------
    ```
    latis unit destroy box --yes
    ```

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
    return _unit_call("unit.destroy", name, "destroying")


@unit_app.command(name="status")
def unit_status(
    name: str = "local", *, json_output: Annotated[bool, Parameter(name="--json")] = False
) -> int:
    """Show one unit: provisioner state, connection, agent, sessions.

    Examples
    --------
    ```
    latis unit status box
    latis unit status box --json
    ```

    Args:
        name: the unit.
        json_output: print a JSON object.
    """

    async def work(cmdr: Any) -> int:
        from ._cmdr import call

        data = await call(cmdr, "status")
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

    Examples
    --------
    ```
    latis connect box
    latis connect unix:/run/shared/unit.sock --name shared
    latis connect "local:latis-unit --stdio --agent echo" --name scratch
    latis connect "tcp://gpu1:7447?fingerprint=sha256:ab12…" --token-file ~/.gpu1-token
    latis connect ssh://me@build-box --name build
    latis connect container://my-agent-ctr
    ```

    Args:
        target: a unit's name, or an address.
        name: the name for a unit given by address.
        token_file: the token a unit that listens asks cmdr to prove (`latis-unit --token-file`).
    """

    # The daemon reads the file: give it a path that means the same there.
    token_path = os.path.abspath(os.path.expanduser(token_file)) if token_file else None

    async def work(cmdr: Any) -> int:
        from ._cmdr import call
        from ._console import progress

        with progress(f"connecting to {target}") as say:
            data = await call(cmdr, "unit.connect", say, target=target, name=name,
                              token_file=token_path)
        print(f"unit {data['unit']}: {data['connection']} ({data['how']})", file=sys.stderr)
        return OK

    return run_with_cmdr(work)


def init(path: Path = Path("latis.toml"), *, force: bool = False) -> int:
    """Write a commented latis.toml that shows every provisioner, dialer, listener and agent.

    Examples
    --------
    ```
    latis init
    latis init ~/.config/latis/config.toml
    ```

    Args:
        path: where to write it.
        force: overwrite a file that exists.
    """
    from latis_core._cmdr.config_write import init_text

    if path.exists() and not force:
        print(f"latis: {path} exists (use --force to overwrite)", file=sys.stderr)
        return ERROR
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(init_text())
    print(f"wrote {path}", file=sys.stderr)
    return OK


def listeners(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """cmdr's listeners for units that dial in: where, TLS, accepted, refused (and why).

    Examples
    --------
    ```
    latis listeners
    latis listeners --json | jq '.[].refused'
    ```

    Args:
        json_output: print a JSON array.
    """

    async def work(cmdr: Any) -> int:
        from ._cmdr import call

        rows = (await call(cmdr, "status"))["listeners"]
        if json_output:
            print(json.dumps(rows, indent=2))
            return OK
        if not rows:
            print("no listeners: no unit has an accept entry", file=sys.stderr)
            return OK
        from rich.table import Table

        from ._console import out

        table = Table("listener", "port", "tls", "accepted", "refused", "error", box=None)
        for row in rows:
            refused = ", ".join(f"{k} {v}" for k, v in sorted(row["refused"].items())) or "0"
            table.add_row(row["listener"], str(row["port"] or "-"), "yes" if row["tls"] else
                          "no", str(row["accepted"]), refused, row["error"] or "")
        out().print(table)
        return OK

    return run_with_cmdr(work)
