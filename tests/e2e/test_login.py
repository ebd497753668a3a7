"""Login and logout at the edge (authorization code + PKCE + OpenID Connect) through the real
Envoy, driven over plain HTTP as a browser would be (no browser).

Relays:
  * `strict` and `lax`: the real OpenID provider (idp.py, oidc-provider, 5 s access tokens),
    cookies `SameSite=Strict` (a successful callback answers a 200 "hop" page with a meta
    refresh) or `Lax` (a 302). Their listener ports are picked before the IdP starts, because
    each redirect_uri must be registered there. `strict` has double-submit CSRF with its own
    origin allowed; `lax` has no `csrf` section (the request's own host is the allowed origin).
    Both: `clock_skew_s: 0`, `refresh_margin_s: 0`, so a 5 s access token is expired after 5 s.
  * `fake`: the scripted token endpoint (fake_token_endpoint.py) for what a real IdP will not
    do on demand: 5xx or no answer on the code exchange, ID tokens with a wrong nonce,
    audience, issuer or expiry.

The browser is a `Jar` of cookies (Max-Age honoured) plus the headers a browser sends: a
navigation arriving from the IdP carries `Sec-Fetch-Site: cross-site`. Every test asserts what
the browser was told (status, Location / hop page, Set-Cookie and attributes, Cache-Control),
what the upstream received, and how many token-endpoint calls the IdP saw. The last test
compares the relays' login metrics with the tallies the tests kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.parse
from dataclasses import dataclass

import pytest
import requests

from checks import assert_nothing_upstream, assert_refused, describe, upstream_headers
from fake_token_endpoint import FakeTokenEndpoint
from idp import Idp, authorize_via_http, parse_forms
from login_support import (FLOW_RE, JSON_ACCEPT, NAV_ACCEPT, Jar, LoginRelay,
                           flow_cookie_name, html_links, is_relay_cookie, is_session_cookie,
                           login_plugin_config, meta_refresh_url, query_params)
from refresh_support import (METRIC_PREFIX, SessionKeys, SetCookie, cache_directives,
                             jwt_claims, set_cookie_headers, set_cookies, verify_rs256)
from support import (AT_COOKIE, AUDIENCE, CSRF_COOKIE, ISSUER, SESSION_COOKIE, KeyPair,
                     b64url, free_port, wait_until, wasm_failure_evidence)

ACCESS_TOKEN_TTL = 5
SESSION_LIFETIME_S = 86400  # login.session_lifetime_s default
FLOW_MAX_AGE_S = 600
SLACK_S = 3
CLIENT_ID = "relay-client"
FAKE_CLIENT_ID = "login-client"
FAKE_SECRET = "login-secret"
B64URL_43 = re.compile(r"[A-Za-z0-9_-]{43}")
EVIL = "https://evil.example"


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session_keys() -> SessionKeys:
    return SessionKeys.generate(("login-2", "login-1"))


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    out: dict[str, int] = {}
    while len(set(out.values())) < 3:
        out = {name: free_port() for name in ("strict", "lax", "fake")}
    return out


@pytest.fixture(scope="module")
def idp(wasm_file, ports):
    origins = [f"http://127.0.0.1:{ports[n]}" for n in ("strict", "lax")]
    provider = Idp.start(access_token_ttl=ACCESS_TOKEN_TTL, name="idp-login",
                         redirect_uris=[o + "/auth/callback" for o in origins],
                         post_logout_redirect_uris=[o + "/" for o in origins])
    yield provider
    provider.stop()


def idp_login_section(idp: Idp, port: int) -> dict:
    return {"authorization_endpoint": idp.authorization_endpoint,
            "redirect_uri": f"http://127.0.0.1:{port}/auth/callback",
            "login_path": "/auth/login", "logout_path": "/auth/logout",
            "scopes": ["openid", "offline_access"],
            "revocation_path": idp.revocation_path,
            "end_session_endpoint": idp.end_session_endpoint,
            "post_logout_redirect": "/", "prompt": "consent"}


def start_relay(name: str, idp_port: int, pc: dict, port: int, ready_token: str) -> LoginRelay:
    relay = LoginRelay(name, idp_port, pc, port).start()
    ready = relay.wait_ready(ready_token)
    if ready.status_code != 200:
        relay.stop()
        pytest.fail(f"{name}: a valid access token is not relayed: {describe(ready)}",
                    pytrace=False)
    return relay


@pytest.fixture(scope="module")
def relays(idp, ports, session_keys):
    started: dict[str, LoginRelay] = {}
    try:
        for name, same_site in (("strict", "Strict"), ("lax", "Lax")):
            port = ports[name]
            csrf = ({"allowed_origins": [f"http://127.0.0.1:{port}"], "double_submit": True}
                    if name == "strict" else None)
            authority = f"127.0.0.1:{idp.port}"
            pc = login_plugin_config(
                session_keys, issuer=idp.issuer, audiences=[idp.audience],
                token_path=idp.token_path, authority=authority, jwks_path=idp.jwks_path,
                client_id=CLIENT_ID, client_secret="relay-secret",
                login=idp_login_section(idp, port), same_site=same_site, csrf=csrf,
                clock_skew_s=0, refresh_margin_s=0)
            started[name] = start_relay(f"login-{name}", idp.port, pc, port,
                                        idp.mint("ready-probe", access_token_ttl=60)
                                        ["access_token"])
        yield started
    finally:
        for r in started.values():
            r.stop()


@pytest.fixture(params=["strict", "lax"])
def relay(request, relays) -> LoginRelay:
    return relays[request.param]


@pytest.fixture(scope="module")
def fake(wasm_file):
    f = FakeTokenEndpoint(KeyPair.generate("RS256", kid="fake-login")).start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def fake_relay(fake, ports, session_keys):
    port = ports["fake"]
    login = {"authorization_endpoint": "https://idp.example.com/oauth2/authorize",
             "redirect_uri": f"http://127.0.0.1:{port}/auth/callback",
             "scopes": ["openid", "offline_access"]}
    pc = login_plugin_config(
        session_keys, issuer=ISSUER, audiences=[AUDIENCE], required_claims={"token_use": "access"},
        token_path="/token", authority="idp.example.com", jwks_path="/.well-known/jwks.json",
        client_id=FAKE_CLIENT_ID, client_secret=FAKE_SECRET, login=login, timeout_ms=1000)
    relay = start_relay("login-fake", fake.port, pc, port, fake.mint_access_token())
    yield relay
    relay.stop()


@pytest.fixture
def idp_http():
    """The browser's cookies at the IdP (its login session)."""
    s = requests.Session()
    s.trust_env = False
    yield s
    s.close()


# --------------------------------------------------------------------------------------------
# Playing the browser
# --------------------------------------------------------------------------------------------


