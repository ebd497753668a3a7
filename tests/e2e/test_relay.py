"""Routing, relaying and refusals through the real Envoy.

One Envoy for the module; the filter fetches the JWKS (RS256, ES256 and EdDSA keys) through
the `idp` cluster. Every request clears the upstream's record first, so each test asserts
exactly what reached the upstream (and that nothing did, on refusals).
"""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from checks import (assert_forwarded, assert_no_secret_in_response, assert_nothing_upstream,
                    assert_passed_untouched, assert_refused, cookie_pairs, describe,
                    is_protected, normalized_effective_path, upstream_headers)
from support import (AT_COOKIE, AUDIENCE, CSRF_COOKIE, JWKS_AUTHORITY, JWKS_PATH,
                     SESSION_COOKIE, KeyPair, b64url, b64url_decode, encode_jws, make_claims,
                     sign_hs256)


@pytest.fixture(scope="module")
def stack(relay_stack, keys):
    with relay_stack(name="relay") as s:
        s.wait_jwks_ready(keys["RS256"].sign(make_claims()))
        yield s


@pytest.fixture
def token(keys) -> str:
    return keys["RS256"].sign(make_claims())


def now() -> int:
    return int(time.time())


# --------------------------------------------------------------------------------------------
# Which requests are protected
# --------------------------------------------------------------------------------------------

UNPROTECTED_PATHS = ["/", "/index.html", "/api", "/apix/y", "/static/api/x", "/x/api/y"]
PUBLIC_PATHS = ["/api/public/", "/api/public/x", "/api/public/x/y?q=1"]
PROTECTED_PATHS = ["/api/", "/api/x", "/api/x/y?q=1", "/api/public", "/api/publicity",
                   "/api/x/public/y"]


@pytest.mark.parametrize("path", UNPROTECTED_PATHS + PUBLIC_PATHS)
def test_unprotected_and_public_requests_pass_untouched(stack, token, path):
    """Untouched but for the relay's own cookies, which only protected requests may use (and
    those lose them too): whatever serves these paths never receives the user's tokens."""
    sent = {"cookie": f"a=1; {AT_COOKIE}={token}; {SESSION_COOKIE}=s; b=2",
            "authorization": "Bearer client-supplied-token"}
    resp = stack.get(path, headers=sent)
    rec = assert_passed_untouched(resp, stack, dict(sent, cookie="a=1; b=2"))
    assert rec["path"] == path


@pytest.mark.parametrize("path", UNPROTECTED_PATHS + PUBLIC_PATHS)
def test_unprotected_and_public_requests_without_cookies_pass(stack, path):
    resp = stack.get(path)
    assert resp.status_code == 200, describe(resp)
    rec = stack.upstream.only()
    assert upstream_headers(rec, "authorization") == []
    assert upstream_headers(rec, "cookie") == []


@pytest.mark.parametrize("path", PROTECTED_PATHS)
def test_protected_paths_need_the_cookie(stack, path):
    resp = stack.get(path)
    assert_refused(resp, stack, token_presented=False)


@pytest.mark.parametrize("path", PROTECTED_PATHS)
def test_protected_paths_accept_a_valid_token(stack, token, path):
    resp = stack.get_with_token(path, token)
    rec = assert_forwarded(resp, stack, token, cookie=None)
    assert rec["path"] == path


# Envoy normalises the path before the filter runs (normalize_path, merge_slashes,
# UNESCAPE_AND_REDIRECT). None of these spellings may deliver a protected resource without a
# token, judged by what a lenient upstream would make of the path it received.
PATH_TRICKS = [
    "/api/public/../secret",
    "/api/public/%2e%2e/secret",
    "/api/public/%2E%2E/secret",
    "/api/public/.%2e/secret",
    "//api//secret",
    "/./api/secret",
    "/api/./secret",
    "/api%2fsecret",
    "/api%2Fsecret",
    "/api/public/..%2fsecret",
    "/api/public/..%5csecret",
    "/api/public/%2e%2e%2fsecret",
    "/%61pi/secret",
    "/api/public/x/../../secret",
]


@pytest.mark.parametrize("path", PATH_TRICKS)
def test_path_tricks_do_not_bypass_protection(stack, path):
    resp = stack.raw(path)
    assert resp.status_code < 500, f"{path}: {describe(resp)}"
    for rec in stack.upstream.received:
        effective = normalized_effective_path(rec["path"])
        assert not is_protected(effective), (
            f"{path!r} reached the upstream as {rec['path']!r} (effectively {effective!r}) "
            f"without a token; client got {resp.status_code}")
    if resp.status_code == 401:
        assert_nothing_upstream(stack)


