"""Delivering the module with Envoy's `vm_config.code.remote` (docs/delivery.md): Envoy fetches
the .wasm over HTTP through a cluster, checks its SHA-256, and loads it; with a digest that does
not match it does not load the module and the fail-closed filter answers 503 to everything.

The file is served by a local HTTP server on 127.0.0.1 (the docs use HTTPS; TLS to the download
server is ordinary Envoy cluster configuration, exercised elsewhere in the suite).
"""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from checks import assert_forwarded, assert_refused
from support import (WASM_PATH, Envoy, JwksServer, KeyPair, Upstream, _static_cluster,
                     make_claims, new_http_session, relay_config, wait_until)


class WasmServer:
    """Serves one file at /edge_token_relay.wasm and counts the downloads."""

    def __init__(self, body: bytes):
        self.body = body
        self.downloads = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.downloads += 1
                if self.path != "/edge_token_relay.wasm":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/wasm")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def remote_config(upstream: Upstream, idp: JwksServer, server: WasmServer, sha256: str) -> dict:
    cfg = relay_config(upstream.port, idp.port)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    vm = hcm["http_filters"][0]["typed_config"]["config"]["vm_config"]
    vm["code"] = {"remote": {
        "http_uri": {"uri": f"http://127.0.0.1:{server.port}/edge_token_relay.wasm",
                     "cluster": "wasm_downloads", "timeout": "10s"},
        "sha256": sha256,
        "retry_policy": {"num_retries": 1},
    }}
    cfg["static_resources"]["clusters"].append(_static_cluster("wasm_downloads", server.port))
    return cfg


@pytest.fixture
def parts(wasm_file, keys):
    idp = JwksServer(list(keys.values())).start()
    upstream = Upstream().start()
    try:
        with WasmServer(WASM_PATH.read_bytes()) as server:
            yield idp, upstream, server
    finally:
        upstream.stop()
        idp.stop()


class _Stack:
    """Just enough of RelayStack for the shared assertions."""

    def __init__(self, envoy: Envoy, upstream: Upstream):
        self.envoy, self.upstream, self.http = envoy, upstream, new_http_session()

    def get(self, path: str, cookie: str | None = None):
        self.upstream.clear()
        headers = {"Cookie": cookie} if cookie else {}
        return self.http.get(self.envoy.url(path), headers=headers, timeout=15,
                             allow_redirects=False)


def test_remote_module_with_its_digest_loads_and_relays(parts, keys):
    idp, upstream, server = parts
    digest = hashlib.sha256(WASM_PATH.read_bytes()).hexdigest()
    with Envoy(remote_config(upstream, idp, server, digest), name="remote-ok") as envoy:
        assert server.downloads >= 1
        stack = _Stack(envoy, upstream)
        token = keys["ES256"].sign(make_claims())
        resp = wait_until(lambda: (lambda r: r if r.status_code != 503 else None)(
            stack.get("/api/x", f"__Host-relay-at={token}")), timeout=20, what="JWKS loaded")
        assert_forwarded(resp, stack, token)
        assert_refused(stack.get("/api/x"), stack, token_presented=False)
        stats = envoy.stats("wasm")
        assert stats.get("wasm.remote_load_fetch_successes") == 1, stats
        assert stats.get("wasm.remote_load_fetch_failures", 0) == 0, stats


def test_remote_module_with_a_wrong_digest_fails_closed(parts, keys):
    idp, upstream, server = parts
    wrong = hashlib.sha256(b"not the module").hexdigest()
    with Envoy(remote_config(upstream, idp, server, wrong), name="remote-bad") as envoy:
        assert server.downloads >= 1
        envoy.wait_for_log("Plugin edge_token_relay failed to load", timeout=20)
        stack = _Stack(envoy, upstream)
        token = keys["ES256"].sign(make_claims())
        for path, cookie in (("/api/x", f"__Host-relay-at={token}"), ("/api/x", None),
                             ("/static/app.js", None)):
            resp = stack.get(path, cookie)
            assert resp.status_code == 503 and resp.content == b"", (path, resp.status_code,
                                                                      resp.content[:200])
            assert not upstream.received, path
        stats = envoy.stats("wasm")
        assert stats.get("wasm.remote_load_fetch_failures", 0) >= 1, stats