def nav_headers(site: str = "same-origin", accept: str = NAV_ACCEPT) -> dict:
    return {"Accept": accept, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": site,
            "Sec-Fetch-Dest": "document"}


def fetch_headers(accept: str = JSON_ACCEPT) -> dict:
    return {"Accept": accept, "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin",
            "Sec-Fetch-Dest": "empty"}


@dataclass
class Started:
    resp: requests.Response
    location: str
    params: dict
    state: str
    nonce: str
    flow_name: str
    flow: SetCookie
    flow_plain: dict  # the sealed flow: v (verifier), s, n, r (return_to), t


def assert_flow_cookie(c: SetCookie):
    problems = []
    if c.attrs.get("path") != "/":
        problems.append(f"Path={c.attrs.get('path')!r}")
    if "httponly" not in c.attrs:
        problems.append("no HttpOnly")
    if "secure" not in c.attrs:
        problems.append("no Secure")
    if (c.attrs.get("samesite") or "").lower() != "lax":
        problems.append(f"SameSite={c.attrs.get('samesite')!r} (want Lax)")
    if "domain" in c.attrs:
        problems.append("Domain set")
    if c.max_age is None or not FLOW_MAX_AGE_S - 10 <= c.max_age <= FLOW_MAX_AGE_S:
        problems.append(f"Max-Age={c.max_age} (want ~{FLOW_MAX_AGE_S})")
    assert not problems, f"flow cookie {c.raw[:100]!r}...: {problems}"


def assert_no_login(resp, why: str = ""):
    """No cookie that logs anyone in (access token, session, chunks) nor a CSRF cookie was
    written with a value."""
    written = [c.raw[:80] for c in set_cookies(resp).values()
               if (is_session_cookie(c.name) or c.name == CSRF_COOKIE) and not c.clears
               and c.value != ""]
    assert not written, f"{why}: a failed login must set no session cookie; got {written}"


def assert_cleared(cookies: dict[str, SetCookie], name: str, resp=None):
    c = cookies.get(name)
    assert c is not None and c.clears and c.value == "", \
        f"{name} must be cleared (empty, Max-Age=0); Set-Cookie: " \
        f"{set_cookie_headers(resp) if resp is not None else list(cookies)}"
    assert c.attrs.get("path") == "/" and "secure" in c.attrs and "domain" not in c.attrs, \
        f"{c.raw!r}: a browser ignores a __Host- deletion without Secure; Path=/; no Domain"


def json_error(resp) -> dict:
    assert "application/json" in resp.headers.get("Content-Type", ""), \
        f"expected a JSON answer: {describe(resp)}"
    body = resp.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("error_description"), str), body
    return body


def start_login(relay: LoginRelay, jar: Jar, query: str, keys: SessionKeys) -> Started:
    """GET <login_path><query>: the 302 to the IdP and its one new flow cookie."""
    resp = relay.request("GET", "/auth/login" + query, jar, nav_headers())
    assert resp.status_code == 302, f"login start {query!r}: {describe(resp)}"
    relay.expect["login_started"] += 1
    assert_nothing_upstream(relay, " on a login start")
    assert "no-store" in cache_directives(resp), f"login start must be no-store: {describe(resp)}"
    cookies = jar.absorb(resp)
    location = resp.headers["Location"]
    params = query_params(location)
    state = params.get("state", "")
    new_flows = [n for n, c in cookies.items() if FLOW_RE.match(n) and not c.clears]
    assert new_flows == [flow_cookie_name(state)], \
        f"expected exactly one new flow cookie {flow_cookie_name(state)} (prefix-<8 hex of " \
        f"SHA-256(state)>); got Set-Cookie {set_cookie_headers(resp)}"
    assert_no_login(resp, "login start")
    name = new_flows[0]
    assert_flow_cookie(cookies[name])
    _, plain = keys.unseal(cookies[name].value)
    return Started(resp, location, params, state, params.get("nonce", ""), name, cookies[name],
                   plain)


def idp_authorize(idp: Idp, relay: LoginRelay, st: Started, login: str,
                  http: requests.Session) -> dict:
    """The browser at the IdP: login and consent forms, up to the redirect to the callback."""
    flow = authorize_via_http(idp, st.location, relay.redirect_uri, login=login, session=http)
    q = flow["params"]
    assert "error" not in q, f"the IdP refused the relay's authorization request: {q}"
    assert q.get("state") == st.state and q.get("code"), f"callback parameters {q}"
    return flow


def callback(relay: LoginRelay, jar: Jar, url: str, accept: str = NAV_ACCEPT,
             cookie: str | None = None) -> requests.Response:
    """The browser arrives at the callback from the IdP (a cross-site navigation)."""
    headers = nav_headers("cross-site", accept) if accept == NAV_ACCEPT else \
        {"Accept": accept, "Sec-Fetch-Site": "cross-site"}
    resp = relay.request("GET", url, jar, headers, cookie=cookie)
    assert_nothing_upstream(relay, " on a callback")
    written = set_cookies(resp)
    if resp.status_code in (200, 302) and AT_COOKIE in written and not written[AT_COOKIE].clears:
        relay.expect["login_succeeded"] += 1
    elif resp.status_code >= 400:
        relay.expect["login_failed"] += 1
    return resp


def callback_url(relay: LoginRelay, **params: str) -> str:
    return relay.callback_path + "?" + urllib.parse.urlencode(params)


def landing(relay: LoginRelay, resp) -> str:
    """Where a successful callback answer sends the browser: the 302's Location (Lax), or
    the hop page's meta refresh (Strict: a 200 HTML page, no Location)."""
    if relay.same_site == "Strict":
        assert resp.status_code == 200, \
            f"SameSite=Strict: a successful callback must answer the 200 hop page: {describe(resp)}"
        assert "Location" not in resp.headers, describe(resp)
        assert resp.headers.get("Content-Type", "").startswith("text/html"), describe(resp)
        url = meta_refresh_url(resp.text)
        assert url is not None, f"the hop page has no meta refresh: {resp.text[:500]!r}"
        assert url in html_links(resp.text), \
            f"the hop page's link must go where its meta refresh goes ({url!r}): {resp.text!r}"
        return url
    assert resp.status_code == 302, \
        f"SameSite=Lax: a successful callback must answer 302: {describe(resp)}"
    return resp.headers["Location"]


def assert_same_origin_target(relay: LoginRelay, target: str):
    joined = urllib.parse.urlsplit(urllib.parse.urljoin(relay.origin + "/auth/callback", target))
    assert (joined.scheme, joined.netloc) == ("http", f"127.0.0.1:{relay.listener_port}"), \
        f"the browser is sent off-site: {target!r}"


