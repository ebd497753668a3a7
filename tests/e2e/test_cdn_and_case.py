"""CDN cache headers and case-insensitive prefixes, through the real Envoy.

* An upstream answers a protected request with long public caching in `Cache-Control` and in
  every header a CDN obeys instead (`CDN-Cache-Control` and its vendor forms,
  `Surrogate-Control`, `Edge-Control`, `X-Accel-Expires`): the browser-facing response carries
  none that allows a shared cache to keep it. Unprotected responses keep theirs.
* `case_insensitive_prefixes`: `/API/x` needs a token with the option, passes untouched without
  it (the default); public prefixes stay case-sensitive.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest

from checks import describe
from idp import Idp
from refresh_support import Relay, SessionKeys, refresh_plugin_config
from support import AT_COOKIE, SESSION_COOKIE, default_plugin_config, make_claims

LONG = "public, max-age=31536000"
CDN_HEADERS = {
    "CDN-Cache-Control": LONG,
    "Cloudflare-CDN-Cache-Control": LONG,
    "Vercel-CDN-Cache-Control": LONG,
    "Netlify-CDN-Cache-Control": LONG,
    "Akamai-Cache-Control": LONG,
    "Surrogate-Control": "max-age=31536000",
    "Edge-Control": "!no-store, max-age=31536000",
    "X-Accel-Expires": "31536000",
}


def with_headers(path: str, headers: dict[str, str]) -> str:
    return path + "?" + "&".join(
        "_header=" + quote(f"{k}:{v}", safe="") for k, v in headers.items())


@pytest.fixture(scope="module")
def stack(relay_stack, keys):
    with relay_stack(name="cdn", plugin_config=default_plugin_config()) as s:
        s.wait_jwks_ready(keys["RS256"].sign(make_claims()))
        yield s


@pytest.fixture(scope="module")
def folding(relay_stack, keys):
    pc = default_plugin_config(case_insensitive_prefixes=True)
    with relay_stack(name="case", plugin_config=pc) as s:
        s.wait_jwks_ready(keys["RS256"].sign(make_claims()))
        yield s


@pytest.fixture
def token(keys) -> str:
    return keys["RS256"].sign(make_claims())


def test_protected_response_allows_no_cdn_caching(stack, token):
    headers = {"Cache-Control": "public, max-age=600, s-maxage=86400", **CDN_HEADERS}
    resp = stack.get(with_headers("/api/x", headers), f"{AT_COOKIE}={token}")
    assert resp.status_code == 200, describe(resp)
    assert resp.headers["Cache-Control"] == "private, max-age=600"
    assert "Cookie" in [t.strip() for t in resp.headers.get("Vary", "").split(",")]
    for name in CDN_HEADERS:
        want = "0" if name == "X-Accel-Expires" else "no-store, max-age=0"
        assert resp.headers.get(name) == want, f"{name}: {describe(resp)}"
    # The request itself still reached the upstream with the token.
    assert stack.upstream.last()["headers"]["authorization"] == f"Bearer {token}"


def test_protected_response_without_cdn_headers_gets_none(stack, token):
    resp = stack.get("/api/x", f"{AT_COOKIE}={token}")
    assert resp.status_code == 200, describe(resp)
    assert resp.headers["Cache-Control"] == "private"
    for name in CDN_HEADERS:
        assert name not in resp.headers, name


def test_refresh_response_allows_no_cdn_caching(wasm_file):
    """A response that sets the refreshed cookies: `private, no-store`, and no CDN header that
    lets a CDN keep one user's new tokens for the next."""
    idp = Idp.start(access_token_ttl=120, name="idp-cdn")
    try:
        keys = SessionKeys.generate(("2026-11",))
        authority = f"127.0.0.1:{idp.port}"
        pc = refresh_plugin_config(
            keys, token_path=idp.token_path, authority=authority, timeout_ms=3000,
            client_id="relay-client", client_secret="relay-secret", client_auth="basic",
            issuer=idp.issuer, audiences=[idp.audience], required_claims={},
            jwks={"cluster": "idp", "authority": authority, "path": idp.jwks_path,
                  "refresh_s": 300})
        relay = Relay("cdn-refresh", idp.port, pc).start()
        try:
            ready = relay.wait_ready(idp.mint("ready-probe")["access_token"])
            assert ready.status_code == 200, describe(ready)
            sealed = keys.seal(idp.mint("alice")["refresh_token"], exp=int(time.time()) + 3600)
            headers = {"Cache-Control": "public, max-age=600", **CDN_HEADERS}
            resp = relay.get(with_headers("/api/orders", headers), f"{SESSION_COOKIE}={sealed}")
            assert resp.status_code == 200, describe(resp)
            assert any(c.startswith(f"{SESSION_COOKIE}=")
                       for c in resp.raw.headers.getlist("Set-Cookie")), describe(resp)
            assert resp.headers["Cache-Control"] == "private, no-store"
            for name in CDN_HEADERS:
                want = "0" if name == "X-Accel-Expires" else "no-store, max-age=0"
                assert resp.headers.get(name) == want, f"{name}: {describe(resp)}"
        finally:
            relay.stop()
    finally:
        idp.stop()


def test_unprotected_response_keeps_cdn_headers(stack):
    resp = stack.get(with_headers("/static/app.js", CDN_HEADERS))
    assert resp.status_code == 200, describe(resp)
    for name, value in CDN_HEADERS.items():
        assert resp.headers.get(name) == value, name


@pytest.mark.parametrize("path", ["/API/admin", "/Api/x", "/%41PI/x", "/API/PUBLIC/x"])
def test_case_insensitive_prefixes_need_a_token(folding, token, path):
    folding.upstream.clear()
    resp = folding.get(path)
    assert resp.status_code == 401, describe(resp)
    assert folding.upstream.received == []
    resp = folding.get(path, f"{AT_COOKIE}={token}")
    assert resp.status_code == 200, describe(resp)
    assert folding.upstream.last()["headers"]["authorization"] == f"Bearer {token}"


def test_public_prefix_stays_case_sensitive_with_the_option(folding):
    resp = folding.get("/api/public/health")
    assert resp.status_code == 200, describe(resp)
    assert "authorization" not in folding.upstream.last()["headers"]


@pytest.mark.parametrize("path", ["/API/admin", "/Api/x"])
def test_without_the_option_other_cases_pass_untouched(stack, path):
    # The default: prefixes match case-sensitively, so `/API/admin` is not under `/api/`.
    resp = stack.get(path, f"{AT_COOKIE}=not-a-token")
    assert resp.status_code == 200, describe(resp)
    rec = stack.upstream.last()
    assert rec["path"] == path
    assert "authorization" not in rec["headers"]
