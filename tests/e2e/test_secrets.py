"""Secrets from the Wasm VM's environment, through the real Envoy.

The session keys and the client secret are given ONLY through
`vm_config.environment_variables`: `host_env_keys` (copied from the Envoy process's own
environment, set here when the harness starts Envoy) or `key_values` (literals in the Envoy
configuration). The plugin configuration names them as `{"env": "VAR"}`.

  * a silent refresh against the scripted token endpoint, which must see the client secret
    from the environment in HTTP Basic, and a session cookie sealed with the key from the
    environment;
  * a whole login (authorization code + PKCE) against the real OpenID provider, whose token
    endpoint checks the client secret itself;
  * a missing or empty variable, and a weak key, each stop the relay from starting with one log
    line that names the field and the variable, never a value.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.parse

import pytest
import requests

from checks import describe, upstream_headers
from fake_token_endpoint import FakeTokenEndpoint
from idp import Idp, authorize_via_http
from login_support import NAV_ACCEPT, Jar, LoginRelay, login_plugin_config
from refresh_support import Relay, SessionKeys, refresh_plugin_config, set_cookies
from support import (AT_COOKIE, SESSION_COOKIE, Envoy, EnvoyStartError, KeyPair, b64url,
                     free_port, make_claims, relay_config, wasm_failure_evidence)

KEY_VAR = "RELAY_SESSION_KEY"
OLD_KEY_VAR = "RELAY_SESSION_KEY_OLD"
SECRET_VAR = "RELAY_CLIENT_SECRET"
# The fake token endpoint's client secret: characters that need form-encoding in Basic.
FAKE_SECRET = "env-s3cret+/:%~ x"
# The real IdP's registered secret of `relay-client` (tests/idp/server.js).
IDP_CLIENT_SECRET = "relay-secret"


def env_refs(pc: dict, keys: SessionKeys, key_vars: list[str]) -> dict:
    """`pc` with each session key and the client secret replaced by {"env": VAR}."""
    assert len(keys.entries) == len(key_vars)
    pc = dict(pc)
    pc["session_keys"] = [{"kid": kid, "key": {"env": var}}
                          for (kid, _), var in zip(keys.entries, key_vars)]
    pc["client_secret"] = {"env": SECRET_VAR}
    return pc


def secret_values(keys: SessionKeys, client_secret: str) -> dict[str, str]:
    values = {KEY_VAR: b64url(keys.entries[0][1]), SECRET_VAR: client_secret}
    if len(keys.entries) > 1:
        values[OLD_KEY_VAR] = b64url(keys.entries[1][1])
    return values


def delivery(mode: str, values: dict[str, str]) -> tuple[dict, dict[str, str | None]]:
    """(vm_config.environment_variables, Envoy's environment) for `mode`. With `key_values`
    the variables are NOT in Envoy's environment, so only the VM configuration carries them."""
    if mode == "host_env_keys":
        return {"host_env_keys": sorted(values)}, dict(values)
    return {"key_values": dict(values)}, {k: None for k in values}


def assert_log_clean(envoy: Envoy, values: dict[str, str]) -> None:
    log = envoy.log_text()
    for var, value in values.items():
        assert value not in log, f"the value of {var} is in Envoy's log"


def assert_healthy_and_quiet(envoy: Envoy, values: dict[str, str]) -> None:
    """No secret value in the log, and no sign of a failed Wasm VM."""
    assert_log_clean(envoy, values)
    assert not wasm_failure_evidence(envoy)


def startup_line(envoy: Envoy) -> str:
    lines = [ln for ln in envoy.log_text().splitlines() if "edge-token-relay" in ln
             and " configured: " in ln]
    assert lines, envoy.log_tail(40)
    return lines[0]


# --------------------------------------------------------------------------------------------
# Silent refresh with the scripted token endpoint
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["host_env_keys", "key_values"])
def test_refresh_with_secrets_from_the_environment(wasm_file, mode):
    keys = SessionKeys.generate(("env-new", "env-old"))
    signer = KeyPair.generate("RS256", kid=f"secrets-{mode}")
    values = secret_values(keys, FAKE_SECRET)
    vm_env, env = delivery(mode, values)
    with contextlib.ExitStack() as stack:
        fake = FakeTokenEndpoint(signer).start()
        stack.callback(fake.stop)
        pc = env_refs(refresh_plugin_config(keys, client_secret="unused", client_auth="basic"),
                      keys, [KEY_VAR, OLD_KEY_VAR])
        relay = Relay(f"secrets-refresh-{mode}", fake.port, pc, vm_env=vm_env, env=env).start()
        stack.callback(relay.stop)
        ready = relay.wait_ready(fake.mint_access_token())
        assert ready.status_code == 200, describe(ready)

        # A session sealed with the OLD key from the environment: unsealed, refreshed, and
        # resealed with the first key from the environment.
        rt = fake.new_refresh_token()
        n0 = fake.count
        resp = relay.get("/api/orders", f"{SESSION_COOKIE}={keys.seal(rt, kid='env-old')}")
        assert resp.status_code == 200, describe(resp)
        assert fake.count - n0 == 1
        rec = fake.requests[-1]
        assert rec["form"].get("refresh_token") == rt
        ca = rec["client_auth"]
        assert (ca["method"], ca["client_id"], ca["client_secret"]) == \
            ("basic", "relay-client", FAKE_SECRET), ca
        issued = fake.issued[-1]
        assert upstream_headers(relay.upstream.only(), "authorization") == \
            [f"Bearer {issued['access_token']}"]
        cookies = set_cookies(resp)
        kid, plain = keys.unseal(cookies[SESSION_COOKIE].value)
        assert kid == "env-new" and plain["rt"] == issued["refresh_token"]

        line = startup_line(relay.envoy)
        assert line.endswith(f"secrets_from_env={SECRET_VAR},{KEY_VAR},{OLD_KEY_VAR} "
                             f"(root context {line.rsplit('(root context ', 1)[1]}"), line
        assert_healthy_and_quiet(relay.envoy, values)


