"""Guards at the edge, through the real Envoy: CSRF, CORS on the filter's own answers, cache
safety of protected responses, and the request-header budget (431).

One Envoy with `csrf.allowed_origins` and a small header budget; every test asserts what the
browser got and what reached the upstream (nothing, on refusals).
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from checks import describe
from support import AT_COOKIE, CSRF_COOKIE, default_plugin_config, make_claims

APP = "https://app.example.com"
BUDGET = 4096


@pytest.fixture(scope="module")
def stack(relay_stack, keys):
    pc = default_plugin_config(
        csrf={"allowed_origins": [APP], "double_submit": True},
        max_request_headers_bytes=BUDGET,
    )
    with relay_stack(name="guards", plugin_config=pc) as s:
        s.wait_jwks_ready(keys["RS256"].sign(make_claims()))
        yield s


@pytest.fixture
def token(keys) -> str:
    return keys["RS256"].sign(make_claims())


def cookie(token: str, csrf: str | None = "t0ken") -> str:
    c = f"{AT_COOKIE}={token}"
    return c + (f"; {CSRF_COOKIE}={csrf}" if csrf is not None else "")


# -- CSRF ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_unsafe_method_from_allowed_origin_with_token_passes(stack, token, method):
    resp = stack.request(method, "/api/orders", cookie(token),
                         headers={"Origin": APP, "X-CSRF-Token": "t0ken"}, data="{}")
    assert resp.status_code == 200, describe(resp)
    (rec,) = stack.upstream.received
    assert rec["method"] == method
    assert rec["headers"]["authorization"] == f"Bearer {token}"


@pytest.mark.parametrize("headers,reason", [
    ({"Origin": "https://evil.example", "X-CSRF-Token": "t0ken"}, "origin"),
    ({"Origin": "null", "X-CSRF-Token": "t0ken"}, "origin"),
    ({"X-CSRF-Token": "t0ken"}, "no origin"),
    ({"Referer": "https://evil.example/page", "X-CSRF-Token": "t0ken"}, "referer"),
    ({"Origin": APP, "Sec-Fetch-Site": "cross-site", "X-CSRF-Token": "t0ken"}, "cross-site"),
    ({"Origin": APP}, "double submit: no header"),
    ({"Origin": APP, "X-CSRF-Token": "wrong"}, "double submit: mismatch"),
])
def test_forged_requests_are_refused(stack, token, headers, reason):
    resp = stack.request("POST", "/api/orders", cookie(token), headers=headers, data="{}")
    assert resp.status_code == 403, f"{reason}: {describe(resp)}"
    assert resp.json()["error"] == "csrf"
    assert resp.headers.get("Cache-Control") == "no-store"
    assert stack.upstream.received == [], "nothing may reach the upstream"


def test_referer_from_allowed_origin_passes(stack, token):
    resp = stack.request("POST", "/api/orders", cookie(token),
                         headers={"Referer": f"{APP}/checkout?step=2", "X-CSRF-Token": "t0ken"})
    assert resp.status_code == 200, describe(resp)


def test_safe_methods_are_not_checked(stack, token):
    resp = stack.get("/api/x", cookie(token, csrf=None), headers={"Origin": "https://evil.example"})
    assert resp.status_code == 200, describe(resp)


def test_own_answers_carry_cors_for_allowed_origin_only(stack):
    resp = stack.get("/api/x", headers={"Origin": APP})
    assert resp.status_code == 401
    assert resp.headers.get("Access-Control-Allow-Origin") == APP
    assert resp.headers.get("Access-Control-Allow-Credentials") == "true"
    assert "Origin" in resp.headers.get("Vary", "")
    resp = stack.get("/api/x", headers={"Origin": "https://evil.example"})
    assert resp.status_code == 401
    assert "Access-Control-Allow-Origin" not in resp.headers


# -- cache safety ----------------------------------------------------------------------------

def upstream_with(*headers: str) -> str:
    return "/api/x?" + "&".join("_header=" + quote(h, safe="") for h in headers)


@pytest.mark.parametrize("upstream_cc,expected", [
    (None, "private"),
    ("public, max-age=60", "private, max-age=60"),
    ("max-age=60, s-maxage=600", "private, max-age=60"),
    ("private, max-age=5", "private, max-age=5"),
    ("no-store", "no-store"),
])
def test_protected_responses_are_private(stack, token, upstream_cc, expected):
    path = upstream_with(f"Cache-Control:{upstream_cc}") if upstream_cc else "/api/x"
    resp = stack.get(path, cookie(token))
    assert resp.status_code == 200, describe(resp)
    assert resp.headers.get("Cache-Control") == expected
    assert "Cookie" in [v.strip() for v in resp.headers.get("Vary", "").split(",")]


def test_existing_vary_is_extended(stack, token):
    resp = stack.get(upstream_with("Vary:Accept-Encoding"), cookie(token))
    tokens = [t.strip() for t in resp.headers.get("Vary", "").split(",")]
    assert tokens == ["Accept-Encoding", "Cookie"], resp.headers.get("Vary")


def test_unprotected_responses_are_untouched(stack):
    resp = stack.get("/static/x?_header=" + quote("Cache-Control:public, max-age=600", safe=""))
    assert resp.status_code == 200
    assert resp.headers.get("Cache-Control") == "public, max-age=600"
    assert "Cookie" not in resp.headers.get("Vary", "")


@pytest.mark.parametrize("path,cookie_value", [
    ("/api/x", None),
    ("/api/x", "garbage"),
])
def test_generated_answers_are_no_store(stack, path, cookie_value):
    resp = stack.get(path, f"{AT_COOKIE}={cookie_value}" if cookie_value else None)
    assert resp.status_code == 401
    assert resp.headers.get("Cache-Control") == "no-store"


# -- header budget ----------------------------------------------------------------------------

def test_oversized_request_is_431_naming_the_largest_cookie(stack, token):
    resp = stack.get("/api/x", f"{cookie(token)}; tracking={'x' * BUDGET}")
    assert resp.status_code == 431, describe(resp)
    body = resp.json()
    assert body["error"] == "request_header_fields_too_large"
    assert body["largest"] == "tracking"
    assert body["largest_bytes"] >= BUDGET
    assert resp.headers.get("Cache-Control") == "no-store"
    assert stack.upstream.received == []


def test_oversized_header_is_named(stack, token):
    resp = stack.get("/api/x", cookie(token), headers={"X-Big": "y" * BUDGET})
    assert resp.status_code == 431, describe(resp)
    assert resp.json()["largest"] == "x-big"


def test_relay_cookies_do_not_count_once_stripped(stack, token):
    # A large relay session cookie is removed before forwarding, so it does not count.
    resp = stack.get("/api/x", f"{cookie(token)}; __Host-relay-session={'s' * (BUDGET - 500)}")
    assert resp.status_code == 200, describe(resp)
