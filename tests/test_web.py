"""The web dashboard's server, through httpx on a real socket: cmdr in-process,
real `latis-unit` processes behind it (the browser's own tests: test_web_browser.py).

Each line of SECURITY.md's "The web dashboard" names the test here that holds it.
"""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from web_helpers import latis, latis_home, sse_events

from latis_core import RequestError
from latis_core._cmdr.api import METHODS, Method
from latis_core._cmdr.config import ConfigError, parse_config
from latis_core._cmdr.daemon import Daemon, serve_daemon
from latis_core._cmdr.web.auth import Keys, check
from latis_core._cmdr.web.server import start_web, stop_web

#: A unit name that must never show in an answer to a stranger.
SECRET = "payroll-box"
CONFIG = f"""
[units.{SECRET}]
agent_options = {{ delay = "0.02" }}
[units.{SECRET}.provisioner]
type = "process"
"""


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with latis_home() as path:
        monkeypatch.setenv("LATIS_HOME", str(path))
        yield path


@asynccontextmanager
async def dashboard(config: str = CONFIG, **web: Any) -> AsyncIterator[tuple[Daemon, dict]]:
    """cmdr serving `config`, and the dashboard on a free port (`web`: start_web's)."""
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(serve_daemon, parse_config(config))
        try:
            info = await start_web(daemon, port=0, **web)
            yield daemon, info
        finally:
            daemon.stop.set()


def token_of(info: dict) -> str:
    return str(info["login"].rsplit("token=", 1)[1])


@asynccontextmanager
async def browser_like(info: dict) -> AsyncIterator[httpx.AsyncClient]:
    """A client let in as a browser is: the token URL once, then its cookie and CSRF."""
    async with httpx.AsyncClient(base_url=info["url"], timeout=20) as client:
        first = await client.get(info["login"])
        assert first.status_code == 303
        hello = (await client.get("/api/v1/hello")).json()
        client.headers.update({"origin": info["url"].rstrip("/"), "x-latis-csrf": hello["csrf"]})
        yield client


def bearer(info: dict) -> httpx.AsyncClient:
    """A script's client: the token as a bearer token."""
    return httpx.AsyncClient(
        base_url=info["url"], timeout=20, headers={"authorization": f"Bearer {token_of(info)}"}
    )


