"""Silent refresh through the real Envoy: the sealed session cookie, the token-endpoint call,
single flight within and across workers, the grace window, refusals, faults, chunking,
upstream-issued tokens, metrics.

Two token endpoints:
  * the real OpenID provider (idp.py, oidc-provider): refresh tokens ROTATE and reusing a
    spent one REVOKES the grant, so "the grant is still alive afterwards" proves the relay
    never spent a refresh token twice. Relays `idp_relay` (--concurrency 1) and
    `idp_relay_c2` (--concurrency 2).
  * the scripted fake (fake_token_endpoint.py) for faults and exact request inspection.
    Relays `fake_basic` (client_secret_basic, timeout_ms 500, backoff 2 s), `fake_post`
    (client_secret_post, --concurrency 1) and `fake_none` (public client, --concurrency 2);
    each has its own fake, so a fake's record is exactly that relay's token-endpoint traffic.

Each test asserts what the upstream received, what the browser was told (Set-Cookie,
Cache-Control, Vary), and how many token-endpoint calls happened. Module fixtures share the
Envoys; every test uses sessions of its own. The last test checks every Envoy for Wasm VM
failure evidence.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from checks import assert_nothing_upstream, assert_refused, describe, upstream_headers
from fake_token_endpoint import FakeTokenEndpoint, header
from idp import Idp
from refresh_support import (CHUNK_LIMIT, METRIC_PREFIX, METRICS, Relay, SessionKeys,
                             SetCookie, cache_directives, chunk_cookies, cookie_header,
                             jwe_header, jwt_claims, metric, now, prometheus_names,
                             refresh_plugin_config, relay_cookie_names, seal_raw,
                             session_cookie_names, session_value, set_cookie_headers,
                             set_cookies, vary_values, verify_rs256, worker_connections)
from support import (AT_COOKIE, SESSION_COOKIE, KeyPair, b64url_decode, make_claims,
                     wait_until, wasm_failure_evidence)

MAX_AGE_SLACK_S = 3
FAKE_SECRET = "s3cret+/:%~ x"  # needs form-encoding before Basic / in a form body
FAKE_BACKOFF_S = 2
FAKE_TIMEOUT_MS = 500
TOKEN_ENDPOINT_AUTHORITY = "idp.example.com"


# --------------------------------------------------------------------------------------------
# Shared assertions
# --------------------------------------------------------------------------------------------


def bearer_of(rec: dict) -> str:
    auth = upstream_headers(rec, "authorization")
    assert len(auth) == 1 and auth[0].startswith("Bearer "), \
        f"upstream must get exactly one Bearer authorization, got {auth}"
    return auth[0][len("Bearer "):]


def assert_relayed(rec: dict, token: str, sub: str = "alice"):
    """The upstream got `Bearer <token>`, no relay cookie, and x-user-sub."""
    assert upstream_headers(rec, "authorization") == [f"Bearer {token}"], \
        f"upstream authorization {upstream_headers(rec, 'authorization')}, expected the token"
    for c in upstream_headers(rec, "cookie"):
        assert not relay_cookie_names(c), f"relay cookies reached the upstream: {c!r}"
    assert upstream_headers(rec, "x-user-sub") == [sub], \
        f"upstream x-user-sub {upstream_headers(rec, 'x-user-sub')}, expected [{sub!r}]"


def assert_private_no_store(resp, why: str = "a response that sets token cookies"):
    cc = cache_directives(resp)
    assert {"private", "no-store"} <= cc, \
        f"{why} needs Cache-Control: private, no-store; got {resp.raw.headers.getlist('Cache-Control')}"
    assert not cc & {"public", "max-age", "s-maxage"}, \
        f"{why}: upstream caching directives must be replaced; got " \
        f"{resp.raw.headers.getlist('Cache-Control')}"
    assert "cookie" in vary_values(resp), \
        f"{why} needs Vary containing Cookie; got {resp.raw.headers.getlist('Vary')}"


def assert_token_cookie(c: SetCookie | None, token: str):
    assert c is not None, f"no Set-Cookie {AT_COOKIE}"
    assert c.value == token, f"{AT_COOKIE} cookie is not the relayed token"
    assert not c.problems_as_token_cookie(), f"{c.raw!r}: {c.problems_as_token_cookie()}"
    remaining = jwt_claims(token)["exp"] - time.time()
    assert c.max_age is not None and abs(c.max_age - remaining) <= MAX_AGE_SLACK_S, \
        f"{AT_COOKIE} Max-Age={c.max_age}, expected the token's remaining life ~{remaining:.0f}"


def assert_session_cookies(cookies: dict[str, SetCookie], keys: SessionKeys,
                           session_exp: int | None = None) -> dict:
    """The response writes a session sealed with the first key; returns its plaintext."""
    sealed = session_value(cookies)
    assert sealed is not None, f"no Set-Cookie {SESSION_COOKIE}; got {sorted(cookies)}"
    for n in session_cookie_names(cookies):
        c = cookies[n]
        if not c.clears:
            assert not c.problems_as_token_cookie(), f"{c.raw[:120]!r}...: " \
                                                      f"{c.problems_as_token_cookie()}"
            if session_exp is not None:
                want = session_exp - time.time()
                assert c.max_age is not None and abs(c.max_age - want) <= MAX_AGE_SLACK_S, \
                    f"{n} Max-Age={c.max_age}, expected session exp - now ~{want:.0f}"
    assert jwe_header(sealed).get("kid") == keys.current_kid, \
        f"a session must be sealed with the first key: header {jwe_header(sealed)}"
    kid, plain = keys.unseal(sealed)
    assert isinstance(plain.get("rt"), str) and plain["rt"], f"resealed session: {plain}"
    if session_exp is not None:
        assert plain.get("exp") == session_exp, \
            f"the session's exp must survive the reseal: {plain.get('exp')} != {session_exp}"
    return plain


def assert_not_cleared(resp):
    cleared = [c.name for c in set_cookies(resp).values()
               if relay_cookie_names(f"{c.name}=x") and (c.clears or c.value == "")]
    assert not cleared, f"relay cookies must not be cleared here, but got {set_cookie_headers(resp)}"


def assert_cleared(resp, name: str):
    c = set_cookies(resp).get(name)
    assert c is not None and c.clears and c.value == "", \
        f"{name} must be cleared (empty, Max-Age=0); Set-Cookie: {set_cookie_headers(resp)}"
    # a __Host- cookie is only replaced (deleted) by a Set-Cookie with Secure and Path=/
    assert c.attrs.get("path") == "/" and "secure" in c.attrs and "domain" not in c.attrs, \
        f"{c.raw!r}: a browser ignores a __Host- deletion without Secure; Path=/; no Domain"


def assert_unavailable(resp, relay: Relay):
    assert resp.status_code == 503, f"expected 503; got {describe(resp)}"
    assert_nothing_upstream(relay)
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"503 body is not JSON: {describe(resp)}") from None
    assert body.get("error") == "temporarily_unavailable", f"503 body: {body}"
    ra = resp.headers.get("Retry-After")
    assert ra is not None and ra.strip().isdigit(), f"503 needs Retry-After: {describe(resp)}"
    assert "no-store" in cache_directives(resp), f"503 must be no-store: {describe(resp)}"
    assert_not_cleared(resp)


def browser_cookies(cookies: dict[str, SetCookie]) -> list[tuple[str, str]]:
    """The relay cookies a browser would send after this response."""
    return [(n, c.value) for n, c in cookies.items()
            if relay_cookie_names(f"{n}=x") and not c.clears]


class IdpCalls:
    """Token-endpoint calls at the real IdP since creation."""

    def __init__(self, idp: Idp):
        self.idp = idp
        self.start = idp.stats()

    def delta(self, key: str) -> int:
        return self.idp.stats()[key] - self.start[key]

    def refreshes(self) -> int:
        return self.delta("refresh_requests")

    def all(self) -> int:
        return self.delta("token_requests")

    def tally(self, relay: Relay):
        s = self.idp.stats()
        relay.expect["refresh"] += s["refresh_requests"] - self.start["refresh_requests"]
        relay.expect["success"] += s["refresh_ok"] - self.start["refresh_ok"]
        relay.expect["failed"] += s["refresh_errors"] - self.start["refresh_errors"]


def parallel_get(relay: Relay, cookie: str, n: int, path: str = "/api/burst"):
    """n requests released together, each on its own connection."""
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait(timeout=10)
        return relay.get(path, cookie, fresh=False, new_connection=True)

    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(one, range(n)))


def workers_used(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {w: after.get(w, 0) - before.get(w, 0) for w in after
            if after.get(w, 0) - before.get(w, 0) > 0}


# --------------------------------------------------------------------------------------------
# The harness itself (no Envoy)
# --------------------------------------------------------------------------------------------


def test_python_sealing_matches_the_jose_fixtures():
    """Our Python sealing is byte-identical to jose's (the fixtures the Rust side also uses)."""
    path = Path(__file__).resolve().parents[2] / "src" / "testdata" / "session" / \
        "jose_sealed.json"
    data = json.loads(path.read_text())
    keys = SessionKeys([(k["kid"], b64url_decode(k["key"])) for k in data["session_keys"]])
    checked = 0
    for f in data["fixtures"]:
        if f["expect"] != "ok" or "plaintext" not in f:
            continue
        kid = jwe_header(f["compact"])["kid"]
        if jwe_header(f["compact"]) != {"alg": "dir", "enc": "A256GCM", "kid": kid}:
            continue  # e.g. an extra header member: readable, but not what we produce
        iv = b64url_decode(f["compact"].split(".")[2])
        assert seal_raw(b64url_decode(f["key"]), kid, f["plaintext"].encode(), iv) == \
            f["compact"], f["name"]
        assert keys.unseal(f["compact"])[1] == json.loads(f["plaintext"]), f["name"]
        checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------------------------
