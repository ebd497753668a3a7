"""Envoy bootstraps for the six benchmark configurations (used by run.py).

Every configuration is the same front proxy: one listener on 127.0.0.1, one HTTP connection
manager, and routes that answer with `direct_response` (200, a 3-byte body), so no upstream
takes part and only Envoy's own cost plus the filter under test is measured. They differ in
the HTTP filters placed before the router:

  a  none (bare Envoy)
  n  a proxy-wasm filter that does nothing (bench/nop/): the floor of any Wasm filter
  b  this filter (envoy.filters.http.wasm, V8), same token on every request -> cache hits
  c  Envoy's native jwt_authn with its verified-JWT cache
  d  jwt_authn without the cache
  e  this filter, a different token on every request -> cache misses

The builders here are written out for the benchmark instead of reusing the e2e helpers on
purpose: the benchmark's configurations are fixed by the benchmark's definition (see
README.md) and must not change when a test fixture does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ISSUER = "https://idp.test"
AUDIENCE = "my-app-client-id"
AT_COOKIE = "__Host-relay-at"
BENCH_PATH = "/api/me"
# A route used only by the pre-flight checks: it echoes what the filter forwarded in response
# headers. The measured path (BENCH_PATH) does not carry this header work.
PROBE_PATH = "/api/__bench_probe"
PROBE_AUTH_HEADER = "x-bench-authorization"
PROBE_SUB_HEADER = "x-bench-sub"
FORWARDED_SUB_HEADER = "x-user-sub"
STAT_PREFIX = "ingress_http"
RESPONSE_BODY = "ok\n"
JWT_AUTHN_CACHE_SIZE = 100

CONFIG_NAMES = ("a", "n", "b", "c", "d", "e")
DESCRIPTIONS = {
    "a": "Envoy, no filter",
    "n": "Wasm filter that does nothing (floor)",
    "b": "relay filter, same token (cache hit)",
    "c": "jwt_authn with jwt_cache_config",
    "d": "jwt_authn without cache",
    "e": "relay filter, fresh token per request (cache miss)",
}
RELAY_CONFIGS = ("b", "e")
JWT_AUTHN_CONFIGS = ("c", "d")
NOP_CONFIGS = ("n",)
# Configurations that load a Wasm module, and the plugin name each gives it.
WASM_PLUGIN_NAMES = {"n": "bench_nop", "b": "edge_token_relay", "e": "edge_token_relay"}


def relay_plugin_config(jwks: dict) -> dict:
    """The relay's plugin configuration for the benchmark (exactly as the benchmark defines it)."""
    return {
        "protected_prefixes": ["/api/"],
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "required_claims": {"token_use": "access"},
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "clock_skew_s": 30,
        "jwks": {"inline": jwks},
        "forward_claims": {FORWARDED_SUB_HEADER: "sub"},
    }


def relay_filter(wasm_path: str | Path, jwks: dict) -> dict:
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "edge_token_relay",
                "root_id": "edge_token_relay",
                "vm_config": {
                    "vm_id": "edge_token_relay",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(Path(wasm_path).resolve())}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(relay_plugin_config(jwks)),
                },
            },
        },
    }


def nop_filter(wasm_path: str | Path) -> dict:
    """The do-nothing filter (bench/nop/), loaded exactly as the relay is (same runtime, same
    kind of VM config) but without a plugin configuration: it reads none."""
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": WASM_PLUGIN_NAMES["n"],
                "root_id": WASM_PLUGIN_NAMES["n"],
                "vm_config": {
                    "vm_id": WASM_PLUGIN_NAMES["n"],
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(Path(wasm_path).resolve())}},
                },
            },
        },
    }


def jwt_authn_filter(jwks: dict, cache: bool) -> dict:
    """Envoy's native JWT filter doing the relay's job: the same token from the same cookie,
    the same issuer/audience/skew, the `sub` claim forwarded as the same header."""
    provider: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "from_cookies": [AT_COOKIE],
        "forward": True,
        "local_jwks": {"inline_string": json.dumps(jwks)},
        "claim_to_headers": [{"header_name": FORWARDED_SUB_HEADER, "claim_name": "sub"}],
        "clock_skew_seconds": 30,
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": JWT_AUTHN_CACHE_SIZE}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": provider},
            "rules": [{"match": {"prefix": "/api/"}, "requires": {"provider_name": "idp"}}],
        },
    }


def _direct_ok() -> dict:
    return {"status": 200, "body": {"inline_string": RESPONSE_BODY}}


def bootstrap(http_filters: list[dict]) -> dict:
    """The whole Envoy bootstrap around `http_filters`; listener and admin ports are chosen by
    the kernel and read back by the launcher."""
    routes = [
        {
            "match": {"path": PROBE_PATH},
            "direct_response": _direct_ok(),
            "response_headers_to_add": [
                {"header": {"key": PROBE_AUTH_HEADER, "value": "%REQ(authorization)%"}},
                {"header": {"key": PROBE_SUB_HEADER, "value": f"%REQ({FORWARDED_SUB_HEADER})%"}},
            ],
        },
        {"match": {"prefix": "/"}, "direct_response": _direct_ok()},
    ]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": STAT_PREFIX,
        "codec_type": "AUTO",
        "normalize_path": True,
        "merge_slashes": True,
        "route_config": {
            "name": "bench_route",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": list(http_filters) + [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm}]}],
            }],
        },
    }


def config_for(name: str, *, jwks: dict, wasm_path: str | Path,
               nop_wasm_path: str | Path | None = None) -> dict:
    if name == "a":
        return bootstrap([])
    if name in NOP_CONFIGS:
        if nop_wasm_path is None:
            raise ValueError("configuration (n) needs the do-nothing module (nop_wasm_path)")
        return bootstrap([nop_filter(nop_wasm_path)])
    if name in RELAY_CONFIGS:
        return bootstrap([relay_filter(wasm_path, jwks)])
    if name == "c":
        return bootstrap([jwt_authn_filter(jwks, cache=True)])
    if name == "d":
        return bootstrap([jwt_authn_filter(jwks, cache=False)])
    raise ValueError(f"unknown configuration {name!r}")
