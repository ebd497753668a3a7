"""Every Envoy config in the repo passes `envoy --mode validate`, and so does the generated
test config. Plugin configuration errors never leave the relay serving protected paths."""

from __future__ import annotations

import json

import pytest

from support import (REPO_ROOT, EnvoyStartError, RelayStack, default_plugin_config,
                     make_claims, relay_config, validate_config)

ENVOY_DIR = REPO_ROOT / "envoy"
EXAMPLE_CONFIGS = sorted(ENVOY_DIR.glob("*.yaml"))


def test_there_are_example_configs():
    names = {p.name for p in EXAMPLE_CONFIGS}
    assert {"relay.yaml", "jwt_authn_baseline.yaml"} <= names, names


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_example_config_validates(request, envoy_bin, path):
    if ".wasm" in path.read_text():
        request.getfixturevalue("wasm_file")  # fails the test if the filter is not built
    result = validate_config(path, envoy_bin, cwd=REPO_ROOT)
    assert result.returncode == 0, f"{path.name}:\n{result.stdout}\n{result.stderr}"


def test_generated_relay_config_validates(wasm_file, envoy_bin, tmp_path):
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(json.dumps(relay_config(18080, 18081, listener_port=18082, admin_port=18083)))
    result = validate_config(cfg, envoy_bin)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


BAD_PLUGIN_CONFIGS = {
    "not-json": "{ this is not json",
    "empty-object": "{}",
    "unknown-field": json.dumps(default_plugin_config(unknown_field=True)),
    "no-issuer": json.dumps({k: v for k, v in default_plugin_config().items() if k != "issuer"}),
    "jwks-without-source": json.dumps(default_plugin_config(jwks={})),
    "negative-skew": json.dumps(default_plugin_config(clock_skew_s=-5)),
}


@pytest.mark.parametrize("name", list(BAD_PLUGIN_CONFIGS))
def test_bad_plugin_config_fails_closed(wasm_file, keys, name):
    """A broken plugin configuration must not give a relay that forwards protected requests:
    Envoy refuses to start, or the filter refuses the requests."""
    stack = RelayStack(list(keys.values()), plugin_config=BAD_PLUGIN_CONFIGS[name],
                       name=f"bad-config-{name}", ready_timeout=10)
    try:
        stack.start()
    except EnvoyStartError:
        return  # refused at startup: fine
    try:
        tok = keys["RS256"].sign(make_claims())
        for cookie in (None, f"__Host-relay-at={tok}"):
            resp = stack.get("/api/x", cookie)
            assert not stack.upstream.received, \
                f"with plugin config {name!r} a protected request was forwarded ({resp.status_code})"
    finally:
        stack.stop()


def test_baseline_jwks_matches_the_demo_keys():
    """envoy/jwt_authn_baseline.yaml inlines the public half of tests/e2e/keys/ (so the
    benchmark can mint tokens it accepts)."""
    import re

    from support import demo_keys, jwks_of

    text = (ENVOY_DIR / "jwt_authn_baseline.yaml").read_text()
    m = re.search(r"inline_string: '(.*)'", text)
    assert m, "no local_jwks.inline_string in jwt_authn_baseline.yaml"
    assert json.loads(m.group(1)) == jwks_of(demo_keys().values())
