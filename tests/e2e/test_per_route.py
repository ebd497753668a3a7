"""Turning the relay off on one route with Envoy's per-route `FilterConfig` (README, "Turning the
relay off on a route").

The Envoy config is the suite's relay config with three routes before the catch-all:
`/api/static/` and the exact path `/api/health` carry

    typed_per_filter_config:
      envoy.filters.http.wasm:
        "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
        disabled: true

so the filter never runs for them, although they sit under the protected prefix `/api/`; every
other `/api/` path still goes through the relay.
"""

from __future__ import annotations

import pytest

from checks import (assert_forwarded, assert_passed_untouched, assert_refused,
                    assert_relay_healthy, upstream_headers)
from support import (AT_COOKIE, CSRF_COOKIE, SESSION_COOKIE, RelayStack, make_claims,
                     relay_config)

FILTER_NAME = "envoy.filters.http.wasm"
DISABLED = {FILTER_NAME: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                          "disabled": True}}


def per_route_config(stack: RelayStack) -> dict:
    cfg = relay_config(stack.upstream.port, stack.idp.port)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in hcm["http_filters"]][0] == FILTER_NAME
    to_upstream = {"cluster": "upstream", "timeout": "15s"}
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [
        {"name": "static", "match": {"prefix": "/api/static/"}, "route": to_upstream,
         "typed_per_filter_config": DISABLED},
        {"name": "health", "match": {"path": "/api/health"},
         "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
         "typed_per_filter_config": DISABLED},
        {"name": "all", "match": {"prefix": "/"}, "route": to_upstream},
    ]
    return cfg


@pytest.fixture(scope="module")
def stack(relay_stack):
    with relay_stack(envoy_config_fn=per_route_config, name="per-route") as s:
        yield s


@pytest.fixture(scope="module")
def token(stack, keys):
    tok = keys["RS256"].sign(make_claims())
    resp = stack.wait_jwks_ready(tok)
    assert resp.status_code == 200, resp.text
    return tok


def test_disabled_route_passes_without_a_token(stack, token):
    resp = stack.get("/api/static/app.js")
    assert resp.status_code == 200, resp.text
    assert stack.upstream.only()["path"] == "/api/static/app.js"


def test_disabled_route_leaves_cookies_and_authorization_alone(stack, token):
    cookie = f"theme=dark; {AT_COOKIE}={token}; {SESSION_COOKIE}=opaque; {CSRF_COOKIE}=c"
    sent = {"Cookie": cookie, "Authorization": "Basic dXNlcjpwdw=="}
    resp = stack.get("/api/static/app.js?_header=Cache-Control:public,%20max-age=60",
                     headers=sent)
    rec = assert_passed_untouched(resp, stack, sent)
    assert "x-user-sub" not in rec["headers"]
    # No response-side policy either: the upstream's caching headers come back as they were.
    assert resp.headers.get("Cache-Control") == "public, max-age=60"
    assert "cookie" not in resp.headers.get("Vary", "").lower()


def test_disabled_route_is_not_csrf_checked(stack, token):
    """The filter does not run at all: a cross-site POST reaches the upstream (which is why a
    disabled route must not lead anywhere that acts on the user's cookies)."""
    resp = stack.request("POST", "/api/static/upload", cookie=f"{AT_COOKIE}={token}",
                         headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
                         data="x")
    assert resp.status_code == 200, resp.text
    assert stack.upstream.only()["method"] == "POST"


def test_disabled_direct_response_route(stack, token):
    resp = stack.get("/api/health")
    assert resp.status_code == 200 and resp.text == "ok\n", resp.text
    assert not stack.upstream.received


def test_same_prefix_on_another_route_is_still_protected(stack, token):
    resp = stack.get("/api/orders")
    assert_refused(resp, stack, token_presented=False)
    # `path: /api/health` is exact: a longer path goes to the protected route.
    resp = stack.get("/api/healthz")
    assert_refused(resp, stack, token_presented=False)
    resp = stack.get("/api/orders", cookie=f"theme=dark; {AT_COOKIE}={token}")
    assert_forwarded(resp, stack, token)
    assert upstream_headers(stack.upstream.only(), "cookie") == ["theme=dark"]


@pytest.mark.parametrize("path", ["/api/static/../orders", "/api/static/%2e%2e/orders",
                                  "/api/static/./../orders"])
def test_dot_segments_cannot_reach_a_protected_path_through_the_disabled_route(stack, token, path):
    """Envoy normalizes the path (normalize_path, merge_slashes) before it picks the route, so a
    path that leaves /api/static/ is matched, and protected, as the path it resolves to."""
    resp = stack.raw(path)
    assert resp.status_code == 401, resp
    assert not stack.upstream.received


def test_relay_healthy_after_per_route_traffic(stack, token):
    assert_relay_healthy(stack, token)
