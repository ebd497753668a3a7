"""Host scoping through the real Envoy: `hosts` on a listener whose one virtual host (`*`) sends
every host to the same upstream, as a shared gateway does.

The relay serves `app.example.com`, `*.apps.example.com` and `127.0.0.1` (the harness's own
readiness probe). A request for any other host must reach the upstream exactly as sent: no
401, no Authorization or Cookie change, no forged-claim stripping, no login endpoint, nothing
added to the response.
"""

from __future__ import annotations

import os

import pytest

from checks import cookie_pairs, describe, upstream_headers
from support import (AT_COOKIE, SESSION_COOKIE, b64url, default_plugin_config, make_claims,
                     wasm_failure_evidence)

SERVED = "app.example.com"
OTHER = "other.example.com"


@pytest.fixture(scope="module")
def stack(relay_stack, keys):
    pc = default_plugin_config(
        hosts=[SERVED, "*.apps.example.com", "127.0.0.1"],
        session_keys=[{"kid": "k1", "key": b64url(os.urandom(32))}],
        token_endpoint={"cluster": "idp", "authority": "idp.example.com", "path": "/token"},
        client_id="relay-client",
        login={"authorization_endpoint": "https://auth.example.com/authorize",
               "redirect_uri": f"https://{SERVED}/auth/callback"},
    )
    with relay_stack(name="hosts", plugin_config=pc) as s:
        resp = s.wait_jwks_ready(keys["RS256"].sign(make_claims()))
        assert resp.status_code == 200, describe(resp)
        yield s


@pytest.fixture
def token(keys) -> str:
    return keys["RS256"].sign(make_claims())


def get(stack, host: str, path: str = "/api/orders", **headers: str):
    return stack.request("GET", path, headers={"Host": host, **headers})


def assert_relay_refused(resp, stack):
    assert resp.status_code == 401, describe(resp)
    assert stack.upstream.count == 0, stack.upstream.received


def assert_reached_upstream_as_sent(resp, stack, sent: dict[str, str]) -> dict:
    assert resp.status_code == 200, describe(resp)
    rec = stack.upstream.only()
    for name, value in sent.items():
        assert upstream_headers(rec, name) == [value], (name, rec["header_list"])
    return rec


def test_served_host_is_protected(stack, token):
    assert_relay_refused(get(stack, SERVED), stack)
    resp = get(stack, SERVED, Cookie=f"{AT_COOKIE}={token}; theme=dark")
    assert resp.status_code == 200, describe(resp)
    rec = stack.upstream.only()
    assert upstream_headers(rec, "authorization") == [f"Bearer {token}"]
    assert upstream_headers(rec, "cookie") == ["theme=dark"]
    assert "cookie" in resp.headers.get("Vary", "").lower()


def test_other_host_passes_untouched(stack, token):
    """No check, no header change at all: not even the relay's cookies or a forged claim
    header are removed, and the response gets nothing either."""
    sent = {"authorization": "Bearer client-sent",
            "cookie": f"{AT_COOKIE}={token}; {SESSION_COOKIE}=s; theme=dark",
            "x-user-sub": "forged"}
    resp = stack.request("GET", "/api/orders?_header=Cache-Control:public,%20max-age=60",
                         headers={"Host": OTHER, **sent})
    assert_reached_upstream_as_sent(resp, stack, sent)
    assert resp.headers.get("Cache-Control") == "public, max-age=60"
    assert "cookie" not in resp.headers.get("Vary", "").lower()


def test_login_endpoint_only_on_served_hosts(stack):
    resp = get(stack, SERVED, "/auth/login")
    assert resp.status_code == 302, describe(resp)
    assert resp.headers["Location"].startswith("https://auth.example.com/authorize?")
    assert stack.upstream.count == 0
    resp = get(stack, OTHER, "/auth/login")
    assert resp.status_code == 200, describe(resp)
    assert stack.upstream.only()["path"] == "/auth/login"
    assert "set-cookie" not in resp.headers


@pytest.mark.parametrize("host", ["a.apps.example.com", "a.b.apps.example.com",
                                  "A.Apps.Example.COM"])
def test_wildcard_matches_subdomains(stack, host):
    assert_relay_refused(get(stack, host), stack)


@pytest.mark.parametrize("host", ["apps.example.com", "xapps.example.com",
                                  "a.apps.example.com.evil.test"])
def test_wildcard_does_not_match_its_parent_or_lookalikes(stack, host):
    assert_reached_upstream_as_sent(get(stack, host), stack, {})


@pytest.mark.parametrize("host", ["app.example.com:8443", "APP.Example.Com", "App.example.com:80",
                                  "app.example.com."])
def test_port_case_and_trailing_dot_do_not_matter(stack, host):
    assert_relay_refused(get(stack, host), stack)


def test_other_host_with_a_port_passes(stack):
    assert_reached_upstream_as_sent(get(stack, f"{OTHER}:8443"), stack, {})


@pytest.mark.parametrize("host", [
    b"a@app.example.com",
    b"user:pw@app.example.com:443",
    b"app..example.com",
    b"app.example.com:x",
    b"app.example.com:80:80",
    b"[::1",
    b"",
    b"a" * 600 + b".app.example.com",
    b"app.example.com\x01",
    None,
])
def test_hostile_authority_is_never_a_served_host(stack, host, token):
    """Envoy may refuse such a request itself (400); if it lets it through, the relay must not
    answer it as a served host (no 401, no crash): it reaches the upstream as sent."""
    cookie = f"{AT_COOKIE}={token}; theme=dark"
    resp = stack.raw("/api/orders", headers=[("Cookie", cookie)], host=host)
    assert resp.status_code in (200, 400), resp
    if resp.status_code == 200:
        rec = stack.upstream.only()
        assert upstream_headers(rec, "authorization") == []
        assert [n for n, _ in cookie_pairs(upstream_headers(rec, "cookie")[0])] == \
            [AT_COOKIE, "theme"]
    else:
        assert stack.upstream.count == 0
    # The worker's VM is alive and still protects the served host.
    assert_relay_refused(get(stack, SERVED), stack)
    assert wasm_failure_evidence(stack.envoy) == {}
