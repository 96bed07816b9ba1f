"""The `latis` app. Command modules import nothing heavy at the top, so `--help` stays fast."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from cyclopts import App, Parameter

from latis_core import __version__

from ._agents import agents_app, plugins
from ._coordinate import coordinate
from ._daemon import daemon
from ._prompt import attach, prompt
from ._sessions import session_app, status
from ._units import connect, init, listeners, unit_app

HELP = """A control plane for AI agents that run anywhere.

Common commands:
  latis prompt "hello"                   a prompt to the built-in local unit
  latis unit add box --provisioner container --image IMG
  latis session new --unit box           prints the session id
  latis prompt --session SID --detach "a long task"; latis attach SID
  latis coordinate --agents box,local "compare notes"
  latis status

Exit status: 0 ok, 1 error, 2 usage, 3 cancelled, 5 cmdr unreachable,
6 unit unreachable, 130 interrupted."""

app = App(
    name="latis",
    # Plain text: rendering markdown costs ~60 ms, a third of `latis --help`.
    help_format="plaintext",
    help=HELP,
    version=__version__,
    help_epilogue="Docs: README.md, docs/config.md, PROTOCOL.md.",
)
app.command(prompt, name="prompt")
app.command(attach, name="attach")
app.command(coordinate, name="coordinate")
app.command(status, name="status")
app.command(connect, name="connect")
app.command(listeners, name="listeners")
app.command(init, name="init")
app.command(plugins, name="plugins")
app.command(session_app)
app.command(unit_app)
app.command(agents_app)
app.command(daemon)
app.register_install_completion_command()


@app.meta.default
def launcher(
    *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
    config: Annotated[Path | None, Parameter(name="--config")] = None,
    no_color: Annotated[bool, Parameter(name="--no-color", negative="")] = False,
) -> int | None:
    """Global options (before the command).

    Args:
        config: the config file to use (else LATIS_CONFIG, ./latis.toml, the user config).
        no_color: no colour, even on a terminal.
    """
    if config is not None:
        os.environ["LATIS_CONFIG"] = str(config.resolve())
    if no_color:
        os.environ["NO_COLOR"] = "1"
    result = app(tokens)
    return result if isinstance(result, int) else None


app.meta.help = HELP