class TestToken:
    async def test_nothing_is_served_without_the_token(self, home: Path) -> None:
        """No token (or a wrong one): 401 on every path, the page's files too, and no
        answer names a unit."""
        async with dashboard() as (_, info), httpx.AsyncClient(base_url=info["url"]) as client:
            wrong = {"cookie": f"latis_web_{info['port']}=nope"}
            for method, path, headers in [
                ("GET", "/", {}),
                ("GET", "/?token=wrong", {}),
                ("GET", "/static/app.js", {}),
                ("GET", "/static/style.css", wrong),
                ("GET", "/api/v1/call/status", {}),
                ("GET", "/api/v1/call/status", {"authorization": "Bearer wrong"}),
                ("GET", "/api/v1/events", wrong),
                ("GET", "/api/v1/hello", {}),
                ("GET", "/no/such/page", {}),
                ("POST", "/api/v1/sessions", {}),
                ("POST", f"/api/v1/call/unit.up?token={token_of(info)}", {}),
            ]:
                response = await client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path)
                assert SECRET not in response.text
                assert "set-cookie" not in response.headers
            # With it, the same status names the unit.
            async with bearer(info) as script:
                status = (await script.get("/api/v1/call/status")).json()
            assert SECRET in [unit["unit"] for unit in status["units"]]

    async def test_the_token_url_gives_a_strict_httponly_cookie_and_drops_the_token(
        self, home: Path
    ) -> None:
        """The URL `latis web` prints: a 303 to the same path without the token, with a
        cookie that is HttpOnly, SameSite=Strict, not the token itself; the cookie then
        lets the page and its API in."""
        async with dashboard() as (_, info), httpx.AsyncClient(base_url=info["url"]) as client:
            response = await client.get(info["login"])
            assert response.status_code == 303
            assert response.headers["location"] == "/"
            cookie = response.headers["set-cookie"]
            flags = [part.strip().lower() for part in cookie.split(";")]
            name, _, value = flags[0].partition("=")
            assert name == f"latis_web_{info['port']}"
            assert value and value != token_of(info).lower()
            assert {"httponly", "samesite=strict", "path=/"} <= set(flags)
            assert "secure" not in flags  # plain HTTP on loopback (TLS: see below)
            page = await client.get("/")
            assert page.status_code == 200 and "<title>latis</title>" in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert page.headers["x-frame-options"] == "DENY"
            assert page.headers["referrer-policy"] == "no-referrer"
            assert (await client.get("/static/app.js")).status_code == 200
            status = await client.get("/api/v1/call/status")
            assert SECRET in status.text
            async with httpx.AsyncClient(base_url=info["url"]) as fresh:
                deep = await fresh.get(f"/api/v1/call/status?a=1&token={token_of(info)}&b=2")
                assert deep.headers["location"] == "/api/v1/call/status?a=1&b=2"  # the rest

    async def test_the_token_file_is_private_and_a_new_token_locks_old_browsers_out(
        self, home: Path
    ) -> None:
        """The token is kept 0600; `latis web --new-token` makes old URLs and cookies
        useless at once."""
        async with dashboard() as (daemon, info):
            assert stat.S_IMODE(os.stat(info["token_file"]).st_mode) == 0o600
            token = await trio.to_thread.run_sync(Path(info["token_file"]).read_text)
            assert token.strip() == token_of(info)
            async with browser_like(info) as old:
                assert (await old.get("/api/v1/call/status")).status_code == 200
                again = await start_web(daemon, new_token=True)
                assert again["url"] == info["url"] and not again["started"]
                assert token_of(again) != token_of(info)
                assert (await old.get("/api/v1/call/status")).status_code == 401
                assert (await old.get(info["login"])).status_code == 401
            async with browser_like(again) as new:
                assert (await new.get("/api/v1/call/status")).status_code == 200

    async def test_another_host_name_is_refused(self, home: Path) -> None:
        """DNS rebinding: a page of another site whose name resolves to 127.0.0.1
        reaches nothing, even with the token."""
        async with dashboard() as (_, info), bearer(info) as client:
            response = await client.get("/api/v1/call/status", headers={"host": "attacker.example"})
            assert response.status_code == 421
            assert SECRET not in response.text


class TestCrossOrigin:
    async def test_a_cross_origin_post_is_refused(self, home: Path) -> None:
        """A state-changing request with the cookie needs this page's Origin and the CSRF
        token; a request from another site's page changes nothing."""
        async with dashboard() as (daemon, info), browser_like(info) as client:
            body = {"unit": SECRET}
            for headers in [
                {"origin": "http://attacker.example"},
                {"origin": "null"},
                {"x-latis-csrf": "wrong"},
                {"x-latis-csrf": ""},
            ]:
                response = await client.post("/api/v1/sessions", json=body, headers=headers)
                assert response.status_code == 403, headers
                assert SECRET not in response.text
            without_origin = {k: v for k, v in client.headers.items() if k != "origin"}
            async with httpx.AsyncClient(base_url=info["url"], cookies=client.cookies) as bare:
                response = await bare.post("/api/v1/sessions", json=body, headers=without_origin)
            assert response.status_code == 403
            assert daemon.session_states == {}  # nothing was opened
            # A bearer token is not ambient: no CSRF token needed, a foreign Origin still
            # refused.
            async with bearer(info) as script:
                foreign = await script.post(
                    "/api/v1/call/inbox.list",
                    json={},
                    headers={"origin": "http://attacker.example"},
                )
                assert foreign.status_code == 403
            created = await client.post("/api/v1/sessions", json=body)
            assert created.status_code == 201
            assert daemon.session_states == {created.json()["session"]: "idle"}