# Fixtures: the real IdP
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session_keys() -> SessionKeys:
    return SessionKeys.generate(("2026-11", "2026-10"))


@pytest.fixture(scope="module")
def idp(wasm_file):
    provider = Idp.start(access_token_ttl=120, name="idp-refresh")
    yield provider
    provider.stop()


def idp_plugin_config(idp: Idp, keys: SessionKeys, **kw) -> dict:
    authority = f"127.0.0.1:{idp.port}"
    return refresh_plugin_config(
        keys, token_path=idp.token_path, authority=authority, timeout_ms=3000,
        client_id="relay-client", client_secret="relay-secret", client_auth="basic",
        issuer=idp.issuer, audiences=[idp.audience], required_claims={},
        jwks={"cluster": "idp", "authority": authority, "path": idp.jwks_path,
              "refresh_s": 300}, **kw)


def started_relay(name: str, port: int, pc: dict, ready_token: str, concurrency: int = 1):
    relay = Relay(name, port, pc, concurrency=concurrency).start()
    ready = relay.wait_ready(ready_token)
    if ready.status_code != 200:
        relay.stop()
        pytest.fail(f"{name}: a valid access token is not relayed: {describe(ready)}",
                    pytrace=False)
    return relay


@pytest.fixture(scope="module")
def idp_relay(idp, session_keys):
    relay = started_relay("refresh-idp", idp.port, idp_plugin_config(idp, session_keys),
                          idp.mint("ready-probe")["access_token"])
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def idp_relay_c2(idp, session_keys):
    relay = started_relay("refresh-idp-c2", idp.port, idp_plugin_config(idp, session_keys),
                          idp.mint("ready-probe")["access_token"], concurrency=2)
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def expired_at(idp) -> str:
    """An access token of the IdP for alice that has expired (minted with a 1 s life)."""
    tok = idp.mint("alice", access_token_ttl=1)["access_token"]
    exp = jwt_claims(tok)["exp"]
    wait_until(lambda: time.time() > exp + 0.2, timeout=5, what="the 1 s token to expire")
    return tok


# --------------------------------------------------------------------------------------------
# 1. Refresh with the real IdP
# --------------------------------------------------------------------------------------------


