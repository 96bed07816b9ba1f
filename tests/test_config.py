"""Tests of latis_core._cmdr.config (and config_convert, config_lines, config_write):
reading, checking, finding and writing config."""

from __future__ import annotations

import enum
import os
import sys
import textwrap
import types
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest

from latis_core._cmdr.config import (
    Config,
    ConfigError,
    DaemonConfig,
    PluginConfig,
    default_config,
    find_config,
    load_config,
    parse_config,
)
from latis_core._cmdr.config_lines import _Locator as Locator
from latis_core._cmdr.config_write import add_unit, add_unit_text, init_text, remove_unit
from latis_core._plugins import registry as _registry

# -- fake plugins ------------------------------------------------------------------------


class Level(enum.Enum):
    LOW = "low"
    HIGH = "high"


@attrs.define
class BoxOptions:
    """Shaped like the container provisioner's options, plus a few odd kinds."""

    image: str
    engine: str | None = None
    mounts: list[str] = attrs.Factory(list)
    env: dict[str, str] = attrs.Factory(dict)
    timeout: float = 60.0
    stop_timeout: int = 5
    init: bool = True
    mode: Literal["fast", "safe"] = "safe"
    level: Level = Level.LOW
    port: int | str = 0


class FakeContainer:
    Options = BoxOptions

    def __init__(self, options: BoxOptions, context: Any) -> None:
        self.options = options

    def dialer(self) -> None:
        return None


@attrs.define
class ProcOptions:
    command: list[str] = attrs.Factory(lambda: ["latis-unit"])
    env: dict[str, str] = attrs.Factory(dict)
    cwd: str | None = None


class FakeProcess:
    Options = ProcOptions

    def __init__(self, options: ProcOptions, context: Any) -> None:
        self.options = options

    def dialer(self) -> None:
        return None


class Blind:
    """A provisioner that cannot say how to dial what it runs."""

    Options = ProcOptions


@attrs.frozen
class FakeListener:
    port: int
    host: str = "127.0.0.1"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No user config, no LATIS_CONFIG, and a current directory without latis.toml."""
    home = tmp_path / "home"
    monkeypatch.setenv("LATIS_HOME", str(home))
    monkeypatch.delenv("LATIS_CONFIG", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake provisioners (process, container, blind) and transports (tcp listens, mute)."""
    provisioners = {
        "process": f"{__name__}:FakeProcess",
        "container": f"{__name__}:FakeContainer",
        "blind": f"{__name__}:Blind",
    }
    tcp = types.ModuleType("fake_latis_tcp")
    tcp.LISTENER = FakeListener  # type: ignore[attr-defined]
    mute = types.ModuleType("fake_latis_mute")  # neither DIALER nor LISTENER
    monkeypatch.setitem(sys.modules, "fake_latis_tcp", tcp)
    monkeypatch.setitem(sys.modules, "fake_latis_mute", mute)
    transports = {
        "local": "latis_transports.local",
        "unix": "latis_transports.unix",
        "tcp": "fake_latis_tcp",
        "mute": "fake_latis_mute",
    }
    groups = {"latis.provisioners": provisioners, "latis.transports": transports}

    def own(group: str) -> dict[str, EntryPoint]:
        table = groups.get(group)
        if table is None:
            return _registry_own(group)
        return {name: EntryPoint(name, value, group) for name, value in table.items()}

    _registry_own = _registry._own
    monkeypatch.setattr(_registry, "_own", own)
    monkeypatch.setattr(_registry, "_installed", lambda group: {})


def parse(text: str, source: Path | None = Path("latis.toml")) -> Config:
    return parse_config(textwrap.dedent(text), source)


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value)


# -- the line locator --------------------------------------------------------------------


def test_locator_sub_tables_and_keys() -> None:
    locate = Locator(
        textwrap.dedent(
            """\
            # [units.commented] is not a table
            [units.box]
            agent = "echo"

            [units.box.provisioner]   # a comment
            type = "container"
              image = "x"
            [ units . "gpu.1" ]
            agent.name = "echo"
            """
        )
    )
    assert locate.line(("units", "commented")) == 2  # not a table: falls back to [units]
    assert locate.line(("units", "box")) == 2
    assert locate.line(("units", "box", "agent")) == 3
    assert locate.line(("units", "box", "provisioner")) == 5
    assert locate.line(("units", "box", "provisioner", "image")) == 7
    # A key it cannot find: the nearest table it can.
    assert locate.line(("units", "box", "provisioner", "engine")) == 5
    assert locate.line(("units", "box", "dial", "type")) == 2
    assert locate.line(("units", "gpu.1")) == 8
    assert locate.line(("units", "gpu.1", "agent")) == 9  # dotted keys
    assert locate.line(("units",)) == 2  # implied by its first sub-table
    assert locate.line(("nowhere",)) is None


