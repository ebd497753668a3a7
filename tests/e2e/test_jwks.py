"""The key set: inline JWKS, fetching through the `idp` cluster, startup failures and
recovery, key rotation, unknown-kid rate limiting, keeping the last good set, two workers.

Each test starts its own Envoy: these tests depend on the filter's fetch timing.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from checks import assert_forwarded, assert_nothing_upstream, describe
from support import (AT_COOKIE, KeyPair, default_plugin_config, jwks_of, make_claims,
                     new_http_session, wait_until)

RECOVERY_S = 12.0  # "within ~10 s" plus slack for a loaded CI machine
ROTATION_S = 15.0  # unknown-kid refetch is rate-limited to about once per few seconds


def poll_until_status(stack, token: str, status: int, timeout: float, path: str = "/api/x"):
    """Resend with `token` until the answer has `status`; returns (response, attempts, seconds).
    Every intermediate answer must not have reached the upstream."""
    t0 = time.monotonic()
    attempts = 0
    last = None
    while True:
        attempts += 1
        last = stack.get_with_token(path, token)
        if last.status_code == status:
            return last, attempts, time.monotonic() - t0
        assert not stack.upstream.received, \
            f"a {last.status_code} answer still reached the upstream: {stack.upstream.received}"
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"no {status} within {timeout}s ({attempts} attempts); "
                                 f"last answer: {describe(last)}")
        time.sleep(0.1)


def fresh_get(stack, token: str, path: str = "/api/x") -> requests.Response:
    """One request on a new connection (spreads over workers), not clearing the record."""
    with new_http_session() as s:
        return s.get(stack.envoy.url(path), headers={"Cookie": f"{AT_COOKIE}={token}"},
                     timeout=15, allow_redirects=False)


def test_inline_jwks_needs_no_fetch(relay_stack, keys):
    pc = default_plugin_config(jwks={"inline": jwks_of(keys.values())})
    with relay_stack(plugin_config=pc, name="inline-jwks") as s:
        for alg, key in keys.items():
            tok = key.sign(make_claims(sub=f"inline-{alg}"))
            resp = s.get_with_token("/api/x", tok)
            assert_forwarded(resp, s, tok, sub=f"inline-{alg}", cookie=None)
        assert s.idp.count == 0, "an inline JWKS must not be fetched"


@pytest.mark.parametrize("failure", ["500", "garbage", "slow"])
def test_jwks_unavailable_at_start_gives_503_then_recovers(relay_stack, keys, failure):
    key = keys["RS256"]
    with relay_stack(jwks_mode="ok" if failure == "slow" else failure,
                     name=f"jwks-{failure}") as s:
        if failure == "slow":
            s.idp.delay_s = 30.0  # longer than any sane fetch timeout
        tok = key.sign(make_claims())
        s.idp.wait_for_count(1)

        t0 = time.monotonic()
        resp = s.get_with_token("/api/x", tok)
        assert resp.status_code == 503, f"JWKS not loaded yet: {describe(resp)}"
        assert time.monotonic() - t0 < 10, "the request waited too long for the JWKS"
        retry_after = resp.headers.get("Retry-After")
        assert retry_after is not None and retry_after.strip().isdigit(), \
            f"503 needs a Retry-After (seconds): {describe(resp)}"
        assert_nothing_upstream(s)

        # Unprotected traffic does not depend on the key set.
        pub = s.get("/api/public/x")
        assert pub.status_code == 200, describe(pub)

        # The filter retries by itself (with backoff): the IdP sees a second attempt while
        # requests keep getting 503.
        if failure != "slow":
            def retried():
                r = s.get_with_token("/api/x", tok)
                assert r.status_code == 503, f"still no keys: {describe(r)}"
                assert_nothing_upstream(s)
                return s.idp.count >= 2
            wait_until(retried, timeout=RECOVERY_S, interval=0.2,
                       what=f"a JWKS retry (IdP saw {s.idp.count} request(s))")

        s.idp.mode, s.idp.delay_s = "ok", 0.0
        resp, attempts, took = poll_until_status(s, tok, 200, RECOVERY_S)
        assert_forwarded(resp, s, tok, cookie=None)


def test_key_rotation_new_kid_is_fetched(relay_stack):
    old = KeyPair.generate("RS256", kid="rot-old")
    with relay_stack(keys=[old], name="rotation") as s:
        ready = s.wait_jwks_ready(old.sign(make_claims()))
        assert ready.status_code == 200, describe(ready)

        new = KeyPair.generate("ES256", kid="rot-new")
        s.idp.keys.append(new)
        before = s.idp.count
        tok = new.sign(make_claims(sub="bob"))
        resp, attempts, took = poll_until_status(s, tok, 200, ROTATION_S)
        assert_forwarded(resp, s, tok, sub="bob", cookie=None)
        assert s.idp.count > before, "the new kid was accepted without a JWKS refetch?"

        # The old key keeps working.
        old_tok = old.sign(make_claims())
        assert_forwarded(s.get_with_token("/api/x", old_tok), s, old_tok, cookie=None)


def test_unknown_kid_burst_is_rate_limited(relay_stack):
    key = KeyPair.generate("RS256", kid="burst-key")
    with relay_stack(keys=[key], name="kid-burst") as s:
        ready = s.wait_jwks_ready(key.sign(make_claims()))
        assert ready.status_code == 200, describe(ready)
        s.upstream.clear()
        before = s.idp.count

        tokens = [key.with_kid(f"random-{uuid.uuid4().hex}").sign(make_claims())
                  for _ in range(50)]
        with ThreadPoolExecutor(max_workers=10) as pool:
            statuses = list(pool.map(lambda t: fresh_get(s, t).status_code, tokens))

        assert statuses == [401] * 50, f"unknown kids must be refused: {statuses}"
        assert s.upstream.count == 0
        fetches = s.idp.count - before
        assert fetches <= 2, f"50 unknown kids caused {fetches} JWKS fetches (rate limit?)"

        good = key.sign(make_claims())
        assert_forwarded(s.get_with_token("/api/x", good), s, good, cookie=None)


def test_last_good_key_set_survives_idp_failures(relay_stack):
    key = KeyPair.generate("EdDSA", kid="survivor")
    with relay_stack(keys=[key], name="idp-down") as s:
        ready = s.wait_jwks_ready(key.sign(make_claims()))
        assert ready.status_code == 200, describe(ready)

        for mode in ("500", "garbage", "slow"):
            s.idp.mode = "ok" if mode == "slow" else mode
            s.idp.delay_s = 30.0 if mode == "slow" else 0.0
            before = s.idp.count
            probe = key.with_kid(f"provoke-{mode}").sign(make_claims())

            def refetched():
                r = s.get_with_token("/api/x", probe)
                assert r.status_code in (401, 503), \
                    f"unknown kid while the IdP is down ({mode}): {describe(r)}"
                assert_nothing_upstream(s)
                return s.idp.count > before
            wait_until(refetched, timeout=ROTATION_S, interval=0.2,
                       what=f"a refetch attempt against the failing IdP ({mode})")

            good = key.sign(make_claims(sub=f"still-{mode}"))
            resp = s.get_with_token("/api/x", good)
            assert_forwarded(resp, s, good, sub=f"still-{mode}", cookie=None)
        s.idp.delay_s = 0.0


def test_two_workers_serve_valid_tokens(relay_stack, keys):
    with relay_stack(concurrency=2, name="two-workers") as s:
        tok = keys["RS256"].sign(make_claims())
        ready = s.wait_jwks_ready(tok)
        assert ready.status_code == 200, describe(ready)
        s.upstream.clear()
        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = list(pool.map(lambda _: fresh_get(s, tok).status_code, range(40)))
        assert statuses == [200] * 40, statuses
        assert s.upstream.count == 40


def test_rotation_is_consistent_across_workers(relay_stack):
    """Once a token with a new kid is accepted, every worker accepts it (no flapping 401s
    while other workers' VMs still hold the old key set)."""
    old = KeyPair.generate("RS256", kid="w-old")
    with relay_stack(keys=[old], concurrency=2, name="two-workers-rotation") as s:
        ready = s.wait_jwks_ready(old.sign(make_claims()))
        assert ready.status_code == 200, describe(ready)
        new = KeyPair.generate("RS256", kid="w-new")
        s.idp.keys.append(new)
        tok = new.sign(make_claims())
        poll_until_status(s, tok, 200, ROTATION_S)
        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = list(pool.map(lambda _: fresh_get(s, tok).status_code, range(30)))
        assert statuses == [200] * 30, f"after the first acceptance: {statuses}"