def test_refresh_with_real_idp_then_cached_then_again(idp, idp_relay, session_keys, expired_at):
    relay = idp_relay
    minted = idp.mint("alice")
    session_exp = now() + 3600
    sealed = session_keys.seal(minted["refresh_token"], exp=session_exp)

    # Only the session cookie; the upstream answers with public caching directives.
    calls = IdpCalls(idp)
    resp = relay.get("/api/orders?_header=Cache-Control:public,%20max-age=60,%20s-maxage=600",
                     f"other=1; {SESSION_COOKIE}={sealed}")
    calls.tally(relay)
    assert resp.status_code == 200, f"session-only request: {describe(resp)}"
    assert calls.refreshes() == 1, f"expected 1 refresh_token call, saw {calls.refreshes()}"
    rec = relay.upstream.only()
    new_at = bearer_of(rec)
    assert new_at != minted["access_token"], "upstream got the minted token, not a refreshed one"
    claims = verify_rs256(new_at, idp.jwks())
    assert claims["sub"] == "alice" and claims["iss"] == idp.issuer, claims
    assert_relayed(rec, new_at)
    assert upstream_headers(rec, "cookie") == ["other=1"], upstream_headers(rec, "cookie")
    cookies = set_cookies(resp)
    assert_token_cookie(cookies.get(AT_COOKIE), new_at)
    sess1 = assert_session_cookies(cookies, session_keys, session_exp)
    assert sess1["rt"] != minted["refresh_token"], "the IdP rotated: the session must hold the new rt"
    assert_private_no_store(resp)
    assert not idp.refresh_token_active(minted["refresh_token"]), "the spent rt is still live?"
    assert idp.refresh_token_active(sess1["rt"]), "the rotated rt in the cookie is not live"

    # The new cookies: the access token is good, no IdP call.
    calls = IdpCalls(idp)
    resp2 = relay.get("/api/orders", cookie_header(browser_cookies(cookies)))
    calls.tally(relay)
    assert resp2.status_code == 200, describe(resp2)
    assert calls.all() == 0, f"a valid access token must not call the IdP ({calls.all()} calls)"
    assert_relayed(relay.upstream.only(), new_at)

    # An expired access token with the new session: refreshed again, with the new rt.
    calls = IdpCalls(idp)
    session_pairs = [p for p in browser_cookies(cookies) if p[0] != AT_COOKIE]
    resp3 = relay.get("/api/orders", cookie_header([(AT_COOKIE, expired_at), *session_pairs]))
    calls.tally(relay)
    assert resp3.status_code == 200, describe(resp3)
    assert calls.refreshes() == 1, f"expected 1 refresh_token call, saw {calls.refreshes()}"
    at3 = bearer_of(relay.upstream.only())
    assert at3 not in (new_at, expired_at), "upstream did not get a newly refreshed token"
    assert verify_rs256(at3, idp.jwks())["sub"] == "alice"
    assert_relayed(relay.upstream.only(), at3)
    cookies3 = set_cookies(resp3)
    assert_token_cookie(cookies3.get(AT_COOKIE), at3)
    sess3 = assert_session_cookies(cookies3, session_keys, session_exp)
    assert sess3["rt"] not in (sess1["rt"], minted["refresh_token"])
    assert not idp.refresh_token_active(sess1["rt"]), "the second refresh must spend the rt " \
                                                      "from the first one's cookie"
    assert idp.refresh_token_active(sess3["rt"])
    assert_private_no_store(resp3)


# --------------------------------------------------------------------------------------------
# 2 + 3. Parallel requests on one session, then late ones (real IdP, 1 and 2 workers)
# --------------------------------------------------------------------------------------------

BURST = 20
LATE = 10


@dataclass
class Burst:
    relay: Relay
    old_rt: str
    old_cookie: str
    responses: list
    upstream: list
    refreshes: int
    workers: dict
    metrics_before: dict
    metrics_after: dict


@pytest.fixture(scope="module")
def bursts():
    return {}


@pytest.fixture(params=[1, 2], ids=["concurrency1", "concurrency2"])
def burst(request, bursts, idp, session_keys, expired_at) -> Burst:
    """20 parallel requests with an expired access token and one session (run once per
    Envoy; test 3 reuses the outcome)."""
    c = request.param
    if c not in bursts:
        relay = request.getfixturevalue("idp_relay" if c == 1 else "idp_relay_c2")
        minted = idp.mint("alice")
        sealed = session_keys.seal(minted["refresh_token"], exp=now() + 3600)
        cookie = f"{AT_COOKIE}={expired_at}; {SESSION_COOKIE}={sealed}"
        relay.upstream.clear()
        m0, w0 = relay.metrics(), worker_connections(relay.envoy)
        calls = IdpCalls(idp)
        responses = parallel_get(relay, cookie, BURST)
        calls.tally(relay)
        bursts[c] = Burst(relay, minted["refresh_token"], f"{SESSION_COOKIE}={sealed}",
                          responses, list(relay.upstream.received), calls.refreshes(),
                          workers_used(w0, worker_connections(relay.envoy)), m0,
                          relay.metrics())
    return bursts[c]


def test_parallel_requests_refresh_once(burst, idp, session_keys, expired_at):
    b = burst
    statuses = [r.status_code for r in b.responses]
    assert b.refreshes == 1, f"{BURST} parallel requests of one session made {b.refreshes} " \
                             f"refresh_token calls at the IdP (expected exactly 1); " \
                             f"statuses {statuses}"
    assert statuses == [200] * BURST, \
        f"statuses {statuses}; first non-200: " \
        f"{next((describe(r) for r in b.responses if r.status_code != 200), '')}"
    if b.relay.concurrency == 2:
        assert len(b.workers) == 2, f"harness: the burst did not reach both workers: {b.workers}"

    recs = b.upstream
    assert len(recs) == BURST, f"upstream got {len(recs)} requests, expected {BURST}"
    tokens = {bearer_of(r) for r in recs}
    assert len(tokens) == 1, f"waiters must proceed with the one refresh's token; got " \
                             f"{len(tokens)} different tokens"
    new_at = tokens.pop()
    assert new_at != expired_at
    assert verify_rs256(new_at, idp.jwks())["sub"] == "alice"
    for r in recs:
        assert_relayed(r, new_at)

    rts = set()
    for resp in b.responses:
        cookies = set_cookies(resp)
        assert_token_cookie(cookies.get(AT_COOKIE), new_at)
        rts.add(assert_session_cookies(cookies, session_keys)["rt"])
        assert_private_no_store(resp)
    assert len(rts) == 1, f"responses carry {len(rts)} different refresh tokens"
    new_rt = rts.pop()
    assert new_rt != b.old_rt
    assert not idp.refresh_token_active(b.old_rt)
    assert idp.refresh_token_active(new_rt), "the grant is dead: the relay spent the old " \
                                             "refresh token more than once"

    def d(name):
        return metric(b.metrics_after, name) - metric(b.metrics_before, name)
    joined = d("edge_token_relay_refresh_waiters_total") + d("edge_token_relay_refresh_reused_total")
    assert joined >= BURST - 1, \
        f"waiters_total + reused_total grew by {joined}; {BURST - 1} requests rode on another's " \
        f"refresh (metrics before {b.metrics_before}, after {b.metrics_after})"
    b.relay.expect["joined"] += BURST - 1


