"""The web dashboard in a real browser: headless Chromium (Debian's) driven by Selenium,
against a real daemon started by `latis web`, with real `latis-unit` processes.

Skipped without chromium and chromium-driver (.ci/run installs them).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_helpers import chromium, have_chromium, latis, latis_home

pytestmark = pytest.mark.skipif(
    not have_chromium(),
    reason="chromium and chromium-driver are not installed (.ci/run installs them: "
    "apt-get install chromium chromium-driver)",
)

#: Ends with markup: an agent's words are shown as text, never run as HTML.
WORDS = " ".join(f"word{i}" for i in range(40)) + " <img src=x onerror=document.title='owned'>"
CONFIG = """
[units.box]
agent_options = { delay = "0.05" }
[units.box.provisioner]
type = "process"

[units.asker]
agent_options = { ask = "Deploy to production?" }
[units.asker.provisioner]
type = "process"
"""


@pytest.fixture
def home() -> Iterator[Path]:
    with latis_home() as path:
        (path / "config.toml").write_text(CONFIG)
        try:
            yield path
        finally:
            for log in sorted((path / "log").glob("*.log")):  # shown when a test fails
                print(f"---- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
            latis(path, "daemon", "stop", timeout=30)


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = chromium()
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def serve(home: Path) -> str:
    """`latis web --port 0`: the daemon starts, the URL with the token is printed."""
    result = latis(home, "web", "--port", "0")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    url = result.stdout.strip()
    assert url.startswith("http://127.0.0.1:") and "?token=" in url
    return url


def wait(driver: Any, condition: Any, timeout: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def reply(driver: Any) -> str:
    """The text of the last reply in the followed session's transcript."""
    return str(
        driver.execute_script(
            "const r = document.querySelectorAll('#transcript .reply');"
            "return r.length ? r[r.length - 1].textContent : '';"
        )
    )


def new_session(home: Path, unit: str) -> str:
    result = latis(home, "session", "new", "--unit", unit, "--json")
    assert result.returncode == 0, result.stderr
    import json

    return str(json.loads(result.stdout)["session"])


def sessions_of(home: Path) -> set[str]:
    import json

    result = latis(home, "status", "--json")
    assert result.returncode == 0, result.stderr
    return {sid for unit in json.loads(result.stdout)["units"] for sid in unit["sessions"]}


@pytest.mark.slow
def test_the_page_needs_its_token_then_shows_units_and_sessions(home: Path, browser: Any) -> None:
    """Without the token the browser gets a 401 page that names no unit; with the URL
    `latis web` printed, the token leaves the address bar (a cookie scripts cannot
    read takes its place) and the units and sessions appear, then new ones live."""
    url = serve(home)
    first = new_session(home, "box")
    browser.get(url.split("?")[0])
    assert "401" in browser.find_element("tag name", "h1").text
    assert "box" not in browser.page_source and "asker" not in browser.page_source
    browser.get(url + "x")  # a wrong token
    assert "401" in browser.find_element("tag name", "h1").text
    browser.get(url)
    assert "token" not in browser.current_url
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly
    wait(browser, lambda d: "live" == text_of(d, "live"))
    wait(browser, lambda d: d.find_elements("css selector", f'tr[data-session="{first}"]'))
    units = browser.find_element("id", "units").text
    assert "box" in units and "asker" in units
    # A session opened elsewhere appears without a reload (the event stream).
    second = new_session(home, "asker")
    row = wait(browser, lambda d: d.find_elements("css selector", f'tr[data-session="{second}"]'))
    assert "asker" in row[0].text and "idle" in row[0].text


