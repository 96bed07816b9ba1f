"""`latis --install-completion`: cyclopts' own command, built when it is run (or
its help is shown): its module costs ~10 ms that other commands need not pay."""

from __future__ import annotations

from cyclopts.completion.install import create_install_completion_command

from ._app import app

install_completion = create_install_completion_command(app.install_completion, True)