@dataclass
class LoggedIn:
    resp: requests.Response
    cookies: dict[str, SetCookie]
    access_token: str
    session: dict  # unsealed: rt, exp, idt
    landing: str


def assert_login_success(relay: LoginRelay, resp, st: Started, keys: SessionKeys, jar: Jar,
                         client_id: str = CLIENT_ID) -> LoggedIn:
    to = landing(relay, resp)
    cookies = jar.absorb(resp)
    assert "no-store" in cache_directives(resp), f"callback answer must be no-store: {describe(resp)}"

    want_same_site = relay.same_site.lower()

    def attrs_problems(c: SetCookie, http_only: bool, same_site: str) -> list[str]:
        out = []
        if c.attrs.get("path") != "/":
            out.append(f"Path={c.attrs.get('path')!r}")
        if ("httponly" in c.attrs) != http_only:
            out.append(f"HttpOnly {'missing' if http_only else 'set'}")
        if "secure" not in c.attrs:
            out.append("no Secure")
        if (c.attrs.get("samesite") or "").lower() != same_site:
            out.append(f"SameSite={c.attrs.get('samesite')!r} (want {same_site})")
        if "domain" in c.attrs:
            out.append("Domain set")
        return out

    at_c = cookies.get(AT_COOKIE)
    assert at_c is not None and not at_c.clears, \
        f"no access-token cookie after login; Set-Cookie: {set_cookie_headers(resp)}"
    assert not attrs_problems(at_c, True, want_same_site), \
        f"{at_c.raw[:90]!r}: {attrs_problems(at_c, True, want_same_site)}"
    at = at_c.value
    remaining = jwt_claims(at)["exp"] - time.time()
    assert at_c.max_age is not None and abs(at_c.max_age - remaining) <= SLACK_S, \
        f"{AT_COOKIE} Max-Age={at_c.max_age}, the token has {remaining:.1f} s left"

    sess_c = cookies.get(SESSION_COOKIE)
    assert sess_c is not None and not sess_c.clears, \
        f"no session cookie after login; Set-Cookie: {set_cookie_headers(resp)}"
    assert not attrs_problems(sess_c, True, want_same_site), \
        f"{sess_c.raw[:90]!r}: {attrs_problems(sess_c, True, want_same_site)}"
    _, session = keys.unseal(sess_c.value)
    assert isinstance(session.get("rt"), str) and session["rt"], f"session: {sorted(session)}"
    assert isinstance(session.get("exp"), int) and \
        abs(session["exp"] - (time.time() + SESSION_LIFETIME_S)) <= SLACK_S, \
        f"session exp {session.get('exp')} (want now + {SESSION_LIFETIME_S})"
    assert sess_c.max_age is not None and \
        abs(sess_c.max_age - (session["exp"] - time.time())) <= SLACK_S, \
        f"session cookie Max-Age={sess_c.max_age}, session exp in {session['exp'] - time.time():.0f} s"
    idt = session.get("idt")
    assert isinstance(idt, str) and idt.count(".") == 2, "the session must keep the ID token"
    id_claims = jwt_claims(idt)
    assert id_claims.get("nonce") == st.nonce, \
        f"the ID token's nonce {id_claims.get('nonce')!r} is not this flow's {st.nonce!r}"
    assert id_claims.get("aud") in (client_id, [client_id]), id_claims

    if relay.double_submit:
        csrf_c = cookies.get(CSRF_COOKIE)
        assert csrf_c is not None and csrf_c.value and not csrf_c.clears, \
            f"double_submit: the login must issue the CSRF cookie; {set_cookie_headers(resp)}"
        assert not attrs_problems(csrf_c, False, "strict"), \
            f"{csrf_c.raw!r}: {attrs_problems(csrf_c, False, 'strict')}"

    assert_cleared(cookies, st.flow_name, resp)
    assert st.flow_name not in jar.names()
    return LoggedIn(resp, cookies, at, session, to)


def full_login(relay: LoginRelay, idp: Idp, keys: SessionKeys, jar: Jar,
               http: requests.Session, login: str, return_to: str = "/") -> LoggedIn:
    st = start_login(relay, jar, "?return_to=" + urllib.parse.quote(return_to, safe=""), keys)
    flow = idp_authorize(idp, relay, st, login, http)
    resp = callback(relay, jar, flow["callback_url"])
    return assert_login_success(relay, resp, st, keys, jar)


def api_get(relay: LoginRelay, jar: Jar, path: str = "/api/me", *, cookie: str | None = None,
            headers: dict | None = None) -> requests.Response:
    return relay.request("GET", path, jar, headers or fetch_headers(), cookie=cookie)


def bearer_of(rec: dict) -> str:
    auth = upstream_headers(rec, "authorization")
    assert len(auth) == 1 and auth[0].startswith("Bearer "), \
        f"upstream must get exactly one Bearer authorization, got {auth}"
    return auth[0][len("Bearer "):]


def assert_no_relay_cookie_upstream(rec: dict):
    for c in upstream_headers(rec, "cookie"):
        leaked = [p.split("=", 1)[0].strip() for p in c.split(";")
                  if is_relay_cookie(p.split("=", 1)[0].strip())]
        assert not leaked, f"relay cookies reached the upstream: {leaked}"


def logout_headers(relay: LoginRelay, jar: Jar, origin: str | None = None) -> dict:
    h = {"Origin": origin or relay.origin, "Sec-Fetch-Site": "same-origin",
         "Sec-Fetch-Mode": "navigate", "Accept": NAV_ACCEPT}
    if relay.double_submit and jar.get(CSRF_COOKIE):
        h["X-CSRF-Token"] = jar.get(CSRF_COOKIE)
    return h


class IdpCalls:
    """Counters at the real IdP since creation."""

    def __init__(self, idp: Idp):
        self.idp = idp
        self.start = idp.stats()

    def delta(self, key: str) -> int:
        return self.idp.stats()[key] - self.start[key]

    def grant(self, gty: str, what: str = "requests") -> int:
        now = self.idp.stats()["by_grant_type"].get(gty, {}).get(what, 0)
        return now - self.start["by_grant_type"].get(gty, {}).get(what, 0)


# --------------------------------------------------------------------------------------------
# 1. The whole flow, with the real IdP (Strict and Lax)
# --------------------------------------------------------------------------------------------