@pytest.mark.slow
def test_a_prompt_sent_from_the_page_streams_into_it_and_a_cancel_stops_it(
    home: Path, browser: Any
) -> None:
    """Type a prompt in the page: its reply appears word by word while the prompt
    runs (seen part-way, before its end), then `complete`; a second one is cancelled
    from the page and ends `cancelled` on the unit."""
    url = serve(home)
    sid = new_session(home, "box")
    browser.get(url)
    wait(browser, lambda d: d.find_elements("css selector", f'tr[data-session="{sid}"]'))[0].click()
    wait(browser, lambda d: d.find_element("id", "prompt-text").is_enabled())
    browser.find_element("id", "prompt-text").send_keys(WORDS)
    browser.find_element("id", "send").click()
    # Part-way: some words shown, the prompt not ended yet (40 words, 50 ms apart).
    partial = wait(browser, lambda d: (lambda t: "word3 " in t and t)(reply(d)))
    assert "word39" not in partial and "complete" not in text_of(browser, "transcript")
    wait(browser, lambda d: "complete" in text_of(d, "transcript"))
    assert reply(browser) == WORDS
    assert not browser.find_elements("css selector", "#transcript img")
    assert browser.title == "latis"
    # The session row went busy and back to idle, live.
    wait(
        browser,
        lambda d: "idle" in d.find_element("css selector", f'tr[data-session="{sid}"]').text,
    )
    browser.find_element("id", "prompt-text").send_keys(WORDS + " " + WORDS)
    browser.find_element("id", "send").click()
    wait(browser, lambda d: d.find_element("id", "cancel").is_enabled() and "word2 " in reply(d))
    browser.find_element("id", "cancel").click()
    wait(browser, lambda d: "cancelled" in text_of(d, "transcript"))
    shown = latis(home, "session", "show", sid)
    assert "cancelled" in shown.stdout + shown.stderr


@pytest.mark.slow
def test_a_question_is_answered_from_the_page(home: Path, browser: Any) -> None:
    """A prompt sent from the CLI asks a question (echo's `ask`); the page, which
    follows the session, picks the prompt up live; its inbox shows the question, an
    answer typed there reaches the agent and the prompt goes on, in the page too."""
    url = serve(home)
    sid = new_session(home, "asker")
    browser.get(url)
    wait(browser, lambda d: d.find_elements("css selector", f'tr[data-session="{sid}"]'))[0].click()
    wait(browser, lambda d: d.find_element("id", "prompt-text").is_enabled())
    sent = latis(home, "prompt", "--session", sid, "--detach", "ship it")
    assert sent.returncode == 0, sent.stderr
    item = wait(browser, lambda d: d.find_elements("css selector", "#inbox li"))[0]
    assert "Deploy to production?" in item.text and sid in item.text
    assert text_of(browser, "inbox-count") == "1"
    field = item.find_element("css selector", "input")
    field.send_keys("yes, after lunch")
    item.find_element("css selector", "button[type=submit], form > button:last-child").click()
    wait(browser, lambda d: not d.find_elements("css selector", "#inbox li"))
    wait(browser, lambda d: "complete" in text_of(d, "transcript"))
    assert reply(browser) == "yes, after lunch ship it"
    attached = latis(home, "attach", sid)
    assert attached.returncode == 0, attached.stderr
    assert "yes, after lunch ship it" in attached.stdout
    inbox = latis(home, "inbox", "log", "--json")
    assert '"answered_by": "web"' in inbox.stdout


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another site's page, on 127.0.0.1 too (same site, other origin: the browser
    sends the SameSite cookie along), that tries to open a session on the dashboard."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = f"""<!doctype html><body>
<form id=f method=POST action="{self.target}api/v1/sessions" enctype="text/plain">
<input name='{{"unit":"box","x":"' value='"}}'></form>
<script>
fetch("{self.target}api/v1/sessions", {{method: "POST", credentials: "include",
  mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: '{{"unit":"box"}}'}})
  .finally(() => {{ document.title = "fetched"; document.getElementById("f").submit(); }});
</script></body>""".encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.slow
def test_a_cross_origin_post_is_refused(home: Path, browser: Any) -> None:
    """A page of another origin, visited by a browser let into the dashboard, posts
    to its API (a fetch, then a form): both are refused, no session is opened."""
    url = serve(home)
    base = url.split("?")[0]
    browser.get(url)
    wait(browser, lambda d: "live" == text_of(d, "live"))
    before = sessions_of(home)
    _Attacker.target = base
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        # The form's answer replaces the page: the dashboard's refusal.
        wait(browser, lambda d: d.current_url.startswith(base))
        refusal = browser.find_element("tag name", "body").text
        assert '"forbidden"' in refusal and "another site" in refusal
    finally:
        server.shutdown()
    assert sessions_of(home) == before
    # The dashboard itself still may: a session opened from its own page.
    browser.get(base)
    wait(browser, lambda d: "live" == text_of(d, "live"))
    browser.find_element("css selector", "#new-session button").click()
    wait(browser, lambda d: len(sessions_of(home)) == len(before) + 1, timeout=20)
