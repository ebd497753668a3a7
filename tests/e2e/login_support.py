"""Helpers for the login e2e tests (test_login.py): a browser played over plain HTTP.

  * `Jar`: the cookies one browser holds for the relay's origin, fed from Set-Cookie headers
    (a cookie whose Max-Age ran out is dropped, `Max-Age=0` deletes), sent as a Cookie header.
  * `LoginRelay`: a `refresh_support.Relay` whose listener port is fixed before Envoy starts
    (the redirect_uri must be registered at the IdP first), with its login settings.
  * `login_plugin_config(...)`: the refresh-enabled config plus the `login` section.
  * Parsing: `query_params`, `meta_refresh_url`, `html_links`, `flow_cookie_name`.

Nothing here is pytest-specific.
"""

from __future__ import annotations

import hashlib
import html.parser
import re
import time
import urllib.parse
from typing import Any

import requests

from refresh_support import Relay, SessionKeys, SetCookie, refresh_plugin_config, set_cookies
from support import AT_COOKIE, CSRF_COOKIE, SESSION_COOKIE, Envoy, relay_config

FLOW_PREFIX = "__Host-relay-flow"  # derived from the session cookie name (…-session -> …-flow)
FLOW_RE = re.compile(re.escape(FLOW_PREFIX) + r"-[0-9a-f]{8}$")
SESSION_RE = re.compile(re.escape(SESSION_COOKIE) + r"(\.\d+)?$")

# What a browser sends on a top-level navigation.
NAV_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
JSON_ACCEPT = "application/json"


def flow_cookie_name(state: str) -> str:
    """`<prefix>-<first 8 hex of SHA-256(state)>` (the contract in src/login.rs)."""
    return f"{FLOW_PREFIX}-{hashlib.sha256(state.encode()).hexdigest()[:8]}"


def is_relay_cookie(name: str) -> bool:
    return name in (AT_COOKIE, CSRF_COOKIE) or bool(SESSION_RE.match(name)) \
        or bool(FLOW_RE.match(name))


def is_session_cookie(name: str) -> bool:
    """Cookies that carry a login: the access token and the session (and its chunks)."""
    return name == AT_COOKIE or bool(SESSION_RE.match(name))


# --------------------------------------------------------------------------------------------
# The browser's cookie jar
# --------------------------------------------------------------------------------------------


