"""A wrong cluster is loud, in the real Envoy: a `jwks.cluster` or `token_endpoint.cluster` that
names no cluster passes `envoy --mode validate`, so the relay itself must make it visible.

  * the failure counters move over time (`jwks_failures_total`, `refresh_failed_total`), read
    from the admin `/stats`;
  * an error line names the cluster and the field to check, at most once a minute per callout
    kind per worker, never once per request;
  * the `jwks_keys` gauge is 0 until the first key set arrives, then the number of keys served.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fake_token_endpoint import FakeTokenEndpoint
from login_support import NAV_ACCEPT, Jar, LoginRelay, login_plugin_config, query_params
from refresh_support import METRIC_PREFIX, SessionKeys, refresh_plugin_config
from support import (AT_COOKIE, AUDIENCE, ISSUER, JWKS_PATH, SESSION_COOKIE, Envoy,
                     JwksServer, KeyPair, Upstream, default_plugin_config, free_port,
                     make_claims, new_http_session, relay_config, validate_config, wait_until,
                     wasm_failure_evidence)

MISSPELLED = "idp-jwsk"
ERROR_LINE = "cannot be dispatched to cluster"


def stat(envoy: Envoy, name: str) -> int:
    return envoy.stats("edge_token_relay_").get(METRIC_PREFIX + "edge_token_relay_" + name, 0)


def error_lines(envoy: Envoy, cluster: str) -> list[str]:
    return [line for line in envoy.log_text().splitlines()
            if ERROR_LINE in line and f'"{cluster}"' in line]


def get_many(envoy: Envoy, cookie: str, n: int) -> list[int]:
    """`n` GETs of a protected path on several connections; their statuses."""
    def one(_):
        with new_http_session() as s:
            return s.get(envoy.url("/api/x"), headers={"Cookie": cookie}, timeout=20).status_code
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture
def stack(wasm_file, tmp_path):
    """Starts an upstream, a JWKS server and Envoy with a plugin config; stops them all."""
    started: list = []

    def start(plugin_config: dict, idp_port: int, concurrency: int = 1) -> Envoy:
        up = Upstream().start()
        started.append(up)
        cfg = relay_config(up.port, idp_port, plugin_config)
        env = Envoy(cfg, concurrency=concurrency, name="loud").start()
        started.append(env)
        return env

    yield start
    for s in reversed(started):
        s.stop()


def test_a_misspelled_jwks_cluster_is_counted_and_logged_not_per_request(stack, tmp_path):
    key = KeyPair.generate("RS256")
    with JwksServer([key]) as jwks:
        pc = default_plugin_config(jwks={"cluster": MISSPELLED, "authority": "idp.example.com",
                                         "path": "/.well-known/jwks.json", "refresh_s": 300})
        env = stack(pc, jwks.port, concurrency=2)
        # The configuration is valid for Envoy: only the relay can tell.
        assert validate_config(env.config_path).returncode == 0
        cookie = f"{AT_COOKIE}={key.sign(make_claims())}"

        first = wait_until(lambda: stat(env, "jwks_failures_total") >= 1, 10,
                           what="a first counted JWKS failure")
        statuses = get_many(env, cookie, 60)
        assert set(statuses) == {503}, statuses
        n1 = stat(env, "jwks_failures_total")
        time.sleep(9)
        statuses += get_many(env, cookie, 60)
        n2 = stat(env, "jwks_failures_total")
        # One attempt per shared backoff (at most 4 s without keys) for the whole Envoy.
        assert n2 >= n1 + 2, (first, n1, n2)
        assert n2 <= n1 + 12, f"failures counted per request or per tick: {n1} -> {n2}"
        assert stat(env, "jwks_fetches_total") == n2
        assert stat(env, "jwks_keys") == 0
        assert jwks.count == 0
        assert set(statuses) == {503}

        lines = error_lines(env, MISSPELLED)
        # At most one line per Wasm VM within the minute, whatever the traffic: one VM per
        # worker, plus the one Envoy runs on its main thread (it ticks too).
        assert 1 <= len(lines) <= 3, "\n".join(lines) or env.log_tail(80)
        for line in lines:
            assert "[error]" in line, line
            assert "jwks.cluster" in line and "JWKS fetch" in line, line
        assert wasm_failure_evidence(env) == {}


def test_a_misspelled_token_endpoint_cluster_counts_refresh_failures(stack, session_keys_fresh):
    signer = KeyPair.generate("RS256")
    with FakeTokenEndpoint(signer) as fake:
        pc = refresh_plugin_config(session_keys_fresh, authority="idp.example.com")
        pc["token_endpoint"] = dict(pc["token_endpoint"], cluster="idp-tokn")
        env = stack(pc, fake.port)
        ready = f"{AT_COOKIE}={fake.mint_access_token()}"
        wait_until(lambda: get_many(env, ready, 1) == [200], 15, what="keys loaded")
        wait_until(lambda: stat(env, "jwks_keys") == 1, 5, what="jwks_keys = 1")

        def burst(n: int) -> list[int]:
            # Distinct sessions, each needing a refresh (no access token).
            out = []
            with new_http_session() as s:
                for _ in range(n):
                    c = f"{SESSION_COOKIE}={session_keys_fresh.seal(fake.new_refresh_token())}"
                    out.append(s.get(env.url("/api/x"), headers={"Cookie": c},
                                     timeout=20).status_code)
            return out

        assert set(burst(30)) == {503}
        n1 = stat(env, "refresh_failed_total")
        assert n1 == 30, n1
        time.sleep(2)
        assert set(burst(30)) == {503}
        n2 = stat(env, "refresh_failed_total")
        assert n2 == 60, n2
        assert stat(env, "refresh_total") == 0
        assert fake.count == 0
        lines = error_lines(env, "idp-tokn")
        assert len(lines) == 1, "\n".join(lines) or env.log_tail(80)
        assert "[error]" in lines[0] and "token_endpoint.cluster" in lines[0], lines[0]
        # Never a secret in the line.
        for secret in ("relay-secret", "fake-rt-"):
            assert secret not in lines[0]


def test_jwks_keys_is_zero_until_the_first_key_set_then_the_number_served(stack):
    keys = [KeyPair.generate("RS256"), KeyPair.generate("ES256"), KeyPair.generate("EdDSA")]
    with JwksServer(keys) as jwks:
        jwks.mode = "500"
        env = stack(default_plugin_config(), jwks.port)
        jwks.wait_for_count(1)
        assert stat(env, "jwks_keys") == 0
        assert stat(env, "jwks_failures_total") >= 1
        jwks.mode = "ok"
        served = len(jwks.jwks_document()["keys"])
        wait_until(lambda: stat(env, "jwks_keys") == served, 15,
                   what=f"jwks_keys = {served} (now {stat(env, 'jwks_keys')})")
        resp = get_many(env, f"{AT_COOKIE}={keys[1].sign(make_claims())}", 1)
        assert resp == [200], resp


@pytest.fixture
def session_keys_fresh() -> SessionKeys:
    return SessionKeys.generate()


def test_a_misspelled_token_endpoint_cluster_is_loud_on_the_login_path(wasm_file):
    signer = KeyPair.generate("RS256")
    keys = SessionKeys.generate()
    port = free_port()
    with FakeTokenEndpoint(signer) as fake:
        pc = login_plugin_config(
            keys, issuer=ISSUER, audiences=[AUDIENCE], token_path="/token",
            authority="idp.example.com", jwks_path=JWKS_PATH, client_id="relay-client",
            client_secret="relay-secret",
            login={"authorization_endpoint": "https://idp.example.com/authorize",
                   "redirect_uri": f"http://127.0.0.1:{port}/auth/callback",
                   "login_path": "/auth/login", "logout_path": "/auth/logout",
                   "scopes": ["openid", "offline_access"]})
        pc["token_endpoint"] = dict(pc["token_endpoint"], cluster="idp-tokn")
        relay = LoginRelay("loud-login", fake.port, pc, port).start()
        try:
            env = relay.envoy
            assert env is not None
            statuses = []
            for _ in range(12):
                jar = Jar()
                start = relay.request("GET", "/auth/login", jar, {"Accept": NAV_ACCEPT})
                assert start.status_code in (302, 303), start.status_code
                jar.absorb(start)
                state = query_params(start.headers["Location"])["state"]
                cb = relay.request("GET", f"/auth/callback?code=c0de&state={state}", jar,
                                   {"Accept": NAV_ACCEPT})
                statuses.append(cb.status_code)
            assert set(statuses) == {503}, statuses
            assert stat(env, "denied_login_idp_unavailable_total") == 12
            assert stat(env, "login_failed_total") == 12
            assert fake.count == 0
            lines = error_lines(env, "idp-tokn")
            assert len(lines) == 1, "\n".join(lines) or env.log_tail(80)
            assert "login code exchange" in lines[0] and "token_endpoint.cluster" in lines[0]
            assert "relay-secret" not in lines[0] and "c0de" not in lines[0]
        finally:
            relay.stop()