def test_whole_flow_login_refresh_logout(relay, idp, session_keys, idp_http):
    login = f"carol-{relay.same_site.lower()}"
    jar = Jar()

    # -- login start ----------------------------------------------------------------------
    st = start_login(relay, jar, "?return_to=/api/me?x=1", session_keys)
    assert st.location.startswith(idp.authorization_endpoint + "?"), st.location
    p = st.params
    assert set(p) == {"response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                      "code_challenge", "code_challenge_method", "prompt"}, sorted(p)
    assert p["response_type"] == "code" and p["client_id"] == CLIENT_ID, p
    assert p["redirect_uri"] == relay.redirect_uri, p
    assert p["scope"].split(" ") == ["openid", "offline_access"], p["scope"]
    assert p["code_challenge_method"] == "S256" and p["prompt"] == "consent", p
    for k in ("state", "nonce", "code_challenge"):
        assert B64URL_43.fullmatch(p[k]), f"{k}={p[k]!r}: want 43 base64url chars (256 bits)"
    assert p["state"] != p["nonce"]
    fp = st.flow_plain
    assert fp.get("s") == st.state and fp.get("n") == st.nonce, sorted(fp)
    assert fp.get("r") == "/api/me?x=1", f"return_to in the flow: {fp.get('r')!r}"
    assert b64url(hashlib.sha256(fp["v"].encode()).digest()) == p["code_challenge"], \
        "code_challenge is not S256 of the flow's verifier"
    assert st.resp.headers.get("Referrer-Policy") == "no-referrer", describe(st.resp)

    # -- the IdP, then the callback -------------------------------------------------------
    flow = idp_authorize(idp, relay, st, login, idp_http)
    calls = IdpCalls(idp)
    resp = callback(relay, jar, flow["callback_url"])
    li = assert_login_success(relay, resp, st, session_keys, jar)
    assert li.landing == "/api/me?x=1", f"the browser must go back to return_to: {li.landing!r}"
    assert calls.grant("authorization_code") == 1 and \
        calls.grant("authorization_code", "ok") == 1, \
        f"expected one successful code exchange at the IdP: {idp.stats()['by_grant_type']}"
    assert calls.delta("token_requests") == 1, idp.stats()
    claims = verify_rs256(li.access_token, idp.jwks())
    assert claims["sub"] == login and claims["iss"] == idp.issuer, claims
    assert claims.get("aud") == idp.audience and claims.get("client_id") == CLIENT_ID, claims
    assert verify_rs256(li.session["idt"], idp.jwks())["sub"] == login
    rt1 = li.session["rt"]
    assert idp.refresh_token_active(rt1), "the refresh token in the session is not live"

    # -- the page it returns to (a same-origin navigation for the hop page) --------------------
    api = relay.request("GET", li.landing, jar, nav_headers("same-origin"))
    assert api.status_code == 200, f"first API call after login: {describe(api)}"
    rec = relay.upstream.only()
    assert rec["path"] == "/api/me?x=1", rec["path"]
    assert bearer_of(rec) == li.access_token, "upstream did not get the IdP's access token"
    assert upstream_headers(rec, "x-user-sub") == [login]
    assert_no_relay_cookie_upstream(rec)
    assert not set_cookie_headers(api), f"no refresh expected yet: {set_cookie_headers(api)}"

    # -- the access token expires: one silent refresh ------------------------------------------
    exp = claims["exp"]
    wait_until(lambda: time.time() > exp + 1.2, timeout=ACCESS_TOKEN_TTL + 5,
               what="the access token to expire")
    assert AT_COOKIE not in jar.names(), "the browser keeps an access-token cookie past Max-Age"
    calls = IdpCalls(idp)
    api2 = api_get(relay, jar)
    assert api2.status_code == 200, f"request after expiry (session only): {describe(api2)}"
    assert calls.delta("refresh_requests") == 1 and calls.delta("refresh_ok") == 1, \
        f"expected exactly one refresh_token grant: {calls.delta('refresh_requests')} requests"
    assert calls.delta("token_requests") == 1
    at2 = bearer_of(relay.upstream.only())
    assert at2 != li.access_token
    assert verify_rs256(at2, idp.jwks())["sub"] == login
    c2 = jar.absorb(api2)
    assert c2.get(AT_COOKIE) is not None and c2[AT_COOKIE].value == at2, set_cookie_headers(api2)
    _, sess2 = session_keys.unseal(c2[SESSION_COOKIE].value)
    rt2 = sess2["rt"]
    assert rt2 != rt1 and sess2.get("exp") == li.session["exp"], "rotation must keep the session end"
    # the session still holds an ID token for the logout hint (the IdP's refreshed one or the
    # one from the login)
    assert isinstance(sess2.get("idt"), str), "the refresh dropped the ID token from the session"
    idt2 = verify_rs256(sess2["idt"], idp.jwks())
    assert idt2["sub"] == login and idt2["aud"] == CLIENT_ID, idt2
    assert not idp.refresh_token_active(rt1) and idp.refresh_token_active(rt2)

    # -- logout -----------------------------------------------------------------------------
    old_cookie = jar.header()
    old_names = jar.names()
    calls = IdpCalls(idp)
    out = relay.request("POST", "/auth/logout", jar, logout_headers(relay, jar))
    assert out.status_code == 302, f"logout: {describe(out)}"
    relay.expect["logout"] += 1
    assert_nothing_upstream(relay, " on logout")
    loc = out.headers["Location"]
    assert loc.startswith(idp.end_session_endpoint + "?"), loc
    assert query_params(loc) == {"client_id": CLIENT_ID, "id_token_hint": sess2["idt"],
                                 "post_logout_redirect_uri": relay.origin + "/"}, \
        f"end-session parameters: {query_params(loc)}"
    cleared = jar.absorb(out)
    for name in set(old_names) | {AT_COOKIE, SESSION_COOKIE}:
        assert_cleared(cleared, name, out)
    if relay.double_submit:
        assert_cleared(cleared, CSRF_COOKIE, out)
    assert not [c.raw for c in cleared.values() if not c.clears], \
        f"logout must only clear cookies: {set_cookie_headers(out)}"
    assert jar.names() == [], f"the browser still holds {jar.names()}"
    assert "no-store" in cache_directives(out), describe(out)
    assert calls.delta("revocation_requests") == 1, "the refresh token was not revoked at logout"
    assert not idp.refresh_token_active(rt2), "the refresh token is still live after logout"

    # the IdP accepts the relay's end-session request (hint + registered post-logout URI)
    r = idp_http.get(loc, allow_redirects=False, timeout=10)
    assert r.status_code == 200, f"IdP end_session: {r.status_code} {r.text[:500]}"
    form = next(f for f in parse_forms(r.text) if f["method"] == "post")
    r = idp_http.post(urllib.parse.urljoin(loc, form["action"]),
                      data=dict(form["fields"], logout="yes"), allow_redirects=False, timeout=10)
    assert r.status_code in (302, 303) and r.headers.get("Location") == relay.origin + "/", \
        f"IdP logout confirmation: {r.status_code} {r.headers.get('Location')}"

    # -- the old cookies after logout ------------------------------------------------------------
    # the browser dropped them; someone who kept the session gets nothing from it
    stale_session = "; ".join(p for p in old_cookie.split("; ") if not p.startswith(AT_COOKIE + "="))
    r = api_get(relay, jar, cookie=stale_session)
    body = assert_refused(r, relay, token_presented=None)
    assert body["error"] == "invalid_token", body
    assert_no_login(r, "old session after logout")
    # and the old access token, once expired, is refused too
    wait_until(lambda: time.time() > jwt_claims(at2)["exp"] + 1.2, timeout=ACCESS_TOKEN_TTL + 5,
               what="the refreshed access token to expire")
    r = api_get(relay, jar, cookie=old_cookie)
    assert_refused(r, relay, token_presented=None)
    assert_no_login(r, "old cookies after logout")


# --------------------------------------------------------------------------------------------
# 2. Two tabs
# --------------------------------------------------------------------------------------------


def test_two_tabs_two_flows_both_complete(relays, idp, session_keys, idp_http):
    relay = relays["strict"]
    jar = Jar()
    a = start_login(relay, jar, "?return_to=%2Fapi%2Ftab-a", session_keys)
    b = start_login(relay, jar, "?return_to=%2Fapi%2Ftab-b", session_keys)
    assert a.state != b.state and a.flow_name != b.flow_name, (a.flow_name, b.flow_name)
    assert a.flow_name not in set_cookies(b.resp), \
        f"the second login must not touch the first one's flow cookie: {set_cookie_headers(b.resp)}"
    assert {a.flow_name, b.flow_name} <= set(jar.names())

    fa = idp_authorize(idp, relay, a, "dave", idp_http)
    fb = idp_authorize(idp, relay, b, "dave", idp_http)

    rb = callback(relay, jar, fb["callback_url"])
    assert a.flow_name not in set_cookies(rb), \
        f"completing tab B must not clear tab A's flow: {set_cookie_headers(rb)}"
    lb = assert_login_success(relay, rb, b, session_keys, jar)
    assert lb.landing == "/api/tab-b"
    assert a.flow_name in jar.names()

    # an API call while tab A's flow cookie is still held: it never goes upstream
    api = relay.request("GET", lb.landing, jar, nav_headers())
    assert api.status_code == 200, describe(api)
    assert_no_relay_cookie_upstream(relay.upstream.only())

    ra = callback(relay, jar, fa["callback_url"])
    la = assert_login_success(relay, ra, a, session_keys, jar)
    assert la.landing == "/api/tab-a"
    assert not [n for n in jar.names() if FLOW_RE.match(n)], jar.names()
    for li in (la, lb):
        assert jwt_claims(li.access_token)["sub"] == "dave"
    api = api_get(relay, jar)
    assert api.status_code == 200 and bearer_of(relay.upstream.only()) == la.access_token


# --------------------------------------------------------------------------------------------
# 3. Callbacks that must fail
# --------------------------------------------------------------------------------------------


def assert_bad_callback(resp, status: int, error: str | None, why: str) -> dict | None:
    assert resp.status_code == status, f"{why}: expected {status}; got {describe(resp)}"
    assert_no_login(resp, why)
    assert "no-store" in cache_directives(resp), f"{why}: {describe(resp)}"
    if error is None:
        return None
    body = json_error(resp)
    assert body["error"] == error, f"{why}: {body}"
    return body


def test_state_mismatch_missing_flow_and_replay(relays, idp, session_keys, idp_http):
    relay = relays["strict"]
    jar = Jar()
    a = start_login(relay, jar, "?return_to=%2Fapi%2Fa", session_keys)
    b = start_login(relay, jar, "?return_to=%2Fapi%2Fb", session_keys)
    fa = idp_authorize(idp, relay, a, "erin", idp_http)
    code, iss = fa["params"]["code"], fa["params"].get("iss")
    extra = {"iss": iss} if iss else {}
    calls = IdpCalls(idp)

    # another flow's state (its flow cookie is not held by this browser)
    r = callback(relay, jar, callback_url(relay, code=code, state=b.state, **extra),
                 JSON_ACCEPT, cookie=jar.header(without=(b.flow_name,)))
    assert_bad_callback(r, 400, "invalid_request", "callback with another flow's state")

    # a tampered state
    tampered = a.state[:-1] + ("A" if a.state[-1] != "A" else "B")
    r = callback(relay, jar, callback_url(relay, code=code, state=tampered, **extra), JSON_ACCEPT)
    assert_bad_callback(r, 400, "invalid_request", "callback with a tampered state")

    # flow A's sealed value planted under flow B's cookie name, with B's state
    r = callback(relay, jar, callback_url(relay, code=code, state=b.state, **extra), JSON_ACCEPT,
                 cookie=f"{b.flow_name}={a.flow.value}")
    assert_bad_callback(r, 400, "invalid_request", "flow cookie of another state")

    # no flow cookie at all
    r = callback(relay, jar, fa["callback_url"], JSON_ACCEPT, cookie="")
    assert_bad_callback(r, 400, "invalid_request", "callback without the flow cookie")

    # a flow cookie that does not unseal, and one that has expired (sealed by us)
    fake_flow = dict(a.flow_plain, t=int(time.time()) - FLOW_MAX_AGE_S - 5)
    expired = session_keys.seal(plaintext=json.dumps(fake_flow).encode())
    for value, why in ((a.flow.value[:-4] + "AAAA", "a flow cookie that does not unseal"),
                       (expired, "an expired flow")):
        r = callback(relay, jar, fa["callback_url"], JSON_ACCEPT,
                     cookie=f"{a.flow_name}={value}")
        assert_bad_callback(r, 400, "invalid_request", why)
        assert_cleared(set_cookies(r), a.flow_name, r)

    # RFC 9207: an `iss` naming another issuer (mix-up)
    r = callback(relay, jar, callback_url(relay, code=code, state=a.state, iss=EVIL), JSON_ACCEPT,
                 cookie=f"{a.flow_name}={a.flow.value}")
    assert_bad_callback(r, 400, "invalid_request", "callback with another issuer's iss")
    # a repeated state parameter
    r = callback(relay, jar, relay.callback_path + "?" + urllib.parse.urlencode(
        [("code", code), ("state", a.state), ("state", a.state)]), JSON_ACCEPT,
        cookie=f"{a.flow_name}={a.flow.value}")
    assert_bad_callback(r, 400, "invalid_request", "callback with state twice")

    assert calls.delta("token_requests") == 0, \
        f"refused callbacks must not reach the token endpoint: {idp.stats()['by_grant_type']}"

    # none of that spent the code: the genuine callback still completes
    r = callback(relay, jar, fa["callback_url"])
    li = assert_login_success(relay, r, a, session_keys, jar)
    assert li.landing == "/api/a"
    assert calls.grant("authorization_code", "ok") == 1

    # replay after success: the flow cookie is gone -> 400, nothing sent to the IdP
    calls = IdpCalls(idp)
    r = callback(relay, jar, fa["callback_url"], JSON_ACCEPT)
    assert_bad_callback(r, 400, "invalid_request", "replayed callback")
    r = callback(relay, jar, fa["callback_url"])  # as the browser's navigation: an HTML page
    assert_bad_callback(r, 400, None, "replayed callback (HTML)")
    assert r.headers.get("Content-Type", "").startswith("text/html"), describe(r)
    assert calls.delta("token_requests") == 0

    # replay by someone who kept the flow cookie: the IdP refuses the spent code
    r = callback(relay, jar, fa["callback_url"], JSON_ACCEPT,
                 cookie=f"{a.flow_name}={a.flow.value}")
    assert_bad_callback(r, 400, "invalid_grant", "replayed code with the old flow cookie")
    assert calls.grant("authorization_code", "errors") == 1, idp.stats()["by_grant_type"]
    assert_cleared(set_cookies(r), a.flow_name, r)


def test_code_from_another_flow_is_refused_by_pkce(relays, idp, session_keys, idp_http):
    """Code injection: a code obtained for flow C presented with flow D's state (whose cookie
    the browser holds): the relay exchanges it with D's verifier and the IdP refuses."""
    relay = relays["lax"]
    jar = Jar()
    c = start_login(relay, jar, "", session_keys)
    d = start_login(relay, jar, "", session_keys)
    fc = idp_authorize(idp, relay, c, "frank", idp_http)
    calls = IdpCalls(idp)
    params = dict(fc["params"], state=d.state)
    r = callback(relay, jar, callback_url(relay, **params), JSON_ACCEPT)
    assert_bad_callback(r, 400, "invalid_grant", "code of another flow")
    assert calls.grant("authorization_code") == 1 and calls.grant("authorization_code", "ok") == 0


OPEN_REDIRECTS = ["https://evil.example/x", "//evil.example/x", "/\\evil.example/x",
                  "/%2F%2Fevil.example/x", "javascript:alert(1)", "/%5Cevil.example",
                  "/\t/evil.example", "///evil.example", "/%252F%252Fevil.example",
                  "https:/evil.example", " /x"]


def test_open_redirects_land_on_root(relay, idp, session_keys, idp_http):
    for evil in OPEN_REDIRECTS:
        jar = Jar()
        st = start_login(relay, jar, "?return_to=" + urllib.parse.quote(evil, safe=""),
                         session_keys)
        assert st.flow_plain.get("r") == "/", \
            f"return_to {evil!r} kept as {st.flow_plain.get('r')!r} (want '/')"
        assert "evil" not in st.location, st.location
        flow = idp_authorize(idp, relay, st, "grace", idp_http)
        resp = callback(relay, jar, flow["callback_url"])
        li = assert_login_success(relay, resp, st, session_keys, jar)
        assert li.landing == "/", f"return_to {evil!r}: the browser is sent to {li.landing!r}"
        assert_same_origin_target(relay, li.landing)
        assert "evil" not in resp.text and "evil" not in json.dumps(dict(resp.headers))


def test_safe_return_to_is_kept(relay, idp, session_keys, idp_http):
    for given, kept in (("/api/orders?id=7&sort=desc", "/api/orders?id=7&sort=desc"),
                        ("/app/page#frag", "/app/page#frag"),
                        ("/caf%C3%A9/x", "/caf%C3%A9/x"),
                        ("/café/x y", "/caf%C3%A9/x%20y")):
        st = start_login(relay, Jar(), "?return_to=" + urllib.parse.quote(given, safe=""),
                         session_keys)
        assert st.flow_plain["r"] == kept, f"return_to {given!r} became {st.flow_plain['r']!r}"
    # characters that need escaping in the hop page's attribute (Strict) or in Location (Lax)
    target = "/api/orders?id=7&sort=desc&q='x'"
    li = full_login(relay, idp, session_keys, Jar(), idp_http, "heidi", return_to=target)
    assert li.landing == target, f"return_to {target!r} came back as {li.landing!r}"


def test_login_start_housekeeping(relay, session_keys):
    """Abandoned logins do not pile up flow cookies (more than 3 present at a login start:
    all but the newest 2 are cleared, plus unreadable and expired ones); only GET starts a
    login."""
    jar = Jar()
    seen_max = 0
    started = []
    for _ in range(7):
        started.append(start_login(relay, jar, "", session_keys))
        seen_max = max(seen_max, len([n for n in jar.names() if FLOW_RE.match(n)]))
    assert seen_max <= 4, f"{seen_max} flow cookies held at once after repeated login starts"
    assert started[-1].flow_name in jar.names()

    # flows of known ages (sealed here, as the relay does), one garbage and one expired
    jar = Jar()
    now_s = int(time.time())
    aged = []
    for age in (50, 40, 30, 20):
        state = b64url(hashlib.sha256(f"{age}-{now_s}-{relay.name}".encode()).digest())
        plain = {"v": "v" * 43, "s": state, "n": "n" * 43, "r": "/", "t": now_s - age}
        jar.set(flow_cookie_name(state), session_keys.seal(plaintext=json.dumps(plain).encode()))
        aged.append(flow_cookie_name(state))
    junk = flow_cookie_name("junk")
    jar.set(junk, "not-a-sealed-flow")
    old_state = "expired-" + relay.name
    expired = flow_cookie_name(old_state)
    jar.set(expired, session_keys.seal(plaintext=json.dumps(
        {"v": "v" * 43, "s": old_state, "n": "n" * 43, "r": "/",
         "t": now_s - FLOW_MAX_AGE_S - 5}).encode()))
    st = start_login(relay, jar, "", session_keys)
    cleared = sorted(n for n, c in set_cookies(st.resp).items() if c.clears)
    want = sorted([aged[0], aged[1], junk, expired])
    assert cleared == want, \
        f"login start with flows aged 50/40/30/20 s, a garbage and an expired one: cleared " \
        f"{cleared}, expected the two oldest, the garbage and the expired one {want}"
    for n in cleared:
        assert_cleared(set_cookies(st.resp), n, st.resp)

    r = relay.request("POST", "/auth/login", jar, {"Origin": relay.origin, "Accept": NAV_ACCEPT})
    assert r.status_code == 405, f"POST on the login path: {describe(r)}"
    relay.expect["login_failed"] += 1  # reason login_method_not_allowed
    assert r.headers.get("Allow") == "GET", describe(r)
    assert not set_cookie_headers(r), set_cookie_headers(r)
    assert_nothing_upstream(relay)


def test_idp_error_json_and_html(relay, session_keys):
    attacker = "<script>alert(1)</script>"
    return_to = "/api/x?a=1&b=\"'<>"
    for accept in (JSON_ACCEPT, NAV_ACCEPT):
        jar = Jar()
        st = start_login(relay, jar, "?return_to=" + urllib.parse.quote(return_to, safe=""),
                         session_keys)
        for ch in "\"<>":
            assert ch not in st.flow_plain["r"], f"unencoded {ch!r} in return_to {st.flow_plain['r']!r}"
        r = callback(relay, jar, callback_url(relay, error="access_denied",
                                              error_description=attacker, state=st.state),
                     accept)
        assert_bad_callback(r, 400, None, f"IdP error (Accept {accept})")
        assert_cleared(set_cookies(r), st.flow_name, r)
        assert "<script" not in r.text.lower() and "alert(1)" not in r.text, \
            f"the IdP's error_description is echoed: {r.text!r}"
        if accept == JSON_ACCEPT:
            body = json_error(r)
            assert body["error"] == "access_denied", body
        else:
            assert r.headers.get("Content-Type", "").startswith("text/html"), describe(r)
            assert "default-src 'none'" in r.headers.get("Content-Security-Policy", ""), describe(r)
            assert r.headers.get("X-Content-Type-Options") == "nosniff", describe(r)
            links = html_links(r.text)
            retry = [u for u in links if urllib.parse.urlsplit(u).path == "/auth/login"]
            assert retry, f"the error page must link to a new login: {r.text!r}"
            assert query_params(retry[0]).get("return_to") == st.flow_plain["r"], \
                f"retry link {retry[0]!r} does not return to {st.flow_plain['r']!r}"
            assert "access_denied" in r.text

    # an unknown error code with markup: reported as invalid_request, never reflected
    jar = Jar()
    st = start_login(relay, jar, "", session_keys)
    hostile = "<img src=x onerror=alert(2)>"
    for accept in (JSON_ACCEPT, NAV_ACCEPT):
        r = callback(relay, jar, callback_url(relay, error=hostile, state=st.state), accept,
                     cookie=f"{st.flow_name}={st.flow.value}")
        assert_bad_callback(r, 400, None, f"unknown IdP error (Accept {accept})")
        assert "<img" not in r.text.lower() and "onerror" not in r.text, r.text
        if accept == JSON_ACCEPT:
            assert json_error(r)["error"] == "invalid_request", r.text
        else:
            assert r.headers.get("Content-Type", "").startswith("text/html"), describe(r)


# --------------------------------------------------------------------------------------------
# 3b. The token endpoint and the ID token (scripted fake endpoint)
# --------------------------------------------------------------------------------------------


def fake_id_token(fake: FakeTokenEndpoint, flow_nonce: str, **overrides) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": FAKE_CLIENT_ID, "sub": "alice", "nonce": flow_nonce,
              "iat": now, "exp": now + 300}
    for k, v in overrides.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return fake.signer.sign(claims)