def test_locator_inline_tables() -> None:
    locate = Locator(
        textwrap.dedent(
            """\
            [units]
            box = { agent = "echo", dial = { type = "local" } }
            sock = { dial = { type = "unix", path = "/s" } }
            [units.other.provisioner]
            type = "process"
            env = { A = "1" }
            """
        )
    )
    assert locate.line(("units", "box")) == 2
    assert locate.line(("units", "box", "dial", "type")) == 2
    assert locate.line(("units", "sock", "dial", "path")) == 3
    assert locate.line(("units", "other", "provisioner", "env", "A")) == 6


def test_locator_arrays_of_tables() -> None:
    locate = Locator(
        textwrap.dedent(
            """\
            [[units.edge.accept]]
            type = "tcp"

            [[units.edge.accept]]
            type = "unix"
            [units.edge.accept.tls]
            cert = "c"
            [units.edge.dial]
            type = "local"
            [[units.other.accept]]
            port = 1
            """
        )
    )
    assert locate.line(("units", "edge", "accept", 0)) == 1
    assert locate.line(("units", "edge", "accept", 0, "type")) == 2
    assert locate.line(("units", "edge", "accept", 1)) == 4
    assert locate.line(("units", "edge", "accept", 1, "type")) == 5
    assert locate.line(("units", "edge", "accept", 1, "tls", "cert")) == 7  # in the last one
    assert locate.line(("units", "edge", "dial")) == 8
    assert locate.line(("units", "other", "accept", 0, "port")) == 11


def test_locator_multi_line_values() -> None:
    """Arrays of inline tables over several lines (as tomli-w writes them); long strings."""
    locate = Locator(
        textwrap.dedent(
            '''\
            [units.edge]
            accept = [
                { type = "tcp", port = 1 },  # a comment with a { brace
                { type = "unix", path = "a]b{" }, { type = "x" },
            ]
            note = """
            [units.fake]
            fake = 1
            """
            command = [
                "a",
                "b = c",
            ]
            agent = 'x'
            '''
        )
    )
    assert locate.line(("units", "edge", "accept")) == 2
    assert locate.line(("units", "edge", "accept", 0)) == 3
    assert locate.line(("units", "edge", "accept", 0, "port")) == 3
    assert locate.line(("units", "edge", "accept", 1)) == 4
    assert locate.line(("units", "edge", "accept", 2)) == 4
    assert locate.line(("units", "edge", "note")) == 6
    assert locate.line(("units", "fake")) == 1  # inside a string: not a table
    assert locate.line(("units", "edge", "fake")) == 1  # nor a key
    assert locate.line(("units", "edge", "command")) == 10
    assert locate.line(("units", "edge", "b")) == 1  # not a key: the table's line
    assert locate.line(("units", "edge", "agent")) == 14


# -- errors ------------------------------------------------------------------------------


def test_toml_syntax_error_keeps_line_and_column(fakes: None) -> None:
    message = error_of(
        """\
        [units.box]
        agent = "echo
        """
    )
    assert message.startswith("latis.toml:2: invalid TOML: ")
    assert "(at line 2, column 14)" in message


def test_neither_dial_nor_accept(fakes: None) -> None:
    assert error_of(
        """\
        [units.box]
        agent = "echo"
        """
    ) == (
        "latis.toml:1: unit 'box': neither dial nor accept: expected [units.box.dial], "
        '[[units.box.accept]], or a provisioner (which implies dial = { type = "local" })'
    )


def test_a_provisioner_that_cannot_dial_needs_dial_or_accept(fakes: None) -> None:
    assert error_of(
        """\
        [units.box.provisioner]
        type = "blind"
        """
    ) == (
        "latis.toml:1: unit 'box': neither dial nor accept, and provisioner 'blind' cannot "
        "dial the unit it runs: expected [units.box.dial] or [[units.box.accept]]"
    )


def test_unknown_provisioner_lists_the_known_ones(fakes: None) -> None:
    assert error_of(
        """\
        [units.box]
        provisioner = { type = "vm" }
        """
    ) == (
        "latis.toml:2: unit 'box': provisioner.type: unknown provisioner 'vm' "
        "(known: blind, container, process)"
    )


def test_unknown_transport_lists_the_known_ones(fakes: None) -> None:
    assert error_of(
        """\
        [units.box]
        agent = "echo"
        [units.box.dial]
        type = "serial"
        host = "gpu1"
        """
    ) == (
        "latis.toml:4: unit 'box': dial.type: unknown transport 'serial' "
        "(known: local, mute, tcp, unix)"
    )