def test_late_requests_with_the_old_session_reuse_the_outcome(burst, idp, session_keys):
    b = burst
    assert b.refreshes == 1 and all(r.status_code == 200 for r in b.responses), \
        "the burst itself failed (see test_parallel_requests_refresh_once)"
    burst_at = bearer_of(b.upstream[0])
    burst_session = session_value(set_cookies(b.responses[0]))
    assert burst_session is not None, "the burst's responses carry no session cookie"
    burst_rt = session_keys.unseal(burst_session)[1]["rt"]

    relay = b.relay
    relay.upstream.clear()
    m0, w0 = relay.metrics(), worker_connections(relay.envoy)
    calls = IdpCalls(idp)
    late = [relay.get("/api/late", b.old_cookie, fresh=False, new_connection=True)
            for _ in range(LATE)]
    calls.tally(relay)
    m1, used = relay.metrics(), workers_used(w0, worker_connections(relay.envoy))
    assert [r.status_code for r in late] == [200] * LATE, \
        f"late requests: {[describe(r) for r in late if r.status_code != 200][:1]}"
    assert calls.all() == 0, f"late requests within the grace window called the IdP " \
                             f"{calls.all()} time(s)"
    if relay.concurrency == 2:
        assert len(used) == 2, f"harness: late requests did not reach both workers: {used}"
    recs = list(relay.upstream.received)
    assert len(recs) == LATE
    for r in recs:
        assert_relayed(r, burst_at)
    for resp in late:
        cookies = set_cookies(resp)
        assert_token_cookie(cookies.get(AT_COOKIE), burst_at)
        assert assert_session_cookies(cookies, session_keys)["rt"] == burst_rt, \
            "a late request must get the session with the rotated refresh token"
        assert_private_no_store(resp)
    reused = metric(m1, "edge_token_relay_refresh_reused_total") - \
        metric(m0, "edge_token_relay_refresh_reused_total")
    assert reused >= LATE, f"reused_total grew by {reused} for {LATE} late requests"

    # The grant survived everything: the rotated refresh token still works at the IdP.
    r = idp.refresh(burst_rt)
    assert r.status_code == 200, f"the rotated refresh token was refused: {r.status_code} {r.text}"
    relay.expect["reused"] += LATE


# --------------------------------------------------------------------------------------------
# 4. A session sealed with the older key
# --------------------------------------------------------------------------------------------


def test_old_key_session_is_resealed_with_the_first_key(idp, idp_relay, session_keys):
    relay = idp_relay
    minted = idp.mint("alice")
    old_kid = session_keys.entries[1][0]
    sealed = session_keys.seal(minted["refresh_token"], kid=old_kid)
    assert jwe_header(sealed)["kid"] == old_kid
    calls = IdpCalls(idp)
    resp = relay.get("/api/x", f"{SESSION_COOKIE}={sealed}")
    calls.tally(relay)
    assert resp.status_code == 200, describe(resp)
    assert calls.refreshes() == 1
    new_at = bearer_of(relay.upstream.only())
    assert_relayed(relay.upstream.only(), new_at)
    cookies = set_cookies(resp)
    assert_token_cookie(cookies.get(AT_COOKIE), new_at)
    sess = assert_session_cookies(cookies, session_keys)  # checks kid == first key's
    assert jwe_header(session_value(cookies))["kid"] == "2026-11"
    assert sess["rt"] != minted["refresh_token"]
    assert idp.refresh_token_active(sess["rt"])


# --------------------------------------------------------------------------------------------
# 5. Sessions that do not unseal
# --------------------------------------------------------------------------------------------


def _flip(segment: str) -> str:
    i = len(segment) // 2
    return segment[:i] + ("A" if segment[i] != "A" else "B") + segment[i + 1:]


def bad_session(case: str, keys: SessionKeys, rt: str) -> str:
    if case == "tampered_ciphertext":
        h, ek, iv, ct, tag = keys.seal(rt).split(".")
        return ".".join([h, ek, iv, _flip(ct), tag])
    if case == "tampered_tag":
        h, ek, iv, ct, tag = keys.seal(rt).split(".")
        return ".".join([h, ek, iv, ct, _flip(tag)])
    if case == "unknown_kid":
        return SessionKeys.generate(("2025-01",)).seal(rt)
    if case == "wrong_key_for_kid":
        return SessionKeys.generate((keys.current_kid,)).seal(rt)
    if case == "garbage":
        return "garbage-that-is-not-a-jwe"
    if case == "exp_in_past":
        return keys.seal(rt, exp=now() - 60)
    if case == "no_rt":
        return keys.seal(plaintext=json.dumps({"exp": now() + 3600}).encode())
    raise ValueError(case)


@pytest.mark.parametrize("case", ["tampered_ciphertext", "tampered_tag", "unknown_kid",
                                  "wrong_key_for_kid", "garbage", "exp_in_past", "no_rt"])
def test_unusable_session_is_refused_without_calling_the_idp(idp, idp_relay, session_keys,
                                                             case):
    relay = idp_relay
    rt = idp.mint("alice")["refresh_token"]  # live: a relay that wrongly uses it would succeed
    calls = IdpCalls(idp)
    resp = relay.get("/api/x", f"{SESSION_COOKIE}={bad_session(case, session_keys, rt)}")
    calls.tally(relay)
    relay.expect["refused"] += 1
    assert_refused(resp, relay, token_presented=None)
    assert_cleared(resp, SESSION_COOKIE)
    assert calls.all() == 0, f"a {case} session reached the IdP ({calls.all()} calls)"
    assert idp.refresh_token_active(rt)


# --------------------------------------------------------------------------------------------
# Fixtures: the fake token endpoint
# --------------------------------------------------------------------------------------------


@dataclass
class FakeRelay:
    relay: Relay
    fake: FakeTokenEndpoint
    auth: str

    def reset(self):
        f = self.fake
        f.mode, f.then, f.rotate, f.reject_reuse = "ok", "ok", True, False
        f.extra_response, f.claims, f.slow_s = {}, {}, 5.0
        return self


