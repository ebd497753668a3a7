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


# --------------------------------------------------------------------------------------------
# Envoy and Istio YAML shown in the documentation
# --------------------------------------------------------------------------------------------
#
# A fenced ```yaml block preceded by `<!-- envoy-validate -->` is a fragment of an Envoy
# bootstrap: `routes` (the virtual host's routes), `vm_config` (the relay's) or `clusters`
# (added). All such blocks of one document go into the suite's relay config together, and the
# result must pass `envoy --mode validate`. A block preceded by `<!-- istio-validate -->` is an
# Istio manifest, checked against Istio's CRD schema like istio/*.yaml.

import re  # noqa: E402

import yaml  # noqa: E402

DOCS_WITH_ENVOY_YAML = ("README.md", "docs/delivery.md")
DOCS_WITH_ISTIO_YAML = ("docs/delivery.md", "docs/deploy.md")


def marked_yaml_blocks(rel_path: str, marker: str) -> list[dict]:
    text = (REPO_ROOT / rel_path).read_text()
    blocks = re.findall(r"<!-- " + re.escape(marker) + r" -->\n```yaml\n(.*?)```", text, re.S)
    return [yaml.safe_load(b) for b in blocks]


@pytest.mark.parametrize("doc", DOCS_WITH_ENVOY_YAML)
def test_documented_envoy_yaml_validates(wasm_file, envoy_bin, tmp_path, doc):
    blocks = marked_yaml_blocks(doc, "envoy-validate")
    assert blocks, f"{doc}: no <!-- envoy-validate --> yaml block"
    cfg = relay_config(18080, 18081, listener_port=18082, admin_port=18083)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    relay = hcm["http_filters"][0]["typed_config"]["config"]
    for block in blocks:
        unknown = set(block) - {"routes", "vm_config", "clusters"}
        assert not unknown, f"{doc}: a validated block has {sorted(unknown)}"
        if "routes" in block:
            hcm["route_config"]["virtual_hosts"][0]["routes"] = block["routes"]
        if "vm_config" in block:
            relay["vm_config"] = block["vm_config"]
        cfg["static_resources"]["clusters"] += block.get("clusters", [])
    path = tmp_path / "doc.yaml"
    path.write_text(json.dumps(cfg))
    result = validate_config(path, envoy_bin)
    assert result.returncode == 0, f"{doc}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("doc", DOCS_WITH_ISTIO_YAML)
def test_documented_istio_yaml_matches_the_crd_schema(doc):
    import jsonschema

    from test_deploy_configs import CEL_RULES, cel_checks, crd_schemas, istio_plugin_config, strict

    blocks = marked_yaml_blocks(doc, "istio-validate")
    assert blocks, f"{doc}: no <!-- istio-validate --> yaml block"
    schemas = crd_schemas()
    for block in blocks:
        crd = schemas[block["kind"]]
        assert block["apiVersion"] == crd["apiVersion"]
        spec = dict(block["spec"])
        if block["kind"] == "WasmPlugin":
            spec.setdefault("pluginConfig", istio_plugin_config())
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in jsonschema.Draft7Validator(strict(crd["spec"])).iter_errors(spec)]
        assert not errors, errors
        checks: list = []
        cel_checks(crd["spec"], spec, "spec", checks)
        for where, rule, value in checks:
            assert rule in CEL_RULES, f"{where}: CEL rule not checked: {rule}"
            assert CEL_RULES[rule](value), f"{where}: violates {rule}"
