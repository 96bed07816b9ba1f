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
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from latis_core._cmdr.config_convert import _STRICT, _faults, _kind, _unknown
from latis_core._cmdr.config_lines import _Keys, _Locator
from latis_core._errors import LatisError
from latis_core._os.paths import paths
from latis_core._plugins import registry as _registry

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
]

#: What a unit's name may be.
_UNIT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_UNIT_KEYS = ("agent", "agent_options", "agent_command", "provisioner", "dial", "accept")
_TOP_KEYS = ("daemon", "units")
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
    """

    name: str
    agent: str = "echo"
    agent_options: dict[str, str] = attrs.Factory(dict)
    provisioner: PluginConfig | None = None
    dial: PluginConfig | None = None
    accept: tuple[PluginConfig, ...] = ()
    line: int | None = None
    agent_command: tuple[str, ...] = ()


@attrs.frozen
class DaemonConfig:
    """The `[daemon]` table.

    Attributes:
        socket: the daemon's unix socket, or None for `paths().socket`.
        state: the SQLite database, or None for `paths().state_file`.
        handshake_timeout: seconds a new connection gets to finish `hello`.
        dial_in_timeout: seconds `up` waits for a unit that dials in, once
            its provisioner started it.
    """

    socket: str | None = None
    state: str | None = None
    handshake_timeout: float = 10.0
    dial_in_timeout: float = 60.0


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


class ConfigError(LatisError):
    """The config could not be found, read or understood.

    The message has one line per problem. `problems` holds them, for programs
    (empty when the file itself could not be found or read).
    """

    def __init__(self, message: str, problems: Sequence[ConfigProblem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)

    @classmethod
    def of(cls, problems: Sequence[ConfigProblem]) -> ConfigError:
        """The error for `problems` (one line each, in file order)."""
        ordered = sorted(problems, key=lambda p: p.line or 0)
        return cls("\n".join(map(str, ordered)), ordered)


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
        plugin = load(kind)
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
        able = ", ".join(_transports_with(attribute)) or "none"
        missing = f"transport {kind!r} has no {ability} (transports with one: {able})"
    if cls is None:
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
        read = _plugin(reader, name, at + ("dial",), table["dial"], "dial")
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
            read = _plugin(reader, name, at + ("accept", index), entry, "accept")
            if read:
                accept.append(read[0])

    if "dial" not in table and "accept" not in table:
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
    )


def _implied_local(reader: _Reader, unit: str) -> PluginConfig | None:
    read = _plugin(reader, unit, ("units", unit, "dial"), {"type": "local"}, "dial")
    return None if read is None else attrs.evolve(read[0], line=None)


def _daemon(reader: _Reader, value: object) -> DaemonConfig:
    at: _Keys = ("daemon",)
    if type(value) is not dict:
        reader.error(None, at, f"expected a table, got {_kind(value)}")
        return DaemonConfig()
    for key in ("handshake_timeout", "dial_in_timeout"):
        timeout = value.get(key, 1)
        if type(timeout) in (int, float) and timeout <= 0:
            reader.error(None, at + (key,), f"expected seconds above 0, got {timeout}")
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
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
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
    if reader.problems:
        raise ConfigError.of(reader.problems)
    return Config(units, daemon, source)


def default_config() -> Config:
    """The config without a file: the built-in unit `local` and nothing else."""
    return parse_config("", None)


def _existing(path: Path, origin: str) -> Path:
    if not path.is_file():
        why = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"{path}: config file {why} (named by {origin})")
    return path


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read, or None for the built-in default.

    First found wins: `explicit` (the CLI's `--config`), `LATIS_CONFIG`,
    `latis.toml` in the current directory or the nearest parent that has one,
    then the user config file (`paths().config_file`).

    Raises:
        ConfigError: `explicit` or `LATIS_CONFIG` names a file that does not exist.
    """
    if explicit is not None and os.fspath(explicit) != "":
        return _existing(Path(explicit).expanduser(), "--config")
    named = os.environ.get("LATIS_CONFIG")
    if named:
        return _existing(Path(named).expanduser(), "LATIS_CONFIG")
    here = Path.cwd()
    for folder in (here, *here.parents):
        candidate = folder / "latis.toml"
        if candidate.is_file():
            return candidate
    user = paths().config_file
    return user if user.is_file() else None


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
