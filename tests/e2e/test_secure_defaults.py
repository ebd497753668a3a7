"""Secure defaults through the real Envoy:

- without a `csrf` section, a request's own origin counts only over https (plain http only for
  localhost, 127.0.0.1 and [::1]);
- a Cognito issuer with no `token_use` in `required_claims` accepts access tokens only;
- the relay's cookies never reach unprotected or public paths, unless
  `forward_relay_cookies_to_unprotected` says so.
"""

from __future__ import annotations

import json

import pytest

from checks import cookie_pairs, describe, upstream_headers
from support import (AT_COOKIE, AUDIENCE, CSRF_COOKIE, SESSION_COOKIE, default_plugin_config,
                     make_claims)

COGNITO = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Example"
APP_COOKIES = "theme=dark; sid=app-session"


def relay_cookies(token: str) -> str:
    """The app's two cookies among the relay's (login flow cookies are the relay's only with a
    `login` section; the unit tests cover them)."""
    return (f"theme=dark; {AT_COOKIE}={token}; {SESSION_COOKIE}.0=s0; {SESSION_COOKIE}.1=s1; "
            f"{CSRF_COOKIE}=c; sid=app-session")


@pytest.fixture(scope="module")
def default_stack(relay_stack, keys):
    """The test configuration as it is: no `csrf` section, no opt-out."""
    pc = default_plugin_config()
    assert "csrf" not in pc
    with relay_stack(name="defaults", plugin_config=pc) as s:
        s.wait_jwks_ready(keys["RS256"].sign(make_claims()))
        yield s


@pytest.fixture(scope="module")
def cognito_stack(relay_stack, keys):
    """A Cognito issuer with nothing pinned, and the cookie opt-out."""
    pc = default_plugin_config(issuer=COGNITO, required_claims={},
                               forward_relay_cookies_to_unprotected=True)
    with relay_stack(name="cognito-defaults", plugin_config=pc) as s:
        s.wait_jwks_ready(keys["RS256"].sign(make_claims(iss=COGNITO)))
        yield s


@pytest.fixture
def token(keys) -> str:
    return keys["RS256"].sign(make_claims())


# -- CSRF without a csrf section ---------------------------------------------------------------

def post(stack, token: str, host: str, origin: str, **headers: str):
    return stack.request("POST", "/api/orders", f"{AT_COOKIE}={token}", data="{}",
                         headers={"Host": host, "Origin": origin, **headers})


def test_plain_http_own_origin_is_refused_off_localhost(default_stack, token):
    resp = post(default_stack, token, "app.example.com", "http://app.example.com")
    assert resp.status_code == 403, describe(resp)
    body = resp.json()
    assert body["error"] == "csrf", body
    assert default_stack.upstream.count == 0
    assert "status=403 reason=csrf_origin_not_allowed" in default_stack.envoy.log_text()
    # X-Forwarded-Proto does not change it: the browser's Origin says which page sent it.
    resp = post(default_stack, token, "app.example.com", "http://app.example.com",
                **{"X-Forwarded-Proto": "https"})
    assert resp.status_code == 403, describe(resp)


def test_https_own_origin_passes(default_stack, token):
    resp = post(default_stack, token, "app.example.com", "https://app.example.com")
    assert resp.status_code == 200, describe(resp)
    rec = default_stack.upstream.only()
    assert upstream_headers(rec, "authorization") == [f"Bearer {token}"]
    resp = post(default_stack, token, "app.example.com:8443", "https://app.example.com:8443")
    assert resp.status_code == 200, describe(resp)


def test_plain_http_own_origin_passes_on_localhost(default_stack, token):
    origin = f"http://127.0.0.1:{default_stack.envoy.port}"
    resp = post(default_stack, token, f"127.0.0.1:{default_stack.envoy.port}", origin)
    assert resp.status_code == 200, describe(resp)
    resp = post(default_stack, token, "localhost:3000", "http://localhost:3000")
    assert resp.status_code == 200, describe(resp)


def test_other_origins_are_still_refused(default_stack, token):
    resp = post(default_stack, token, "app.example.com", "https://evil.example")
    assert resp.status_code == 403, describe(resp)
    assert default_stack.upstream.count == 0


# -- Cognito token_use ---------------------------------------------------------------------------

def test_cognito_issuer_pins_token_use_access(cognito_stack):
    line = next(ln for ln in cognito_stack.envoy.log_text().splitlines()
                if "edge-token-relay" in ln and "configured:" in ln)
    assert "token_use=access(default)" in line, line


@pytest.mark.parametrize("claims,status", [
    ({"token_use": "access", "aud": None, "client_id": AUDIENCE}, 200),
    ({"token_use": "access"}, 200),
    ({"token_use": "id"}, 401),
    ({"token_use": None}, 401),
])
def test_cognito_issuer_refuses_id_tokens(cognito_stack, keys, claims, status):
    t = keys["RS256"].sign(make_claims(iss=COGNITO, **claims))
    resp = cognito_stack.get_with_token("/api/me", t)
    assert resp.status_code == status, describe(resp)
    if status == 401:
        assert cognito_stack.upstream.count == 0
        assert "claim" in resp.headers.get("WWW-Authenticate", ""), describe(resp)
    else:
        rec = cognito_stack.upstream.only()
        assert upstream_headers(rec, "authorization") == [f"Bearer {t}"]


# -- Relay cookies on unprotected and public paths -----------------------------------------------

@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/public/info"])
def test_relay_cookies_do_not_reach_unprotected_paths(default_stack, token, path):
    resp = default_stack.get(path, relay_cookies(token))
    assert resp.status_code == 200, describe(resp)
    rec = default_stack.upstream.only()
    assert upstream_headers(rec, "cookie") == [APP_COOKIES]
    assert token not in json.dumps(rec["header_list"])


@pytest.mark.parametrize("path", ["/", "/api/public/info"])
def test_only_relay_cookies_leave_no_cookie_header(default_stack, token, path):
    resp = default_stack.get(path, f"{AT_COOKIE}={token}; {SESSION_COOKIE}=s")
    assert resp.status_code == 200, describe(resp)
    assert upstream_headers(default_stack.upstream.only(), "cookie") == []


def test_app_cookies_alone_are_left_as_sent(default_stack):
    sent = "theme=dark;  sid=app-session; x"
    resp = default_stack.get("/static/app.js", sent)
    assert resp.status_code == 200, describe(resp)
    assert upstream_headers(default_stack.upstream.only(), "cookie") == [sent]


@pytest.mark.parametrize("path", ["/", "/api/public/info"])
def test_opt_out_forwards_relay_cookies(cognito_stack, keys, path):
    t = keys["RS256"].sign(make_claims(iss=COGNITO))
    resp = cognito_stack.get(path, relay_cookies(t))
    assert resp.status_code == 200, describe(resp)
    (cookie,) = upstream_headers(cognito_stack.upstream.only(), "cookie")
    assert cookie_pairs(cookie) == cookie_pairs(relay_cookies(t))
