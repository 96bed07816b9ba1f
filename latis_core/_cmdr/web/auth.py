"""Who may use the dashboard: one token, and the values derived from it.

The token is 32 random bytes (URL-safe base64) in a file of mode 0600 in the
state folder; it survives daemon restarts, so a bookmarked URL keeps working
until `latis web --new-token`. A browser shows it once, in the URL `latis web`
prints (`/?token=…`): the page answers with a cookie and a redirect to `/`,
which drops the token from the address bar and the history. Then:

- the cookie holds `HMAC(token, "cookie")`, never the token: `HttpOnly` (no
  script reads it), `SameSite=Strict` (no other site's page sends it),
  `Secure` over TLS, and named after the port (cookies ignore ports: two
  dashboards on one host must not overwrite each other's);
- a state-changing request sent with the cookie must also carry an `Origin`
  equal to the page's own and the header `X-Latis-CSRF` holding
  `HMAC(token, "csrf")`, which only a page of this origin can read (from
  `/api/v1/hello`);
- scripts and other clients send `Authorization: Bearer TOKEN` instead (not
  ambient, so no CSRF check), still refused with a foreign `Origin`;
- the `Host` header must name this server (loopback, the listen address or a
  configured name): a DNS-rebinding page reaches nothing.

`check` decides for one request, from its method, path, query and headers;
it knows nothing of HTTP frameworks, so its tests are plain function calls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import parse_qs

import attrs

__all__ = [
    "CSRF_HEADER",
    "SAFE_METHODS",
    "Decision",
    "Keys",
    "check",
    "load_token",
    "new_token",
]

#: The header a state-changing request from the page carries its CSRF token in.
CSRF_HEADER = "x-latis-csrf"
#: Methods that change nothing (no CSRF check).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    os.replace(tmp, path)


def new_token(path: Path) -> str:
    """Write a fresh token to `path` (mode 0600); return it. Old cookies stop working."""
    token = secrets.token_urlsafe(32)
    _write_private(path, token)
    return token


def load_token(path: Path) -> str:
    """The token in `path`, made on first use; a file others may read is made 0600."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return new_token(path)
    if info.st_mode & 0o077:
        os.chmod(path, 0o600)
    token = path.read_text().strip()
    return token or new_token(path)


def _derive(token: str, purpose: bytes) -> str:
    mac = hmac.new(token.encode(), b"latis-web:" + purpose, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@attrs.frozen
class Keys:
    """The token and what is derived from it, for one server (its port and scheme)."""

    token: str
    port: int
    tls: bool
    #: Host names (without port) a request's `Host` may name.
    hosts: frozenset[str]

    @property
    def cookie_name(self) -> str:
        return f"latis_web_{self.port}"

    @property
    def cookie_value(self) -> str:
        return _derive(self.token, b"cookie")

    @property
    def csrf(self) -> str:
        return _derive(self.token, b"csrf")

    def set_cookie(self) -> str:
        """The `Set-Cookie` header value given after a visit with the token."""
        flags = "; Path=/; HttpOnly; SameSite=Strict"
        return f"{self.cookie_name}={self.cookie_value}{flags}" + ("; Secure" if self.tls else "")


@attrs.frozen
class Decision:
    """What to do with a request.

    Attributes:
        status: 0 to serve it; else the HTTP status to refuse it with.
        reason: why it is refused (said to the client: names nothing of the fleet).
        login: the request carried the right token in its query: answer with
            the cookie and a redirect to the same path without the token.
        cookie: it was let in by its cookie (not a bearer token).
    """

    status: int = 0
    reason: str = ""
    login: bool = False
    cookie: bool = False


def _host_name(host: str) -> str:
    """`Host` without its port: `127.0.0.1:8340` → `127.0.0.1`, `[::1]:80` → `[::1]`;
    "" for anything that is not a host and an optional port (`a:1@evil`, `[::1]x`)."""
    found = _HOST.fullmatch(host.strip().lower())
    return found[1] if found else ""


#: A Host header: a name or an IPv4 address, or an IPv6 one in brackets; then a port.
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::[0-9]{1,5})?")


def _cookies(header: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            found.setdefault(name, value)
    return found


def _same(given: str | None, wanted: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), wanted.encode())


def check(
    keys: Keys, method: str, path: str, query: str, headers: Iterable[tuple[str, str]]
) -> Decision:
    """Decide whether a request may be served (see the module's docstring).

    `headers` are (lower-case name, value) pairs, as ASGI gives them.
    """
    collected: dict[str, str] = {}
    for name, value in headers:
        # A repeated header (Cookie aside, joined) counts once: its first value.
        if name == "cookie" and name in collected:
            collected[name] += "; " + value
        else:
            collected.setdefault(name, value)
    head: Mapping[str, str] = collected
    if _host_name(head.get("host", "")) not in keys.hosts:
        return Decision(421, "this server does not answer for that host name")
    origin = head.get("origin")
    scheme = "https" if keys.tls else "http"
    own_origin = f"{scheme}://{head.get('host', '').strip().lower()}"
    if origin is not None and origin.lower() != own_origin:
        return Decision(403, "a request from another site's page is refused")
    bearer = head.get("authorization", "")
    if bearer[:7].lower() == "bearer ":
        if _same(bearer[7:].strip(), keys.token):
            return Decision()
        return Decision(401, "wrong token: run `latis web` for this dashboard's URL and token")
    if _same(_cookies(head.get("cookie", "")).get(keys.cookie_name), keys.cookie_value):
        if method not in SAFE_METHODS:
            if origin is None:
                return Decision(403, "a state-changing request needs an Origin header")
            if not _same(head.get(CSRF_HEADER), keys.csrf):
                return Decision(403, "missing or wrong CSRF token")
        return Decision(cookie=True)
    if method in SAFE_METHODS and query:
        token = parse_qs(query).get("token", [None])[0]
        if _same(token, keys.token):
            return Decision(login=True)
    return Decision(401, "this dashboard needs its token: run `latis web` for its URL")
