"""`latis prompt`: send a prompt to a unit and stream the answer."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

#: Exit statuses (see CLI.md): 0 ok, 1 error, 3 cancelled, 6 unit unreachable, 130 Ctrl-C.
EXIT_ERROR = 1
EXIT_CANCELLED = 3
EXIT_UNREACHABLE = 6
EXIT_INTERRUPTED = 130


def prompt(
    text: str = "-",
    *,
    agent: str = "echo",
    option: Annotated[tuple[str, ...], Parameter(name=["--option", "-o"])] = (),
    file: Path | None = None,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Send a prompt to a local unit and stream its answer as it comes.

    Ctrl-C cancels the prompt on the unit (a second Ctrl-C exits at once).
    When the agent asks a question, it is asked here and the answer sent back.

    Examples
    --------
    ```
    latis prompt "hello there"
    echo "hello there" | latis prompt
    latis prompt --file task.md
    latis prompt --agent echo -o delay=0.2 "slow words"
    latis prompt --json "hello" | jq .
    ```

    Args:
        text: the prompt; "-" (the default) reads it from stdin.
        agent: the agent adapter of the local unit.
        option: an agent option, KEY=VALUE (repeatable).
        file: read the prompt from this file.
        json_output: print one JSON object per event (NDJSON).
    """
    if file is not None:
        body = file.read_text()
    elif text == "-":
        body = sys.stdin.read()
    else:
        body = text
    options = {}
    for pair in option:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            print(f"latis: option {pair!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        options[key] = value
    import trio

    return trio.run(_run, body, agent, options, json_output)


async def _run(body: str, agent: str, options: dict[str, str], as_json: bool) -> int:
    import trio

    import latis_core

    out = sys.stdout
    try:
        async with latis_core.connect_local(agent=agent, options=options) as unit:
            session = await unit.create_session()
            stream = session.prompt(body)
            with trio.CancelScope() as scope, trio.open_signal_receiver(signal.SIGINT) as sigs:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_on_sigint, sigs, scope)
                    async for event in stream:
                        if isinstance(event, latis_core.InputRequest):
                            answer = await _ask(event, as_json)
                            await stream.reply(answer)
                            continue
                        if as_json:
                            out.write(json.dumps(_event(event)) + "\n")
                        else:
                            out.write(event.text)
                        out.flush()
                    nursery.cancel_scope.cancel()
            if scope.cancelled_caught:
                _finish(out, as_json, "cancelled")
                return EXIT_CANCELLED
            _finish(out, as_json, stream.outcome or "complete")
            return 0
    except latis_core.ConnectError as exc:
        print(f"latis: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except latis_core.LatisError as exc:
        print(f"latis: {exc}", file=sys.stderr)
        return EXIT_ERROR


async def _on_sigint(sigs: object, scope: object) -> None:
    async for _ in sigs:  # type: ignore[attr-defined]
        if scope.cancel_called:  # type: ignore[attr-defined]
            raise SystemExit(EXIT_INTERRUPTED)
        print("\nlatis: cancelling (Ctrl-C again to quit)", file=sys.stderr)
        scope.cancel()  # type: ignore[attr-defined]


def _event(event: object) -> dict[str, object]:
    from latis_core import encode

    return json.loads(encode(event))  # type: ignore[arg-type, no-any-return]


async def _ask(request: object, as_json: bool) -> str:
    import trio

    question = request.question  # type: ignore[attr-defined]
    options = request.options  # type: ignore[attr-defined]
    if not sys.stdin.isatty():
        raise SystemExit(
            f"latis: the agent asks {question!r}, but stdin is not a terminal to answer on"
        )
    hint = f" [{'/'.join(options)}]" if options else ""
    return await trio.to_thread.run_sync(input, f"\n{question}{hint} ")


def _finish(out: object, as_json: bool, outcome: str) -> None:
    if as_json:
        out.write(json.dumps({"type": "outcome", "outcome": outcome}) + "\n")  # type: ignore[attr-defined]
    else:
        out.write("\n")  # type: ignore[attr-defined]
    out.flush()  # type: ignore[attr-defined]
