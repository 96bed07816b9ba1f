"""`latis prompt` and `latis attach` at work: send a prompt, stream its answer
through the daemon, ask the agent's questions here.

Nothing here imports cyclopts: `latis prompt TEXT`, the command run most, is
run from here without building the command line's parser (`latis_cli.main`).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._cmdr import CANCELLED, ERROR, INTERRUPTED, OK, USAGE

if TYPE_CHECKING:
    import latis_core


#: The largest prompt text: a frame is at most 16 MiB, with room for the message around it.
PROMPT_LIMIT = 16 * 1024 * 1024 - 4096


def send_prompt(
    text: str = "-",
    unit: str | None = None,
    session: str | None = None,
    new: bool = False,
    file: Path | None = None,
    detach: bool = False,
    json_output: bool = False,
) -> int:
    """`latis prompt`: check the prompt, send it, stream the answer; the exit status."""
    passed = {"--new": new, "--session": session, "--unit": unit, "--file": file,
              "TEXT": text != "-"}
    for given, other in (("--new", "--session"), ("--session", "--unit"), ("--file", "TEXT")):
        if passed[given] and passed[other]:
            print(f"latis: {given} and {other} exclude each other", file=sys.stderr)
            return USAGE
    source = "stdin" if file is None or str(file) == "-" else str(file)
    try:
        if file is not None and str(file) == "-":
            body = sys.stdin.read()
        elif file is not None:
            try:
                body = file.read_text(encoding="utf-8")
            except OSError as exc:
                print(f"latis: cannot read the prompt from {file}: {exc.strerror}",
                      file=sys.stderr)
                return USAGE
        elif text == "-":
            if sys.stdin.isatty():
                print("latis: give the prompt as an argument, with --file, or on stdin",
                      file=sys.stderr)
                return USAGE
            body = sys.stdin.read()
        else:
            source = "the argument"
            body = text
        body.encode("utf-8")  # (stdin read with surrogateescape: its bad bytes show here)
    except UnicodeError:
        print(f"latis: the prompt ({source}) is not UTF-8 text; nothing was sent",
              file=sys.stderr)
        return USAGE
    if not body.strip():
        print("latis: the prompt is empty; nothing was sent", file=sys.stderr)
        return USAGE
    size = len(body.encode("utf-8"))
    if size > PROMPT_LIMIT:
        print(f"latis: the prompt is {size:,} bytes; a prompt is at most {PROMPT_LIMIT:,} "
              f"(16 MiB, less its message's envelope); nothing was sent", file=sys.stderr)
        return USAGE
    from ._run import run_with_cmdr

    return run_with_cmdr(
        lambda cmdr: _run_prompt(cmdr, body, unit, session, new, detach, json_output)
    )


def follow_session(
    session: str | None = None, after: int = -1, detach_key: str = "ctrl-]",
    json_output: bool = False,
) -> int:
    """`latis attach`: follow a session's last prompt; the exit status."""
    from ._keys import parse_key

    if session is None:
        from ._current import current_session

        session = (current_session() or {}).get("session")
        if session is None:
            print("latis: no current session: name one (latis session ls lists them)",
                  file=sys.stderr)
            return USAGE
    key = parse_key(detach_key)
    if key is None:
        print(f"latis: --detach-key {detach_key!r} is not a control key like ctrl-]",
              file=sys.stderr)
        return USAGE
    from ._run import run_with_cmdr

    return run_with_cmdr(lambda cmdr: _run_attach(cmdr, session, after, json_output, key))