def test_token_endpoint_unavailable_is_503(fake, fake_relay, session_keys):
    relay = fake_relay
    try:
        for mode in ("status_500", "status_503", "close"):
            jar = Jar()
            st = start_login(relay, jar, "?return_to=%2Fapi%2Fx", session_keys)
            fake.clear()
            fake.mode = mode
            r = callback(relay, jar, callback_url(relay, code="made-up-code", state=st.state),
                         JSON_ACCEPT)
            assert r.status_code == 503, f"token endpoint {mode}: {describe(r)}"
            assert_no_login(r, f"token endpoint {mode}")
            body = json_error(r)
            assert body["error"] == "temporarily_unavailable", body
            ra = r.headers.get("Retry-After")
            assert ra is not None and ra.strip().isdigit(), describe(r)
            assert fake.count == 1, f"expected one code exchange, got {fake.count}"
            req = fake.requests[0]
            assert req["method"] == "POST" and req["path"] == "/token", req["path"]
            form = req["form"]
            assert form.get("grant_type") == "authorization_code" and \
                form.get("code") == "made-up-code", form
            assert form.get("redirect_uri") == relay.redirect_uri, form
            assert b64url(hashlib.sha256(form.get("code_verifier", "").encode()).digest()) == \
                st.params["code_challenge"], "code_verifier does not match the code_challenge"
            auth = req["client_auth"]
            assert (auth["method"], auth["client_id"], auth["client_secret"]) == \
                ("basic", FAKE_CLIENT_ID, FAKE_SECRET), auth
    finally:
        fake.mode = "ok"


