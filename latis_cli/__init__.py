"""latis_cli: the `latis` command. Commands import their heavy modules when run."""

from __future__ import annotations

__all__ = ["main"]

#: Command lines run without building the parser of every command: `latis status`,
#: which a fleet's operator runs over and over, takes ~110 ms instead of ~145 over
#: 10,000 units then (cyclopts and the commands' modules are a short command's start).
#: `latis prompt TEXT` is the other (`main`).
_FAST = {("status",): False, ("status", "--json"): True}


def main() -> None:
    """Run the `latis` command line."""
    import sys

    from ._failure import guard

    fast = _FAST.get(tuple(sys.argv[1:]))
    if fast is not None:
        import gc

        # A read that ends with the process: what it builds (a few objects per
        # unit) lives until then, and the collector would only walk it again.
        gc.disable()
        from ._status import show_status

        guard(lambda: show_status(json_output=fast))
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "prompt" and not args[1].startswith("-"):
        # `latis prompt TEXT`, the command run most: what the parser would
        # call, without it (cyclopts, its parse and the commands' registration
        # were ~80 ms of the ~265 the whole command took).
        from ._answer import send_prompt

        text = args[1]
        guard(lambda: send_prompt(text))
    from ._app import app, load_commands

    load_commands(args)
    guard(app.meta)