class Jar:
    """Cookies of one browser for the relay's origin (all paths are `/`)."""

    def __init__(self):
        self._c: dict[str, tuple[str, float | None]] = {}

    def absorb(self, resp: requests.Response) -> dict[str, SetCookie]:
        """Apply the response's Set-Cookie headers like a browser; returns them by name."""
        cookies = set_cookies(resp)
        t = time.time()
        for name, c in cookies.items():
            if c.clears:
                self._c.pop(name, None)
            else:
                self._c[name] = (c.value, None if c.max_age is None else t + c.max_age)
        return cookies

    def live(self) -> dict[str, str]:
        t = time.time()
        for name in [n for n, (_, exp) in self._c.items() if exp is not None and exp <= t]:
            del self._c[name]
        return {n: v for n, (v, _) in self._c.items()}

    def get(self, name: str) -> str | None:
        return self.live().get(name)

    def names(self) -> list[str]:
        return list(self.live())

    def set(self, name: str, value: str, max_age: float | None = None) -> None:
        self._c[name] = (value, None if max_age is None else time.time() + max_age)

    def drop(self, name: str) -> None:
        self._c.pop(name, None)

    def header(self, *, without: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> str:
        return "; ".join(f"{n}={v}" for n, v in self.live().items()
                         if n not in without and (only is None or n in only))

    def copy(self) -> "Jar":
        j = Jar()
        j._c = dict(self._c)
        return j


# --------------------------------------------------------------------------------------------
# The relay
# --------------------------------------------------------------------------------------------


def login_plugin_config(keys: SessionKeys, *, issuer: str, audiences: list[str],
                        token_path: str, authority: str, jwks_path: str, client_id: str,
                        client_secret: str, login: dict, same_site: str = "Strict",
                        required_claims: dict | None = None, csrf: dict | None = None,
                        timeout_ms: int = 3000, **overrides: Any) -> dict:
    cfg = refresh_plugin_config(
        keys, token_path=token_path, authority=authority, timeout_ms=timeout_ms,
        client_id=client_id, client_secret=client_secret, client_auth="basic",
        issuer=issuer, audiences=audiences, required_claims=required_claims or {},
        jwks={"cluster": "idp", "authority": authority, "path": jwks_path, "refresh_s": 300},
        **overrides)
    cfg.pop("upstream_token_headers", None)
    cfg["cookies"] = dict(cfg["cookies"], same_site=same_site)
    if csrf is not None:
        cfg["csrf"] = csrf
    cfg["login"] = login
    return cfg


class LoginRelay(Relay):
    """Echo upstream + Envoy listening on the given port (cluster `idp` -> idp_port)."""

    def __init__(self, name: str, idp_port: int, plugin_config: dict, listener_port: int, *,
                 vm_env: dict | None = None, env: dict[str, str | None] | None = None):
        super().__init__(name, idp_port, plugin_config, vm_env=vm_env, env=env)
        self.listener_port = listener_port
        self.origin = f"http://127.0.0.1:{listener_port}"
        login = plugin_config["login"]
        self.redirect_uri = login["redirect_uri"]
        self.callback_path = urllib.parse.urlsplit(self.redirect_uri).path
        self.same_site = plugin_config["cookies"]["same_site"]
        self.double_submit = bool((plugin_config.get("csrf") or {}).get("double_submit"))

    def start(self) -> "LoginRelay":
        try:
            self.upstream.start()
            cfg = relay_config(self.upstream.port, self.idp_port, self.plugin_config,
                               listener_port=self.listener_port, vm_env=self.vm_env)
            self.envoy = Envoy(cfg, concurrency=1, name=self.name, env=self.env).start()
            assert self.envoy.port == self.listener_port, \
                f"{self.name}: Envoy listens on {self.envoy.port}, not {self.listener_port}"
        except BaseException:
            self.stop()
            raise
        return self

    def request(self, method: str, path: str, jar: Jar | None = None,
                headers: dict | None = None, *, cookie: str | None = None,
                fresh: bool = True) -> requests.Response:
        """One request as a browser would send it (no redirect followed). `path` may be an
        absolute URL on this relay. The jar's cookies are sent (`cookie` overrides them)."""
        assert self.envoy is not None
        if fresh:
            self.upstream.clear()
        hdrs = dict(headers or {})
        if cookie is None and jar is not None:
            cookie = jar.header()
        if cookie:
            hdrs["Cookie"] = cookie
        url = path if path.startswith("http") else self.envoy.url(path)
        return self.http.request(method, url, headers=hdrs, timeout=20, allow_redirects=False)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def query_params(url: str) -> dict[str, str]:
    """The query of `url` as a dict; a repeated parameter is an error."""
    pairs = urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True)
    names = [k for k, _ in pairs]
    dup = sorted({k for k in names if names.count(k) > 1})
    assert not dup, f"parameters repeated in {url!r}: {dup}"
    return dict(pairs)


class _PageParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.meta_refresh: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh":
            self.meta_refresh.append(a.get("content") or "")
        if tag == "a" and a.get("href") is not None:
            self.links.append(a["href"])


def parse_page(text: str) -> _PageParser:
    p = _PageParser()
    p.feed(text)
    return p


def meta_refresh_url(text: str) -> str | None:
    """The URL of the page's `<meta http-equiv="refresh" content="N;url=...">` (unescaped)."""
    metas = parse_page(text).meta_refresh
    if not metas:
        return None
    assert len(metas) == 1, f"several meta refresh elements: {metas}"
    m = re.fullmatch(r"\s*\d+\s*;\s*url\s*=\s*(.*)", metas[0], re.I | re.S)
    assert m, f"meta refresh content {metas[0]!r}"
    url = m.group(1).strip()
    if len(url) >= 2 and url[0] == url[-1] and url[0] in "'\"":
        url = url[1:-1]
    return url


def html_links(text: str) -> list[str]:
    return parse_page(text).links
