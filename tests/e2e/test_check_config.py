"""schema/config.schema.json against the plugin configurations the repository ships.

The schema is generated from the filter's configuration types (`make schema`; the Rust test
tests/check_config.rs fails when the committed file is stale), and `check-config` itself is
tested there. This file checks what editors and kubeconform will do with the schema: every
shipped plugin configuration validates, and a misspelt field or a wrong type does not.
No Envoy and no .wasm needed.
"""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import yaml

from support import REPO_ROOT

SCHEMA = json.loads((REPO_ROOT / "schema" / "config.schema.json").read_text())
RELAY_ID = "edge_token_relay"
ENVOY_FILES = ("envoy/relay.yaml", "envoy/cognito.yaml", "envoy/oidc-generic.yaml",
               "examples/nextjs/envoy.yaml")


def wasm_plugin_configs(node, out: list) -> list:
    """The relay's plugin configurations (JSON in a StringValue) anywhere in an Envoy config."""
    if isinstance(node, dict):
        config = node.get("typed_config", {}).get("config") if node.get("name") == "envoy.filters.http.wasm" else None
        if isinstance(config, dict) and (config.get("root_id") == RELAY_ID
                                         or config.get("vm_config", {}).get("vm_id") == RELAY_ID):
            out.append(json.loads(config["configuration"]["value"]))
        for v in node.values():
            wasm_plugin_configs(v, out)
    elif isinstance(node, list):
        for v in node:
            wasm_plugin_configs(v, out)
    return out


def shipped_configs() -> dict[str, dict]:
    out = {}
    for rel in ENVOY_FILES:
        (config,) = wasm_plugin_configs(yaml.safe_load((REPO_ROOT / rel).read_text()), [])
        out[rel] = config
    (plugin,) = [d for d in yaml.safe_load_all((REPO_ROOT / "istio/wasmplugin.yaml").read_text())
                 if d and d.get("kind") == "WasmPlugin"]
    out["istio/wasmplugin.yaml"] = plugin["spec"]["pluginConfig"]
    return out


VALIDATOR = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)


def test_the_schema_is_a_valid_json_schema():
    type(VALIDATOR).check_schema(SCHEMA)
    assert SCHEMA["additionalProperties"] is False
    assert {"protected_prefixes", "issuer", "audiences", "jwks"} <= set(SCHEMA["required"])
    assert "login" in SCHEMA["properties"]


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_shipped_configs_match_the_schema(name):
    errors = [e.message for e in VALIDATOR.iter_errors(shipped_configs()[name])]
    assert not errors, f"{name}: {errors}"


@pytest.mark.parametrize("path, value", [
    (("isser",), "https://idp.test"),          # misspelt top-level field
    (("cookies", "domain"), "x"),              # unknown nested field
    (("login", "scope"), ["openid"]),          # unknown login field
    (("clock_skew_s",), "30"),                 # wrong type
    (("jwks", "refresh_s"), -1),               # negative seconds
])
def test_the_schema_refuses_what_the_filter_refuses(path, value):
    config = copy.deepcopy(shipped_configs()["istio/wasmplugin.yaml"])
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(VALIDATOR.iter_errors(config)), f"{path} = {value!r} accepted"