class TestApi:
    async def test_the_api_is_the_daemons_method_table(self, home: Path) -> None:
        """/api/v1/methods lists the daemon's methods; calls are checked by the same
        spec (a wrong parameter names its path), a method that changes things is not
        a GET, an unknown one is a 404."""
        async with dashboard() as (_, info), bearer(info) as client:
            listed = (await client.get("/api/v1/methods")).json()["methods"]
            assert {m["method"] for m in listed} == {m.value for m in METHODS}
            bad = await client.post("/api/v1/call/unit.up", json={"unit": 3})
            assert bad.status_code == 400
            assert bad.json()["error"] == {
                "code": "bad_message",
                "message": "params.unit: expected a string",
            }
            assert (await client.get(f"/api/v1/call/unit.up?unit={SECRET}")).status_code == 405
            assert (await client.get("/api/v1/call/no.such")).status_code == 404
            listed = await client.post("/api/v1/sessions", json={"unit": ["local"]})
            assert (listed.status_code, listed.json()["error"]["message"]) == (
                400, "unit: expected a unit's name")
            missing = await client.post("/api/v1/call/unit.up", json={"unit": "nope"})
            assert (missing.status_code, missing.json()["error"]["code"]) == (404, "unknown_unit")
            up = await client.post("/api/v1/call/unit.up", json={"unit": SECRET})
            assert up.json() == {"unit": SECRET, "connection": "connected"}
            pending = await client.get("/api/v1/call/inbox.list?all=true")
            assert pending.json() == {"items": []}

    async def test_a_streaming_method_streams_its_progress(self, home: Path) -> None:
        """A method that streams (unit.up) sends its progress as events, then its result."""
        async with dashboard() as (_, info), bearer(info) as client:
            async with client.stream(
                "POST",
                "/api/v1/call/unit.up",
                json={"unit": SECRET},
                headers={"accept": "text/event-stream"},
            ) as response:
                seen = [item async for item in sse_events(response)]
        kinds = [event for event, _ in seen]
        assert kinds[-1] == "result" and "chunk" in kinds
        assert any("is up" in data["text"] for event, data in seen if event == "chunk")
        assert seen[-1][1] == {"unit": SECRET, "connection": "connected"}

    async def test_a_prompt_streams_its_question_is_answered_and_it_goes_on(
        self, home: Path
    ) -> None:
        """Through the API alone: a session (echo agent asking a question), a prompt,
        its chunks live; the question answered by `inbox.answer` lets it finish."""
        async with dashboard() as (_, info), bearer(info) as client:
            created = await client.post(
                "/api/v1/sessions", json={"unit": SECRET, "options": {"ask": "Which colour?"}}
            )
            sid = created.json()["session"]
            sent = await client.post(
                f"/api/v1/sessions/{sid}/prompts", json={"text": "paint the shed"}
            )
            assert sent.status_code == 201
            prompt = sent.json()["prompt"]
            chunks: list[str] = []
            async with client.stream("GET", f"/api/v1/prompts/{prompt}/events") as response:
                async for event, data in sse_events(response):
                    if event == "input":
                        assert data["question"] == "Which colour?"
                        answered = await client.post(
                            "/api/v1/call/inbox.answer",
                            json={"id": data["id"], "answer": "deep green", "by": "web"},
                        )
                        assert answered.json()["answered_by"] == "web"
                    elif event == "chunk":
                        chunks.append(data["text"])
                    elif event == "end":
                        assert data["outcome"] == "complete"
                        break
            assert "".join(chunks) == "deep green paint the shed"
            transcript = (await client.get(f"/api/v1/sessions/{sid}/transcript")).json()
            [entry] = transcript["prompts"]
            assert entry["inputs"][0]["answer"] == "deep green"
            assert "".join(c["text"] for c in entry["chunks"]) == "deep green paint the shed"
            # A follower that comes late (or reconnects) gets what it missed, by seq.
            async with client.stream(
                "GET", f"/api/v1/prompts/{prompt}/events", headers={"last-event-id": "2"}
            ) as response:
                late = [
                    data["seq"] async for event, data in sse_events(response) if event == "chunk"
                ]
            assert late == [3, 4]

    async def test_cancel_and_close_from_the_api(self, home: Path) -> None:
        """A long prompt cancelled from the API ends `cancelled`; closing the session
        closes it on the unit (unknown to it afterwards)."""
        async with dashboard() as (daemon, info), bearer(info) as client:
            sid = (await client.post("/api/v1/sessions", json={"unit": SECRET})).json()["session"]
            words = " ".join(f"w{i}" for i in range(500))
            prompt = (
                await client.post(f"/api/v1/sessions/{sid}/prompts", json={"text": words})
            ).json()["prompt"]
            async with client.stream("GET", f"/api/v1/prompts/{prompt}/events") as response:
                async for event, data in sse_events(response):
                    if event == "chunk" and data["seq"] == 3:
                        cancel = await client.post(f"/api/v1/prompts/{prompt}/cancel")
                        assert cancel.status_code == 202
                    if event == "end":
                        assert data["outcome"] == "cancelled"
                        assert data["chunks"] < 500
                        break
            closed = await client.post(f"/api/v1/sessions/{sid}/close")
            assert closed.json() == {"session": sid, "state": "closed"}
            again = await client.post(f"/api/v1/sessions/{sid}/prompts", json={"text": "x"})
            assert (again.status_code, again.json()["error"]["code"]) == (404, "unknown_session")
            assert sid not in daemon.session_states

    async def test_what_a_client_gets_wrong_is_a_json_4xx(self, home: Path) -> None:
        """Ids past any integer, an unknown path or method, a body over the limit, a
        second prompt to a busy session: each a 4xx in the API's JSON form (not a 500,
        not plain text), and whole numbers where the API takes a number."""
        async with dashboard() as (daemon, info), bearer(info) as client:
            huge = 10**23
            for method, path in (("POST", f"/api/v1/prompts/{huge}/cancel"),
                                 ("GET", f"/api/v1/prompts/{huge}/events"),
                                 ("GET", f"/api/v1/call/coordination.list?limit={huge}"),
                                 ("GET", f"/api/v1/prompts/1/events?after={huge}"),
                                 ("GET", "/api/v1/nope"),
                                 ("PUT", "/api/v1/call/status")):
                answer = await client.request(method, path)
                assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text)
                assert set(answer.json()["error"]) == {"code", "message"}, path
            answer = await client.post("/api/v1/call/inbox.answer",
                                       json={"id": f"{huge}.0", "answer": "x"})
            assert answer.status_code == 400
            big = await client.post("/api/v1/call/session.get", content=b" " * (17 << 20))
            assert (big.status_code, big.json()["error"]["code"]) == (413, "frame_too_large")
            pruned = await client.post("/api/v1/call/session.prune", json={"idle": 3600})
            assert pruned.json()["idle"] == 3600
            sid = (await client.post("/api/v1/sessions", json={"unit": SECRET})).json()["session"]
            words = " ".join(f"w{i}" for i in range(2000))
            first = await client.post(f"/api/v1/sessions/{sid}/prompts", json={"text": words})
            second = await client.post(f"/api/v1/sessions/{sid}/prompts", json={"text": "x"})
            assert (second.status_code, second.json()["error"]["code"]) == (409, "session_busy")
            assert f"is busy with prompt {first.json()['prompt']}" in second.json()["error"][
                "message"]
            assert (await client.get("/api/v1/hello")).status_code == 200

    async def test_the_dashboard_stopped_through_itself_answers_first(self, home: Path) -> None:
        """`web.stop` asked of the dashboard it stops gets its answer (it was an empty
        reply: the server stopped under it), then the dashboard is gone."""
        async with dashboard() as (daemon, info), bearer(info) as client:
            stopped = await client.post("/api/v1/call/web.stop")
            assert (stopped.status_code, stopped.json()) == (200, {"stopped": True})
            with trio.fail_after(10):
                while daemon.web is not None:
                    await trio.sleep(0.05)

    async def test_a_coordination_whose_client_goes_away_ends_cancelled(self, home: Path) -> None:
        """A coordination streamed over the API is cancelled when its client goes away,
        and stored as such (it stayed `running`); the daemon goes on."""
        async with dashboard() as (_, info), bearer(info) as client:
            words = " ".join(f"w{i}" for i in range(300))
            async with client.stream("POST", "/api/v1/call/coordinate",
                                     json={"task": words, "agents": [SECRET]},
                                     headers={"accept": "text/event-stream"}) as response:
                seen = 0
                async for _ in sse_events(response):
                    seen += 1
                    if seen > 5:
                        break
            with trio.fail_after(20):
                while True:
                    listed = (await client.get("/api/v1/call/coordination.list")).json()
                    [latest] = listed["coordinations"]
                    if latest["state"] != "running":
                        break
                    await trio.sleep(0.05)
            assert latest["state"] == "cancelled"
            assert (await client.get("/api/v1/call/status")).status_code == 200

    async def test_the_event_stream_follows_the_controller(self, home: Path) -> None:
        """/api/v1/events: `ready`, then each session's states (with its unit) and the
        unit's connection, as the controller changes them."""
        async with dashboard() as (_, info), bearer(info) as client:
            seen: list[tuple[str, Any]] = []
            async with client.stream("GET", "/api/v1/events") as response:
                events = sse_events(response)
                assert (await events.__anext__())[0] == "ready"
                sid = (await client.post("/api/v1/sessions", json={"unit": SECRET})).json()[
                    "session"
                ]
                await client.post(f"/api/v1/sessions/{sid}/prompts", json={"text": "hi"})
                async for event, data in events:
                    seen.append((event, data))
                    if (
                        event == "session"
                        and data["state"] == "idle"
                        and len([s for s in seen if s[0] == "session"]) > 1
                    ):
                        break
            units = [d for e, d in seen if e == "unit"]
            assert units[-1]["unit"] == SECRET and units[-1]["connection"] == "connected"
            states = [(d["session"], d["unit"], d["state"]) for e, d in seen if e == "session"]
            assert states == [(sid, SECRET, "idle"), (sid, SECRET, "busy"), (sid, SECRET, "idle")]
            numbers = [d["seq"] for _, d in seen]
            assert numbers == sorted(numbers)


