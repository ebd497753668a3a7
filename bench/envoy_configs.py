"""Envoy bootstraps for the benchmark configurations (used by run.py).

Every configuration is the same front proxy: one listener on 127.0.0.1, one HTTP connection
manager, and routes that answer with `direct_response` (200, a 3-byte body), so no upstream
takes part and only Envoy's own cost plus the filter under test is measured. They differ in
the HTTP filters placed before the router:

  a        none (bare Envoy)
  n        a proxy-wasm filter that does nothing (bench/nop/): the floor of any Wasm filter
  p        a proxy-wasm filter that makes the relay's cache-hit host calls and nothing else
           (bench/probe/): the floor of a filter that does the relay's job
  b        this filter (envoy.filters.http.wasm, V8), same token on every request -> cache hits
  c        Envoy's native jwt_authn with its verified-JWT cache
  d        jwt_authn without the cache
  e        this filter, a different RS256 token on every request -> cache misses
  e-ES256  as (e) with ES256 tokens (the key set holds the P-256 key)
  e-EdDSA  as (e) with EdDSA (Ed25519) tokens
  f        Envoy's native oauth2 filter with valid signed cookies, forward_bearer_token: true

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
# The `sub` of every benchmark token, forwarded as FORWARDED_SUB_HEADER.
BENCH_SUB = "bench-user"
STAT_PREFIX = "ingress_http"
RESPONSE_BODY = "ok\n"
JWT_AUTHN_CACHE_SIZE = 100

CONFIG_NAMES = ("a", "n", "p", "b", "c", "d", "e", "e-ES256", "e-EdDSA", "f")
DESCRIPTIONS = {
    "a": "Envoy, no filter",
    "n": "Wasm filter that does nothing (floor)",
    "p": "Wasm probe: the relay's cache-hit host calls only",
    "b": "relay filter, same token (cache hit)",
    "c": "jwt_authn with jwt_cache_config",
    "d": "jwt_authn without cache",
    "e": "relay filter, fresh RS256 token per request (cache miss)",
    "e-ES256": "relay filter, fresh ES256 token per request (cache miss)",
    "e-EdDSA": "relay filter, fresh EdDSA token per request (cache miss)",
    "f": "oauth2 filter, valid signed cookies, forward_bearer_token",
    "b2": "relay filter, the --compare build, same token (cache hit)",
}
# (b) with another build of the relay (`run.py --compare`): run next to (b) in every round.
COMPARE_CONFIG = "b2"
# Configurations that send a different token on every request, and the algorithm of each.
MISS_CONFIGS = {"e": "RS256", "e-ES256": "ES256", "e-EdDSA": "EdDSA"}
RELAY_CONFIGS = ("b", COMPARE_CONFIG) + tuple(MISS_CONFIGS)
JWT_AUTHN_CONFIGS = ("c", "d")
NOP_CONFIGS = ("n",)
PROBE_CONFIGS = ("p",)
OAUTH2_CONFIGS = ("f",)
# Configurations that load a Wasm module, and the plugin name each gives it.
WASM_PLUGIN_NAMES = {"n": "bench_nop", "p": "bench_probe",
                     **{name: "edge_token_relay" for name in RELAY_CONFIGS}}
# The relay's reason for a cache hit in filter state, which the probe writes as the relay does.
REASON_PROPERTY = "edge_token_relay.reason"

# (f): the oauth2 filter's HMAC covers the cookie domain (the Host header otherwise, which
# carries the listener's port and so changes from run to run).
OAUTH2_COOKIE_DOMAIN = "bench.test"
OAUTH2_HMAC_SECRET = "bench-oauth2-hmac-secret-0123456789"
OAUTH2_TOKEN_SECRET = "bench-oauth2-client-secret"


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


def probe_filter(wasm_path: str | Path, authorization: str, claim: str) -> dict:
    """The host-call probe (bench/probe/), loaded like the relay. Its configuration is the two
    values it writes (prepared here, so the probe does no work to make them): the
    `authorization` value and the forwarded `x-user-sub` value, one per line."""
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": WASM_PLUGIN_NAMES["p"],
                "root_id": WASM_PLUGIN_NAMES["p"],
                "vm_config": {
                    "vm_id": WASM_PLUGIN_NAMES["p"],
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(Path(wasm_path).resolve())}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": f"{authorization}\n{claim}\n",
                },
            },
        },
    }


def oauth2_filter() -> dict:
    """Envoy's native oauth2 filter for requests that already carry its signed cookies
    (BearerToken, OauthHMAC, OauthExpires; see oauth2_cookie in run.py): it checks the HMAC and
    the expiry and forwards the token as `Authorization: Bearer`. Token encryption is off: the
    relay's access-token cookie is not encrypted either, so both do the same work per request.
    The token endpoint is never called (no request lacks valid cookies in the measured window)."""
    return {
        "name": "envoy.filters.http.oauth2",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.oauth2.v3.OAuth2",
            "config": {
                "token_endpoint": {"cluster": "bench_oauth2_idp", "uri": f"{ISSUER}/token",
                                   "timeout": "3s"},
                "authorization_endpoint": f"{ISSUER}/authorize",
                "redirect_uri": "http://%REQ(:authority)%/oauth2/callback",
                "redirect_path_matcher": {"path": {"exact": "/oauth2/callback"}},
                "signout_path": {"path": {"exact": "/oauth2/signout"}},
                "forward_bearer_token": True,
                "disable_token_encryption": True,
                "use_refresh_token": False,
                "auth_scopes": ["openid"],
                "credentials": {
                    "client_id": AUDIENCE,
                    "token_secret": {"name": "bench_oauth2_token"},
                    "hmac_secret": {"name": "bench_oauth2_hmac"},
                    "cookie_domain": OAUTH2_COOKIE_DOMAIN,
                },
            },
        },
    }


def oauth2_static_resources() -> dict:
    """The secrets and the (never called) token-endpoint cluster the oauth2 filter names."""
    return {
        "secrets": [
            {"name": "bench_oauth2_token",
             "generic_secret": {"secret": {"inline_string": OAUTH2_TOKEN_SECRET}}},
            {"name": "bench_oauth2_hmac",
             "generic_secret": {"secret": {"inline_string": OAUTH2_HMAC_SECRET}}},
        ],
        "clusters": [{
            "name": "bench_oauth2_idp",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "bench_oauth2_idp", "endpoints": [{
                "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": 9}}}}]}]},
        }],
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


def bootstrap(http_filters: list[dict], extra_static: dict | None = None) -> dict:
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
    static: dict[str, Any] = {
        "listeners": [{
            "name": "bench",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm}]}],
        }],
    }
    static.update(extra_static or {})
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": static,
    }


def config_for(name: str, *, jwks: dict, wasm_path: str | Path,
               nop_wasm_path: str | Path | None = None,
               probe_wasm_path: str | Path | None = None, token: str = "",
               miss_jwks: dict | None = None) -> dict:
    """`jwks` holds the RS256 key of (b), (c), (d) and (e); `miss_jwks` maps the algorithm of
    an (e-*) configuration to the key set it uses; `token` is the cache-hit token, which (p)
    writes as the relay would."""
    if name == "a":
        return bootstrap([])
    if name in NOP_CONFIGS:
        if nop_wasm_path is None:
            raise ValueError("configuration (n) needs the do-nothing module (nop_wasm_path)")
        return bootstrap([nop_filter(nop_wasm_path)])
    if name in PROBE_CONFIGS:
        if probe_wasm_path is None:
            raise ValueError("configuration (p) needs the probe module (probe_wasm_path)")
        return bootstrap([probe_filter(probe_wasm_path, f"Bearer {token}", BENCH_SUB)])
    if name in MISS_CONFIGS and MISS_CONFIGS[name] != "RS256":
        keys = (miss_jwks or {}).get(MISS_CONFIGS[name])
        if keys is None:
            raise ValueError(f"configuration ({name}) needs its key set (miss_jwks)")
        return bootstrap([relay_filter(wasm_path, keys)])
    if name in RELAY_CONFIGS:
        return bootstrap([relay_filter(wasm_path, jwks)])
    if name in OAUTH2_CONFIGS:
        return bootstrap([oauth2_filter()], oauth2_static_resources())
    if name == "c":
        return bootstrap([jwt_authn_filter(jwks, cache=True)])
    if name == "d":
        return bootstrap([jwt_authn_filter(jwks, cache=False)])
    raise ValueError(f"unknown configuration {name!r}")