def test_id_token_checks(fake, fake_relay, session_keys):
    relay = fake_relay
    cases = [
        ("wrong nonce", lambda n: fake_id_token(fake, "not-" + n), 401),
        ("wrong audience", lambda n: fake_id_token(fake, n, aud="someone-else"), 401),
        ("wrong issuer", lambda n: fake_id_token(fake, n, iss="https://other.test"), 401),
        ("expired", lambda n: fake_id_token(fake, n, exp=int(time.time()) - 120), 401),
        ("no nonce", lambda n: fake_id_token(fake, n, nonce=None), 401),
        ("unsigned", lambda n: fake_id_token(fake, n).rsplit(".", 1)[0] + ".", 401),
        ("no id_token", None, 401),
        ("valid", lambda n: fake_id_token(fake, n), 200),
    ]
    try:
        fake.mode = "ok"
        for why, make, status in cases:
            jar = Jar()
            st = start_login(relay, jar, "?return_to=%2Fapi%2Fid", session_keys)
            fake.clear()
            fake.extra_response = {"id_token": make(st.nonce)} if make else {}
            r = callback(relay, jar, callback_url(relay, code="code-" + why.replace(" ", "-"),
                                                  state=st.state), JSON_ACCEPT)
            assert fake.count == 1, f"{why}: {fake.count} token requests"
            if status == 200:
                li = assert_login_success(relay, r, st, session_keys, jar,
                                          client_id=FAKE_CLIENT_ID)
                assert li.landing == "/api/id"
                assert li.session["rt"] == fake.issued[-1]["refresh_token"]
                api = api_get(relay, jar)
                assert api.status_code == 200 and \
                    bearer_of(relay.upstream.only()) == fake.issued[-1]["access_token"]
            else:
                assert r.status_code == status, f"ID token {why}: expected {status}; got {describe(r)}"
                assert_no_login(r, f"ID token {why}")
                body = json_error(r)
                assert body["error"] == "invalid_token", f"{why}: {body}"
                assert_cleared(set_cookies(r), st.flow_name, r)
    finally:
        fake.extra_response = {}