@pytest.fixture(scope="module")
def signer() -> KeyPair:
    return KeyPair.generate("RS256")


def _fake_relay(name, signer, keys, auth, concurrency, timeout_ms, **kw):
    fake = FakeTokenEndpoint(signer).start()
    secret = None if auth == "none" else FAKE_SECRET
    pc = refresh_plugin_config(keys, token_path="/token", authority=TOKEN_ENDPOINT_AUTHORITY,
                               timeout_ms=timeout_ms, client_id="relay-client",
                               client_secret=secret, client_auth=auth, **kw)
    try:
        relay = started_relay(name, fake.port, pc, fake.mint_access_token(), concurrency)
    except BaseException:
        fake.stop()
        raise
    return FakeRelay(relay, fake, auth)


@pytest.fixture(scope="module")
def fake_basic(wasm_file, signer, session_keys):
    fr = _fake_relay("refresh-fake-basic", signer, session_keys, "basic", 1, FAKE_TIMEOUT_MS,
                     refresh_backoff_s=FAKE_BACKOFF_S)
    yield fr
    fr.relay.stop()
    fr.fake.stop()


@pytest.fixture(scope="module")
def fake_post(wasm_file, signer, session_keys):
    fr = _fake_relay("refresh-fake-post", signer, session_keys, "post", 1, 5000)
    yield fr
    fr.relay.stop()
    fr.fake.stop()


@pytest.fixture(scope="module")
def fake_none(wasm_file, signer, session_keys):
    fr = _fake_relay("refresh-fake-none-c2", signer, session_keys, "none", 2, 5000)
    yield fr
    fr.relay.stop()
    fr.fake.stop()


@pytest.fixture
def basic(fake_basic) -> FakeRelay:
    return fake_basic.reset()


def expired_fake_at(signer: KeyPair) -> str:
    return signer.sign(make_claims(iat=now() - 400, exp=now() - 100))


# --------------------------------------------------------------------------------------------
# 6a. The token request and client authentication
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["basic", "post", "none"])
def test_token_request_and_client_authentication(request, session_keys, auth):
    fr: FakeRelay = request.getfixturevalue(f"fake_{auth}").reset()
    fake, relay = fr.fake, fr.relay
    rt = fake.new_refresh_token()
    n0 = fake.count
    resp = relay.get("/api/x", f"{SESSION_COOKIE}={session_keys.seal(rt)}")
    assert resp.status_code == 200, describe(resp)
    assert fake.count - n0 == 1, f"expected 1 token request, got {fake.count - n0}"
    rec = fake.requests[-1]
    assert rec["method"] == "POST" and rec["path"] == "/token", (rec["method"], rec["path"])
    assert (header(rec, "content-type") or "").split(";")[0].strip().lower() == \
        "application/x-www-form-urlencoded", header(rec, "content-type")
    assert header(rec, "host") == TOKEN_ENDPOINT_AUTHORITY, header(rec, "host")
    form = rec["form"]
    assert form.get("grant_type") == "refresh_token", form
    assert form.get("refresh_token") == rt, "the session's refresh token was not sent"
    ca = rec["client_auth"]
    if auth == "basic":
        assert ca["method"] == "basic", ca
        assert (ca["client_id"], ca["client_secret"]) == ("relay-client", FAKE_SECRET), \
            f"Basic credentials must be form-encoded id:secret; decoded {ca}"
        assert "client_secret" not in form, "basic auth must not also send the secret in the body"
    elif auth == "post":
        assert ca["method"] == "post", ca
        assert (form.get("client_id"), form.get("client_secret")) == \
            ("relay-client", FAKE_SECRET), form
        assert header(rec, "authorization") is None
    else:
        assert ca["method"] == "none", ca
        assert form.get("client_id") == "relay-client", form
        assert "client_secret" not in form and header(rec, "authorization") is None
    issued = fake.issued[-1]
    assert_relayed(relay.upstream.only(), issued["access_token"])
    cookies = set_cookies(resp)
    assert_token_cookie(cookies.get(AT_COOKIE), issued["access_token"])
    assert assert_session_cookies(cookies, session_keys)["rt"] == issued["refresh_token"]
    assert_private_no_store(resp)


# --------------------------------------------------------------------------------------------
# 6b. Within the margin
# --------------------------------------------------------------------------------------------


def test_token_within_margin_is_refreshed_ahead(basic, session_keys, signer):
    fake, relay = basic.fake, basic.relay
    current = signer.sign(make_claims(exp=now() + 5))  # valid, but inside the 10 s margin
    n0 = fake.count
    resp = relay.get("/api/x", cookie_header([(AT_COOKIE, current),
                                              (SESSION_COOKIE, session_keys.seal("rt-m1"))]))
    assert resp.status_code == 200, describe(resp)
    assert fake.count - n0 == 1, f"a token expiring within the margin must be refreshed " \
                                 f"({fake.count - n0} calls)"
    assert fake.requests[-1]["form"].get("refresh_token") == "rt-m1"
    issued = fake.issued[-1]["access_token"]
    assert_relayed(relay.upstream.only(), issued)
    assert_token_cookie(set_cookies(resp).get(AT_COOKIE), issued)
    assert_private_no_store(resp)


def test_token_within_margin_and_failing_idp_is_still_forwarded(basic, session_keys, signer):
    fake, relay = basic.fake, basic.relay
    fake.mode = "status_500"
    current = signer.sign(make_claims(exp=now() + 5))
    cookie = cookie_header([(AT_COOKIE, current), (SESSION_COOKIE, session_keys.seal("rt-m2"))])
    n0 = fake.count
    resp = relay.get("/api/x", cookie)
    assert resp.status_code == 200, f"the current token is still valid: {describe(resp)}"
    assert fake.count - n0 == 1, f"expected a refresh attempt, saw {fake.count - n0}"
    assert_relayed(relay.upstream.only(), current)
    assert_not_cleared(resp)
    resp2 = relay.get("/api/x", cookie)
    assert resp2.status_code == 200, describe(resp2)
    assert_relayed(relay.upstream.only(), current)
    assert fake.count - n0 == 1, "a new attempt within refresh_backoff_s"


