"""Config: the units latis knows, from a TOML file (see docs/config.md).

One file is read, the first found of: an explicit path (`--config`),
`LATIS_CONFIG`, `./latis.toml` searched upward from the current directory,
the user config file (`paths().config_file`). Files are not merged. Without
any there is one built-in unit, `local`; a file keeps it unless it defines a
unit of that name.

    [units.box]
    agent = "echo"
    agent_options = { delay = "0.1" }
    [units.box.provisioner]
    type = "container"
    image = "localhost/latis-unit:1"
    [units.box.dial]
    type = "local"

Plugin tables (`provisioner`, `dial`, each `accept` entry) name their plugin
with `type`; the other keys are the plugin's options, structured by a strict
copy of the codec's converter into the plugin's attrs class (a provisioner's
`Options`, a transport's `DIALER` or `LISTENER`). Unknown keys are errors here,
unlike on the wire. Every error is a `ConfigError` whose message names the
file, the line, the unit and the key, and says what was expected.

The parts are in their own modules: the strict converter and how its errors
read (`latis_core._cmdr.config_convert`), where keys are in the text
(`latis_core._cmdr.config_lines`), and writing config (`add_unit`,
`init_text`: `latis_core._cmdr.config_write`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import tomli

from latis_core._cmdr.config_convert import _STRICT, _faults, _kind, _unknown, typed_text
from latis_core._cmdr.config_file import ConfigError, find_config
from latis_core._cmdr.config_lines import _Keys, _Locator
from latis_core._cmdr.config_seed import connection_tables
from latis_core._cmdr.notify import NotifyConfig, parse_notify
from latis_core._cmdr.policy import Rule, parse_rules
from latis_core._cmdr.web.config import WebConfig, parse_web
from latis_core._plugins import registry as _registry
from latis_core._wire.connection import HEARTBEAT, HEARTBEAT_TIMEOUT

__all__ = [
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DaemonConfig",
    "PluginConfig",
    "UnitConfig",
    "default_config",
    "find_config",
    "load_config",
    "parse_config",
    "parse_size",
]

#: What a unit's name may be.
_UNIT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_UNIT_KEYS = (
    "agent", "agent_options", "agent_command", "provisioner", "dial", "accept", "connection",
    "heartbeat", "heartbeat_timeout", "max_sessions", "session_memory", "labels", "notify",
)
_TOP_KEYS = ("daemon", "units", "groups", "notify", "policy", "web")
#: `session_memory` units: "512MiB", "2GiB", "1.5GB" (or a number of bytes).
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_FACTOR = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
           "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}
_NO_FILE = "<config>"


# -- the model ---------------------------------------------------------------------------


@attrs.frozen
class PluginConfig:
    """A plugin table: a provisioner, a dialer or a listener.

    Attributes:
        type: the plugin's name (`process`, `local`, …).
        options: the plugin's options, structured (its `Options`, `DIALER` or
            `LISTENER` class).
        table: the table as written, without `type`.
        line: where the table starts in the file, or None (built in or implied).
        token_file: (dial) the file holding the token a unit that listens asks
            cmdr to prove (`latis-unit --token-file`).
    """

    type: str
    options: object
    table: dict[str, Any] = attrs.Factory(dict)
    line: int | None = None
    token_file: str | None = None


@attrs.frozen
class UnitConfig:
    """One unit: its agent, how it is run, how it is reached.

    Attributes:
        name: the unit's name (`[a-z0-9][a-z0-9_.-]*`).
        agent: the agent the unit runs.
        agent_options: the agent's options (`latis-unit -o KEY=VALUE`).
        provisioner: what creates and runs the unit, or None (it already runs).
        dial: how cmdr connects to the unit, or None.
        accept: listeners where the unit connects to cmdr.
        line: where the unit's table starts, or None (built in).
        agent_command: the agent's own command line, for adapters that run
            one (`latis-unit --agent acp -- gemini --experimental-acp`).
        heartbeat: seconds of silence from the unit before cmdr pings it
            (0: none); None for the `[daemon]` table's.
        heartbeat_timeout: seconds that ping waits before the unit counts as
            unreachable; None for the `[daemon]` table's.
        max_sessions: sessions cmdr places on the unit at most (placement), or None.
        session_memory: bytes of free memory each new session needs (placement), or None.
        labels: names for label selectors (`--agents label:NAME`).
    """

    name: str
    agent: str = "echo"
    agent_options: dict[str, str] = attrs.Factory(dict)
    provisioner: PluginConfig | None = None
    dial: PluginConfig | None = None
    accept: tuple[PluginConfig, ...] = ()
    line: int | None = None
    agent_command: tuple[str, ...] = ()
    heartbeat: float | None = None
    heartbeat_timeout: float | None = None
    max_sessions: int | None = None
    session_memory: int | None = None
    labels: tuple[str, ...] = ()
    #: The unit's own `[units.NAME.notify]` (instead of the global `[notify]`), or None.
    notify: NotifyConfig | None = None


@attrs.frozen
class DaemonConfig:
    """The `[daemon]` table.

    Attributes:
        socket: the daemon's unix socket, or None for `paths().socket`.
        state: the SQLite database, or None for `paths().state_file`.
        handshake_timeout: seconds a new connection gets to finish `hello`.
        dial_in_timeout: seconds `up` waits for a unit that dials in, once
            its provisioner started it.
        session_idle_timeout: seconds after which an open session with no
            prompt running is closed on its unit (its transcript stays); 0 never.
        heartbeat: seconds of silence on any connection (to a unit, from a
            CLI) before cmdr sends a `ping`; 0 for none.
        heartbeat_timeout: seconds that ping waits for any byte before the
            connection is dropped (and its unit marked unreachable).
        enrollment_ttl: seconds within which a new enrollment must be used a
            first time (0: no limit).
        approve_units: a new enrollment's first use waits for a person
            (`latis unit accept NAME`).
        unit_lost_after: seconds a running prompt waits for its unit to come
            back after its connection dropped before it ends `unit_lost`
            (sooner when the unit's provisioner sees it gone).
        restart_lost_units: start a unit again (through its provisioner) once
            its provisioner saw it gone; its sessions are resumed where its
            agent can resume them (its running prompts still end `unit_lost`).
    """

    socket: str | None = None
    state: str | None = None
    handshake_timeout: float = 10.0
    dial_in_timeout: float = 60.0
    session_idle_timeout: float = 86400.0
    heartbeat: float = HEARTBEAT
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT
    enrollment_ttl: float = 3600.0
    approve_units: bool = False

    def heartbeat_of(self, unit: UnitConfig) -> tuple[float | None, float]:
        """The heartbeat (None: off) and its timeout for connections to `unit`."""
        beat = self.heartbeat if unit.heartbeat is None else unit.heartbeat
        timeout = self.heartbeat_timeout if unit.heartbeat_timeout is None \
            else unit.heartbeat_timeout
        return (beat or None), timeout
    unit_lost_after: float = 30.0
    restart_lost_units: bool = False


@attrs.frozen
class Config:
    """A whole config: its units (the built-in `local` among them) and the daemon's table.

    Attributes:
        units: by name; the built-in `local` first unless the file defines it.
        daemon: the `[daemon]` table.
        source: the file it came from, or None for the built-in default.
    """

    units: dict[str, UnitConfig]
    daemon: DaemonConfig = attrs.Factory(DaemonConfig)
    source: Path | None = None
    #: `[groups]`: a name -> the units in it (`--agents group:NAME`, `--from NAME`).
    groups: dict[str, tuple[str, ...]] = attrs.Factory(dict)
    #: `[notify]`: where notifications go (units without their own table).
    notify: NotifyConfig = attrs.Factory(NotifyConfig)
    #: `[[policy]]`: the approval rules, in order (latis_core._cmdr.policy).
    policy: tuple[Rule, ...] = ()
    #: `[web]`: the dashboard cmdr serves (latis_core._cmdr.web, docs/web.md).
    web: WebConfig = attrs.Factory(WebConfig)

    def unit(self, name: str) -> UnitConfig:
        """The unit called `name`.

        Raises:
            LookupError: no such unit (the message lists the units there are).
        """
        try:
            return self.units[name]
        except KeyError:
            where = f" in {self.source}" if self.source else ""
            raise LookupError(
                f"no unit {name!r}{where} (units: {', '.join(self.units) or 'none'})"
            ) from None


@attrs.frozen
class ConfigProblem:
    """One thing wrong in a config file, and where.

    Attributes:
        file: the file (`<config>` for text without one).
        line: the line, or None when unknown.
        unit: the unit's name, or None outside `[units]`.
        key: the key's path inside the unit (`provisioner.image`), or from the
            top of the file outside units (`daemon.socket`); None for a whole unit.
        message: what is wrong and what was expected.
    """

    file: str
    line: int | None
    unit: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        unit = f"unit {self.unit!r}: " if self.unit is not None else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}: {unit}{key}{self.message}"


# -- reading -----------------------------------------------------------------------------


def _bare(key: str | int) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dotted(path: _Keys) -> str:
    """("accept", 0, "port") → "accept[0].port"."""
    return "".join(
        _bare(k) if isinstance(k, int) or i == 0 else f".{_bare(k)}" for i, k in enumerate(path)
    )


@attrs.define
class _Reader:
    file: str
    locate: _Locator
    problems: list[ConfigProblem] = attrs.Factory(list)
    #: Plugins loaded so far, by (what, type): each is looked up once per parse.
    plugins: dict[tuple[str, str], Any] = attrs.Factory(dict)

    def error(self, unit: str | None, path: _Keys, message: str) -> None:
        """Record a problem at `path` (from the top of the file)."""
        key = path[2:] if unit is not None else path
        line = self.locate.line(path)
        self.problems.append(ConfigProblem(self.file, line, unit, _dotted(key) or None, message))

    def structure(self, cls: type, table: dict[str, Any], unit: str | None, at: _Keys) -> Any:
        try:
            return _STRICT.structure(table, cls)
        except Exception as exc:
            for where, message in _faults(exc):
                self.error(unit, at + where, message)
            return None


def _transports_with(attribute: str) -> list[str]:
    """The transports whose module has `attribute` (DIALER or LISTENER)."""
    found = []
    for name in _registry.transport_names():
        try:
            if getattr(_registry.load_transport(name), attribute, None) is not None:
                found.append(name)
        except Exception:
            continue  # a plugin that does not load cannot be offered
    return found


def _plugin(
    reader: _Reader,
    unit: str,
    at: _Keys,
    value: object,
    what: Literal["provisioner", "dial", "accept"],
) -> tuple[PluginConfig, Any] | None:
    """Read a plugin table (`what`: provisioner, dial or accept); None if it is wrong."""
    if what == "provisioner":
        names, load, noun = _registry.provisioner_names, _registry.load_provisioner, "provisioner"
    else:
        names, load, noun = _registry.transport_names, _registry.load_transport, "transport"
    if type(value) is not dict:
        reader.error(unit, at, f"expected a table with a 'type' key, got {_kind(value)}")
        return None
    kind = value.get("type")
    if kind is None:
        known = ", ".join(names()) or "none"
        reader.error(unit, at + ("type",), f"required key missing (the {noun}: one of {known})")
        return None
    if type(kind) is not str:
        reader.error(unit, at + ("type",), f"expected a string, got {_kind(kind)}")
        return None
    try:
        plugin = reader.plugins.get((noun, kind))
        if plugin is None:
            plugin = reader.plugins[noun, kind] = load(kind)
    except LookupError:
        known = ", ".join(names()) or "none"
        reader.error(unit, at + ("type",), f"unknown {noun} {kind!r} (known: {known})")
        return None
    except Exception as exc:
        reader.error(unit, at + ("type",), f"{noun} {kind!r} cannot be loaded ({exc})")
        return None
    if what == "provisioner":
        cls = getattr(plugin, "Options", None)
        missing = f"provisioner {kind!r} has no Options class"
    else:
        attribute, ability = ("DIALER", "dialer") if what == "dial" else ("LISTENER", "listener")
        cls = getattr(plugin, attribute, None)
        missing = f"transport {kind!r} has no {ability}"
    if cls is None:
        if what != "provisioner":
            # Only when wrong: naming the alternatives loads every transport.
            able = ", ".join(_transports_with(attribute)) or "none"
            missing += f" (transports with one: {able})"
        reader.error(unit, at + ("type",), missing)
        return None
    table = {k: v for k, v in value.items() if k != "type"}
    token_file = None
    if what == "dial" and "token_file" in table:
        # Not the transport's: the proof a unit that listens asks of cmdr.
        token_file = table.pop("token_file")
        if type(token_file) is not str or not token_file:
            reader.error(unit, at + ("token_file",), f"expected a file name, got "
                         f"{_kind(token_file)}")
            return None
    # Text for a number or a boolean (`--dial-option port=1`) is read by the field's type.
    table = typed_text(cls, table)
    before = len(reader.problems)
    options = reader.structure(cls, table, unit, at)
    if len(reader.problems) > before:
        return None
    if token_file is not None:
        table["token_file"] = token_file
    return PluginConfig(kind, options, table, reader.locate.line(at), token_file), plugin


def _agent_options(reader: _Reader, unit: str, value: object) -> dict[str, str]:
    at: _Keys = ("units", unit, "agent_options")
    if type(value) is not dict:
        reader.error(unit, at, f"expected a table of strings, got {_kind(value)}")
        return {}
    for key, item in value.items():
        if type(item) is not str:
            shown = str(item).lower() if type(item) is bool else str(item)
            reader.error(
                unit, at + (key,), f'expected a string, got {_kind(item)} (write "{shown}")'
            )
    return dict(value)


def _unit(reader: _Reader, name: str, table: object) -> UnitConfig | None:
    at: _Keys = ("units", name)
    before = len(reader.problems)
    if not _UNIT_NAME.fullmatch(name):
        reader.error(
            name,
            at,
            "bad unit name: expected lower-case letters, digits, '_', '.' and '-', "
            "starting with a letter or a digit",
        )
    if type(table) is not dict:
        reader.error(name, at, f"expected a table, got {_kind(table)}")
        return None
    for key in table:
        if key not in _UNIT_KEYS:
            reader.error(name, at + (key,), _unknown("key", key, _UNIT_KEYS))
    seed = "connection" in table
    connection: object = table.get("connection")
    dial_at: _Keys = at + ("dial",)
    accept_at: _Keys = at + ("accept",)
    accept_indexed = True
    if "connection" in table:
        # The seed's form (connection.dial/accept with via and address): see config_seed.
        if "dial" in table or "accept" in table:
            reader.error(name, at + ("connection",), "write the connection once: "
                         "connection.dial/accept (the seed's form) or dial/accept, not both")
            return None
        mapped, problems = connection_tables(connection, at + ("connection",))
        for where, message in problems:
            reader.error(name, where, message)
        table = {k: v for k, v in table.items() if k != "connection"} | mapped
        dial_at = at + ("connection", "dial")
        accept_at = at + ("connection", "accept")
        accept_indexed = type(connection) is dict and type(connection.get("accept")) is list
    agent = table.get("agent", "echo")
    if type(agent) is not str:
        reader.error(name, at + ("agent",), f"expected a string, got {_kind(agent)}")
    agent_options = _agent_options(reader, name, table.get("agent_options", {}))
    agent_command = table.get("agent_command", [])
    if type(agent_command) is not list or any(type(w) is not str for w in agent_command):
        reader.error(
            name,
            at + ("agent_command",),
            f"expected an array of strings (the agent's command line), got {_kind(agent_command)}",
        )
        agent_command = []

    provisioner = dial = None
    provisioner_class: Any = None
    if "provisioner" in table:
        read = _plugin(reader, name, at + ("provisioner",), table["provisioner"], "provisioner")
        if read:
            provisioner, provisioner_class = read
    if "dial" in table:
        read = _plugin(reader, name, dial_at, table["dial"], "dial")
        dial = read[0] if read else None
    accept: list[PluginConfig] = []
    if "accept" in table:
        entries = table["accept"]
        if type(entries) is not list:
            reader.error(
                name,
                at + ("accept",),
                f"expected an array of tables ([[units.{_bare(name)}.accept]]), "
                f"got {_kind(entries)}",
            )
            entries = []
        for index, entry in enumerate(entries):
            where = accept_at + ((index,) if accept_indexed else ())
            read = _plugin(reader, name, where, entry, "accept")
            if read:
                accept.append(read[0])

    if seed:
        # The seed's form names the transport `via`: say so where `type` was read.
        for index in range(before, len(reader.problems)):
            problem = reader.problems[index]
            if problem.key and problem.key.startswith("connection.") and problem.key.endswith(
                    ".type"):
                reader.problems[index] = attrs.evolve(problem, key=problem.key[:-5] + ".via")
    spelled = seed and any(k in (connection if type(connection) is dict else {})
                           for k in ("dial", "accept"))
    if "dial" not in table and "accept" not in table and not spelled:
        if "provisioner" not in table:
            reader.error(
                name,
                at,
                f"neither dial nor accept: expected [units.{_bare(name)}.dial], "
                f"[[units.{_bare(name)}.accept]], or a provisioner (which implies "
                'dial = { type = "local" })',
            )
        elif provisioner is not None:
            if callable(getattr(provisioner_class, "dialer", None)):
                dial = _implied_local(reader, name)
            else:
                reader.error(
                    name,
                    at,
                    f"neither dial nor accept, and provisioner {provisioner.type!r} cannot "
                    f"dial the unit it runs: expected [units.{_bare(name)}.dial] or "
                    f"[[units.{_bare(name)}.accept]]",
                )
    elif (
        dial is not None
        and dial.type == "local"
        and "provisioner" not in table
        and not getattr(dial.options, "command", None)
    ):
        reader.error(
            name,
            at + ("dial", "command"),
            "required without a provisioner (the command that starts the unit)",
        )
    beats: dict[str, float | None] = {}
    for key, least in (("heartbeat", 0.0), ("heartbeat_timeout", 1e-9)):
        beat = table.get(key)
        if beat is not None and (type(beat) not in (int, float) or beat < least):
            reader.error(name, at + (key,), f"expected seconds{' above 0' if least else ''}, "
                         f"got {_shown(beat)}")
        beats[key] = float(beat) if isinstance(beat, (int, float)) else None
    max_sessions = table.get("max_sessions")
    if max_sessions is not None and (type(max_sessions) is not int or max_sessions < 1):
        reader.error(name, at + ("max_sessions",),
                     f"expected a whole number above 0, got {_shown(max_sessions)}")
    session_memory = table.get("session_memory")
    memory: int | None = None
    if session_memory is not None:
        try:
            memory = parse_size(session_memory)
        except ValueError as exc:
            reader.error(name, at + ("session_memory",), str(exc))
    labels = table.get("labels", [])
    if type(labels) is not list or any(type(x) is not str for x in labels):
        reader.error(name, at + ("labels",), f"expected an array of strings, got {_kind(labels)}")
        labels = []
    notify = None
    if "notify" in table:
        notify, notify_problems = parse_notify(table["notify"])
        for path, message in notify_problems:
            reader.error(name, at + ("notify", *path), message)
    if len(reader.problems) > before:
        return None
    return UnitConfig(
        name,
        agent if type(agent) is str else "echo",
        agent_options,
        provisioner,
        dial,
        tuple(accept),
        reader.locate.line(at),
        tuple(agent_command),
        beats["heartbeat"],
        beats["heartbeat_timeout"],
        max_sessions,
        memory,
        tuple(labels),
        notify,
    )


def parse_size(value: object) -> int:
    """Bytes from a size: a number of bytes, or text like "512MiB", "2GiB", "1.5GB".

    Raises:
        ValueError: not a size.
    """
    if type(value) is int and value > 0:
        return value
    match = _SIZE.match(value) if type(value) is str else None
    if match is None:
        raise ValueError(f'expected a size like "2GiB" or a number of bytes, got {value!r}')
    unit = (match.group(2) or "").upper().removesuffix("B")
    return int(float(match.group(1)) * _FACTOR[unit])


def _groups(reader: _Reader, value: object, units: Mapping[str, UnitConfig]) -> dict[
    str, tuple[str, ...]
]:
    if type(value) is not dict:
        reader.error(None, ("groups",), f"expected a table, got {_kind(value)}")
        return {}
    groups: dict[str, tuple[str, ...]] = {}
    for name, members in value.items():
        if type(members) is not list or any(type(m) is not str for m in members):
            reader.error(None, ("groups", name),
                         f"expected an array of unit names, got {_kind(members)}")
            continue
        unknown = [m for m in members if m not in units]
        if unknown:
            reader.error(None, ("groups", name),
                         f"no unit {unknown[0]!r} (units: {', '.join(units)})")
            continue
        groups[name] = tuple(members)
    return groups


def _implied_local(reader: _Reader, unit: str) -> PluginConfig | None:
    read = _plugin(reader, unit, ("units", unit, "dial"), {"type": "local"}, "dial")
    return None if read is None else attrs.evolve(read[0], line=None)


def _daemon(reader: _Reader, value: object) -> DaemonConfig:
    at: _Keys = ("daemon",)
    if type(value) is not dict:
        reader.error(None, at, f"expected a table, got {_kind(value)}")
        return DaemonConfig()
    for key in ("handshake_timeout", "dial_in_timeout", "heartbeat_timeout", "unit_lost_after"):
        timeout = value.get(key, 1)
        if type(timeout) in (int, float) and timeout <= 0:
            reader.error(None, at + (key,), f"expected seconds above 0, got {timeout}")
    idle = value.get("session_idle_timeout", 0)
    if type(idle) in (int, float) and idle < 0:
        reader.error(None, at + ("session_idle_timeout",),
                     f"expected seconds (0: never), got {idle}")
    for key in ("heartbeat", "enrollment_ttl"):
        beat = value.get(key, 1)
        if type(beat) in (int, float) and beat < 0:
            reader.error(None, at + (key,), f"expected seconds (0 for none), got {beat}")
    daemon = reader.structure(DaemonConfig, value, None, at)
    return daemon if isinstance(daemon, DaemonConfig) else DaemonConfig()


_BUILTIN_LOCAL = {"agent": "echo", "provisioner": {"type": "process"}, "dial": {"type": "local"}}


def parse_config(text: str, source: Path | None = None) -> Config:
    """Read config from TOML `text`; `source` is the file it came from (for messages).

    Raises:
        ConfigError: the text is not TOML, or not a valid config (one line per problem).
    """
    file = str(source) if source is not None else _NO_FILE
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        problem = ConfigProblem(
            file, int(found[1]) if found else None, None, None, f"invalid TOML: {exc}"
        )
        raise ConfigError.of([problem]) from None
    reader = _Reader(file, _Locator(text))
    for key, value in data.items():
        if key not in _TOP_KEYS:
            what = "table" if type(value) is dict else "key"
            reader.error(None, (key,), _unknown(what, key, _TOP_KEYS))
    daemon = _daemon(reader, data.get("daemon", {}))
    notify, notify_problems = parse_notify(data.get("notify", {}))
    for npath, message in notify_problems:
        reader.error(None, ("notify", *npath), message)
    rules, rule_problems = parse_rules(data.get("policy", []))
    for rpath, message in rule_problems:
        reader.error(None, ("policy", *rpath), message)
    web, web_problems = parse_web(data.get("web", {}))
    for wpath, message in web_problems:
        reader.error(None, ("web", *wpath), message)
    units: dict[str, UnitConfig] = {}
    declared = data.get("units", {})
    if type(declared) is not dict:
        reader.error(None, ("units",), f"expected a table, got {_kind(declared)}")
        declared = {}
    if "local" not in declared:
        builtin = _Reader("<built-in>", _Locator(""))
        local = _unit(builtin, "local", _BUILTIN_LOCAL)
        if local is None:
            raise ConfigError.of(builtin.problems)
        units["local"] = local
    for name, table in declared.items():
        unit = _unit(reader, name, table)
        if unit is not None:
            units[name] = unit
    units = _share_listeners(reader, units)
    groups = _groups(reader, data.get("groups", {}), units)
    if reader.problems:
        raise ConfigError.of(reader.problems)
    return Config(units, daemon, source, groups, notify, tuple(rules), web)


#: The options that make a listener's address; the others are how it listens.
_ADDRESS = ("host", "port", "path")


def _share_listeners(reader: _Reader, units: dict[str, UnitConfig]) -> dict[str, UnitConfig]:
    """Units whose accept tables name one address share one listener.

    What one table spells out applies to all (one unit's `max_pending_per_host`
    holds for the listener); two tables that spell one option differently are
    an error at the second.
    """
    groups: dict[tuple[Any, ...], list[tuple[str, int, PluginConfig]]] = {}
    for name, unit in units.items():
        for index, accept in enumerate(unit.accept):
            address = tuple(getattr(accept.options, key, None) for key in _ADDRESS)
            groups.setdefault((accept.type, *address), []).append((name, index, accept))
    shared: dict[tuple[str, int], object] = {}
    for key, entries in groups.items():
        if len(entries) < 2 or key[2] == 0:  # port 0: any free port, a listener of its own
            continue
        spelled: dict[str, tuple[object, str]] = {}
        for name, index, accept in entries:
            for option in accept.table:
                if option in _ADDRESS or option == "type":
                    continue
                value = getattr(accept.options, option, None)
                if option not in spelled:
                    spelled[option] = (value, name)
                elif spelled[option][0] != value:
                    first, other = spelled[option]
                    reader.error(
                        name, ("units", name, "accept", index, option),
                        f"the listener {accept.options.describe()} is shared with unit "  # type: ignore[attr-defined]
                        f"{other!r}, which sets {option} = {_shown(first)}; this one sets "
                        f"{_shown(value)}: set the same, or leave it out to share the other's",
                    )
        merged = attrs.evolve(entries[0][2].options, **{k: v for k, (v, _) in spelled.items()})  # type: ignore[misc]
        for name, index, _accept in entries:
            shared[(name, index)] = merged
    if not shared:
        return units
    out = {}
    for name, unit in units.items():
        accepts = tuple(
            attrs.evolve(entry, options=shared.get((name, index), entry.options))
            for index, entry in enumerate(unit.accept)
        )
        out[name] = attrs.evolve(unit, accept=accepts) if accepts != unit.accept else unit
    return out


def _shown(value: object) -> str:
    """A value as TOML writes it (for messages)."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def default_config() -> Config:
    """The config without a file: the built-in unit `local` and nothing else."""
    return parse_config("", None)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find the config (see `find_config`) and read it; the default without one.

    Raises:
        ConfigError: it could not be found, read or understood.
    """
    path = find_config(explicit)
    if path is None:
        return default_config()
    return parse_config(_read(path), path)