# --------------------------------------------------------------------------------------------
# Relaying a valid token
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", KeyPair.ALGS)
def test_valid_token_each_algorithm(stack, keys, alg):
    tok = keys[alg].sign(make_claims(sub=f"user-{alg}"))
    resp = stack.get_with_token("/api/orders", tok)
    rec = assert_forwarded(resp, stack, tok, sub=f"user-{alg}", cookie=None)
    assert rec["method"] == "GET" and rec["path"] == "/api/orders"
    assert_no_secret_in_response_except_echo(resp)


def assert_no_secret_in_response_except_echo(resp):
    # The echo upstream returns what it received (incl. the bearer); only Envoy/filter added
    # response headers are checked here.
    assert not any("Bearer" in v for k, v in resp.headers.items()), dict(resp.headers)


@pytest.mark.parametrize("cookie, expected", [
    ("a=1; {at}; b=2", "a=1; b=2"),
    ("{at}; a=1", "a=1"),
    ("a=1; {at}", "a=1"),
    ("a=1; {session}; {at}; {csrf}; b=2", "a=1; b=2"),
    ("{csrf}; a=1; {at}; {session}", "a=1"),
    ("a=x=y; {at}; b=", "a=x=y; b="),
], ids=["surrounded", "first", "last", "all-relay-cookies", "mixed-order", "odd-values"])
def test_relay_cookies_are_removed_others_kept(stack, token, cookie, expected):
    cookie = cookie.format(at=f"{AT_COOKIE}={token}", session=f"{SESSION_COOKIE}=sess-v",
                           csrf=f"{CSRF_COOKIE}=csrf-v")
    resp = stack.get("/api/x", cookie)
    assert_forwarded(resp, stack, token, cookie=expected)


def test_cookie_header_dropped_when_only_relay_cookies(stack, token):
    cookie = f"{SESSION_COOKIE}=s; {AT_COOKIE}={token}; {CSRF_COOKIE}=c"
    resp = stack.get("/api/x", cookie)
    assert_forwarded(resp, stack, token, cookie=None)


def test_cookie_without_spaces(stack, token):
    resp = stack.get("/api/x", f"a=1;{AT_COOKIE}={token};b=2")
    rec = assert_forwarded(resp, stack, token, cookie=...)
    cookies = upstream_headers(rec, "cookie")
    assert len(cookies) == 1 and cookie_pairs(cookies[0]) == [("a", "1"), ("b", "2")], cookies


def test_header_map_read_in_place_sees_every_header(stack, token):
    """The filter reads the request's header map where the host wrote it (no copy per
    header): many headers, a large one, bytes that are not ASCII, the token cookie split over
    several Cookie headers at the end, and a forged claim header in the middle are all read as
    they were sent."""
    headers = [(f"x-filler-{i:02d}", f"value-{i}".encode()) for i in range(40)]
    headers.insert(20, ("x-user-sub", b"mallory"))
    headers += [("x-large", b"L" * 6000), ("x-bytes", "caf\u00e9 \u2713".encode()),
                ("Cookie", b"a=1"), ("Cookie", f"{AT_COOKIE}={token}".encode()),
                ("Cookie", b"b=2")]
    resp = stack.raw("/api/x", headers)
    rec = assert_forwarded(resp, stack, token, cookie="a=1; b=2")
    for i in range(40):
        assert upstream_headers(rec, f"x-filler-{i:02d}") == [f"value-{i}"]
    assert upstream_headers(rec, "x-large") == ["L" * 6000]


def test_client_authorization_is_replaced(stack, token):
    resp = stack.get_with_token("/api/x", token,
                                headers={"Authorization": "Bearer attacker-chosen"})
    assert_forwarded(resp, stack, token, cookie=None)


def test_client_x_user_sub_is_replaced(stack, keys):
    tok = keys["ES256"].sign(make_claims(sub="alice"))
    resp = stack.get_with_token("/api/x", tok, headers={"x-user-sub": "mallory"})
    assert_forwarded(resp, stack, tok, sub="alice", cookie=None)


def test_client_x_user_sub_is_removed_when_claim_absent(stack, keys):
    tok = keys["RS256"].sign(make_claims(sub=None))
    resp = stack.get_with_token("/api/x", tok, headers={"x-user-sub": "mallory"})
    assert_forwarded(resp, stack, tok, sub=None, cookie=None)


def test_post_body_and_query_are_forwarded(stack, token):
    body = json.dumps({"item": "book", "qty": 2})
    # A same-origin POST (without a `csrf` section the filter allows the request's own host).
    origin = "http://" + stack.envoy.url("/").split("://", 1)[1].rstrip("/")
    resp = stack.request("POST", "/api/orders?dry_run=1", f"{AT_COOKIE}={token}",
                         headers={"Content-Type": "application/json", "Origin": origin}, data=body)
    rec = assert_forwarded(resp, stack, token, cookie=None)
    assert rec["method"] == "POST"
    assert rec["path"] == "/api/orders?dry_run=1"
    assert rec["body"] == body


