"""`latis web`: the dashboard that cmdr serves, and the URL that lets you in."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

from cyclopts import Parameter

from ._cmdr import OK, USAGE


def web(
    *,
    host: str | None = None,
    port: int | None = None,
    tls: Annotated[bool | None, Parameter(negative="--no-tls")] = None,
    new_token: Annotated[bool, Parameter(negative="")] = False,
    stop: Annotated[bool, Parameter(negative="")] = False,
    open_browser: Annotated[bool, Parameter(name="--open", negative="")] = False,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """Serve the web dashboard from cmdr and print its URL (it holds the token).

    The daemon serves the page in its own loop, on 127.0.0.1 unless told
    otherwise (`[web]` in config, or the options here, for as long as the
    daemon runs). The URL printed carries the dashboard's token, like
    Jupyter's: whoever has it controls your agents. Keep it to yourself;
    `--new-token` makes the old one (and every browser let in by it) useless.

    An address other than loopback needs `--tls`: the page is then served
    over HTTPS with a certificate from cmdr's own CA (its ca.pem is printed:
    import it in your browser).

    For example:
      latis web                      (prints http://127.0.0.1:8340/?token=...)
      latis web --open               (and opens it in your browser)
      latis web --port 0             (any free port)
      latis web --host 0.0.0.0 --tls
      latis web --new-token
      latis web --stop

    Args:
        host: the address to listen on (default: `[web] host`, else 127.0.0.1).
        port: the port (default: `[web] port`, else 8340; 0 picks a free one).
        tls: serve HTTPS with a certificate from cmdr's CA (needed off loopback).
        new_token: make a new token first (old URLs and cookies stop working).
        stop: stop serving the dashboard.
        open_browser: open the URL in a browser too.
        json_output: print the result as JSON (fields: docs/web.md).
    """
    from ._run import run_with_cmdr

    if port is not None and not 0 <= port <= 65535:
        print(f"latis: --port {port}: expected a port number from 0 to 65535", file=sys.stderr)
        return USAGE

    async def work(cmdr: Any) -> int:
        if stop:
            result = await cmdr.web_stop()
            if json_output:
                print(json.dumps(result))
            else:
                print(
                    "the dashboard stopped"
                    if result["stopped"]
                    else "the dashboard was not served",
                    file=sys.stderr,
                )
            return OK
        info = await cmdr.web_start(host=host, port=port, tls=tls, new_token=new_token)
        if json_output:
            print(json.dumps(info))
        else:
            how = "now served" if info["started"] else "served"
            print(
                f"the dashboard is {how} by cmdr (pid {info['pid']}); open this URL, "
                "which holds its token (keep it private):",
                file=sys.stderr,
            )
            print(info["login"], flush=True)
            if info["tls"]:
                print(
                    f"HTTPS with cmdr's own CA: trust {info['ca']} in your browser", file=sys.stderr
                )
        if open_browser:
            import webbrowser

            webbrowser.open(info["login"])
        return OK

    return run_with_cmdr(work)