async def _run_prompt(
    cmdr: latis_core.DaemonClient,
    body: str,
    unit: str | None,
    session_id: str | None,
    new: bool,
    detach: bool,
    as_json: bool,
) -> int:
    import latis_core

    from ._console import progress
    from ._current import current_session, set_current_session

    session = None
    on = unit  # the unit the session is on, for messages (None: not known here)
    if session_id is not None:
        session = await cmdr.resume_session(session_id)
    elif not new:
        current = current_session()
        if current is not None and unit in (None, current["unit"]):
            on = current["unit"]
            try:
                session = await cmdr.resume_session(current["session"])
            except latis_core.RequestError as exc:
                if exc.code != "unknown_session":
                    raise
                if os.environ.get("LATIS_SESSION"):  # named for this shell: not replaced
                    print(f"latis: LATIS_SESSION names session {current['session']!r}, which "
                          "is closed or unknown here: `unset LATIS_SESSION`, or name an open "
                          "one (latis session ls)", file=sys.stderr)
                    return ERROR
                # Closed (idle, destroyed, its unit gone): a new one takes its place.
    if session is None:
        target = on = unit or "local"
        with progress(f"bringing unit {target!r} up") as say:
            await cmdr.unit_up(target, say)
        session = await cmdr.create_session(unit=target)
        set_current_session(session.id, target)
        if not as_json:
            print(f"session {session.id} on unit {target} (now current)", file=sys.stderr)
    if as_json:
        print(json.dumps({"type": "session", "session": session.id}), flush=True)
    with _where(session.id, on):
        return await _send(cmdr, session, body, detach, as_json)


async def _send(
    cmdr: latis_core.DaemonClient,
    session: latis_core.Session,
    body: str,
    detach: bool,
    as_json: bool,
) -> int:
    stream = session.prompt(body)
    if detach:
        await cmdr.ping()  # the daemon has the prompt: it runs on without us
        if as_json:
            print(json.dumps({"type": "detached", "session": session.id}))
        else:
            print(f"detached: latis attach {session.id}", file=sys.stderr)
        await cmdr.aclose()
        return OK
    return await _stream(stream, as_json, session.id, cmdr.aclose,
                         prompt_id=functools.partial(_running_prompt, cmdr, session.id))


async def _run_attach(
    cmdr: latis_core.DaemonClient, session_id: str, after: int, as_json: bool, key: bytes
) -> int:
    info = await cmdr.session_get(session_id)
    last = info.get("last_prompt") if info else None
    if not last:
        print(f"latis: session {session_id} has no prompt to follow", file=sys.stderr)
        return ERROR
    session = cmdr.session(session_id)
    with _where(session_id, info.get("unit")):
        stream = await session.reattach(last["id"], after=None if after < 0 else after)
        return await _stream(stream, as_json, session_id, cmdr.aclose, key,
                             prompt_id=functools.partial(_running_prompt, cmdr, session_id))


@contextmanager
def _where(session_id: str, unit: str | None) -> Iterator[None]:
    """Name the session and unit in a failure the daemon reports."""
    import latis_core

    from ._failure import cause

    try:
        yield
    except BaseException as exc:
        failure = cause(exc)  # a nursery may have wrapped it in a group
        if isinstance(failure, latis_core.RequestError):
            on = f" on unit {unit}" if unit else ""
            failure.message = f"{failure.message} (session {session_id}{on})"
        raise


#: Exit status when the agent asks a question nobody here can answer: the
#: prompt waits for `latis attach SESSION` (documented in `latis help exit-codes`).
WAITING = ERROR


async def _running_prompt(cmdr: latis_core.DaemonClient, session_id: str) -> int | None:
    """The id of the prompt session `session_id` runs (its last), if it has one."""
    info = await cmdr.session_get(session_id)
    last = info.get("last_prompt") if info else None
    return int(last["id"]) if last else None


