#!/usr/bin/env python
"""The web dashboard under load: 1,000 sessions, 50 of them streaming, in one run.

    python benchmarks/web.py            # 1,000 sessions, 50 streaming, 5 s windows (~1 min)
    python benchmarks/web.py --short    # 200 sessions, 10 streaming, 2 s windows (~25 s)
    python benchmarks/web.py --json     # also print the numbers as JSON (last line)

A real daemon (`latis daemon`, started as the CLI starts it) with real `latis-unit`
processes (4 units, the python agent `_web_agent:stamped`: each chunk is the
wall-clock time the unit sent it), the dashboard served by `latis web`'s method
(`web.start`), and headless Chromium (Debian's, through Selenium) on the page.

Three phases, the same streaming load in each (S prompts, RATE chunks a second):

- `cpu_floor`: nobody follows the prompts: what cmdr spends storing them.
- `cpu_attach`: each prompt followed over the daemon's socket, as `latis attach`
  does (S-1 connections in this process, and one real `latis attach`).
- `cpu_web`: each prompt followed by a server-sent-event stream of the dashboard
  (S-1 httpx clients in this process; the page in Chromium follows the first one
  in its pane, with every session in its table and the controller's event stream
  open), and one real `latis attach` on the page's session, for the latency rows.

CPU is cmdr's own (utime + stime from /proc), per second and per streaming
session, in % of one core. Latency is per chunk of the session the page follows,
from the unit sending it to: `latis attach --json` printing it (read by a process
of its own), and the page's DOM holding it (a MutationObserver in the page,
`performance.timeOrigin + now()`); both on the same chunks. The unit sends one
pipe hop (tens of µs) before cmdr receives, so these bound "from cmdr" from
above. Needs chromium and chromium-driver (.ci/run installs them); without them
the browser rows are skipped and said so. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parent / "tests"))
from bench import process_cpu  # noqa: E402
from web_helpers import LATIS, chromium, have_chromium, pids_under  # noqa: E402

UNITS = 4
OBSERVER = """
window.__latis_seen = [];
window.__latis_since = (performance.timeOrigin + performance.now()) / 1000;
new MutationObserver((records) => {
  const now = (performance.timeOrigin + performance.now()) / 1000;
  for (const record of records) for (const node of record.addedNodes) {
    for (const stamp of (node.textContent || "").match(/\\d+\\.\\d{6}/g) || []) {
      window.__latis_seen.push([stamp, now]);
    }
  }
}).observe(document.getElementById("transcript"), {childList: true, subtree: true});
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def config() -> str:
    tables = []
    for i in range(UNITS):
        tables.append(f"""
[units.bench-{i}]
agent = "python"
agent_options = {{ target = "_web_agent:stamped", path = "{HERE}" }}
[units.bench-{i}.provisioner]
type = "process"
""")
    return "".join(tables)


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(values),
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
    }