def test_unknown_transport_with_the_real_registry() -> None:
    assert error_of('units.box.dial = { type = "gopher" }') == (
        "latis.toml:1: unit 'box': dial.type: unknown transport 'gopher' "
        "(known: container, local, quic, ssh, tcp, unix, websocket)"
    )


@pytest.mark.parametrize(("table", "said"), [
    ('units.a.accept = [{ type = "tcp", port = 99999 }]',
     "accept[0]: invalid value (port must be from 0 to 65535, got 99999)"),
    ('units.a.accept = [{ type = "websocket", port = -1 }]',
     "accept[0]: invalid value (port must be from 0 to 65535, got -1)"),
    ('units.a.dial = { type = "tcp", host = "h", port = 0 }',
     "dial: invalid value (port must be from 1 to 65535, got 0)"),
    ('units.a.dial = { type = "tcp", host = "h", connect_timeout = -1 }',
     "dial: invalid value (connect_timeout must be > 0 seconds, got -1"),
    ('units.a.dial = { type = "websocket", url = "ws://h:1/", connect_timeout = 0 }',
     "dial: invalid value (connect_timeout must be > 0 seconds, got 0"),
])
def test_ports_and_timeouts_of_the_real_transports(table: str, said: str) -> None:
    """A port out of range (it wrapped around when listened on) or a timeout that is not
    above 0 (a ValueError inside a prompt) is a config error at its line."""
    assert error_of(table).startswith(f"latis.toml:1: unit 'a': {said}")


def test_a_toml_value_is_shown_as_toml(fakes: None) -> None:
    """`true` in the file is `true` in the error, not Python's `True`."""
    text = 'units.a.dial = { type = "unix", path = "/a" }\nunits.a.max_sessions = true'
    assert error_of(text) == (
        "latis.toml:2: unit 'a': max_sessions: expected a whole number above 0, got true")


def test_missing_type(fakes: None) -> None:
    assert error_of(
        """\
        [units.box.provisioner]
        image = "x"
        [units.box.dial]
        path = "/s"
        [[units.box.accept]]
        port = 1
        """
    ) == "\n".join(
        [
            "latis.toml:1: unit 'box': provisioner.type: required key missing "
            "(the provisioner: one of blind, container, process)",
            "latis.toml:3: unit 'box': dial.type: required key missing "
            "(the transport: one of local, mute, tcp, unix)",
            "latis.toml:5: unit 'box': accept[0].type: required key missing "
            "(the transport: one of local, mute, tcp, unix)",
        ]
    )


def test_type_must_be_a_string_and_tables_tables(fakes: None) -> None:
    assert error_of(
        """\
        [units.box]
        provisioner = "process"
        dial = { type = 3 }
        """
    ) == "\n".join(
        [
            "latis.toml:2: unit 'box': provisioner: expected a table with a 'type' key, "
            "got a string",
            "latis.toml:3: unit 'box': dial.type: expected a string, got an integer",
        ]
    )


def test_a_transport_without_dialer_cannot_dial(fakes: None) -> None:
    assert error_of('units.box.dial = { type = "tcp", port = 1 }') == (
        "latis.toml:1: unit 'box': dial.type: transport 'tcp' has no dialer "
        "(transports with one: local, unix)"
    )


def test_accept_needs_a_listener_real_registry() -> None:
    assert error_of(
        """\
        [units.edge]
        agent = "echo"

        [[units.edge.accept]]
        type = "ssh"
        host = "x"
        """
    ) == (
        "latis.toml:5: unit 'edge': accept[0].type: transport 'ssh' has no listener "
        "(transports with one: quic, tcp, unix, websocket)"
    )


def test_accept_lists_the_transports_that_listen(fakes: None) -> None:
    assert error_of(
        """\
        [[units.edge.accept]]
        type = "tcp"
        port = 7447
        [[units.edge.accept]]
        type = "mute"
        """
    ) == (
        "latis.toml:5: unit 'edge': accept[1].type: transport 'mute' has no listener "
        "(transports with one: tcp, unix)"
    )


def test_accept_must_be_an_array_of_tables(fakes: None) -> None:
    assert error_of(
        """\
        [units.edge.accept]
        type = "tcp"
        """
    ) == (
        "latis.toml:1: unit 'edge': accept: expected an array of tables "
        "([[units.edge.accept]]), got a table"
    )


def test_unknown_option_suggests_the_closest(fakes: None) -> None:
    assert error_of(
        """\
        [units.box.provisioner]
        type = "container"
        image = "x"
        mount = ["/a:/b"]
        colour = "red"
        """
    ) == "\n".join(
        [
            "latis.toml:4: unit 'box': provisioner.mount: unknown option "
            "(did you mean 'mounts'?)",
            "latis.toml:5: unit 'box': provisioner.colour: unknown option "
            "(known: engine, env, image, init, level, mode, mounts, port, stop_timeout, "
            "timeout)",
        ]
    )


