"""A flood of refreshes cannot make the relay spend a legitimate session's refresh token twice,
in the real Envoy with two workers.

An attacker with many validly sealed sessions (here: sealed with the test session key, each
with its own refresh token the fake token endpoint accepts) drives refreshes as fast as it can,
so the shared single-flight table fills with other sessions' new tokens. Meanwhile a parallel
burst on one legitimate session whose access token is about to expire, spread over both
workers, must make exactly one call to the token endpoint for that session: its requests are
relayed (with the still-valid token, or the refreshed one) or answered 503
`refresh_unavailable` with a Retry-After, never refreshed without coordination.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from fake_token_endpoint import FakeTokenEndpoint
from refresh_support import METRIC_PREFIX, Relay, SessionKeys, refresh_plugin_config
from support import (AT_COOKIE, SESSION_COOKIE, KeyPair, make_claims, new_http_session,
                     wait_until, wasm_failure_evidence)

GRACE_S = 20
FLOOD_THREADS = 24
FILL_TIMEOUT_S = 120


def stat(relay: Relay, name: str) -> int:
    return relay.metrics().get(METRIC_PREFIX + "edge_token_relay_" + name, 0)


def calls_for(fake: FakeTokenEndpoint, rt: str) -> int:
    with fake.lock:
        return sum(1 for r in fake.requests if r["form"].get("refresh_token") == rt)


@pytest.fixture
def flood_relay(wasm_file):
    signer = KeyPair.generate("RS256")
    fake = FakeTokenEndpoint(signer).start()
    # One access token for every answer: the flood measures the table, not RSA signing.
    fixed = fake.mint_access_token()
    fake.mint_access_token = lambda record=None: fixed  # type: ignore[method-assign]
    keys = SessionKeys.generate()
    pc = refresh_plugin_config(keys, authority="idp.example.com", refresh_grace_s=GRACE_S)
    relay = Relay("refresh-flood-c2", fake.port, pc, concurrency=2)
    try:
        relay.start()
        assert relay.wait_ready(fixed).status_code == 200
        yield relay, fake, keys, signer
    finally:
        relay.stop()
        fake.stop()


def test_a_flooded_table_never_refreshes_a_session_twice(flood_relay):
    relay, fake, keys, signer = flood_relay
    assert relay.envoy is not None
    stop = threading.Event()
    flood_status: Counter = Counter()
    lock = threading.Lock()

    def flood(worker: int):
        n = 0
        with new_http_session() as s:
            while not stop.is_set():
                sealed = keys.seal(f"flood-{worker}-{n}-{time.monotonic_ns()}")
                n += 1
                try:
                    r = s.get(relay.envoy.url("/api/x"), timeout=20,
                              headers={"Cookie": f"{SESSION_COOKIE}={sealed}"})
                    code = r.status_code
                except Exception:  # noqa: BLE001 - a dropped connection is just counted
                    code = 0
                with lock:
                    flood_status[code] += 1

    threads = [threading.Thread(target=flood, args=(i,), daemon=True)
               for i in range(FLOOD_THREADS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        # Full: most flood sessions find every slot they may use held (answered 503).
        wait_until(lambda: stat(relay, "denied_refresh_unavailable_total") > 1500,
                   FILL_TIMEOUT_S, interval=0.5,
                   what=f"the table to fill (flood so far: {dict(flood_status)})")
        filled_after = time.monotonic() - started

        # The legitimate session: its access token expires within the refresh margin.
        legit_rt = fake.new_refresh_token()
        expiring = signer.sign(make_claims(exp=int(time.time()) + 5))
        cookie = f"{AT_COOKIE}={expiring}; {SESSION_COOKIE}={keys.seal(legit_rt)}"

        def one(_):
            with new_http_session() as s:
                r = s.get(relay.envoy.url("/api/orders"), headers={"Cookie": cookie},
                          timeout=20)
                body = r.json() if r.headers.get("content-type", "").startswith(
                    "application/json") else {}
                return r.status_code, r.headers.get("retry-after"), body.get("error")

        with ThreadPoolExecutor(16) as pool:
            burst = list(pool.map(one, range(32)))
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    for status, retry_after, error in burst:
        assert status in (200, 503), burst
        if status == 503:
            assert error is not None and retry_after is not None, burst
    calls_during_burst = calls_for(fake, legit_rt)
    assert calls_during_burst <= 1, burst

    # The flood is over; the session retries as told until its refresh has happened.
    session_only = f"{SESSION_COOKIE}={keys.seal(legit_rt)}"
    deadline = time.monotonic() + GRACE_S + 15
    retries = []
    with new_http_session() as s:
        while calls_for(fake, legit_rt) == 0 and time.monotonic() < deadline:
            r = s.get(relay.envoy.url("/api/orders"), headers={"Cookie": session_only},
                      timeout=20)
            retries.append(r.status_code)
            if r.status_code == 503:
                time.sleep(min(float(r.headers.get("retry-after") or 1), 5))
        # Requests still carrying the old refresh token reuse the outcome.
        for _ in range(5):
            r = s.get(relay.envoy.url("/api/orders"), headers={"Cookie": session_only},
                      timeout=20)
            assert r.status_code == 200, (r.status_code, r.text)
    assert calls_for(fake, legit_rt) == 1, (burst, retries)
    print(f"\nflood: {dict(flood_status)} in {time.monotonic() - started:.0f} s, table full "
          f"after {filled_after:.0f} s; burst statuses {Counter(b[0] for b in burst)} "
          f"(legitimate calls during the burst: {calls_during_burst}); retries {retries}; "
          f"token-endpoint calls {fake.count}")
    assert flood_status[503] > 0 and flood_status[200] > 1000, dict(flood_status)
    assert wasm_failure_evidence(relay.envoy) == {}
