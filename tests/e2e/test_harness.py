"""Self-tests of the harness that need no .wasm: token minting checked by an independent
verifier (Envoy's native jwt_authn), the baseline front proxy, the echo upstream and the
IdP's switches. If these fail, the relay tests' verdicts mean nothing."""

from __future__ import annotations

import requests

import idp as idp_module
from checks import describe, upstream_headers
from idp import Idp
from support import (AT_COOKIE, JWKS_PATH, Envoy, JwksServer, KeyPair, Upstream,
                     baseline_config, jwt_authn_config, jwks_of, make_claims, new_http_session)


def test_minted_tokens_verify_with_envoy_jwt_authn(envoy_bin, keys):
    """RS256, ES256 (raw r||s) and EdDSA tokens from support.KeyPair are accepted by Envoy's
    own JWT implementation, and a same-kid forgery is not."""
    with Upstream() as up, Envoy(jwt_authn_config(up.port, jwks_of(keys.values())),
                                 name="jwt-authn-check", binary=envoy_bin) as env:
        http = new_http_session()
        for alg, key in keys.items():
            tok = key.sign(make_claims(sub=f"sub-{alg}"))
            r = http.get(env.url("/api/x"), headers={"Cookie": f"{AT_COOKIE}={tok}"})
            assert r.status_code == 200, f"{alg}: {describe(r)}"
            assert r.json()["headers"].get("x-user-sub") == f"sub-{alg}"
        forged = KeyPair.generate("RS256", kid=keys["RS256"].kid).sign(make_claims())
        r = http.get(env.url("/api/x"), headers={"Cookie": f"{AT_COOKIE}={forged}"})
        assert r.status_code == 401, describe(r)


def test_baseline_proxy_forwards_unchanged_and_normalises_paths(envoy_bin):
    with Upstream() as up, Envoy(baseline_config(up.port), name="baseline",
                                 binary=envoy_bin) as env:
        http = new_http_session()
        sent = {"Cookie": "a=1; __Host-relay-at=x.y.z", "Authorization": "Bearer abc"}
        r = http.get(env.url("/api/x?q=1"), headers=sent)
        assert r.status_code == 200, describe(r)
        rec = up.only()
        assert upstream_headers(rec, "cookie") == [sent["Cookie"]]
        assert upstream_headers(rec, "authorization") == [sent["Authorization"]]
        assert rec["path"] == "/api/x?q=1"

        from support import raw_request
        up.clear()
        assert raw_request(env.port, "/api/public/../secret").status_code == 200
        assert up.only()["path"] == "/api/secret"
        up.clear()
        r = raw_request(env.port, "/api%2Fsecret")
        assert r.status_code == 307 and r.header("location") == "/api/secret", r
        assert up.count == 0


def test_upstream_echo_and_custom_response_headers():
    with Upstream() as up:
        r = requests.post(up.base_url + "/p?_status=202&_header=Cache-Control:public,%20max-age=60"
                          "&_header=Set-Cookie:sid=1", data=b"body",
                          headers={"X-A": "1", "Cookie": "k=v"})
        assert r.status_code == 202
        assert r.headers["Cache-Control"] == "public, max-age=60"
        assert r.headers["Set-Cookie"] == "sid=1"
        body = r.json()
        assert body["method"] == "POST" and body["body"] == "body"
        assert body["headers"]["x-a"] == "1" and body["headers"]["cookie"] == "k=v"
        assert up.only()["path"].startswith("/p?")


def test_jwks_server_switches():
    key = KeyPair.generate("EdDSA")
    with JwksServer([key], token_key=KeyPair.generate("RS256")) as idp:
        url = idp.base_url + JWKS_PATH
        assert requests.get(url).json() == jwks_of([key])
        idp.mode = "500"
        assert requests.get(url).status_code == 500
        idp.mode = "garbage"
        r = requests.get(url)
        assert r.status_code == 200
        try:
            r.json()
            raise AssertionError("garbage mode served valid JSON")
        except ValueError:
            pass
        idp.mode = "ok"
        assert idp.count == 3
        assert requests.get(idp.base_url + "/token?sub=bob").json()["access_token"].count(".") == 2


def test_envoy_is_stopped_and_reaped(envoy_bin):
    with Upstream() as up:
        env = Envoy(baseline_config(up.port), name="lifecycle", binary=envoy_bin).start()
        assert env.running
        env.stop()
        assert not env.running and env.proc.returncode is not None


def test_idp_start_that_hangs_is_retried_once(monkeypatch):
    """A provider that is not ready within its first attempt is killed and started once more;
    the first attempt's log and state stay next to the log (idp.attempt1.log)."""
    spawn = idp_module._spawn_until_ready
    attempts = []

    def first_one_hangs(argv, env, log_path, timeout):
        attempts.append(timeout)
        # No time at all for the first attempt: it is "not ready", as a hung start would be.
        return spawn(argv, env, log_path, 0.0 if len(attempts) == 1 else timeout)

    monkeypatch.setattr(idp_module, "_spawn_until_ready", first_one_hangs)
    provider = Idp.start(name="retry", ready_timeout=60)
    try:
        assert len(attempts) == 2 and attempts[0] == attempts[1] == 30
        r = requests.get(provider.base_url + "/.well-known/openid-configuration", timeout=5)
        assert r.status_code == 200
        kept = (provider.tmp / "idp.attempt1.log").read_text()
        assert "not ready after 30.0s" in kept and "state " in kept
    finally:
        provider.stop()
