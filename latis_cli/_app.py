"""The `latis` app. Command modules import nothing heavy at the top, so `--help` stays fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

from cyclopts import App, Parameter

from latis_core import __version__

from ._cmdr import USAGE

HELP = """A control plane for AI agents that run anywhere.

Common commands:
  latis prompt "hello"               a prompt to the built-in unit `local`
  latis prompt "and then?"           the same session: a conversation continues
  latis prompt --new "other topic"   a new session (it becomes current)
  latis session new --unit box       a session on another unit; it is current
  latis prompt --detach "long task"  runs on in the daemon; latis attach SID
  latis coordinate --agents box,local "compare notes"
  latis coordinate -a a,b,c --strategy roundtable --final a "design it"
  latis status                       what runs where (also: latis ls)
  latis inbox; latis inbox answer 12.0 allow
  latis usage --by day

Help on a command: latis help CMD (or latis CMD --help);
exit statuses: latis help exit-codes."""

TOPICS = {
    "exit-codes": """Exit statuses of latis (stable: scripts may rely on them):

  0    ok
  1    error (a failure the message explains; also: the agent asked a
       question that stdin could not answer, and the prompt waits for
       `latis attach SESSION`)
  2    usage (a wrong argument, an empty prompt, a file that is not there)
  3    cancelled (the prompt was cancelled), or timed out
  4    auth: a proof of identity or an enrollment was refused
  5    cmdr unreachable (the daemon is not running and could not start, or
       it stopped while the command ran)
  6    unit unreachable (not connected, its dial or provisioner failed, or lost
       while a prompt ran: unit_lost)
  130  interrupted (Ctrl-C)

latis-unit uses the same: 4 when cmdr refuses its enrollment.""",
    "environment": """Environment variables:

  LATIS_HOME      one folder for config, state, sockets and logs (tests, demos)
  LATIS_CONFIG    the config file (as --config)
  LATIS_SESSION   the current session for this shell (overrides `session use`)
  LATIS_DEBUG=1   print the traceback of a failure too (as --debug)
  LATIS_NO_COLOR, NO_COLOR   no colour (as --no-color); FORCE_COLOR forces it""",
}

app = App(
    name="latis",
    # Plain text: rendering markdown costs ~60 ms, a third of `latis --help`.
    help_format="plaintext",
    help=HELP,
    version=__version__,
    help_epilogue="Docs: README.md, docs/config.md, PROTOCOL.md.",
)
# Each command's module is imported when the command runs (or its help is
# shown): a command line builds only the command it names (`latis session ls`:
# ~187 -> ~125 ms).
_COMMANDS = [
    ("_prompt:prompt", ["prompt"]),
    ("_prompt:attach", ["attach"]),
    ("_coordinate:coordinate", ["coordinate"]),
    ("_sessions:status", ["status", "ls"]),
    ("top:top", ["top"]),  # (textual: imported when the screen is shown)
    ("_units:connect", ["connect"]),
    ("_units:listeners", ["listeners"]),
    ("_units:init", ["init"]),
    ("_agents:plugins", ["plugins"]),
    ("_inbox:usage", ["usage"]),
    ("_inbox:inbox_app", ["inbox"]),
    ("_sessions:session_app", ["session"]),
    ("_coordinate:coordination_app", ["coordination"]),
    # (`_enrollments` adds pending|accept|reject|revoke|rotate to `_units`' app)
    ("_enrollments:unit_app", ["unit"]),
    ("_agents:agents_app", ["agents"]),
    ("_daemon:daemon", ["daemon"]),
    ("_image:image_app", ["image"]),
    ("_web:web", ["web"]),  # (the web server: imported by the daemon)
    ("_completion:install_completion", ["--install-completion"]),
]
for _path, _names in _COMMANDS:
    app.command(f"latis_cli.{_path}", name=_names)
_NAMES = frozenset(name for _, names in _COMMANDS for name in names)


@app.command(name="help")
def help_(*topic: str) -> int:
    """Help on a command or a topic.

    For example:
      latis help prompt
      latis help unit add
      latis help exit-codes
      latis help environment

    Args:
        topic: a command (as typed after `latis`), or a topic: exit-codes, environment.
    """
    if len(topic) == 1 and topic[0] in TOPICS:
        print(TOPICS[topic[0]])
        return 0
    if topic and topic[0] not in app:
        import difflib

        known = sorted({*TOPICS, *(name for name in app if not name.startswith("-"))})
        close = difflib.get_close_matches(topic[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"latis: no command or topic {topic[0]!r}{hint}; known: {', '.join(known)}",
              file=sys.stderr)
        return 2
    app.help_print(list(topic))
    return 0


@app.meta.default
def launcher(
    *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
    config: Annotated[Path | None, Parameter(name="--config")] = None,
    no_color: Annotated[bool, Parameter(name="--no-color", negative="")] = False,
    debug: Annotated[bool, Parameter(name="--debug", negative="")] = False,
) -> int | None:
    """Global options (before the command).

    Args:
        config: the config file to use (else LATIS_CONFIG, ./latis.toml, the user config).
        no_color: no colour, even on a terminal.
        debug: print the traceback of a failure too (as LATIS_DEBUG=1 does).
    """
    if debug:
        os.environ["LATIS_DEBUG"] = "1"
    if config is not None:
        from latis_core import ConfigError, find_config

        try:
            found = find_config(config)
        except ConfigError as exc:
            # Said here, for every command: those that do not read the config
            # (status, session ls) would otherwise go on as if it were not named.
            print(f"latis: {exc}", file=sys.stderr)
            return USAGE
        assert found is not None  # (a file named is found, or ConfigError says why not)
        os.environ["LATIS_CONFIG"] = str(found.resolve())
    if no_color:
        os.environ["NO_COLOR"] = "1"
    result = app(tokens)
    return result if isinstance(result, int) else None


app.meta.help = HELP


def load_commands(args: list[str]) -> None:
    """Import what the command line `args` needs: the command it names, or
    every command (help on them all lists each one's summary, and a word that
    is no command gets its closest match)."""
    i = 0
    while i < len(args) and (args[i] in _GLOBAL or args[i].startswith("--config=")):
        i += 2 if args[i] == "--config" else 1
    if i >= len(args) or args[i] not in _NAMES:
        app.resolved_commands()


#: The global options (`launcher`), before the command.
_GLOBAL = frozenset({"--config", "--no-color", "--debug"})