def test_cross_site_post_is_refused(stack, token):
    resp = stack.request("POST", "/api/orders", f"{AT_COOKIE}={token}",
                         headers={"Origin": "https://evil.example"}, data="{}")
    assert resp.status_code == 403, describe(resp)
    assert resp.json()["error"] == "csrf"
    assert resp.headers.get("Cache-Control") == "no-store"


def test_upstream_response_headers_reach_the_client(stack, token):
    resp = stack.get_with_token("/api/x?_header=X-App:yes&_status=201", token)
    assert resp.status_code == 201, describe(resp)
    assert resp.headers.get("X-App") == "yes"


@pytest.mark.parametrize("claims", [
    pytest.param(lambda: make_claims(exp=now() - 10), id="exp-10s-ago-within-skew"),
    pytest.param(lambda: make_claims(nbf=now() + 10), id="nbf-in-10s-within-skew"),
    pytest.param(lambda: make_claims(nbf=now() - 10), id="nbf-past"),
    pytest.param(lambda: make_claims(aud=["other-client", AUDIENCE]), id="aud-array-contains-ours"),
    pytest.param(lambda: make_claims(aud=None, client_id=AUDIENCE), id="cognito-client_id"),
    pytest.param(lambda: make_claims(scope="orders.read", groups=["a", "b"], extra={"x": [1]}),
                 id="extra-claims"),
])
def test_accepted_claim_variants(stack, keys, claims):
    tok = keys["RS256"].sign(claims())
    resp = stack.get_with_token("/api/x", tok)
    assert_forwarded(resp, stack, tok, cookie=None)


def test_jwks_was_fetched_through_the_idp_cluster(stack):
    reqs = [(p, h) for p, h in stack.idp.requests if p.split("?")[0] == JWKS_PATH]
    assert reqs, f"the JWKS endpoint was never called: {stack.idp.requests}"
    _, headers = reqs[0]
    assert headers.get("host") == JWKS_AUTHORITY, f"JWKS request Host: {headers.get('host')!r}"


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------


def test_no_cookie_is_refused(stack):
    assert_refused(stack.get("/api/x"), stack, token_presented=False)


def test_other_cookies_only_is_refused(stack):
    assert_refused(stack.get("/api/x", "a=1; b=2"), stack, token_presented=False)


def test_client_authorization_header_alone_is_refused(stack, token):
    """The relay reads the token from its cookie only; a Bearer header from the browser
    (even a valid token) is not a credential here."""
    resp = stack.get("/api/x", headers={"Authorization": f"Bearer {token}"})
    assert_refused(resp, stack, token_presented=False)


def _rs_sign_raw(key: KeyPair, header: dict, claims: dict, hash_alg) -> str:
    signing_input = f"{b64url(json.dumps(header))}.{b64url(json.dumps(claims))}".encode()
    sig = key.private_key.sign(signing_input, padding.PKCS1v15(), hash_alg)
    return f"{signing_input.decode()}.{b64url(sig)}"


def _es_der(key: KeyPair, claims: dict) -> str:
    header = key.header()
    signing_input = f"{b64url(json.dumps(header))}.{b64url(json.dumps(claims))}".encode()
    der = key.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    return f"{signing_input.decode()}.{b64url(der)}"


def _tamper_payload(tok: str, **changes) -> str:
    h, p, s = tok.split(".")
    claims = json.loads(b64url_decode(p))
    claims.update(changes)
    return f"{h}.{b64url(json.dumps(claims))}.{s}"


def _other_key_same_kid(keys, alg):
    return KeyPair.generate(alg, kid=keys[alg].kid).sign(make_claims())