def test_unknown_option_of_a_dialer(fakes: None) -> None:
    assert error_of(
        """\
        [units.box]
        [units.box.dial]
        type = "local"
        comand = ["latis-unit", "--stdio"]
        """
    ) == "latis.toml:4: unit 'box': dial.comand: unknown option (did you mean 'command'?)"


def test_wrong_kinds_say_what_was_expected(fakes: None) -> None:
    assert error_of(
        """\
        [units.box.provisioner]
        type = "container"
        image = 7
        mounts = "/a:/b"
        env = { A = 1 }
        timeout = "1m"
        stop_timeout = 1.5
        init = "maybe"
        mode = "quick"
        level = "medium"
        port = 1.5
        engine = ["podman"]
        """
    ) == "\n".join(
        [
            "latis.toml:3: unit 'box': provisioner.image: expected a string, got an integer",
            "latis.toml:4: unit 'box': provisioner.mounts: expected an array of strings, "
            "got a string",
            "latis.toml:5: unit 'box': provisioner.env.A: expected a string, got an integer",
            "latis.toml:6: unit 'box': provisioner.timeout: expected a number, got a string",
            "latis.toml:7: unit 'box': provisioner.stop_timeout: expected an integer, "
            "got a float",
            "latis.toml:8: unit 'box': provisioner.init: expected a boolean, got a string",
            "latis.toml:9: unit 'box': provisioner.mode: expected one of 'fast', 'safe', "
            "got 'quick'",
            "latis.toml:10: unit 'box': provisioner.level: expected one of 'low', 'high', "
            "got 'medium'",
            "latis.toml:11: unit 'box': provisioner.port: expected an integer or a string, "
            "got a float",
            "latis.toml:12: unit 'box': provisioner.engine: expected a string, got an array",
        ]
    )


def test_wrong_kind_inside_an_array(fakes: None) -> None:
    assert error_of(
        """\
        [units.box]
        dial = { type = "local", command = ["latis-unit", 2] }
        """
    ) == "latis.toml:2: unit 'box': dial.command[1]: expected a string, got an integer"


def test_missing_required_option(fakes: None) -> None:
    assert error_of(
        """\
        [units.box]
        agent = "echo"
        [units.box.provisioner]
        type = "container"
        engine = "podman"
        """
    ) == "latis.toml:3: unit 'box': provisioner.image: required option missing"


def test_missing_required_option_of_a_dialer(fakes: None) -> None:
    assert error_of('units.box.dial = { type = "unix" }') == (
        "latis.toml:1: unit 'box': dial.path: required option missing"
    )


def test_local_dial_without_provisioner_needs_a_command(fakes: None) -> None:
    assert error_of(
        """\
        [units.box.dial]
        type = "local"
        """
    ) == (
        "latis.toml:1: unit 'box': dial.command: required without a provisioner "
        "(the command that starts the unit)"
    )


def test_agent_options_must_be_strings(fakes: None) -> None:
    assert error_of(
        """\
        [units.box]
        dial = { type = "unix", path = "/s" }
        agent_options = { delay = 0.1, ask = true, repeat = 3, ok = "1" }
        [units.other]
        dial = { type = "unix", path = "/s" }
        agent_options = ["delay=1"]
        agent = 5
        """
    ) == "\n".join(
        [
            "latis.toml:3: unit 'box': agent_options.delay: expected a string, got a float "
            '(write "0.1")',
            "latis.toml:3: unit 'box': agent_options.ask: expected a string, got a boolean "
            '(write "true")',
            "latis.toml:3: unit 'box': agent_options.repeat: expected a string, "
            'got an integer (write "3")',
            "latis.toml:6: unit 'other': agent_options: expected a table of strings, "
            "got an array",
            "latis.toml:7: unit 'other': agent: expected a string, got an integer",
        ]
    )


def test_unknown_top_level_table_and_key(fakes: None) -> None:
    assert error_of(
        """\
        title = "mine"
        [unit.box]
        agent = "echo"
        [servers]
        """
    ) == "\n".join(
        [
            "latis.toml:1: title: unknown key (known: daemon, groups, notify, policy, units, web)",
            "latis.toml:2: unit: unknown table (did you mean 'units'?)",
            "latis.toml:4: servers: unknown table "
            "(known: daemon, groups, notify, policy, units, web)",
        ]
    )