@pytest.mark.parametrize("case", ["expired", "fails_verification"])
def test_refresh_triggers(basic, session_keys, signer, case):
    fake, relay = basic.fake, basic.relay
    if case == "expired":
        at = expired_fake_at(signer)
    else:  # signed by the right key, but for another audience
        at = signer.sign(make_claims(aud="another-app"))
    rt = f"rt-trigger-{case}"
    n0 = fake.count
    resp = relay.get("/api/x", cookie_header([(AT_COOKIE, at),
                                              (SESSION_COOKIE, session_keys.seal(rt))]))
    assert resp.status_code == 200, describe(resp)
    assert fake.count - n0 == 1, f"expected 1 token request, saw {fake.count - n0}"
    assert fake.requests[-1]["form"].get("refresh_token") == rt
    issued = fake.issued[-1]
    assert_relayed(relay.upstream.only(), issued["access_token"])
    cookies = set_cookies(resp)
    assert_token_cookie(cookies.get(AT_COOKIE), issued["access_token"])
    assert assert_session_cookies(cookies, session_keys)["rt"] == issued["refresh_token"]
    assert_private_no_store(resp)


def test_refreshed_token_is_verified_before_use(basic, session_keys):
    """The token endpoint's access token is verified like any other: one for another
    audience is neither relayed nor handed to the browser."""
    fake, relay = basic.fake, basic.relay
    fake.claims = {"aud": "another-app"}
    n0 = fake.count
    resp = relay.get("/api/x", f"{SESSION_COOKIE}={session_keys.seal('rt-bad-at')}")
    assert fake.count - n0 == 1
    bad = fake.issued[-1]["access_token"]
    relay.expect["unverifiable"] += 1  # metrics may count this call as success or failure
    print(f"unverifiable refreshed token -> {describe(resp)}")
    assert resp.status_code in (401, 502, 503), \
        f"an unverifiable refreshed token must not be relayed: {describe(resp)}"
    assert_nothing_upstream(relay)
    assert all(bad not in h for h in set_cookie_headers(resp)), \
        "the unverifiable token was set as a cookie"


# --------------------------------------------------------------------------------------------
# 6c. Faults, backoff, invalid_grant
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["status_500", "status_502", "close", "reset", "slow",
                                  "garbage"])
def test_token_endpoint_fault_gives_503_and_backs_off(basic, session_keys, signer, mode):
    fake, relay = basic.fake, basic.relay
    fake.mode = mode
    fake.slow_s = 3.0  # > timeout_ms (500)
    fake.then = "status_500"  # what `slow` answers when it wakes up: issues no token
    rt = f"rt-fault-{mode}"
    cookie = cookie_header([(AT_COOKIE, expired_fake_at(signer)),
                            (SESSION_COOKIE, session_keys.seal(rt))])
    n0 = fake.count
    t0 = time.monotonic()
    resp = relay.get("/api/x", cookie)
    elapsed = time.monotonic() - t0
    assert_unavailable(resp, relay)
    assert fake.count - n0 == 1, f"expected 1 token request, saw {fake.count - n0}"
    assert fake.requests[-1]["form"].get("refresh_token") == rt
    if mode == "slow":
        assert elapsed < 2.5, f"timeout_ms={FAKE_TIMEOUT_MS} but the answer took {elapsed:.2f}s"

    resp2 = relay.get("/api/x", cookie)
    assert_unavailable(resp2, relay)
    assert fake.count - n0 == 1, f"a second request right after the failure called the " \
                                 f"token endpoint again ({fake.count - n0} calls)"


def test_backoff_expires_then_a_new_attempt_succeeds(basic, session_keys, signer):
    fake, relay = basic.fake, basic.relay
    fake.mode = "status_500"
    sealed = session_keys.seal("rt-backoff")
    cookie = f"{SESSION_COOKIE}={sealed}"
    n0 = fake.count
    assert_unavailable(relay.get("/api/x", cookie), relay)
    assert fake.count - n0 == 1
    failed_at = fake.requests[-1]["t"]
    fake.mode = "ok"

    deadline = time.monotonic() + FAKE_BACKOFF_S + 3
    while fake.count - n0 == 1:
        resp = relay.get("/api/x", cookie)
        if fake.count - n0 == 1:
            assert_unavailable(resp, relay)
        assert time.monotonic() < deadline, \
            f"no new attempt {FAKE_BACKOFF_S + 3}s after the failure (backoff {FAKE_BACKOFF_S}s)"
        if fake.count - n0 == 1:
            time.sleep(0.2)
    assert fake.count - n0 == 2, f"the retry made {fake.count - n0 - 1} calls"
    waited = fake.requests[-1]["t"] - failed_at
    print(f"retried {waited:.2f}s after the failure (refresh_backoff_s={FAKE_BACKOFF_S})")
    # the relay's clock has whole seconds: allow up to 1 s early
    assert waited >= FAKE_BACKOFF_S - 1, f"retried after {waited:.2f}s (backoff {FAKE_BACKOFF_S}s)"
    assert waited <= FAKE_BACKOFF_S + 1.5, f"retried only after {waited:.2f}s " \
                                           f"(refresh_backoff_s={FAKE_BACKOFF_S})"
    assert resp.status_code == 200, describe(resp)
    cookies = set_cookies(resp)
    rt = assert_session_cookies(cookies, session_keys)["rt"]
    # The answer to this session's retry (a late answer to an earlier test's timed-out call may
    # have been issued after it, so not simply the last one).
    issued = next((b for b in reversed(fake.issued) if b.get("refresh_token") == rt), None)
    assert issued is not None, f"the session's new refresh token {rt!r} was not issued"
    assert_relayed(relay.upstream.only(), issued["access_token"])
    assert_token_cookie(cookies.get(AT_COOKIE), issued["access_token"])


def test_invalid_grant_logs_out(basic, session_keys, signer):
    fake, relay = basic.fake, basic.relay
    fake.mode = "invalid_grant"
    cookie = cookie_header([(AT_COOKIE, expired_fake_at(signer)),
                            (SESSION_COOKIE, session_keys.seal("rt-revoked"))])
    n0 = fake.count
    resp = relay.get("/api/x", cookie)
    assert_refused(resp, relay, token_presented=None)
    assert fake.count - n0 == 1
    assert_cleared(resp, AT_COOKIE)
    assert_cleared(resp, SESSION_COOKIE)


