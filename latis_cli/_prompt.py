"""`latis prompt` and `latis attach`: their command lines (the work: `_answer`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from . import _complete


def prompt(
    text: str = "-",
    *,
    unit: Annotated[str | None, Parameter(name=["--unit", "-u"], completer=_complete.units)] = None,
    session: Annotated[
        str | None, Parameter(name=["--session", "-s"], completer=_complete.sessions)
    ] = None,
    new: bool = False,
    file: Annotated[Path | None, Parameter(allow_leading_hyphen=True)] = None,
    detach: bool = False,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Send a prompt and stream the answer as it comes.

    A conversation continues: the prompt goes to the current session (the
    last one `latis session new`, `latis session use` or a prompt opened),
    so the agent keeps its context; `--new` starts another session, which
    becomes current. `--unit` picks the unit (a new session there unless the
    current one is on it).

    The prompt runs in the daemon (started on first use): with `--detach` the
    command returns at once and the prompt goes on; `latis attach SESSION`
    follows it later. Ctrl-C cancels the prompt on the unit (a second Ctrl-C
    exits at once). When the agent asks something, the question is asked
    here; when stdin cannot answer (not a terminal, nothing left to read) the
    prompt stays waiting and `latis attach SESSION` answers it (exit 1).

    For example:
      latis prompt "hello there"
      latis prompt "and then?"      (the same session: the agent remembers)
      latis prompt --new "another topic"
      echo "hello there" | latis prompt
      latis prompt --file task.md --unit box
      latis prompt --detach "a long task"; latis attach SESSION
      latis prompt --json "hello" | jq .

    Args:
        text: the prompt (without it, the prompt is read from stdin).
        unit: the unit (default: the current session's, else `local`).
        session: prompt this session (it does not become current; not with --unit).
        new: start a new session (it becomes current).
        file: read the prompt from this file (`-`: from stdin; not with TEXT).
        detach: send the prompt and return; it runs on.
        json_output: print one JSON object per event (NDJSON); the first names the session.
    """
    from ._answer import send_prompt

    return send_prompt(text, unit, session, new, file, detach, json_output)


def attach(
    session: Annotated[str | None, Parameter(completer=_complete.sessions)] = None,
    *,
    after: int = -1,
    detach_key: str = "ctrl-]",
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Follow a session's last prompt: what was missed first, then live.

    Ctrl-C cancels the prompt on the unit. The detach key (Ctrl-], as in
    telnet; `--detach-key`) stops following and leaves the prompt running,
    as does closing the terminal. A question the agent asks is asked here.

    For example:
      latis attach                             (the current session)
      latis attach Zk3x9kQp2Lm8
      latis attach Zk3x9kQp2Lm8 --after 41     (only chunks after seq 41)
      latis attach Zk3x9kQp2Lm8 --detach-key ctrl-d

    Args:
        session: the session id (default: the current session).
        after: show only the chunks after this sequence number.
        detach_key: the key that detaches (ctrl-A .. ctrl-_, on a terminal).
        json_output: print one JSON object per event (NDJSON).
    """
    from ._answer import follow_session

    return follow_session(session, after, detach_key, json_output)