class TestHub:
    async def test_a_browser_that_stops_reading_is_told_to_resync(self, home: Path) -> None:
        """Events pile up for a stream nobody reads: past the limit they are dropped
        (memory stays bounded) and the stream says `resync` instead."""
        from latis_core._cmdr.web.events import LIMIT

        async with dashboard() as (daemon, _):
            hub = daemon.web.hub
            stream = hub.stream()
            assert (await stream.__anext__()).startswith(b"event: ready")
            for n in range(LIMIT + 10):  # the fault: a reader that never reads
                hub._publish("session", {"session": f"s{n}", "state": "busy"})
            assert (await stream.__anext__()).startswith(b"event: resync")
            hub._publish("session", {"session": "after", "state": "idle"})
            assert b'"after"' in await stream.__anext__()
            await stream.aclose()
            assert hub.streams == 0

    def test_the_page_never_builds_html_from_data(self) -> None:
        """The page's script puts text in the page, never markup (agent output is
        hostile): no innerHTML, outerHTML, insertAdjacentHTML or document.write."""
        from importlib.resources import files

        script = (files("latis_core._cmdr.web") / "static" / "app.js").read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in script


class TestConnections:
    async def test_a_flood_of_silent_connections_is_bounded_and_closed(
        self, home: Path
    ) -> None:
        """Forty connections from one address that never send a byte: the
        dashboard holds at most its per-address bound of them open, serves a
        browser from another address meanwhile, and closes the silent ones
        within seconds (hypercorn's wait for a first request), so the slots
        come back."""
        config = CONFIG + "[web]\nmax_connections = 32\nmax_connections_per_host = 8\n"
        async with dashboard(config) as (daemon, info):
            flood = [await trio.open_tcp_stream("127.0.0.1", info["port"],
                                                local_address="127.0.0.2")
                     for _ in range(40)]

            def seen() -> dict:
                return dict(daemon.web.describe(started=True)["connections"])

            with trio.fail_after(10):
                while seen()["open"] + seen()["waiting"] < 40:
                    await trio.sleep(0.02)
            assert seen()["open"] == 8 and seen()["waiting"] == 32
            async with bearer(info) as client:  # from 127.0.0.1: its own slots
                assert (await client.get("/api/v1/hello")).status_code == 200
            assert seen()["open"] <= 9
            # Silent past hypercorn's 5 s for a first request: closed, the slots
            # taken by those that waited, and those closed in turn.
            with trio.fail_after(20):
                while seen()["open"] or seen()["waiting"]:
                    await trio.sleep(0.1)
            closed = 0
            for stream in flood:
                with trio.move_on_after(1):
                    try:
                        closed += await stream.receive_some(1) == b""
                    except trio.BrokenResourceError:
                        closed += 1
                await stream.aclose()
            assert closed == 40
            assert seen()["accepted"] >= 9


