"""Every Envoy config in the repo passes `envoy --mode validate`, and so does the generated
test config. Plugin configuration errors never leave the relay serving protected paths."""

from __future__ import annotations

import json

import pytest

import os
from pathlib import Path

import yaml

from support import (REPO_ROOT, WASM_PATH, EnvoyStartError, RelayStack, b64url,
                     default_plugin_config, make_claims, relay_config, validate_config)

ENVOY_DIR = REPO_ROOT / "envoy"
EXAMPLE_CONFIGS = sorted(ENVOY_DIR.glob("*.yaml"))
# Where the examples expect the built module (README.md, "Using it in Envoy").
INSTALLED_WASM = "/etc/envoy/edge_token_relay.wasm"
# The variables the examples read their secrets from (vm_config.environment_variables).
SECRET_VARS = ("RELAY_SESSION_KEY", "RELAY_CLIENT_SECRET")


def example_secrets() -> dict[str, str]:
    """Values for the examples' secret variables: a fresh random session key."""
    return {"RELAY_SESSION_KEY": b64url(os.urandom(32)),
            "RELAY_CLIENT_SECRET": "client-secret-" + os.urandom(8).hex()}


def as_installed(path: Path, tmp_path: Path) -> Path:
    """A copy of the example with the built module where the example expects it (the file
    names INSTALLED_WASM, an absolute path; here the module is in target/)."""
    out = tmp_path / path.name
    out.write_text(path.read_text().replace(INSTALLED_WASM, str(WASM_PATH)))
    return out


def outside_the_repo(tmp_path: Path) -> Path:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    assert REPO_ROOT not in cwd.resolve().parents
    return cwd


def test_there_are_example_configs():
    names = {p.name for p in EXAMPLE_CONFIGS}
    assert {"relay.yaml", "jwt_authn_baseline.yaml"} <= names, names


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_example_config_validates(request, envoy_bin, path, tmp_path):
    """Every example validates from a directory outside the repository, with the module at
    its installed path and the secrets in Envoy's environment (validate mode loads the module
    and runs the relay's configuration parser, which reads the secrets)."""
    if ".wasm" in path.read_text():
        request.getfixturevalue("wasm_file")  # fails the test if the filter is not built
    cfg = as_installed(path, tmp_path)
    result = validate_config(cfg, envoy_bin, cwd=outside_the_repo(tmp_path),
                             env=example_secrets())
    assert result.returncode == 0, f"{path.name}:\n{result.stdout}\n{result.stderr}"


def wasm_filters(cfg: dict) -> list[tuple[dict, dict]]:
    """(HTTP connection manager, relay filter config) pairs of an Envoy bootstrap."""
    out = []
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                hcm = f.get("typed_config", {})
                for hf in hcm.get("http_filters", []):
                    if hf["name"] == "envoy.filters.http.wasm":
                        out.append((hcm, hf["typed_config"]["config"]))
    return out


RELAY_EXAMPLES = [p for p in EXAMPLE_CONFIGS if wasm_filters(yaml.safe_load(p.read_text()))]


def test_examples_name_the_module_by_an_absolute_path():
    assert {p.name for p in RELAY_EXAMPLES} >= {"relay.yaml", "cognito.yaml", "oidc-generic.yaml"}
    for path in RELAY_EXAMPLES:
        for _, relay in wasm_filters(yaml.safe_load(path.read_text())):
            assert relay["vm_config"]["code"]["local"]["filename"] == INSTALLED_WASM, path.name


@pytest.mark.parametrize("path", RELAY_EXAMPLES, ids=lambda p: p.name)
def test_examples_set_the_front_proxy_hardening(path):
    """What the relay relies on from the HTTP connection manager: one spelling of each path
    and no underscore spelling of a header it owns."""
    for hcm, _ in wasm_filters(yaml.safe_load(path.read_text())):
        assert hcm["normalize_path"] is True, path.name
        assert hcm["merge_slashes"] is True, path.name
        assert hcm["path_with_escaped_slashes_action"] == "UNESCAPE_AND_REDIRECT", path.name
        assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == \
            "REJECT_REQUEST", path.name


@pytest.mark.parametrize("path", RELAY_EXAMPLES, ids=lambda p: p.name)
def test_examples_hold_no_secret(path):
    """Secret fields of the examples name environment variables that Envoy hands to the VM."""
    for _, relay in wasm_filters(yaml.safe_load(path.read_text())):
        pc = json.loads(relay["configuration"]["value"])
        refs = [k["key"] for k in pc.get("session_keys", [])]
        if "client_secret" in pc:
            refs.append(pc["client_secret"])
        for ref in refs:
            assert isinstance(ref, dict) and set(ref) == {"env"}, f"{path.name}: {ref!r}"
            assert ref["env"] in SECRET_VARS
        if refs:
            env = relay["vm_config"]["environment_variables"]
            assert set(env["host_env_keys"]) == {r["env"] for r in refs}, path.name
            assert "key_values" not in env, f"{path.name}: key_values would hold the secret"


@pytest.mark.parametrize("name", ["cognito.yaml", "oidc-generic.yaml"])
@pytest.mark.parametrize("missing", SECRET_VARS)
def test_example_without_its_secret_variable_does_not_validate(wasm_file, envoy_bin, tmp_path,
                                                                 name, missing):
    """The relay refuses to start when a secret's variable is not set, with one line naming
    the field and the variable, and never a value."""
    secrets = example_secrets()
    env: dict[str, str | None] = dict(secrets)
    env[missing] = None
    result = validate_config(as_installed(ENVOY_DIR / name, tmp_path), envoy_bin,
                             cwd=outside_the_repo(tmp_path), env=env)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    field = "session_keys[0].key" if missing == "RELAY_SESSION_KEY" else "client_secret"
    lines = [ln for ln in out.splitlines() if "invalid configuration" in ln]
    assert len(lines) == 1, out
    assert f"field `{field}`: environment variable \"{missing}\" is not set" in lines[0], out
    for value in secrets.values():
        assert value not in out


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