# --------------------------------------------------------------------------------------------
# 4. Navigation vs fetch
# --------------------------------------------------------------------------------------------


def test_navigation_redirects_to_login_fetch_gets_401(relays, session_keys):
    relay = relays["strict"]
    r = relay.request("GET", "/api/me", None, nav_headers("none"))
    assert r.status_code == 302, f"unauthenticated navigation: {describe(r)}"
    assert r.headers["Location"] == "/auth/login?return_to=%2Fapi%2Fme", r.headers["Location"]
    assert "no-store" in cache_directives(r)
    assert_nothing_upstream(relay)

    r = relay.request("GET", "/api/me?x=1&y=2", None, nav_headers("none"))
    assert r.status_code == 302 and \
        query_params(r.headers["Location"]) == {"return_to": "/api/me?x=1&y=2"}, describe(r)
    assert urllib.parse.urlsplit(r.headers["Location"]).path == "/auth/login"

    # a browser without Fetch Metadata: a GET accepting text/html
    r = relay.request("GET", "/api/me", None, {"Accept": NAV_ACCEPT})
    assert r.status_code == 302 and r.headers["Location"].startswith("/auth/login?"), describe(r)

    # following it starts a login that returns to /api/me
    jar = Jar()
    st = start_login(relay, jar, r.headers["Location"][len("/auth/login"):], session_keys)
    assert st.flow_plain["r"] == "/api/me"

    for headers, why in (
            (fetch_headers("*/*"), "fetch (Sec-Fetch-Mode: cors)"),
            ({"Accept": "application/json"}, "Accept: application/json"),
            (fetch_headers(NAV_ACCEPT), "Sec-Fetch-Mode: cors with Accept text/html"),
            ({"Accept": "*/*"}, "no Fetch Metadata, Accept */*")):
        r = relay.request("GET", "/api/me", None, headers)
        body = assert_refused(r, relay, token_presented=False)
        assert body["error"] == "missing_token", f"{why}: {body}"