class TestTls:
    async def test_a_non_loopback_address_needs_tls(self, home: Path) -> None:
        """Off loopback, the dashboard is refused without TLS (and says so); with it,
        it is HTTPS from cmdr's own CA, plain HTTP gets nothing, the cookie is Secure."""
        async with dashboard(host="127.0.0.1") as (daemon, _):
            await stop_web(daemon)
            with pytest.raises(RequestError, match="not loopback.*TLS"):
                await start_web(daemon, host="0.0.0.0", port=0)
            assert daemon.web is None
            info = await start_web(daemon, host="0.0.0.0", port=0, tls=True)
            assert info["url"].startswith("https://") and info["ca"]
            url = f"https://127.0.0.1:{info['port']}/"
            trust = ssl.create_default_context(cafile=info["ca"])
            async with httpx.AsyncClient(base_url=url, verify=trust, http2=True) as client:
                response = await client.get(f"/?token={token_of(info)}")
                assert response.status_code == 303
                assert response.http_version == "HTTP/2"  # as browsers get it over TLS
                assert "secure" in response.headers["set-cookie"].lower()
                assert (await client.get("/api/v1/call/status")).status_code == 200
            with pytest.raises(httpx.HTTPError):
                async with httpx.AsyncClient() as plain:
                    await plain.get(f"http://127.0.0.1:{info['port']}/?token=x")
            with pytest.raises(httpx.ConnectError):  # no CA: the certificate is not trusted
                async with httpx.AsyncClient() as untrusting:
                    await untrusting.get(url)


