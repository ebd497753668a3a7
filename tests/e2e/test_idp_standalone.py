"""The test identity providers on their own (no Envoy, no wasm):

* tests/idp/server.js (oidc-provider) through tests/e2e/idp.py: the test grant, JWT access
  tokens, refresh token rotation and reuse detection exactly as oidc-provider does them, the
  code + PKCE flow over HTTP, client authentication methods, counters and log;
* tests/e2e/fake_token_endpoint.py: every fault mode.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import threading
import time
import urllib.parse

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import idp as idp_mod
from fake_token_endpoint import FakeTokenEndpoint, header, parse_client_auth
from idp import Idp, basic_auth_header, jwt_parts, login_via_http, logout_via_http
from support import AUDIENCE, ISSUER, JWKS_PATH, KeyPair, b64url_decode

TTL = 30
REDIRECT = "http://127.0.0.1:8080/auth/callback"
POST_LOGOUT = "http://127.0.0.1:8080/"


@pytest.fixture(scope="module")
def idp():
    p = Idp.start(access_token_ttl=TTL, redirect_uris=[REDIRECT],
                  post_logout_redirect_uris=[POST_LOGOUT])
    try:
        yield p
    finally:
        p.stop()
    assert not p.running


def _verify_rs256(token: str, jwks: dict) -> dict:
    """Check the signature against the JWKS key named by the header kid; return the claims."""
    head, claims = jwt_parts(token)
    key = next(k for k in jwks["keys"] if k["kid"] == head["kid"])
    assert key["kty"] == "RSA" and head["alg"] == "RS256"
    pub = rsa.RSAPublicNumbers(int.from_bytes(b64url_decode(key["e"]), "big"),
                               int.from_bytes(b64url_decode(key["n"]), "big")).public_key()
    signing_input, _, sig = token.rpartition(".")
    pub.verify(b64url_decode(sig), signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return claims


def _assert_access_token(idp: Idp, token: str, sub: str = "alice",
                         client_id: str = "relay-client", ttl: int = TTL) -> dict:
    head, claims = jwt_parts(token)
    assert head["typ"] == "at+jwt"  # RFC 9068
    assert head["alg"] == "RS256"
    jwks = idp.jwks()
    assert head["kid"] in {k["kid"] for k in jwks["keys"]}
    assert all("d" not in k for k in jwks["keys"])  # public keys only
    _verify_rs256(token, jwks)
    assert set(claims) == {"iss", "aud", "sub", "client_id", "scope", "jti", "iat", "exp"}
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == "relay-client"
    assert claims["sub"] == sub
    assert claims["client_id"] == client_id
    assert claims["scope"] == "api"
    assert claims["exp"] - claims["iat"] == ttl
    assert abs(claims["iat"] - time.time()) < 5
    return claims


def _error(r: requests.Response) -> str:
    return r.json().get("error")


# --------------------------------------------------------------------------------------------
# The real provider
# --------------------------------------------------------------------------------------------


def test_discovery_and_paths(idp):
    d = idp.discovery
    assert d["issuer"] == idp.issuer == f"http://127.0.0.1:{idp.port}"
    assert (idp.token_path, idp.jwks_path, idp.revocation_path) == (
        "/token", "/jwks", "/token/revocation")
    assert "S256" in d["code_challenge_methods_supported"]
    assert {"openid", "offline_access"} <= set(d["scopes_supported"])
    assert {"client_secret_basic", "client_secret_post", "none"} <= set(
        d["token_endpoint_auth_methods_supported"])
    algs = {k["alg"] for k in idp.jwks()["keys"]}
    assert algs == {"RS256", "ES256"}


def test_mint_gives_jwt_access_token(idp):
    t = idp.mint("alice")
    assert t["token_type"] == "Bearer" and t["expires_in"] == TTL
    assert t["refresh_token"] and "." not in t["refresh_token"]  # opaque
    claims = _assert_access_token(idp, t["access_token"])
    assert claims["jti"]
    _, id_claims = jwt_parts(t["id_token"])
    assert id_claims["aud"] == "relay-client" and id_claims["sub"] == "alice"
    # two mints: distinct grants and tokens
    t2 = idp.mint("alice")
    assert t2["refresh_token"] != t["refresh_token"]
    assert jwt_parts(t2["access_token"])[1]["jti"] != claims["jti"]
    # per-mint TTL for the first access token
    short = idp.mint("carol", access_token_ttl=2)
    assert short["expires_in"] == 2
    _assert_access_token(idp, short["access_token"], sub="carol", ttl=2)


def test_refresh_rotates_and_reuse_revokes_the_grant(idp):
    t0 = idp.mint("alice")
    rt0 = t0["refresh_token"]

    r1 = idp.refresh(rt0)
    assert r1.status_code == 200, r1.text
    t1 = r1.json()
    rt1 = t1["refresh_token"]
    assert rt1 != rt0  # rotated
    assert t1["expires_in"] == TTL and t1["token_type"] == "Bearer"
    assert "id_token" in t1  # openid scope: a new ID token on every refresh
    _assert_access_token(idp, t1["access_token"])  # refreshed tokens are JWTs with the aud

    # one more rotation in the chain works as well
    r2 = idp.refresh(rt1)
    assert r2.status_code == 200, r2.text
    rt2 = r2.json()["refresh_token"]
    assert rt2 not in (rt0, rt1)
    assert not idp.refresh_token_active(rt1) and idp.refresh_token_active(rt2)

    idp.reset_stats()
    # reuse of a consumed refresh token: invalid_grant, and the whole grant is revoked ...
    reuse = idp.refresh(rt1)
    assert reuse.status_code == 400 and _error(reuse) == "invalid_grant"
    assert reuse.json()["error_description"] == "grant request is invalid"  # detail hidden
    # ... so the newest refresh token of the chain is dead too
    assert not idp.refresh_token_active(rt2)
    after = idp.refresh(rt2)
    assert after.status_code == 400 and _error(after) == "invalid_grant"

    s = idp.stats()
    assert s["refresh_requests"] == 2 and s["refresh_errors"] == 2 and s["refresh_ok"] == 0
    assert s["errors"] == {"invalid_grant: refresh token already used": 1,
                           "invalid_grant: refresh token not found": 1}
    # the log names the grant type and result, never a token value
    log = idp.log_text()
    assert "detail=\"refresh token already used\"" in log
    for token in (rt0, rt1, rt2, t0["access_token"], t1["access_token"]):
        assert token not in log


def test_parallel_use_of_one_refresh_token_revokes_the_grant(idp):
    rt = idp.mint("dave")["refresh_token"]
    idp.reset_stats()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: requests.post(
            idp.token_endpoint, data={"grant_type": "refresh_token", "refresh_token": rt},
            headers={"Authorization": basic_auth_header("relay-client", "relay-secret")},
            timeout=10), range(6)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] + [400] * 5
    winner = next(r for r in results if r.status_code == 200).json()["refresh_token"]
    # the first duplicate was a reuse: the grant, including the winner's new token, is gone
    assert not idp.refresh_token_active(winner)
    assert idp.refresh(winner).status_code == 400
    assert idp.stats()["errors"]["invalid_grant: refresh token already used"] == 1


def test_revoking_a_refresh_token_revokes_its_grant(idp):
    t = idp.mint("erin")
    r = idp.refresh(t["refresh_token"])
    rt1 = r.json()["refresh_token"]
    assert idp.revoke(rt1, token_type_hint="refresh_token").status_code == 200
    assert not idp.refresh_token_active(rt1)
    assert _error(idp.refresh(rt1)) == "invalid_grant"
    # revocation of an unknown token is a 200 as RFC 7009 asks
    assert idp.revoke("no-such-token").status_code == 200
    assert idp.stats()["revocation_requests"] >= 2


def test_client_authentication_methods(idp):
    # client_secret_post client
    t = idp.mint("frank", client_id="relay-client-post")
    _assert_access_token(idp, t["access_token"], sub="frank", client_id="relay-client-post")
    r = idp.refresh(t["refresh_token"], client_id="relay-client-post")
    assert r.status_code == 200, r.text
    # public client
    t = idp.mint("gina", client_id="relay-public")
    r = idp.refresh(t["refresh_token"], client_id="relay-public")
    assert r.status_code == 200, r.text
    # wrong secret, wrong method (the strict check in server.js: oidc-provider itself takes
    # client_secret_post for a client_secret_basic client), other client's refresh token
    wrong = idp.token_request({"grant_type": "refresh_token", "refresh_token": "x"},
                              client_secret="wrong")
    assert wrong.status_code == 401 and _error(wrong) == "invalid_client"
    for client_id, method in (("relay-client", "client_secret_post"),
                              ("relay-client-post", "client_secret_basic"),
                              ("relay-client", "none")):
        bad = idp.token_request({"grant_type": "refresh_token", "refresh_token": "x"},
                                client_id=client_id, method=method)
        assert bad.status_code == 401 and _error(bad) == "invalid_client", (client_id, method)
    assert "auth=client_secret_post status=401 result=error error=invalid_client" in idp.log_text()
    mine = idp.mint("hank")["refresh_token"]
    stolen = idp.refresh(mine, client_id="relay-client-post")
    assert stolen.status_code == 400 and _error(stolen) == "invalid_grant"


def test_code_flow_with_pkce_over_http(idp):
    res = login_via_http(idp, "relay-client", REDIRECT, login="ivy")
    assert res["token_response"].status_code == 200, res["token_response"].text
    assert res["iss"] == idp.issuer  # RFC 9207 iss in the authorization response
    tokens = res["tokens"]
    _assert_access_token(idp, tokens["access_token"], sub="ivy")
    _, id_claims = jwt_parts(tokens["id_token"])
    assert id_claims["nonce"] == res["nonce"] and id_claims["sub"] == "ivy"
    # its refresh token rotates like a minted one
    r = idp.refresh(tokens["refresh_token"])
    assert r.status_code == 200 and r.json()["refresh_token"] != tokens["refresh_token"]
    _assert_access_token(idp, r.json()["access_token"], sub="ivy")
    rt1 = r.json()["refresh_token"]
    # the code is single use, and replaying it revokes the grant (oidc-provider's
    # consumeGrantSource), so the refresh token chain of that login dies too
    again = idp.exchange_code(res["code"], res["code_verifier"], REDIRECT)
    assert again.status_code == 400 and _error(again) == "invalid_grant"
    assert not idp.refresh_token_active(rt1)
    assert "invalid_grant: authorization code already consumed" in idp.stats()["errors"]

    # a wrong verifier is refused
    res2 = login_via_http(idp, "relay-client", REDIRECT, exchange=False)
    bad = idp.exchange_code(res2["code"], "x" * 43, REDIRECT)
    assert bad.status_code == 400 and _error(bad) == "invalid_grant"

    # RP-initiated logout with the browser session from the login
    out = logout_via_http(idp, res["session"], id_token_hint=tokens["id_token"],
                          post_logout_redirect_uri=POST_LOGOUT, state="s1")
    assert out["status"] in (302, 303)
    assert out["location"].startswith(POST_LOGOUT) and "state=s1" in out["location"]


def test_logout_ends_session_bound_refresh_tokens_only(idp):
    """RP-initiated logout (logout=yes): a login WITHOUT offline_access has its grant revoked
    with the IdP session; with offline_access (granted only with prompt=consent) the grant
    outlives the logout. (Two logins in ONE browser session share one grant per client: there the
    later login decides.)"""
    online = login_via_http(idp, login="kim", scope="openid api")
    assert online["tokens"]["refresh_token"]  # issueRefreshToken: always for these clients
    out = logout_via_http(idp, online["session"], id_token_hint=online["tokens"]["id_token"],
                          post_logout_redirect_uri=POST_LOGOUT)
    assert out["location"] == POST_LOGOUT
    r = idp.refresh(online["tokens"]["refresh_token"])
    assert r.status_code == 400 and _error(r) == "invalid_grant"

    # offline_access is dropped unless the request has prompt=consent ...
    dropped = login_via_http(idp, login="kim", prompt=None)
    assert idp.introspect(dropped["tokens"]["refresh_token"])["scope"] == "openid api"
    # ... which login_via_http sends by default when the scope has offline_access
    offline = login_via_http(idp, login="kim")
    assert "offline_access" in idp.introspect(offline["tokens"]["refresh_token"])["scope"]
    out = logout_via_http(idp, offline["session"], id_token_hint=offline["tokens"]["id_token"],
                          post_logout_redirect_uri=POST_LOGOUT)
    assert out["location"] == POST_LOGOUT
    assert idp.refresh(offline["tokens"]["refresh_token"]).status_code == 200


def test_pkce_is_required(idp):
    params = {"client_id": "relay-client", "response_type": "code", "redirect_uri": REDIRECT,
              "scope": "openid offline_access api", "state": "st"}
    r = requests.get(idp.authorization_endpoint + "?" + urllib.parse.urlencode(params),
                     allow_redirects=False, timeout=5)
    assert r.status_code == 303
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.headers["Location"]).query))
    assert q["error"] == "invalid_request"
    assert q["error_description"] == ("Authorization Server policy requires PKCE to be used for "
                                      "this request")


def test_stats_log_and_reset(idp):
    idp.reset_stats()
    assert idp.stats()["token_requests"] == 0
    t = idp.mint("judy")
    idp.refresh(t["refresh_token"])
    s = idp.stats()
    assert (s["token_requests"], s["mint_requests"], s["refresh_requests"],
            s["refresh_ok"]) == (2, 1, 1, 1)
    assert s["by_grant_type"]["refresh_token"] == {"requests": 1, "ok": 1, "errors": 0}
    lines = idp.token_log_lines()
    assert any("grant_type=refresh_token client_id=relay-client auth=client_secret_basic "
               "status=200 result=ok rotated=true" in ln for ln in lines)


def test_configurable_alg_audience_and_claims():
    """ES256 access tokens for another audience with an extra claim (what the relay's default
    test config wants: aud my-app-client-id, token_use access); options via the JSON file."""
    with Idp.start(access_token_alg="ES256", audience=AUDIENCE,
                   extra_access_token_claims={"token_use": "access"},
                   config={"ACCESS_TOKEN_TTL": 7}, name="idp-es256") as p:
        assert p.info["access_token_alg"] == "ES256" and p.access_token_ttl == 7
        t = p.mint("zed")
        head, claims = jwt_parts(t["access_token"])
        assert head["alg"] == "ES256" and head["typ"] == "at+jwt"
        jwk = next(k for k in p.jwks()["keys"] if k["kid"] == head["kid"])
        assert jwk["kty"] == "EC" and jwk["crv"] == "P-256"
        assert claims["aud"] == AUDIENCE and claims["token_use"] == "access"
        assert claims["exp"] - claims["iat"] == 7
        r = p.refresh(t["refresh_token"])
        _, claims = jwt_parts(r.json()["access_token"])
        assert claims["aud"] == AUDIENCE and claims["token_use"] == "access"


def test_test_grant_is_off_without_test_grants():
    with Idp.start(test_grants=False, name="idp-plain") as plain:
        r = plain.token_request({"grant_type": "urn:test:mint", "sub": "x"})
        assert r.status_code == 400 and _error(r) == "unsupported_grant_type"
        assert requests.get(plain.base_url + "/__test/stats", timeout=5).status_code == 404
        pid = plain.proc.pid
    assert plain.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no process of its group is left


# --------------------------------------------------------------------------------------------
# The fake token endpoint
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def fake():
    with FakeTokenEndpoint(KeyPair.generate("RS256"), expires_in=60) as f:
        yield f


def _post(fake, form=None, auth=("relay-client", "relay-secret"), timeout=5):
    headers = {"Authorization": basic_auth_header(*auth)} if auth else {}
    return requests.post(fake.url, data=form or {"grant_type": "refresh_token",
                                                 "refresh_token": "rt-0"},
                         headers=headers, timeout=timeout)


def test_fake_ok_mode_and_records(fake):
    r = _post(fake)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["expires_in"] == 60 and body["token_type"] == "Bearer"
    head, claims = jwt_parts(body["access_token"])
    assert head["kid"] == fake.signer.kid
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE
    assert claims["exp"] - claims["iat"] == 60
    rec = fake.requests[-1]
    assert rec["method"] == "POST" and rec["path"] == "/token"
    assert rec["form"] == {"grant_type": "refresh_token", "refresh_token": "rt-0"}
    assert rec["client_auth"]["method"] == "basic"
    assert (rec["client_auth"]["client_id"], rec["client_auth"]["client_secret"]) == (
        "relay-client", "relay-secret")
    assert header(rec, "content-type") == "application/x-www-form-urlencoded"
    # the JWKS of the signer is served too
    jwks = requests.get(fake.base_url + JWKS_PATH, timeout=5).json()
    assert jwks["keys"][0]["kid"] == fake.signer.kid and fake.count == 1

    fake.rotate = False
    assert "refresh_token" not in _post(fake).json()
    fake.claims = {"aud": "other", "token_use": None}
    _, claims = jwt_parts(_post(fake).json()["access_token"])
    assert claims["aud"] == "other" and "token_use" not in claims


def test_fake_client_auth_parsing():
    # RFC 6749 2.3.1: id and secret are form-urlencoded inside Basic
    hdr = basic_auth_header("my client", "s3:cr+t%")
    got = parse_client_auth({"Authorization": hdr}, {})
    assert (got["method"], got["client_id"], got["client_secret"]) == (
        "basic", "my client", "s3:cr+t%")
    got = parse_client_auth({}, {"client_id": "c", "client_secret": "s"})
    assert (got["method"], got["client_id"], got["client_secret"]) == ("post", "c", "s")
    assert parse_client_auth({}, {"client_id": "c"})["method"] == "none"
    assert parse_client_auth({"authorization": "Bearer x"}, {})["method"] == "invalid"
    assert parse_client_auth({"Authorization": "Basic !!!"}, {})["method"] == "invalid"


def test_fake_error_modes(fake):
    fake.mode = "status_500"
    r = _post(fake)
    assert r.status_code == 500 and r.json() == {"error": "server_error"}
    fake.mode = "status_503"
    assert _post(fake).status_code == 503
    fake.mode = "invalid_grant"
    r = _post(fake)
    assert r.status_code == 400 and r.json() == {"error": "invalid_grant"}
    fake.mode = "invalid_client"
    r = _post(fake)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    fake.mode = "garbage"
    r = _post(fake)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    for mode in ("close", "reset"):
        fake.mode = mode
        with pytest.raises(requests.ConnectionError):
            _post(fake)
    assert [rec["mode"] for rec in fake.requests] == [
        "status_500", "status_503", "invalid_grant", "invalid_client", "garbage", "close",
        "reset"]
    with pytest.raises(ValueError):
        fake.script("nonsense")
    with pytest.raises(ValueError):
        fake.set_mode("status_x")


def test_fake_close_sends_no_bytes(fake):
    fake.mode = "close"
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as s:
        body = b"grant_type=refresh_token&refresh_token=x"
        s.sendall(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/x-www-form-urlencoded\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert s.recv(100) == b""  # orderly close, no response
    assert fake.count == 1


def test_fake_slow_and_hold(fake):
    fake.mode = "slow"
    fake.slow_s = 0.5
    t0 = time.monotonic()
    assert _post(fake).status_code == 200
    assert time.monotonic() - t0 >= 0.5
    fake.then = "status_502"
    assert _post(fake).status_code == 502
    fake.then = "ok"

    fake.mode = "hold"
    results = []
    threads = [threading.Thread(target=lambda: results.append(_post(fake).status_code))
               for _ in range(3)]
    for t in threads:
        t.start()
    fake.wait_for_count(4)
    time.sleep(0.1)
    assert results == []  # all three are held
    fake.release()
    for t in threads:
        t.join(5)
    assert results == [200, 200, 200]


def test_fake_script_post_auth_and_reuse_detection(fake):
    fake.script("status_500", "close", "ok")
    assert _post(fake).status_code == 500
    with pytest.raises(requests.ConnectionError):
        _post(fake)
    assert _post(fake).status_code == 200
    assert _post(fake).status_code == 200  # back to `mode`

    r = requests.post(fake.url, data={"grant_type": "refresh_token", "refresh_token": "a",
                                      "client_id": "relay-client-post",
                                      "client_secret": "relay-secret-post"}, timeout=5)
    assert r.status_code == 200
    auth = fake.requests[-1]["client_auth"]
    assert (auth["method"], auth["client_id"], auth["client_secret"]) == (
        "post", "relay-client-post", "relay-secret-post")

    fake.reject_reuse = True
    rt0 = fake.new_refresh_token()
    rt1 = _post(fake, {"grant_type": "refresh_token", "refresh_token": rt0}).json()[
        "refresh_token"]
    assert _post(fake, {"grant_type": "refresh_token", "refresh_token": rt0}).status_code == 400
    assert _post(fake, {"grant_type": "refresh_token", "refresh_token": rt1}).status_code == 200
    fake.clear()
    assert fake.count == 0


def test_idp_module_helpers():
    verifier, challenge = idp_mod.pkce_pair()
    assert 43 <= len(verifier) <= 128 and len(challenge) == 43
    forms = idp_mod.parse_forms('<form action="/x" method="post"><input type="hidden" '
                                'name="prompt" value="login"/><input name="login"></form>')
    assert forms == [{"action": "/x", "method": "post", "id": None,
                      "fields": {"prompt": "login", "login": ""}}]
