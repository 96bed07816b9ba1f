"""Writing config: a unit appended to a file (`add_unit`, `add_unit_text`) or
taken out of it (`remove_unit`), and the commented `latis.toml` that `latis
init` writes (`init_text`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from latis_core._cmdr.config import (
    _UNIT_NAME,
    Config,
    ConfigError,
    ConfigProblem,
    _read,
    parse_config,
)

__all__ = ["add_unit", "add_unit_text", "init_text", "remove_unit"]


def add_unit_text(name: str, table: Mapping[str, Any]) -> str:
    """The TOML of a new unit `name` (a `[units.NAME]` table and its sub-tables).

    Raises:
        ConfigError: `name` is not a valid unit name.
    """
    import tomli_w

    if not _UNIT_NAME.fullmatch(name):
        raise ConfigError(
            f"bad unit name {name!r}: expected lower-case letters, digits, '_', '.' and '-', "
            "starting with a letter or a digit"
        )
    return tomli_w.dumps({"units": {name: dict(table)}})


def add_unit(path: str | os.PathLike[str], name: str, table: Mapping[str, Any]) -> Config:
    """Append unit `name` to the config file at `path` (created if need be); return the result.

    What the file holds already is kept as it is, comments and all. Nothing
    is written unless the whole file, with the new unit, is a valid config.

    Raises:
        ConfigError: the name is taken or invalid, the unit is not valid, or the
            file is not valid as it stands.
    """
    target = Path(path)
    existing = _read(target) if target.exists() else ""
    addition = add_unit_text(name, table)
    if existing and not existing.endswith("\n"):
        addition = "\n" + addition
    if existing.strip():
        addition = "\n" + addition
    try:
        # One parse in the common case (config is O(units)); the file as it
        # stands is read again only to say what is wrong.
        after = parse_config(existing + addition, target)
    except ConfigError as exc:
        before = parse_config(existing, target)
        if name in before.units and before.units[name].line is not None:  # not the built-in
            problem = ConfigProblem(str(target), before.units[name].line, name, None,
                                    "already defined")
            raise ConfigError.of([problem]) from None
        raise ConfigError(f"cannot add unit {name!r}:\n{exc}", exc.problems) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as out:
        out.write(addition)
    return after


#: A table header: `[name.parts]` or `[[name.parts]]` (group 1: the dotted name).
_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]#]+?)\s*\]\]?\s*(#.*)?$")


def _header_keys(dotted: str) -> list[str]:
    """`units."a.b".dial` -> ["units", "a.b", "dial"]."""
    return [k.strip().strip('"').strip("'") for k in re.findall(
        r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[^.]+)\s*(?:\.|$)', dotted)]


def _defined(config: Config) -> set[str]:
    """The units the file defines (not the built-in `local`)."""
    return {n for n, unit in config.units.items() if unit.line is not None}


def remove_unit(path: str | os.PathLike[str], name: str) -> Config:
    """Take unit `name` out of the config file at `path`; return the result.

    The unit's tables go (`[units.NAME]` and its sub-tables), or its line in
    `[units]` when it is written inline; the rest of the file stays as
    written, comments and all (comments just above the next table are that
    table's, and stay). A file latis cannot edit so is rewritten through
    tomli-w only when it has no comments to lose; otherwise nothing is written
    and the error names the unit's line. Nothing is written unless the result
    is a valid config that differs from the file by that unit alone.

    Raises:
        ConfigError: the file does not define the unit, is not valid, or
            would lose its comments.
    """
    import tomllib

    import tomli_w

    target = Path(path)
    text = _read(target)
    before = parse_config(text, target)
    if name not in _defined(before):
        raise ConfigError(f"{target}: no unit {name!r} in this file "
                          f"(units: {', '.join(sorted(_defined(before))) or 'none'})")
    wanted = tomllib.loads(text)
    wanted["units"].pop(name)
    for edit in (_without_tables, _without_inline):
        after_text = edit(text, name)
        try:
            got = tomllib.loads(after_text)
        except tomllib.TOMLDecodeError:
            continue
        if {**got, "units": got.get("units", {})} == wanted:  # (no [units] left: the same)
            break
    else:
        if "#" in text:  # a comment (or a '#' in a string: refused alike, to be safe)
            raise ConfigError(
                f"{target}:{before.units[name].line}: unit {name!r} is written in a form "
                "latis cannot take out without rewriting the file, which would lose its "
                "comments: delete it there by hand (then `latis daemon reload`)")
        after_text = tomli_w.dumps(wanted)
    after = parse_config(after_text, target)
    target.write_text(after_text, encoding="utf-8")
    return after


def _without_tables(text: str, name: str) -> str:
    """`text` without the tables `[units.NAME]` and `[units.NAME.*]`.

    Comment and blank lines at the end of the unit's last table stay: just
    above the next table (or at the end of the file) they belong to what
    follows, such as the reference `latis init` writes.
    """
    kept: list[str] = []
    held: list[str] = []  # comments inside the unit, kept if no key of it follows
    inside = False
    for line in text.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            now_inside = _header_keys(header[1])[:2] == ["units", name]
            if inside and not now_inside:
                kept.extend(held)
            held = []
            inside = now_inside
            if inside:
                continue
        elif inside:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                held.append(line)
            else:
                held = []  # the unit's own comments, among its keys
            continue
        kept.append(line)
    return "".join(kept + held)


def _without_inline(text: str, name: str) -> str:
    """`text` without the lines that define unit `name` inline: `NAME = {...}` or
    `NAME.KEY = ...` in `[units]`, `units.NAME... = ...` before any table."""
    quoted = "|".join(re.escape(form) for form in (name, f'"{name}"', f"'{name}'"))
    in_units = re.compile(rf"^\s*(?:{quoted})\s*[.=]")
    at_top = re.compile(rf"^\s*units\s*\.\s*(?:{quoted})\s*[.=]")
    kept: list[str] = []
    table: list[str] = []
    for line in text.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            table = _header_keys(header[1])
        elif (table == ["units"] and in_units.match(line)) or (not table and at_top.match(line)):
            continue
        kept.append(line)
    return "".join(kept)


def init_text() -> str:
    """A commented `latis.toml` showing every provisioner, dialer, listener and agent.

    As written it defines one unit, `demo`; the built-in `local` stays.
    """
    return _INIT_TEXT


_INIT_TEXT = """\
# latis.toml: the units latis knows, and how it reaches them.
#
# latis reads ONE file, the first it finds of: --config FILE, $LATIS_CONFIG,
# ./latis.toml (here or in a parent directory), the user config file
# (~/.config/latis/config.toml on Linux). Reference: docs/config.md.
#
# Each [units.NAME] table is a unit: the agent it runs, an optional provisioner
# that creates and runs it, and how cmdr reaches it: `dial` (cmdr connects to
# the unit), `accept` (the unit connects to cmdr), or both. There is always a
# built-in unit `local` (process provisioner, local dial, echo agent) unless a
# unit of that name is defined here.

# [daemon]
# handshake_timeout = 10.0            # seconds a new connection gets for `hello`
# heartbeat = 15.0                    # seconds of silence before a ping (0: none)
# heartbeat_timeout = 10.0            # seconds that ping waits: then unreachable
# unit_lost_after = 30.0              # seconds a prompt waits for its unit to come back
# restart_lost_units = false          # start a unit its provisioner saw die again
# socket = "/run/user/1000/latis/cmdr.sock"       # default: the user runtime dir
# state = "/home/me/.local/share/latis/latis.db"  # default: the user data dir

[units.demo]
# The agent the unit runs, and its options (always strings). echo:
#   delay  = seconds before each chunk (default "0")
#   ask    = a question put to you before it answers (default: none)
#   repeat = how many times the prompt is echoed (default "1")
agent = "echo"
agent_options = { delay = "0.05", repeat = "1" }
# agent_options = { ask = "Which language?" }

# The provisioner creates, starts, stops and destroys the unit.
# process: a latis-unit process on this machine.
[units.demo.provisioner]
type = "process"
# command = ["latis-unit"]            # default: this Python's latis-unit
# env = { LOG_LEVEL = "debug" }       # added to the inherited environment
# cwd = "/srv/agents"                 # default: the daemon's
# ready_timeout = 15.0                # seconds `up` waits for the unit to answer
# stop_timeout = 10.0                 # seconds after SIGTERM before SIGKILL

# dial: how cmdr connects to the unit. A unit with a provisioner and neither
# dial nor accept dials { type = "local" }.
# local: without a command, the unit its provisioner runs (through the
# provisioner); with one, that command, started for each connection, over stdio.
[units.demo.dial]
type = "local"
# command = ["latis-unit", "--stdio"]
# env = { LOG_LEVEL = "debug" }       # added to the inherited environment
# cwd = "/srv/agents"
# grace = 5.0                         # seconds it gets to exit when the connection ends

# container: the unit in a podman or docker container.
# [units.box]
# agent = "echo"
# [units.box.provisioner]
# type = "container"
# image = "localhost/latis-unit:1"    # required: an image holding latis-unit
#                                     # (build one: latis image build --base python:3.11-slim)
# engine = "podman"                   # "podman", "docker" or a path (default: podman, else docker)
# mounts = ["/srv/data:/data:ro"]     # HOST:CONTAINER[:ro]
# env = { LOG_LEVEL = "debug" }       # in the container
# workdir = "/work"                   # in the container
# command = ["latis-unit"]            # the unit's command in the container
# name = "latis-box"                  # the container's name (default: latis-UNIT)
# network = "host"                    # --network: host needs no plugin; "none" cuts it off
# extra_args = ["--memory", "2g"]     # more `ENGINE create` arguments
# init = true                         # an init as PID 1 (--init)
# timeout = 60.0                      # seconds any engine command may take
# create_timeout = 600.0              # seconds `create` may take (it may pull)
# ready_timeout = 30.0                # seconds `up` waits for the unit to answer
# stop_timeout = 5                    # seconds `ENGINE stop` waits before SIGKILL

# unix: a unit that already runs and listens on a unix socket
# (latis-unit --listen unix:PATH); no provisioner.
# [units.sock]
# dial = { type = "unix", path = "/run/user/1000/latis-sock.sock" }

# A unit that already runs elsewhere and listens (latis-unit --listen URL):
# [units.gpu.dial]
# type = "tcp"
# host = "10.0.0.5"
# port = 7447
# fingerprint = "sha256:…"            # what `latis-unit --tls` printed (or ca = FILE)
# token_file = "~/.latis/gpu.token"   # the unit's --token-file, proven by cmdr
# Other dialers:
# dial = { type = "websocket", url = "wss://units.example.com:7448/latis" }
# dial = { type = "quic", host = "10.0.0.5", port = 7447, fingerprint = "sha256:…" }
# dial = { type = "ssh", host = "gpu1", user = "me", command = ["latis-unit", "--stdio"] }
# dial = { type = "container", container = "my-agent" }  # exec into a running one

# A unit that dials in (behind NAT, short-lived boxes): `latis unit add edge
# --accept tcp://0.0.0.0:7447` writes this and prints the line to run on it.
# [units.edge]
# agent = "echo"
# [[units.edge.accept]]
# type = "tcp"                        # also "unix", "websocket", "quic"
# host = "0.0.0.0"
# port = 7447
# tls = true                          # cmdr's own CA; the unit pins it
"""