def test_old_key_session_is_resealed_even_without_rotation(basic, session_keys):
    fake, relay = basic.fake, basic.relay
    fake.rotate = False
    sealed = session_keys.seal("rt-not-rotated", kid=session_keys.entries[1][0])
    n0 = fake.count
    resp = relay.get("/api/x", f"{SESSION_COOKIE}={sealed}")
    assert resp.status_code == 200, describe(resp)
    assert fake.count - n0 == 1
    assert "refresh_token" not in fake.issued[-1]
    cookies = set_cookies(resp)
    assert_token_cookie(cookies.get(AT_COOKIE), fake.issued[-1]["access_token"])
    assert assert_session_cookies(cookies, session_keys)["rt"] == "rt-not-rotated"


# --------------------------------------------------------------------------------------------
# Single flight, deterministic: the token endpoint holds the answer until all have arrived
# --------------------------------------------------------------------------------------------

HELD = 12


@pytest.mark.parametrize("fixture", ["fake_post", "fake_none"],
                         ids=["concurrency1", "concurrency2"])
def test_requests_wait_for_the_inflight_refresh(request, session_keys, fixture):
    fr: FakeRelay = request.getfixturevalue(fixture).reset()
    fake, relay = fr.fake, fr.relay
    fake.reject_reuse = True
    rt = fake.new_refresh_token()
    cookie = f"{SESSION_COOKIE}={session_keys.seal(rt)}"
    relay.upstream.clear()
    m0, w0, n0 = relay.metrics(), worker_connections(relay.envoy), fake.count
    fake.rearm()
    fake.mode = "hold"
    waiters = "edge_token_relay_refresh_waiters_total"
    with ThreadPoolExecutor(2) as ex:
        # The first request's token call is held at the endpoint; only then do the others
        # arrive, on their own connections, so they find the refresh truly in flight.
        first = ex.submit(relay.get, "/api/held", cookie, fresh=False, new_connection=True)
        rest = None
        try:
            wait_until(lambda: fake.count > n0, 10, what="the first token request")
            rest = ex.submit(parallel_get, relay, cookie, HELD - 1, "/api/held")
            try:
                wait_until(lambda: metric(relay.metrics(), waiters) - metric(m0, waiters)
                           >= HELD - 1, 3, what="waiters")
            except TimeoutError:
                pass  # judged below, after the requests are done
        finally:
            fake.release()
        responses = [first.result(timeout=30)] + (rest.result(timeout=30) if rest else [])
    m1, used = relay.metrics(), workers_used(w0, worker_connections(relay.envoy))
    assert fake.count - n0 == 1, f"{HELD} requests of one session made {fake.count - n0} " \
                                 f"token requests (expected 1); statuses " \
                                 f"{[r.status_code for r in responses]}"
    assert [r.status_code for r in responses] == [200] * HELD, \
        f"{[describe(r) for r in responses if r.status_code != 200][:1]}"
    if relay.concurrency == 2:
        assert len(used) == 2, f"harness: requests did not reach both workers: {used}"
    issued = fake.issued[-1]
    assert len(relay.upstream.received) == HELD
    for rec in relay.upstream.received:
        assert_relayed(rec, issued["access_token"])
    for resp in responses:
        cookies = set_cookies(resp)
        assert_token_cookie(cookies.get(AT_COOKIE), issued["access_token"])
        assert assert_session_cookies(cookies, session_keys)["rt"] == issued["refresh_token"]
    grew = metric(m1, waiters) - metric(m0, waiters)
    assert grew >= HELD - 1, f"{HELD - 1} requests waited for the in-flight refresh but " \
                             f"{METRIC_PREFIX}{waiters} grew by {grew}"
    relay.expect["waiters"] += HELD - 1


# --------------------------------------------------------------------------------------------
# 7. Chunked sessions
# --------------------------------------------------------------------------------------------


def test_chunked_session_is_read_rewritten_and_shrunk(basic, session_keys):
    fake, relay = basic.fake, basic.relay
    long0, long1, long2 = ("A" * 5990 + "0000000000", "B" * 6000, "C" * 6000)

    # 1. Python-chunked session in -> read (joined) and a chunked session out.
    sealed = session_keys.seal(long0, exp=now() + 3600)
    assert len(sealed) > CHUNK_LIMIT
    pairs = chunk_cookies(SESSION_COOKIE, sealed)
    assert [n for n, _ in pairs] == [f"{SESSION_COOKIE}.{i}" for i in range(len(pairs))]
    fake.extra_response = {"refresh_token": long1}
    n0 = fake.count
    resp = relay.get("/api/x", cookie_header(pairs))
    assert resp.status_code == 200, describe(resp)
    assert fake.count - n0 == 1
    assert fake.requests[-1]["form"].get("refresh_token") == long0, \
        "the refresh token sent is not the one from the joined chunks"
    assert_relayed(relay.upstream.only(), fake.issued[-1]["access_token"])
    cookies = set_cookies(resp)
    names = session_cookie_names(cookies)
    assert SESSION_COOKIE not in names and len(names) >= 2, \
        f"a sealed value over {CHUNK_LIMIT} bytes must be written in chunks: {names}"
    assert assert_session_cookies(cookies, session_keys)["rt"] == long1
    assert_token_cookie(cookies.get(AT_COOKIE), fake.issued[-1]["access_token"])
    written = browser_cookies(cookies)

    # 2. The relay's chunks in, a short refresh token out -> plain cookie, stale chunks cleared.
    fake.extra_response = {}
    n0 = fake.count
    resp = relay.get("/api/x", cookie_header([p for p in written if p[0] != AT_COOKIE]))
    assert resp.status_code == 200, describe(resp)
    assert fake.count - n0 == 1
    assert fake.requests[-1]["form"].get("refresh_token") == long1
    assert_relayed(relay.upstream.only(), fake.issued[-1]["access_token"])
    cookies = set_cookies(resp)
    short = fake.issued[-1]["refresh_token"]
    assert assert_session_cookies(cookies, session_keys)["rt"] == short
    assert SESSION_COOKIE in cookies and not cookies[SESSION_COOKIE].clears
    for n, _ in written:
        if n.startswith(SESSION_COOKIE + "."):
            assert_cleared(resp, n)
    plain = cookies[SESSION_COOKIE].value

    # 3. Plain in, long out -> chunks written and the plain cookie cleared (it would win).
    fake.extra_response = {"refresh_token": long2}
    n0 = fake.count
    resp = relay.get("/api/x", f"{SESSION_COOKIE}={plain}")
    assert resp.status_code == 200, describe(resp)
    assert fake.count - n0 == 1
    assert fake.requests[-1]["form"].get("refresh_token") == short
    assert_relayed(relay.upstream.only(), fake.issued[-1]["access_token"])
    cookies = set_cookies(resp)
    assert assert_session_cookies(cookies, session_keys)["rt"] == long2
    assert_cleared(resp, SESSION_COOKIE)


