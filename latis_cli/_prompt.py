"""`latis prompt` and `latis attach`: stream an answer through the daemon."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from cyclopts import Parameter

from ._cmdr import CANCELLED, ERROR, INTERRUPTED, OK, USAGE

if TYPE_CHECKING:
    import latis_core


def prompt(
    text: str = "-",
    *,
    unit: Annotated[str, Parameter(name=["--unit", "-u"])] = "local",
    session: Annotated[str | None, Parameter(name=["--session", "-s"])] = None,
    file: Path | None = None,
    detach: bool = False,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Send a prompt and stream the answer as it comes.

    The prompt runs in the daemon (started on first use): with `--detach` the
    command returns at once and the prompt goes on; `latis attach SESSION`
    follows it later. Ctrl-C cancels the prompt on the unit (a second Ctrl-C
    exits at once). When the agent asks something, the question is asked
    here and the answer sent back.

    Examples
    --------
    ```
    latis prompt "hello there"
    echo "hello there" | latis prompt
    latis prompt --file task.md --unit box
    latis prompt --session Zk3x9 "and then?"
    latis prompt --detach "a long task"; latis attach SESSION
    latis prompt --json "hello" | jq .
    ```

    Args:
        text: the prompt; "-" (the default) reads it from stdin.
        unit: the unit to open a new session on.
        session: an existing session to prompt instead.
        file: read the prompt from this file.
        detach: send the prompt and return; it runs on.
        json_output: print one JSON object per event (NDJSON).
    """
    if file is not None:
        body = file.read_text()
    elif text == "-":
        if sys.stdin.isatty():
            print("latis: give the prompt as an argument, with --file, or on stdin",
                  file=sys.stderr)
            return USAGE
        body = sys.stdin.read()
    else:
        body = text
    from ._run import run_with_cmdr

    return run_with_cmdr(lambda cmdr: _run_prompt(cmdr, body, unit, session, detach, json_output))


def attach(
    session: str,
    *,
    after: int = -1,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Follow a session's last prompt: what was missed first, then live.

    Ctrl-C cancels the prompt on the unit; to stop following without
    cancelling, close the terminal or kill this command (the prompt runs on).

    Examples
    --------
    ```
    latis attach Zk3x9kQp2Lm8
    latis attach Zk3x9kQp2Lm8 --after 41     # only chunks after seq 41
    ```

    Args:
        session: the session id.
        after: show only the chunks after this sequence number.
        json_output: print one JSON object per event (NDJSON).
    """
    from ._run import run_with_cmdr

    return run_with_cmdr(lambda cmdr: _run_attach(cmdr, session, after, json_output))


async def _run_prompt(
    cmdr: latis_core.DaemonClient,
    body: str,
    unit: str,
    session_id: str | None,
    detach: bool,
    as_json: bool,
) -> int:
    from ._console import progress

    if session_id is None:
        with progress(f"bringing unit {unit!r} up") as say:
            await cmdr.unit_up(unit, say)
        session = await cmdr.create_session(unit=unit)
        print(f"session {session.id} on unit {unit}", file=sys.stderr)
    else:
        session = await cmdr.resume_session(session_id)
    stream = session.prompt(body)
    if detach:
        await cmdr.ping()  # the daemon has the prompt: it runs on without us
        if as_json:
            print(json.dumps({"session": session.id, "detached": True}))
        else:
            print(f"detached: latis attach {session.id}", file=sys.stderr)
        await cmdr.aclose()
        return OK
    return await _stream(stream, as_json)


async def _run_attach(
    cmdr: latis_core.DaemonClient, session_id: str, after: int, as_json: bool
) -> int:

    info = await cmdr.session_get(session_id)
    last = info.get("last_prompt") if info else None
    if not last:
        print(f"latis: session {session_id} has no prompt to follow", file=sys.stderr)
        return ERROR
    session = cmdr.session(session_id)
    stream = await session.reattach(last["id"], after=None if after < 0 else after)
    return await _stream(stream, as_json)


async def _stream(stream: latis_core.PromptStream, as_json: bool) -> int:
    """Print a prompt's answer as it comes; Ctrl-C cancels it; questions are asked here."""
    import trio

    import latis_core

    out = sys.stdout
    interrupted = False
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def on_sigint() -> None:
                nonlocal interrupted
                async for _ in signals:
                    if interrupted:
                        raise SystemExit(INTERRUPTED)
                    interrupted = True
                    print("\nlatis: cancelling (Ctrl-C again to quit)", file=sys.stderr)
                    stream.cancel_nowait()

            nursery.start_soon(on_sigint)
            try:
                async for event in stream:
                    if isinstance(event, latis_core.InputRequest):
                        await stream.reply(await _ask(event, as_json))
                        continue
                    if as_json:
                        out.write(json.dumps(_chunk_json(event)) + "\n")
                    elif event.kind is None:
                        out.write(event.text)
                    out.flush()
            finally:
                nursery.cancel_scope.cancel()
    outcome = stream.outcome or "complete"
    if as_json:
        out.write(json.dumps({"type": "outcome", "outcome": outcome}) + "\n")
    else:
        out.write("\n")
    out.flush()
    if interrupted:
        return INTERRUPTED
    return CANCELLED if outcome == "cancelled" else OK


def _chunk_json(event: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"type": "chunk", "seq": event.seq, "text": event.text}
    if event.kind is not None:
        data["kind"] = event.kind
    if event.data is not None:
        data["data"] = event.data
    return data


async def _ask(request: Any, as_json: bool) -> str:
    import trio

    question = request.question
    options = request.options
    if as_json:
        print(json.dumps({"type": "input", "input": request.input, "question": question,
                          "options": list(options)}), flush=True)
    if not sys.stdin.isatty():
        line: str = await trio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            raise SystemExit(
                f"latis: the agent asks {question!r}, and stdin has no answer"
            )
        return line.rstrip("\n")
    hint = f" [{'/'.join(options)}]" if options else ""
    answer: str = await trio.to_thread.run_sync(input, f"\n{question}{hint} ")
    return answer