INVALID_TOKENS = {
    "expired-beyond-skew": lambda k: k["RS256"].sign(make_claims(exp=now() - 120, iat=now() - 600)),
    "expired-long-ago": lambda k: k["ES256"].sign(make_claims(exp=1_000_000, iat=999_000)),
    "nbf-beyond-skew": lambda k: k["RS256"].sign(make_claims(nbf=now() + 120)),
    "exp-missing": lambda k: k["RS256"].sign(make_claims(exp=None)),
    "wrong-iss": lambda k: k["RS256"].sign(make_claims(iss="https://evil.test")),
    "iss-trailing-slash": lambda k: k["RS256"].sign(make_claims(iss="https://idp.test/")),
    "iss-missing": lambda k: k["RS256"].sign(make_claims(iss=None)),
    "wrong-aud": lambda k: k["RS256"].sign(make_claims(aud="other-client")),
    "wrong-aud-array": lambda k: k["RS256"].sign(make_claims(aud=["a", "b"])),
    "no-aud-no-client_id": lambda k: k["RS256"].sign(make_claims(aud=None)),
    "cognito-wrong-client_id": lambda k: k["RS256"].sign(make_claims(aud=None, client_id="other")),
    "token_use-id": lambda k: k["RS256"].sign(make_claims(token_use="id")),
    "token_use-missing": lambda k: k["RS256"].sign(make_claims(token_use=None)),
    "alg-none": lambda k: encode_jws({"alg": "none", "typ": "JWT"}, make_claims()),
    "alg-none-with-kid": lambda k: encode_jws({"alg": "none", "kid": k["RS256"].kid}, make_claims()),
    "alg-None-capitalised": lambda k: encode_jws({"alg": "None", "kid": k["RS256"].kid}, make_claims()),
    "alg-none-keeping-signature": lambda k: (
        encode_jws({"alg": "none", "kid": k["RS256"].kid}, make_claims())[:-1]
        + k["RS256"].sign(make_claims()).split(".")[2]),
    "hs256-with-rsa-public-pem": lambda k: sign_hs256(
        k["RS256"].public_pem(), make_claims(), {"alg": "HS256", "kid": k["RS256"].kid, "typ": "JWT"}),
    "hs256-with-rsa-public-der": lambda k: sign_hs256(
        k["RS256"].public_der(), make_claims(), {"alg": "HS256", "kid": k["RS256"].kid, "typ": "JWT"}),
    "rs384-not-allowed": lambda k: _rs_sign_raw(
        k["RS256"], {"alg": "RS384", "kid": k["RS256"].kid}, make_claims(), hashes.SHA384()),
    "tampered-payload": lambda k: _tamper_payload(k["RS256"].sign(make_claims()), sub="admin"),
    "tampered-payload-es256": lambda k: _tamper_payload(k["ES256"].sign(make_claims()), sub="admin"),
    "tampered-payload-eddsa": lambda k: _tamper_payload(k["EdDSA"].sign(make_claims()), sub="admin"),
    "signature-stripped": lambda k: k["RS256"].sign(make_claims()).rsplit(".", 1)[0] + ".",
    "signature-truncated": lambda k: k["RS256"].sign(make_claims())[:-10],
    "other-key-same-kid-rs256": lambda k: _other_key_same_kid(k, "RS256"),
    "other-key-same-kid-es256": lambda k: _other_key_same_kid(k, "ES256"),
    "other-key-same-kid-eddsa": lambda k: _other_key_same_kid(k, "EdDSA"),
    "unknown-kid": lambda k: k["RS256"].with_kid("no-such-kid").sign(make_claims()),
    "kid-of-an-ec-key-for-rs256": lambda k: k["RS256"].with_kid(k["ES256"].kid).sign(make_claims()),
    "alg-es256-claimed-for-rsa-key": lambda k: k["ES256"].sign(
        make_claims(), {"kid": k["RS256"].kid}),
    "es256-der-signature": lambda k: _es_der(k["ES256"], make_claims()),
    "crit-unknown-extension": lambda k: k["RS256"].sign(
        make_claims(), {"crit": ["x-unknown"], "x-unknown": True}),
}


@pytest.mark.parametrize("name", list(INVALID_TOKENS))
def test_invalid_tokens_are_refused(stack, keys, name):
    tok = INVALID_TOKENS[name](keys)
    resp = stack.get_with_token("/api/x", tok)
    assert_refused(resp, stack, token_presented=True)
    assert_no_secret_in_response(resp, tok)


GARBAGE_VALUES = ["x", "a.b.c", "..", "....", "a.b.c.d.e", "not%20a%20token",
                  "eyJhbGciOiJSUzI1NiJ9", "eyJhbGciOiJSUzI1NiJ9..", "%7B%7D.%7B%7D.",
                  "e30.e30.e30", "W10.W10.", "bnVsbA.bnVsbA.", "Bearer%20abc", '"quoted"']


@pytest.mark.parametrize("value", GARBAGE_VALUES)
def test_garbage_cookie_values_are_refused(stack, value):
    resp = stack.get("/api/x", f"{AT_COOKIE}={value}")
    assert_refused(resp, stack, token_presented=True)


def test_empty_cookie_value_is_refused(stack):
    # Whether an empty value counts as "a token was presented" is left to the filter.
    resp = stack.get("/api/x", f"a=1; {AT_COOKIE}=; b=2")
    assert_refused(resp, stack, token_presented=None)