# --------------------------------------------------------------------------------------------
# 5. Logout guards
# --------------------------------------------------------------------------------------------


def test_logout_get_405_and_forged_origin_403(relay, idp, session_keys, idp_http):
    jar = Jar()
    li = full_login(relay, idp, session_keys, jar, idp_http, "ivan")
    rt = li.session["rt"]
    calls = IdpCalls(idp)

    r = relay.request("GET", "/auth/logout", jar, nav_headers())
    assert r.status_code == 405, f"GET logout: {describe(r)}"
    relay.expect["login_failed"] += 1  # counted by its reason login_method_not_allowed
    assert r.headers.get("Allow") == "POST", describe(r)
    assert not set_cookie_headers(r), f"GET logout must clear nothing: {set_cookie_headers(r)}"

    forged = [({"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}, "forged Origin"),
              ({"Origin": EVIL}, "forged Origin without Fetch Metadata"),
              ({"Origin": "null"}, "Origin: null"),
              ({}, "neither Origin nor Referer"),
              ({"Referer": EVIL + "/page"}, "forged Referer"),
              ({"Origin": relay.origin, "Sec-Fetch-Site": "cross-site"},
               "own Origin but Sec-Fetch-Site: cross-site")]
    if relay.double_submit:
        forged.append(({"Origin": relay.origin, "Sec-Fetch-Site": "same-origin"},
                       "allowed Origin without X-CSRF-Token"))
        forged.append(({"Origin": relay.origin, "X-CSRF-Token": "wrong"},
                       "allowed Origin with a wrong X-CSRF-Token"))
    for headers, why in forged:
        r = relay.request("POST", "/auth/logout", jar, dict(headers, Accept=NAV_ACCEPT))
        assert r.status_code == 403, f"logout POST, {why}: {describe(r)}"
        assert not set_cookie_headers(r), f"{why}: no cookie may be cleared: {set_cookie_headers(r)}"
        assert json_error(r)["error"] == "csrf", r.text
        assert_nothing_upstream(relay)
    assert calls.delta("revocation_requests") == 0, "a refused logout revoked the refresh token"
    assert idp.refresh_token_active(rt)
    api = api_get(relay, jar)
    assert api.status_code == 200, f"the session must survive refused logouts: {describe(api)}"

    # the genuine logout, as a fetch: 200 {"redirect_to"} (a fetch cannot follow it)
    r = relay.request("POST", "/auth/logout", jar,
                      dict(logout_headers(relay, jar), **fetch_headers()))
    assert r.status_code == 200, f"logout as fetch: {describe(r)}"
    relay.expect["logout"] += 1
    to = r.json().get("redirect_to", "")
    assert to.startswith(idp.end_session_endpoint + "?"), r.text
    # A JSON body is readable by JavaScript: it must not carry the ID token.
    assert "id_token_hint" not in query_params(to), to
    assert li.session["idt"] not in r.text
    cleared = jar.absorb(r)
    for name in (AT_COOKIE, SESSION_COOKIE):
        assert_cleared(cleared, name, r)
    assert not idp.refresh_token_active(rt)


def test_logout_without_session(relay, idp):
    jar = Jar()
    calls = IdpCalls(idp)
    r = relay.request("POST", "/auth/logout", jar, logout_headers(relay, jar))
    if relay.double_submit:
        # double submit needs the CSRF cookie and header pair even without a session
        assert r.status_code == 403, describe(r)
        jar.set(CSRF_COOKIE, "t" * 32)
        r = relay.request("POST", "/auth/logout", jar, logout_headers(relay, jar))
    assert r.status_code == 302, f"logout without a session: {describe(r)}"
    relay.expect["logout"] += 1
    q = query_params(r.headers["Location"])
    assert q == {"client_id": CLIENT_ID, "post_logout_redirect_uri": relay.origin + "/"}, q
    cleared = jar.absorb(r)
    for name in (AT_COOKIE, SESSION_COOKIE):
        assert_cleared(cleared, name, r)
    assert calls.delta("revocation_requests") == 0, "nothing to revoke without a session"


# --------------------------------------------------------------------------------------------
# 6. Metrics and VM health (last)
# --------------------------------------------------------------------------------------------

LOGIN_METRICS = ("login_started", "login_succeeded", "login_failed", "logout")


def test_login_metrics_and_no_vm_failure(relays, fake_relay):
    problems = {}
    for relay in (*relays.values(), fake_relay):
        stats = relay.metrics()
        for key in LOGIN_METRICS:
            name = f"{METRIC_PREFIX}edge_token_relay_{key}_total"
            assert name in stats, f"{relay.name}: {name} missing from /stats: {sorted(stats)}"
            if stats[name] != relay.expect[key]:
                problems[f"{relay.name} {name}"] = {"stats": stats[name],
                                                    "expected": relay.expect[key]}
        evidence = wasm_failure_evidence(relay.envoy)
        if evidence:
            problems[f"{relay.name} vm"] = evidence
    assert not problems, problems