# --------------------------------------------------------------------------------------------
# 8. Tokens issued by the upstream
# --------------------------------------------------------------------------------------------


def test_upstream_token_headers_become_cookies(basic, session_keys, signer):
    fake, relay = basic.fake, basic.relay
    current = signer.sign(make_claims())
    session_exp = now() + 3600
    issued_at = signer.sign(make_claims(sub="alice", exp=now() + 200))
    issued_rt = "rt-from-upstream"
    path = (f"/api/login-step?_header=x-new-access-token:{issued_at}"
            f"&_header=x-new-refresh-token:{issued_rt}")
    cookie = cookie_header([(AT_COOKIE, current),
                            (SESSION_COOKIE, session_keys.seal("rt-before", exp=session_exp))])
    n0 = fake.count
    resp = relay.get(path, cookie)
    assert resp.status_code == 200, describe(resp)
    assert fake.count == n0, "a valid access token needs no token-endpoint call"
    assert_relayed(relay.upstream.only(), current)
    for h in ("x-new-access-token", "x-new-refresh-token"):
        assert h not in {k.lower() for k in resp.headers}, f"{h} must not reach the browser"
    cookies = set_cookies(resp)
    assert_token_cookie(cookies.get(AT_COOKIE), issued_at)
    assert assert_session_cookies(cookies, session_keys, session_exp)["rt"] == issued_rt
    assert_private_no_store(resp)

    # Only an access token.
    issued_at2 = signer.sign(make_claims(sub="alice", exp=now() + 250))
    resp = relay.get(f"/api/login-step?_header=x-new-access-token:{issued_at2}", cookie)
    assert resp.status_code == 200, describe(resp)
    assert "x-new-access-token" not in {k.lower() for k in resp.headers}
    assert_token_cookie(set_cookies(resp).get(AT_COOKIE), issued_at2)
    assert_private_no_store(resp)
    assert fake.count == n0


@pytest.mark.parametrize("path", ["/api/public/step", "/static/step", "/api/refused-step"])
def test_upstream_token_headers_never_reach_the_browser_elsewhere(basic, path):
    """On a public or unprotected path (and on a refused request) the relay owns no session:
    the headers are removed, and no cookie is made of them."""
    relay = basic.relay
    query = "?_header=x-new-access-token:at-from-upstream&_header=x-new-refresh-token:rt-secret"
    resp = relay.get(path + query, None)
    if path == "/api/refused-step":
        assert resp.status_code == 401, describe(resp)
    else:
        assert resp.status_code == 200, describe(resp)
    names = {k.lower() for k in resp.headers}
    assert "x-new-access-token" not in names and "x-new-refresh-token" not in names, resp.headers
    assert not set_cookies(resp)


# --------------------------------------------------------------------------------------------
# 9. Metrics, and no VM failure anywhere
# --------------------------------------------------------------------------------------------

ALL_RELAYS = ["idp_relay", "idp_relay_c2", "fake_basic", "fake_post", "fake_none"]


@pytest.mark.parametrize("fixture", ALL_RELAYS)
def test_metrics(request, fixture):
    obj = request.getfixturevalue(fixture)
    relay: Relay = obj.relay if isinstance(obj, FakeRelay) else obj
    stats = relay.metrics()
    missing = [m for m in METRICS if METRIC_PREFIX + m not in stats]
    assert not missing, f"/stats lacks {missing}; relay stats: {stats}"
    prom = prometheus_names(relay.envoy)
    prom_missing = [m for m in METRICS if not any(n.endswith(m) for n in prom)]
    assert not prom_missing, f"/stats/prometheus lacks {prom_missing}"

    if isinstance(obj, FakeRelay):  # one fake per relay: its record is the relay's traffic
        recs = obj.fake.requests
        expect_calls = len(recs)
        expect_success = sum(1 for r in recs if r["mode"] in ("ok", "hold"))
    else:
        expect_calls, expect_success = relay.expect["refresh"], relay.expect["success"]

    def m(name):
        return metric(stats, name)
    got = {k: m(k) for k in METRICS}
    print(f"{relay.name}: {got}; expected calls={expect_calls} success={expect_success} "
          f"tally={dict(relay.expect)}")
    assert m("edge_token_relay_refresh_total") == expect_calls, \
        f"refresh_total {got} vs {expect_calls} token-endpoint calls"
    # A 200 whose access token then fails verification may count either way.
    lo = expect_success - relay.expect["unverifiable"]
    assert lo <= m("edge_token_relay_refresh_success_total") <= expect_success, \
        f"success_total {got} vs {lo}..{expect_success} successful calls"
    assert m("edge_token_relay_refresh_failed_total") == \
        expect_calls - m("edge_token_relay_refresh_success_total"), \
        f"failed_total {got}: every token-endpoint call is a success or a failure"
    assert m("edge_token_relay_refresh_waiters_total") >= relay.expect["waiters"], got
    assert m("edge_token_relay_refresh_reused_total") >= relay.expect["reused"], got
    assert m("edge_token_relay_refresh_waiters_total") + \
        m("edge_token_relay_refresh_reused_total") >= relay.expect["joined"] + \
        relay.expect["reused"] + relay.expect["waiters"], got
    if fixture == "idp_relay":
        assert m("edge_token_relay_sessions_refused_total") == relay.expect["refused"], \
            f"sessions_refused_total {got} vs {relay.expect['refused']} refused sessions"


def test_zz_no_wasm_vm_failure_in_any_relay(request):
    """Runs last (file order): every Envoy of this module is free of VM failure signs."""
    problems = {}
    for fixture in ALL_RELAYS:
        obj = request.getfixturevalue(fixture)
        relay: Relay = obj.relay if isinstance(obj, FakeRelay) else obj
        evidence = wasm_failure_evidence(relay.envoy)
        active = relay.envoy.stats("wasm").get("wasm.envoy.wasm.runtime.v8.active", 0)
        if evidence or active < 1:
            problems[relay.name] = {"evidence": evidence, "v8.active": active}
    assert not problems, problems