def test_units_must_be_tables(fakes: None) -> None:
    assert error_of("units = 3") == "latis.toml:1: units: expected a table, got an integer"
    assert error_of("units.box = 3") == (
        "latis.toml:1: unit 'box': expected a table, got an integer"
    )


def test_bad_unit_names(fakes: None) -> None:
    expected = (
        "bad unit name: expected lower-case letters, digits, '_', '.' and '-', "
        "starting with a letter or a digit"
    )
    assert error_of(
        """\
        [units.Box]
        dial = { type = "unix", path = "/s" }
        [units."-x"]
        dial = { type = "unix", path = "/s" }
        [units."a b"]
        dial = { type = "unix", path = "/s" }
        """
    ) == "\n".join(
        [
            f"latis.toml:1: unit 'Box': {expected}",
            f"latis.toml:3: unit '-x': {expected}",
            f"latis.toml:5: unit 'a b': {expected}",
        ]
    )
    good = parse(
        """\
        [units."gpu.1"]
        dial = { type = "unix", path = "/s" }
        [units.a_b-c]
        dial = { type = "unix", path = "/s" }
        """
    )
    assert list(good.units) == ["local", "gpu.1", "a_b-c"]


def test_unknown_unit_key_suggests(fakes: None) -> None:
    assert error_of(
        """\
        [units.box]
        dail = { type = "unix", path = "/s" }
        """
    ) == (
        "latis.toml:1: unit 'box': neither dial nor accept: expected [units.box.dial], "
        '[[units.box.accept]], or a provisioner (which implies dial = { type = "local" })\n'
        "latis.toml:2: unit 'box': dail: unknown key (did you mean 'dial'?)"
    )
    assert error_of(
        """\
        [units.box]
        dial = { type = "unix", path = "/s" }
        colour = "red"
        """
    ) == (
        "latis.toml:3: unit 'box': colour: unknown key "
        "(known: accept, agent, agent_command, agent_options, connection, dial, heartbeat, "
        "heartbeat_timeout, labels, max_sessions, notify, provisioner, session_memory)"
    )


def test_daemon_errors(fakes: None) -> None:
    assert error_of(
        """\
        [daemon]
        handshake_timeout = -1
        socket = 3
        sockets = "/s"
        """
    ) == "\n".join(
        [
            "latis.toml:2: daemon.handshake_timeout: expected seconds above 0, got -1",
            "latis.toml:3: daemon.socket: expected a string, got an integer",
            "latis.toml:4: daemon.sockets: unknown option (did you mean 'socket'?)",
        ]
    )
    assert error_of("daemon = 1") == "latis.toml:1: daemon: expected a table, got an integer"


def test_error_carries_its_problems(fakes: None) -> None:
    with pytest.raises(ConfigError) as info:
        parse(
            """\
            [units.box.provisioner]
            type = "container"
            """,
            Path("/etc/x.toml"),
        )
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.unit, problem.key) == (
        "/etc/x.toml",
        1,
        "box",
        "provisioner.image",
    )
    assert problem.message == "required option missing"
    assert str(info.value) == (
        "/etc/x.toml:1: unit 'box': provisioner.image: required option missing"
    )


def test_text_without_a_file(fakes: None) -> None:
    with pytest.raises(ConfigError, match=r"^<config>:1: unit 'x': dial.path: required"):
        parse_config('units.x.dial = { type = "unix" }', None)


def test_a_bad_unit_does_not_hide_the_others(fakes: None) -> None:
    message = error_of(
        """\
        [units.a]
        provisioner = { type = "container" }
        [units.b]
        provisioner = { type = "nope" }
        [units.c]
        dial = { type = "unix" }
        """
    )
    assert [line.split(":")[1] for line in message.splitlines()] == ["2", "4", "6"]


# -- what a good config gives ------------------------------------------------------------


def test_a_full_unit(fakes: None) -> None:
    config = parse(
        """\
        [daemon]
        handshake_timeout = 3

        [units.box]
        agent = "echo"
        agent_options = { delay = "0.1" }
        [units.box.provisioner]
        type = "container"
        image = "localhost/latis-unit:1"
        mounts = ["/a:/b"]
        [units.box.dial]
        type = "local"

        [units.edge]
        accept = [{ type = "tcp", port = 7447 }]
        """
    )
    assert config.source == Path("latis.toml")
    assert config.daemon == DaemonConfig(handshake_timeout=3.0)
    box = config.unit("box")
    assert (box.name, box.agent, box.agent_options, box.line) == (
        "box",
        "echo",
        {"delay": "0.1"},
        4,
    )
    assert box.provisioner == PluginConfig(
        "container",
        BoxOptions(image="localhost/latis-unit:1", mounts=["/a:/b"]),
        {"image": "localhost/latis-unit:1", "mounts": ["/a:/b"]},
        7,
    )
    assert box.dial is not None
    assert (box.dial.type, box.dial.table, box.dial.line) == ("local", {}, 11)
    assert box.dial.options.command is None  # type: ignore[attr-defined]
    assert box.accept == ()
    edge = config.unit("edge")
    assert edge.dial is None and edge.provisioner is None
    assert edge.accept == (PluginConfig("tcp", FakeListener(7447), {"port": 7447}, 15),)
    with pytest.raises(LookupError, match=r"no unit 'nope' in latis.toml \(units: local, box"):
        config.unit("nope")