class TestWhere:
    async def test_an_address_it_cannot_listen_on_is_said_and_the_daemon_goes_on(
        self, home: Path
    ) -> None:
        """A port in use, a port out of range, a host that does not resolve: each
        refused with why and the way out (not an internal error), and the dashboard
        served before goes on where it was."""
        taken = trio.socket.socket()
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with taken:
            async with dashboard(host="127.0.0.1") as (daemon, served):
                with pytest.raises(RequestError, match=(
                    f"cannot listen on 127.0.0.1:{port}: Address already in use "
                    r"\(another port: `latis web --port N`")):
                    await start_web(daemon, port=port)
                with pytest.raises(RequestError,
                                   match="port 70000: expected a port number from 0 to 65535"):
                    await start_web(daemon, port=70000)
                with pytest.raises(RequestError, match=(
                    r"cannot listen on nosuch.invalid:0: .*\(another host: `latis web --host")):
                    await start_web(daemon, host="nosuch.invalid", port=0, tls=True)
                assert daemon.web is not None
                assert daemon.web.describe(started=False)["login"] == served["login"]
                async with bearer(served) as client:
                    assert (await client.get("/api/v1/hello")).json()["api"] == 1


class TestCli:
    @pytest.mark.slow
    def test_latis_web_prints_the_url_and_refuses_clear_text_off_loopback(self, home: Path) -> None:
        """`latis web` starts cmdr and prints the URL with the token (on stdout, for
        scripts); asked for another address without TLS it says why, exits 1 and the
        dashboard stays where it was; `--stop` stops it."""
        (home / "config.toml").write_text(CONFIG)
        try:
            served = latis(home, "web", "--port", "0")
            assert served.returncode == 0, served.stderr
            url = served.stdout.strip()
            assert url.startswith("http://127.0.0.1:") and "?token=" in url
            assert "keep it private" in served.stderr
            again = latis(home, "web", "--json")
            assert again.returncode == 0 and '"started": false' in again.stdout
            assert url in again.stdout
            refused = latis(home, "web", "--host", "0.0.0.0")
            assert refused.returncode == 1
            assert "not loopback" in refused.stderr and "--tls" in refused.stderr
            assert "Traceback" not in refused.stderr
            assert url in latis(home, "web").stdout  # still served, where it was
            bad = latis(home, "web", "--port", "70000")
            assert bad.returncode == 2 and "expected a port number from 0 to 65535" in bad.stderr
            stopped = latis(home, "web", "--stop")
            assert (stopped.returncode, stopped.stderr.strip()) == (0, "the dashboard stopped")
        finally:
            latis(home, "daemon", "stop")