class Run:
    def __init__(self, args: argparse.Namespace, home: Path) -> None:
        self.args = args
        self.home = home
        self.rows: dict[str, dict[str, Any]] = {}
        self.sessions: list[str] = []
        self.pid = 0
        self.info: dict[str, Any] = {}
        self.http: Any = None
        self.browser: Any = None

    def chunks_per_prompt(self) -> int:
        a = self.args
        return int(a.rate * (a.warmup + a.window + 1.0))

    async def start_prompts(self) -> list[tuple[str, int]]:
        text = f"{self.chunks_per_prompt()} {1 / self.args.rate:.4f}"
        started = []
        for sid in self.sessions[: self.args.streaming]:
            reply = await self.http.post(f"/api/v1/sessions/{sid}/prompts", json={"text": text})
            reply.raise_for_status()
            started.append((sid, reply.json()["prompt"]))
        return started

    async def wait_ended(self, started: list[tuple[str, int]]) -> None:
        for sid, _ in started:
            while True:
                got = (await self.http.get(f"/api/v1/call/session.get?session={sid}")).json()
                if got["last_prompt"]["state"] != "running":
                    break
                await trio.sleep(0.1)

    async def measure(self, name: str, what: str) -> None:
        """cmdr's CPU over the window, per streaming session (in % of a core)."""
        await trio.sleep(self.args.warmup)
        c0, t0 = process_cpu(self.pid), time.monotonic()
        await trio.sleep(self.args.window)
        c1, t1 = process_cpu(self.pid), time.monotonic()
        share = 100 * (c1 - c0) / (t1 - t0)
        self.rows[name] = {
            "what": what,
            "cmdr_cpu_pct": share,
            "per_session_pct": share / self.args.streaming,
        }
        log(
            f"{name}: cmdr {share:.1f}% of a core, "
            f"{share / self.args.streaming:.2f}% per streaming session"
        )

    async def phase_floor(self) -> None:
        started = await self.start_prompts()
        await self.measure("cpu_floor", "nobody follows")
        await self.wait_ended(started)

    async def phase_attach(self) -> None:
        import latis_core

        started = await self.start_prompts()
        received = [0]
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(latis_core.open_daemon(autostart=False))
                for _ in started
            ]
            async with trio.open_nursery() as nursery:
                for cmdr, (sid, prompt) in zip(clients, started, strict=True):

                    async def follow(
                        cmdr: Any = cmdr, sid: str = sid, prompt: int = prompt
                    ) -> None:
                        stream = await cmdr.session(sid).reattach(prompt)
                        async for _ in stream:
                            received[0] += 1

                    nursery.start_soon(follow)
                await self.measure("cpu_attach", "each followed over cmdr's socket (latis attach)")
        self.rows["cpu_attach"]["chunks"] = received[0]
        log(f"  the followers received {received[0]} chunks")

    async def phase_web(self) -> None:
        started = await self.start_prompts()
        first_sid, _ = started[0]
        received = [0]
        stamps = self.home / "attach-stamps.txt"
        attach = await trio.lowlevel.open_process(
            f"{' '.join(LATIS)} attach {first_sid} --json | "
            f"{sys.executable} {HERE / '_web_agent.py'} stamp {stamps}",
            shell=True,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with trio.open_nursery() as nursery:
                for _, prompt in started[1 if self.browser else 0 :]:

                    async def follow(prompt: int = prompt) -> None:
                        async with self.http.stream(
                            "GET", f"/api/v1/prompts/{prompt}/events"
                        ) as response:
                            async for line in response.aiter_lines():
                                if line.startswith("event: chunk"):
                                    received[0] += 1
                                elif line.startswith("event: end"):
                                    return

                    nursery.start_soon(follow)
                if self.browser is not None:
                    await trio.to_thread.run_sync(self.follow_in_page, first_sid)
                await self.measure("cpu_web", "each followed by the dashboard's SSE")
                await self.wait_ended(started)
                nursery.cancel_scope.cancel()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(attach.pid, signal.SIGTERM)
            with trio.move_on_after(10):
                await attach.wait()
        self.rows["cpu_web"]["chunks"] = received[0]
        log(f"  the followers received {received[0]} chunks (the page's aside)")
        await trio.to_thread.run_sync(self.latency, stamps)

    # ---- the browser -------------------------------------------------------------------

    def open_page(self) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        driver = self.browser
        count = len(self.sessions)
        t0 = time.monotonic()
        driver.get(self.info["login"])
        WebDriverWait(driver, 120, poll_frequency=0.02).until(
            lambda d: (
                d.execute_script("return document.querySelectorAll('#sessions tbody tr').length")
                >= count
            )
        )
        self.rows["page_load"] = {
            "what": f"the page shows {count} sessions",
            "ms": 1000 * (time.monotonic() - t0),
        }
        log(f"page_load: {self.rows['page_load']['ms']:.0f} ms for {count} sessions")

    def follow_in_page(self, sid: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        driver = self.browser
        driver.execute_script(f"document.querySelector('tr[data-session=\"{sid}\"]').click()")
        WebDriverWait(driver, 30, poll_frequency=0.02).until(
            lambda d: d.find_element("id", "cancel").is_enabled()
        )
        driver.execute_script(OBSERVER)

    def latency(self, stamps: Path) -> None:
        """Both rows over the same chunks: those sent once both followed live (`latis
        attach` first replays what was sent before it started; the page's observer
        sees only what comes after it was installed)."""
        attach: dict[str, float] = {}
        live = 0.0
        if stamps.exists():
            for line in stamps.read_text().splitlines():
                sent, read = line.split()
                live = live or float(read)  # its first line: from then on, it is live
                attach[sent] = float(read) - float(sent)
        dom: dict[str, float] = {}
        if self.browser is not None:
            live = max(live, float(self.browser.execute_script("return window.__latis_since")))
            for sent, shown in self.browser.execute_script("return window.__latis_seen || []"):
                dom[sent] = float(shown) - float(sent)
        keys = set(attach) & set(dom) if self.browser is not None else set(attach)
        both = sorted(s for s in keys if float(s) > live)
        self.rows["lat_attach"] = {
            "what": "unit -> latis attach --json printed it",
            **summary([1000 * attach[s] for s in both]),
        }
        if self.browser is not None:
            self.rows["lat_web_dom"] = {
                "what": "unit -> the page's DOM holds it",
                **summary([1000 * dom[s] for s in both]),
            }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    import latis_core

    home = Path(tempfile.mkdtemp(prefix="lwb", dir="/tmp"))
    os.environ["LATIS_HOME"] = str(home)
    os.environ.pop("LATIS_CONFIG", None)
    (home / "config.toml").write_text(config())
    run = Run(args, home)
    try:
        async with latis_core.open_daemon() as cmdr:
            log("starting units")
            async with trio.open_nursery() as nursery:
                for i in range(UNITS):
                    nursery.start_soon(cmdr.unit_up, f"bench-{i}")
            run.info = await cmdr.web_start(port=0)
            run.pid = int(run.info["pid"])
            token = run.info["login"].rsplit("token=", 1)[1]
            run.http = httpx.AsyncClient(
                base_url=run.info["url"], timeout=60, headers={"authorization": f"Bearer {token}"}
            )
            log(f"opening {args.sessions} sessions")
            limit = trio.CapacityLimiter(8)

            async def open_one(i: int) -> None:
                async with limit:
                    reply = await run.http.post(
                        "/api/v1/sessions", json={"unit": f"bench-{i % UNITS}"}
                    )
                    reply.raise_for_status()
                    run.sessions.append(reply.json()["session"])

            async with trio.open_nursery() as nursery:
                for i in range(args.sessions):
                    nursery.start_soon(open_one, i)
            if have_chromium() and not args.no_browser:
                run.browser = await trio.to_thread.run_sync(chromium)
                await trio.to_thread.run_sync(run.open_page)
            else:
                log(
                    "no browser (chromium and chromium-driver are not installed, or "
                    "--no-browser): the page rows are skipped"
                )
            for phase in (run.phase_floor, run.phase_attach, run.phase_web):
                log(
                    f"phase {phase.__name__[6:]}: {args.streaming} streaming at "
                    f"{args.rate:g} chunks/s"
                )
                await phase()
            await run.http.aclose()
        os.kill(run.pid, signal.SIGTERM)  # as `latis daemon stop` does
    finally:
        if run.browser is not None:
            with contextlib.suppress(Exception):
                run.browser.quit()
        for pid in pids_under(home):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)
    return run.rows


def table(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"web dashboard: {args.sessions} sessions, {args.streaming} streaming at "
        f"{args.rate:g} chunks/s each, {args.window:g} s windows",
        f"{'row':<12} {'what':<48} {'value':>30}",
    ]
    floor = rows.get("cpu_floor", {}).get("per_session_pct")
    for name, row in rows.items():
        if "per_session_pct" in row:
            extra = (
                ""
                if name == "cpu_floor" or floor is None
                else f" (+{row['per_session_pct'] - floor:.2f})"
            )
            value = f"{row['per_session_pct']:.2f}%{extra} of a core/session"
        elif "ms" in row:
            value = f"{row['ms']:.0f} ms"
        elif row.get("n"):
            value = f"median {row['median']:.1f} ms, p95 {row['p95']:.1f} ms (n={row['n']})"
        else:
            value = "no samples"
        lines.append(f"{name:<12} {row['what']:<48} {value:>30}")
    lines.append(
        "cpu rows: cmdr's utime+stime over the window / streaming sessions; "
        "(+x): above cpu_floor, the cost of following"
    )
    lines.append("lat rows: the same chunks, from the unit sending them (one pipe hop before cmdr)")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--short", action="store_true", help="200 sessions, 10 streaming, 2 s windows"
    )
    parser.add_argument("--sessions", type=int)
    parser.add_argument("--streaming", type=int)
    parser.add_argument("--rate", type=float, default=20.0, help="chunks a second per prompt")
    parser.add_argument("--window", type=float)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    short = args.short
    args.sessions = args.sessions or (200 if short else 1000)
    args.streaming = args.streaming or (10 if short else 50)
    args.window = args.window or (2.0 if short else 5.0)
    return args


if __name__ == "__main__":
    arguments = parse()
    results = trio.run(main, arguments)
    print(table(results, arguments))
    if arguments.json:
        print(json.dumps({"rows": results}))