def test_a_provisioner_implies_dial_local(fakes: None) -> None:
    config = parse(
        """\
        [units.box.provisioner]
        type = "container"
        image = "x"
        """
    )
    dial = config.unit("box").dial
    assert dial is not None
    assert (dial.type, dial.table, dial.line) == ("local", {}, None)
    assert dial.options.command is None  # type: ignore[attr-defined]


def test_a_provisioner_with_accept_gets_no_dial(fakes: None) -> None:
    config = parse(
        """\
        [units.box]
        provisioner = { type = "process" }
        accept = [{ type = "tcp", port = 1 }]
        """
    )
    assert config.unit("box").dial is None


def test_default_config_has_the_builtin_local_unit(fakes: None) -> None:
    config = default_config()
    assert config.source is None
    assert config.daemon == DaemonConfig()
    assert list(config.units) == ["local"]
    local = config.unit("local")
    assert (local.agent, local.agent_options, local.accept, local.line) == ("echo", {}, (), None)
    assert local.provisioner == PluginConfig("process", ProcOptions(), {}, None)
    assert local.dial is not None
    assert (local.dial.type, local.dial.line) == ("local", None)
    assert local.dial.options.command is None  # type: ignore[attr-defined]


def test_default_config_with_the_real_plugins() -> None:
    local = default_config().unit("local")
    assert local.provisioner is not None and local.provisioner.type == "process"
    assert type(local.provisioner.options).__name__ == "ProcessOptions"
    assert local.dial is not None and type(local.dial.options).__name__ == "LocalDialer"


def test_builtin_local_stays_unless_defined(fakes: None) -> None:
    config = parse('units.box.dial = { type = "unix", path = "/s" }')
    assert list(config.units) == ["local", "box"]
    assert config.unit("local") == default_config().unit("local")
    mine = parse(
        """\
        [units.local]
        agent = "mine"
        dial = { type = "unix", path = "/s" }
        """
    )
    assert list(mine.units) == ["local"]
    assert mine.unit("local").agent == "mine"
    assert mine.unit("local").provisioner is None


def test_empty_file_is_the_default(fakes: None) -> None:
    assert parse("# nothing\n").units == default_config().units


# -- where config comes from -------------------------------------------------------------