# --------------------------------------------------------------------------------------------
# Login with the real OpenID provider
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["host_env_keys", "key_values"])
def test_login_with_secrets_from_the_environment(wasm_file, mode):
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    idp = Idp.start(access_token_ttl=60, name=f"idp-secrets-{mode}",
                    redirect_uris=[origin + "/auth/callback"],
                    post_logout_redirect_uris=[origin + "/"])
    keys = SessionKeys.generate(("env-login",))
    values = secret_values(keys, IDP_CLIENT_SECRET)
    vm_env, env = delivery(mode, values)
    with contextlib.ExitStack() as stack:
        stack.callback(idp.stop)
        authority = f"127.0.0.1:{idp.port}"
        login = {"authorization_endpoint": idp.authorization_endpoint,
                 "redirect_uri": origin + "/auth/callback",
                 "scopes": ["openid", "offline_access"], "prompt": "consent",
                 "revocation_path": idp.revocation_path}
        pc = login_plugin_config(keys, issuer=idp.issuer, audiences=[idp.audience],
                                 token_path=idp.token_path, authority=authority,
                                 jwks_path=idp.jwks_path, client_id="relay-client",
                                 client_secret="unused", login=login, same_site="Lax")
        pc = env_refs(pc, keys, [KEY_VAR])
        relay = LoginRelay(f"secrets-login-{mode}", idp.port, pc, port, vm_env=vm_env,
                           env=env).start()
        stack.callback(relay.stop)
        ready = relay.wait_ready(idp.mint("ready-probe", access_token_ttl=60)["access_token"])
        assert ready.status_code == 200, describe(ready)

        jar = Jar()
        nav = {"Accept": NAV_ACCEPT, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
        start = relay.request("GET", "/auth/login?return_to=%2Fapi%2Fme", jar,
                              {**nav, "Sec-Fetch-Site": "same-origin"})
        assert start.status_code == 302, describe(start)
        jar.absorb(start)
        http = requests.Session()
        http.trust_env = False
        flow = authorize_via_http(idp, start.headers["Location"], relay.redirect_uri,
                                  login="env-user", session=http)
        assert flow["params"].get("code"), flow["params"]
        # The code exchange: the IdP checks client_secret_basic with the secret it registered.
        done = relay.request("GET", flow["callback_url"], jar, {**nav, "Sec-Fetch-Site": "cross-site"})
        assert done.status_code == 302, describe(done)
        assert urllib.parse.urlsplit(done.headers["Location"]).path == "/api/me"
        written = jar.absorb(done)
        assert AT_COOKIE in written and SESSION_COOKIE in written, describe(done)
        kid, plain = keys.unseal(written[SESSION_COOKIE].value)
        assert kid == "env-login" and plain["rt"], "the session is sealed with the env key"

        api = relay.request("GET", "/api/me", jar, {"Accept": "application/json",
                                                     "Sec-Fetch-Site": "same-origin"})
        assert api.status_code == 200, describe(api)
        assert upstream_headers(relay.upstream.only(), "authorization") == \
            [f"Bearer {written[AT_COOKIE].value}"]
        assert idp.refresh_token_active(plain["rt"])
        assert_healthy_and_quiet(relay.envoy, values)


# --------------------------------------------------------------------------------------------
# Refusals at start
# --------------------------------------------------------------------------------------------


def start_refused(name: str, pc: dict, vm_env: dict, env: dict) -> Envoy:
    """Start Envoy with the relay; the relay must refuse its configuration, and Envoy (whose
    only listener needs the relay) then refuses to start. Returns the stopped Envoy."""
    cfg = relay_config(free_port(), free_port(), pc, vm_env=vm_env)
    envoy = Envoy(cfg, name=name, env=env, ready_timeout=15)
    with pytest.raises(EnvoyStartError):
        envoy.start()
    assert "Unable to create Wasm plugin edge_token_relay" in envoy.log_text(), \
        envoy.log_tail(40)
    return envoy


def refusal_line(envoy: Envoy) -> str:
    lines = [ln for ln in envoy.log_text().splitlines() if "invalid configuration" in ln]
    assert len(lines) == 1, envoy.log_tail(60)
    return lines[0]


def strong_values() -> dict[str, str]:
    return {KEY_VAR: b64url(os.urandom(32)), SECRET_VAR: "client-" + os.urandom(6).hex()}


def base_pc() -> dict:
    keys = SessionKeys.generate(("k1",))
    return env_refs(refresh_plugin_config(keys, client_secret="unused"), keys, [KEY_VAR])


@pytest.mark.parametrize("case", ["key-missing", "key-empty", "secret-missing"])
@pytest.mark.parametrize("mode", ["host_env_keys", "key_values"])
def test_missing_variable_refuses_to_start(wasm_file, case, mode):
    values = strong_values()
    field, var = (("client_secret", SECRET_VAR) if case.startswith("secret")
                  else ("session_keys[0].key", KEY_VAR))
    given: dict[str, str] = dict(values)
    if case.endswith("empty"):
        given[var] = ""
    else:
        del given[var]
    vm_env, env = delivery(mode, given)
    envoy = start_refused(f"secrets-{case}-{mode}", base_pc(), vm_env, env)
    line = refusal_line(envoy)
    want = "is empty" if case.endswith("empty") else "is not set"
    assert f"edge-token-relay: invalid configuration: field `{field}`: environment variable " \
        f"\"{var}\" {want}" in line, line
    assert_log_clean(envoy, {k: v for k, v in values.items() if v})


@pytest.mark.parametrize("key, how", [
    ("REPLACE-WITH-32-RANDOM-BYTES-BASE64URL-0000", "env"),
    (b64url(bytes(32)), "env"),
    (b64url(b"a-passphrase-someone-typed-in!!!"), "literal"),
])
def test_weak_key_refuses_to_start(wasm_file, key, how):
    values = strong_values()
    values[KEY_VAR] = key
    pc = base_pc()
    if how == "literal":
        pc["session_keys"] = [{"kid": "k1", "key": key}]
    vm_env, env = delivery("host_env_keys", values)
    envoy = start_refused(f"secrets-weak-{how}", pc, vm_env, env)
    line = refusal_line(envoy)
    assert "field `session_keys[0].key`: is not a random key (" in line, line
    if how == "env":
        assert line.rstrip().endswith(f'(environment variable "{KEY_VAR}")'), line
    assert_log_clean(envoy, values)


def test_a_started_relay_never_logs_its_secrets_later(wasm_file):
    """Requests that fail in every way the secrets matter for (a session sealed with another
    key, a refresh the token endpoint refuses) log reason codes only."""
    keys = SessionKeys.generate(("k1",))
    signer = KeyPair.generate("RS256", kid="secrets-quiet")
    values = secret_values(keys, FAKE_SECRET)
    vm_env, env = delivery("host_env_keys", values)
    with contextlib.ExitStack() as stack:
        fake = FakeTokenEndpoint(signer).start()
        stack.callback(fake.stop)
        pc = env_refs(refresh_plugin_config(keys, client_secret="unused"), keys, [KEY_VAR])
        relay = Relay("secrets-quiet", fake.port, pc, vm_env=vm_env, env=env).start()
        stack.callback(relay.stop)
        assert relay.wait_ready(fake.mint_access_token()).status_code == 200
        other = SessionKeys.generate(("k1",))
        assert relay.get("/api/x", f"{SESSION_COOKIE}={other.seal('rt-x')}").status_code == 401
        fake.set_mode("invalid_grant")
        expired = signer.sign(make_claims(iat=int(time.time()) - 400,
                                          exp=int(time.time()) - 100))
        resp = relay.get("/api/x", f"{AT_COOKIE}={expired}; "
                                   f"{SESSION_COOKIE}={keys.seal(fake.new_refresh_token())}")
        assert resp.status_code == 401, describe(resp)
        assert_healthy_and_quiet(relay.envoy, values)