async def _stream(
    stream: latis_core.PromptStream,
    as_json: bool,
    session_id: str,
    leave: Callable[[], Awaitable[None]],
    detach_key: bytes | None = None,
    *,
    prompt_id: Callable[[], Awaitable[int | None]],
) -> int:
    """Print a prompt's answer as it comes; Ctrl-C cancels it; questions are asked here.

    `leave` drops the connection so that the prompt runs on (detach key, or a
    question stdin cannot answer); `prompt_id` finds the prompt's id in cmdr
    (for a question's inbox id: the daemon's stream does not carry it).
    """
    import trio

    import latis_core

    from ._keys import Keys

    out = sys.stdout
    interrupted = False
    left = ""
    keys = Keys(detach_key) if detach_key is not None and sys.stdin.isatty() else None
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
            reading = trio.CancelScope()

            async def on_detach() -> None:
                nonlocal left
                left = "detached"
                await leave()
                reading.cancel()

            if keys is not None:
                nursery.start_soon(keys.run, on_detach)
            # The question asked here, while its answer may come from elsewhere
            # (the inbox, a dashboard, another attach): the stream goes on then.
            asking: trio.CancelScope | None = None

            async def ask(request: Any, scope: trio.CancelScope) -> None:
                nonlocal asking, left
                with scope:
                    try:
                        found = await prompt_id()  # (one call per question, not per chunk)
                    except latis_core.LatisError:
                        found = None  # (the question is still asked; its id goes unsaid)
                    item = None if found is None else f"{found}.{request.input}"
                    answer = await _ask(request, as_json, session_id, keys, item)
                    if answer is None:
                        left = "waiting"
                        await leave()
                        reading.cancel()
                    else:
                        await stream.reply(answer)
                if asking is scope:
                    asking = None

            try:
                with reading:
                    async for event in stream:
                        if asking is not None:
                            asking.cancel()
                            asking = None
                            print("\nlatis: answered elsewhere (latis inbox log says by whom)",
                                  file=sys.stderr, flush=True)
                        if isinstance(event, latis_core.InputRequest):
                            asking = trio.CancelScope()
                            nursery.start_soon(ask, event, asking)
                            continue
                        if as_json:
                            out.write(json.dumps(_chunk_json(event)) + "\n")
                        elif event.kind is None:
                            out.write(event.text)
                        out.flush()
            except (latis_core.ConnectionClosed, trio.ClosedResourceError):
                if not left:
                    raise
            finally:
                nursery.cancel_scope.cancel()
                if keys is not None:
                    keys.restore()
    if left:
        if as_json:
            out.write(json.dumps({"type": left, "session": session_id}) + "\n")
        elif left == "detached":
            out.write("\n")
            print(f"latis: detached; the prompt runs on (latis attach {session_id})",
                  file=sys.stderr)
        else:
            out.write("\n")
            print(f"latis: the prompt of session {session_id} waits for an answer that "
                  f"stdin cannot give (not a terminal);\n  answer it with: "
                  f"latis attach {session_id}", file=sys.stderr)
        out.flush()
        return OK if left == "detached" else WAITING
    outcome = stream.outcome or "complete"
    if as_json:
        out.write(json.dumps({"type": "outcome", "outcome": outcome}) + "\n")
    else:
        out.write("\n")
    out.flush()
    if interrupted:
        return INTERRUPTED
    if outcome == "cancelled":
        # Not by us (Ctrl-C is `interrupted`): another client, or its session closed.
        print(f"latis: the prompt was cancelled elsewhere (by another client, or as session "
              f"{session_id} closed or its unit stopped: latis session show {session_id})",
              file=sys.stderr)
        return CANCELLED
    return OK


def _chunk_json(event: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"type": "chunk", "seq": event.seq, "text": event.text}
    if event.kind is not None:
        data["kind"] = event.kind
    if event.data is not None:
        data["data"] = event.data
    return data


async def _ask(
    request: Any, as_json: bool, session_id: str, keys: Any = None, item: str | None = None
) -> str | None:
    """The answer to the agent's question, or None when nobody here can give one.
    `item` is the question's id in the inbox (`PROMPT.NUMBER`), when known."""
    import trio

    question = request.question
    options = request.options
    if as_json:
        print(json.dumps({"type": "input", "input": request.input, "id": item,
                          "question": question, "options": list(options),
                          "session": session_id}), flush=True)
    hint = f" [{'/'.join(options)}]" if options else ""
    if keys is not None:
        typed: str = await keys.line(f"\n{question}{hint} ")
        return typed
    if not sys.stdin.isatty():
        line: str = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            where = (f"`latis inbox answer {item} ANSWER` answers it" if item is not None
                     else "`latis inbox` lists it with its id")
            print(f"\nlatis: the agent asks {question!r}; it waits in the inbox ({where})",
                  file=sys.stderr)
            return None
        return line.rstrip("\n")
    answer: str = await trio.to_thread.run_sync(
        input, f"\n{question}{hint} ", abandon_on_cancel=True
    )
    return answer