class TestConfig:
    async def test_web_enabled_in_config_serves_at_start(self, home: Path) -> None:
        """`[web] enabled = true`: the daemon serves the dashboard as it starts."""
        config = CONFIG + "\n[web]\nenabled = true\nport = 0\n"
        async with trio.open_nursery() as nursery:
            daemon = await nursery.start(serve_daemon, parse_config(config))
            with trio.fail_after(10):
                while daemon.web is None or daemon.web.keys is None:
                    await trio.sleep(0.02)
            info = daemon.web.describe(started=False)
            async with bearer(info) as client:
                assert (await client.get("/api/v1/hello")).json()["api"] == 1
            daemon.stop.set()

    def test_a_wrong_web_table_is_a_config_error(self) -> None:
        """A `[web]` key of the wrong kind or an unknown one is named, with its line."""
        with pytest.raises(ConfigError) as caught:
            parse_config('[web]\nport = "x"\nbind = 1\n')
        text = str(caught.value)
        assert "<config>:2: web.port: expected a port number" in text
        assert "<config>:3: web.bind: unknown key" in text
        with pytest.raises(ConfigError, match=r"<config>:2: web.max_connections_per_host: "
                           "expected a whole number of connections, at least 1"):
            parse_config("[web]\nmax_connections_per_host = 0\n")
        assert parse_config("").web.enabled is False


class TestCheck:
    """`auth.check` alone: the decision for each kind of request."""

    KEYS = Keys("t0ken", 8340, False, frozenset({"127.0.0.1", "localhost"}))
    HOST = ("host", "127.0.0.1:8340")
    COOKIE = ("cookie", f"a=b; latis_web_8340={KEYS.cookie_value}")
    ORIGIN = ("origin", "http://127.0.0.1:8340")

    @pytest.mark.parametrize(
        ("method", "query", "headers", "status"),
        [
            ("GET", "", [HOST], 401),
            ("GET", "token=t0ken", [HOST], 0),
            ("POST", "token=t0ken", [HOST], 401),  # the token in a URL only logs a GET in
            ("GET", "", [HOST, COOKIE], 0),
            ("GET", "", [("host", "evil:8340"), COOKIE], 421),
            ("GET", "", [("host", "127.0.0.1:8340@evil.example"), COOKIE], 421),
            ("GET", "", [("host", "[::1]evil"), COOKIE], 421),
            ("GET", "", [("host", "127.0.0.1:x"), COOKIE], 421),
            ("GET", "", [HOST, COOKIE, ("origin", "http://evil")], 403),
            ("POST", "", [HOST, COOKIE, ORIGIN], 403),
            ("POST", "", [HOST, COOKIE, (CSRF := "x-latis-csrf", KEYS.csrf)], 403),
            ("POST", "", [HOST, COOKIE, ORIGIN, (CSRF, KEYS.csrf)], 0),
            ("POST", "", [HOST, ("authorization", "Bearer t0ken")], 0),
            ("POST", "", [HOST, ("authorization", "Bearer t0ke")], 401),
            ("GET", "", [HOST, ("cookie", "latis_web_8340=t0ken")], 401),  # not the token
        ],
    )
    def test_decisions(
        self, method: str, query: str, headers: list[tuple[str, str]], status: int
    ) -> None:
        assert check(self.KEYS, method, "/", query, headers).status == status


def test_every_web_method_is_in_the_table() -> None:
    """`web.start` and `web.stop` are daemon methods like the others."""
    assert {Method.WEB_START, Method.WEB_STOP} <= set(METHODS)