def write(path: Path, unit: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[units.{unit}]\ndial = {{ type = "unix", path = "/s" }}\n')
    return path


def test_precedence(isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if any((p / "latis.toml").exists() for p in tmp_path.parents):
        pytest.skip("a latis.toml above the test's folder")
    work = Path.cwd()
    assert find_config() is None
    user = write(isolated / "config.toml", "user")
    assert find_config() == user
    project = write(work / "latis.toml", "project")
    nested = work / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert find_config() == project  # searched upward
    env = write(tmp_path / "env.toml", "env")
    monkeypatch.setenv("LATIS_CONFIG", str(env))
    assert find_config() == env
    explicit = write(tmp_path / "explicit.toml", "explicit")
    assert find_config(explicit) == explicit
    assert find_config(str(explicit)) == explicit
    monkeypatch.setenv("LATIS_CONFIG", "")  # empty: unset
    assert find_config() == project


def test_load_config_reads_the_first_found(
    fakes: None, isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_config() == default_config()
    user = write(isolated / "config.toml", "user")
    config = load_config()
    assert (config.source, list(config.units)) == (user, ["local", "user"])
    project = write(Path.cwd() / "latis.toml", "project")
    assert list(load_config().units) == ["local", "project"]  # whole files, not merged
    assert load_config().source == project
    explicit = write(tmp_path / "explicit.toml", "explicit")
    assert list(load_config(explicit).units) == ["local", "explicit"]


def test_a_named_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        find_config(missing)
    assert str(info.value) == f"{missing}: config file does not exist (named by --config)"
    monkeypatch.setenv("LATIS_CONFIG", str(missing))
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value) == f"{missing}: config file does not exist (named by LATIS_CONFIG)"
    with pytest.raises(ConfigError, match="is not a file"):
        find_config(tmp_path)


def test_load_config_errors_name_the_file(fakes: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[units.box]\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:1: unit 'box': neither dial nor accept"):
        load_config(bad)
    bad.write_bytes(b"# \xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(bad byte at offset 2\)"):
        load_config(bad)


# -- writing -----------------------------------------------------------------------------


def test_init_text_round_trip() -> None:
    """With the real plugins: the built-in unit and the example, valid as written."""
    config = parse_config(init_text(), Path("latis.toml"))
    assert list(config.units) == ["local", "demo"]
    demo = config.unit("demo")
    assert demo.agent == "echo"
    assert demo.agent_options == {"delay": "0.05", "repeat": "1"}
    assert demo.provisioner is not None and demo.provisioner.type == "process"
    assert demo.dial is not None and demo.dial.type == "local"


def test_init_text_shows_every_option() -> None:
    """Every option of every built-in provisioner and dialer, and echo's options."""
    text = init_text()
    for kind in ("process", "container"):
        options = _registry.load_provisioner(kind).Options
        assert f'type = "{kind}"' in text
        for field in attrs.fields(options):
            assert f"# {field.name} = " in text or f"\n{field.name} = " in text, (
                kind,
                field.name,
            )
    for kind in ("local", "unix"):
        dialer = _registry.load_transport(kind).DIALER
        assert f'type = "{kind}"' in text
        for field in attrs.fields(dialer):
            assert f"{field.name} = " in text, (kind, field.name)
    for option in ("delay", "ask", "repeat"):
        assert f"{option} = " in text
    for kind in ("ssh", "tcp", "websocket", "container", "unix", "quic"):
        assert f'type = "{kind}"' in text or f'"{kind}"' in text, kind
    assert "COMING" not in text
    assert "token_file = " in text and "fingerprint = " in text and "tls = true" in text


def test_add_unit_text() -> None:
    text = add_unit_text(
        "gpu.1",
        {
            "agent": "echo",
            "agent_options": {"delay": "1"},
            "provisioner": {"type": "container", "image": "x"},
        },
    )
    assert text == (
        '[units."gpu.1"]\n'
        'agent = "echo"\n'
        "\n"
        '[units."gpu.1".agent_options]\n'
        'delay = "1"\n'
        "\n"
        '[units."gpu.1".provisioner]\n'
        'type = "container"\n'
        'image = "x"\n'
    )
    with pytest.raises(ConfigError, match="bad unit name 'Box'"):
        add_unit_text("Box", {})


def test_add_unit_keeps_what_is_there(fakes: None, tmp_path: Path) -> None:
    path = tmp_path / "latis.toml"
    original = '# my units\n[units.a]  # the first\ndial = { type = "unix", path = "/a" }'
    path.write_text(original)
    table = {
        "provisioner": {"type": "container", "image": "x"},
        "accept": [{"type": "tcp", "port": 1}, {"type": "tcp", "port": 2}],
    }
    config = add_unit(path, "b", table)
    text = path.read_text()
    assert text.startswith(original + "\n\n[units.b]\n")
    assert list(config.units) == ["local", "a", "b"]
    assert config == parse_config(text, path)
    assert config.unit("b").accept[1].line == text.splitlines().index(
        '    { type = "tcp", port = 2 },'
    ) + 1


def test_add_unit_creates_the_file(fakes: None, tmp_path: Path) -> None:
    path = tmp_path / "new" / "config.toml"
    add_unit(path, "local", {"dial": {"type": "unix", "path": "/s"}})  # replaces the built-in
    assert path.read_text() == '[units.local.dial]\ntype = "unix"\npath = "/s"\n'


def test_add_unit_refuses_a_duplicate(fakes: None, tmp_path: Path) -> None:
    path = tmp_path / "latis.toml"
    path.write_text('# hello\n\n[units.a]\ndial = { type = "unix", path = "/a" }\n')
    before = path.read_text()
    with pytest.raises(ConfigError) as info:
        add_unit(path, "a", {"dial": {"type": "unix", "path": "/b"}})
    assert str(info.value) == f"{path}:3: unit 'a': already defined"
    assert path.read_text() == before


def test_add_unit_refuses_an_invalid_unit(fakes: None, tmp_path: Path) -> None:
    path = tmp_path / "latis.toml"
    path.write_text("# hello\n")
    with pytest.raises(ConfigError) as info:
        add_unit(path, "b", {"provisioner": {"type": "container"}})
    assert str(info.value) == (
        f"cannot add unit 'b':\n{path}:3: unit 'b': provisioner.image: required option missing"
    )
    assert path.read_text() == "# hello\n"


PROCESS = '{ type = "process" }'


def test_remove_unit_keeps_the_comments_of_what_follows(fakes: None, tmp_path: Path) -> None:
    """Comments just above the next table are that table's: `unit rm` keeps them."""
    path = tmp_path / "latis.toml"
    path.write_text(f"""# header
[units.aa]   # aa is first
# aa's own note
provisioner = {PROCESS}

# ---- zz: the important box ----
[units.zz]
provisioner = {PROCESS}
""")
    config = remove_unit(path, "aa")
    assert path.read_text() == f"""# header

# ---- zz: the important box ----
[units.zz]
provisioner = {PROCESS}
"""
    assert sorted(config.units) == ["local", "zz"]


def test_remove_unit_written_by_add_unit(fakes: None, tmp_path: Path) -> None:
    """`add_unit` writes only sub-tables (`[units.box.provisioner]`): the last unit taken
    out leaves the file as it was before it came."""
    path = tmp_path / "latis.toml"
    path.write_text("# my units\n")
    add_unit(path, "box", {"provisioner": {"type": "process"}})
    remove_unit(path, "box")
    assert path.read_text().strip() == "# my units"


def test_remove_unit_keeps_the_reference_latis_init_wrote(fakes: None, tmp_path: Path) -> None:
    """The commented reference after the demo unit stays when the demo goes."""
    path = tmp_path / "latis.toml"
    path.write_text(init_text())
    add_unit(path, "mine", {"provisioner": {"type": "process"}})
    remove_unit(path, "demo")
    text = path.read_text()
    assert "[units.demo" not in text and "[units.mine.provisioner]" in text
    assert "# port = 7447" in text  # the last lines of the reference


@pytest.mark.parametrize("text", [
    f"# mine\n[units]\naa = {{ provisioner = {PROCESS} }}  # inline\n"
    f"bb = {{ provisioner = {PROCESS} }}\n",
    f"# mine\n[units]\naa.provisioner = {PROCESS}\naa.max_sessions = 2\n"
    f"bb.provisioner = {PROCESS}\n",
    f"# mine\nunits.aa.provisioner = {PROCESS}\nunits.bb.provisioner = {PROCESS}\n",
])
def test_remove_unit_takes_an_inline_unit_out_alone(
    fakes: None, tmp_path: Path, text: str
) -> None:
    path = tmp_path / "latis.toml"
    path.write_text(text)
    remove_unit(path, "aa")
    kept = path.read_text()
    assert kept == "".join(line for line in text.splitlines(True) if "aa" not in line)
    assert kept.startswith("# mine\n")


def test_remove_unit_refuses_to_lose_comments(fakes: None, tmp_path: Path) -> None:
    """A form latis cannot cut out alone: with comments in the file, nothing is written
    and the error names the unit's line; without, the file is rewritten."""
    path = tmp_path / "latis.toml"
    text = f'[units]\naa = {{ provisioner = {PROCESS}, labels = [\n  "x",\n] }}\n'
    path.write_text("# mine\n" + text)
    with pytest.raises(ConfigError, match=r"latis.toml:3: unit 'aa' .* by hand"):
        remove_unit(path, "aa")
    assert path.read_text() == "# mine\n" + text
    path.write_text(text)
    assert sorted(remove_unit(path, "aa").units) == ["local"]


def test_unit_names_are_remembered_until_the_config_changes(tmp_path: Path) -> None:
    """`latis status` reads the config's unit names from a cache kept beside the
    config's size and time: a second read does not parse the file (a broken one
    would raise), and a changed file is read again."""
    from latis_core import config_unit_names

    config = tmp_path / "latis.toml"
    cache = tmp_path / "run" / "config-units.json"
    config.write_text('[units.box.dial]\ntype = "local"\ncommand = ["latis-unit", "--stdio"]\n')
    assert config_unit_names(config, cache) == {"box", "local"}  # (local: built in)
    assert cache.exists()
    # The same file (size and time): the names come from the cache, not a parse.
    text = config.read_text()
    stat = config.stat()
    config.write_text(text.replace("units.box", "units.bad"))  # same size
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert config_unit_names(config, cache) == {"box", "local"}
    # Changed (its time moved): read again.
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert config_unit_names(config, cache) == {"bad", "local"}
    config.write_text("[units.box\n")  # broken: the error of a real read
    with pytest.raises(ConfigError):
        config_unit_names(config, cache)


def test_unit_names_without_a_config_are_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No config file: the names are the built-in config's (given without loading its
    plugins, which `latis status` would pay for in start-up time)."""
    from latis_core import config_unit_names, default_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LATIS_CONFIG", raising=False)
    monkeypatch.setenv("LATIS_HOME", str(tmp_path / "home"))
    assert config_unit_names() == set(default_config().units)
