"""Helpers for the silent-refresh e2e tests (test_refresh.py).

  * `SessionKeys`: the relay's `session_keys`, and sealing / unsealing the session cookie in
    Python exactly as the contract defines it (compact JWE, alg dir, enc A256GCM, AAD = the
    encoded protected header), with `cryptography`'s AESGCM.
  * `SetCookie`, `set_cookies(resp)`, `session_value(resp)`: what the browser was told.
  * `refresh_plugin_config(...)`: the foundation config plus the refresh settings.
  * `Relay`: echo upstream + Envoy running the filter, its `idp` cluster pointing at a token
    endpoint (the real IdP or the fake one; both serve the JWKS there too).
  * `relay_metrics(envoy)`, `prometheus_names(envoy)`, `worker_connections(envoy)`.
  * `verify_rs256(token, jwks)`: an independent signature check of the IdP's tokens.

Nothing here is pytest-specific.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import requests
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from support import (AT_COOKIE, CSRF_COOKIE, SESSION_COOKIE, Envoy, Upstream, b64url,
                     b64url_decode, default_plugin_config, new_http_session, relay_config,
                     wait_until)

CHUNK_LIMIT = 4000  # most bytes of one session chunk's value (contract)
METRICS = ("edge_token_relay_refresh_total", "edge_token_relay_refresh_success_total",
           "edge_token_relay_refresh_failed_total", "edge_token_relay_refresh_waiters_total",
           "edge_token_relay_refresh_reused_total", "edge_token_relay_sessions_refused_total")
METRIC_PREFIX = "wasmcustom."


# --------------------------------------------------------------------------------------------
# The sealed session cookie
# --------------------------------------------------------------------------------------------


class UnsealError(ValueError):
    pass


class SessionKeys:
    """Ordered (kid, 32-byte key) pairs: the first seals, all unseal (like the relay)."""

    def __init__(self, entries: Iterable[tuple[str, bytes]]):
        self.entries = [(kid, bytes(key)) for kid, key in entries]
        if not self.entries or any(len(k) != 32 for _, k in self.entries):
            raise ValueError("session keys: at least one, each 32 bytes")

    @classmethod
    def generate(cls, kids: Iterable[str] = ("2026-11", "2026-10")) -> "SessionKeys":
        return cls((kid, os.urandom(32)) for kid in kids)

    @property
    def current_kid(self) -> str:
        return self.entries[0][0]

    def key(self, kid: str) -> bytes:
        for k, key in self.entries:
            if k == kid:
                return key
        raise KeyError(kid)

    def config(self) -> list[dict]:
        """The plugin configuration's `session_keys` value."""
        return [{"kid": kid, "key": b64url(key)} for kid, key in self.entries]

    def seal(self, rt: str | None = None, *, exp: int | None = None, idt: str | None = None,
             kid: str | None = None, key: bytes | None = None,
             plaintext: bytes | None = None) -> str:
        """A compact JWE of `{"rt", "exp"?, "idt"?}` (or of raw `plaintext`). `kid` picks the
        key (default: the first); `key` overrides the key bytes (e.g. a wrong key under a
        known kid)."""
        kid = kid or self.current_kid
        if key is None:
            key = self.key(kid)
        if plaintext is None:
            body: dict[str, Any] = {"rt": rt}
            if exp is not None:
                body["exp"] = exp
            if idt is not None:
                body["idt"] = idt
            plaintext = json.dumps(body, separators=(",", ":")).encode()
        return seal_raw(key, kid, plaintext)

    def unseal(self, compact: str) -> tuple[str, dict]:
        """(kid, plaintext JSON) of a sealed value; raises UnsealError."""
        header = jwe_header(compact)
        kid = header.get("kid")
        if header.get("alg") != "dir" or header.get("enc") != "A256GCM":
            raise UnsealError(f"unexpected JWE header {header}")
        try:
            key = self.key(kid)
        except KeyError:
            raise UnsealError(f"unknown kid {kid!r}") from None
        h, ek, iv, ct, tag = compact.split(".")
        if ek != "":
            raise UnsealError("alg dir needs an empty encrypted key")
        iv_b, tag_b = b64url_decode(iv), b64url_decode(tag)
        if len(iv_b) != 12 or len(tag_b) != 16:
            raise UnsealError(f"IV {len(iv_b)} bytes, tag {len(tag_b)} bytes")
        try:
            plain = AESGCM(key).decrypt(iv_b, b64url_decode(ct) + tag_b, h.encode("ascii"))
        except InvalidTag:
            raise UnsealError("authentication failed") from None
        return kid, json.loads(plain)


def seal_raw(key: bytes, kid: str, plaintext: bytes, iv: bytes | None = None) -> str:
    """Compact JWE (dir, A256GCM) with AAD = the encoded protected header; random IV unless
    given (a fixed IV only to compare with fixtures)."""
    header = b64url(json.dumps({"alg": "dir", "enc": "A256GCM", "kid": kid},
                               separators=(",", ":")))
    iv = iv if iv is not None else os.urandom(12)
    sealed = AESGCM(key).encrypt(iv, plaintext, header.encode("ascii"))
    return f"{header}..{b64url(iv)}.{b64url(sealed[:-16])}.{b64url(sealed[-16:])}"


def jwe_header(compact: str) -> dict:
    parts = compact.split(".")
    if len(parts) != 5:
        raise UnsealError(f"a compact JWE has 5 segments, this has {len(parts)}")
    try:
        return json.loads(b64url_decode(parts[0]))
    except ValueError:
        raise UnsealError("protected header is not base64url JSON") from None


def chunk_cookies(name: str, value: str, limit: int = CHUNK_LIMIT) -> list[tuple[str, str]]:
    """`name=value` when it fits, else `name.0`, `name.1`, ... of at most `limit` bytes."""
    if len(value) <= limit:
        return [(name, value)]
    return [(f"{name}.{i}", value[o:o + limit]) for i, o in enumerate(range(0, len(value), limit))]


def cookie_header(pairs: Iterable[tuple[str, str]]) -> str:
    return "; ".join(f"{n}={v}" for n, v in pairs)


# --------------------------------------------------------------------------------------------
# Set-Cookie in responses
# --------------------------------------------------------------------------------------------


@dataclass
class SetCookie:
    name: str
    value: str
    attrs: dict[str, str] = field(default_factory=dict)  # lower-case names; flags -> ""
    raw: str = ""

    @property
    def max_age(self) -> int | None:
        v = self.attrs.get("max-age")
        return int(v) if v is not None and v.lstrip("-").isdigit() else None

    @property
    def clears(self) -> bool:
        """Tells the browser to delete the cookie (Max-Age <= 0)."""
        return self.max_age is not None and self.max_age <= 0

    def problems_as_token_cookie(self) -> list[str]:
        """What is missing for a token cookie: Path=/; HttpOnly; Secure; SameSite=Strict."""
        out = []
        if self.attrs.get("path") != "/":
            out.append(f"Path={self.attrs.get('path')!r} (want '/')")
        if "httponly" not in self.attrs:
            out.append("no HttpOnly")
        if "secure" not in self.attrs:
            out.append("no Secure")
        if (self.attrs.get("samesite") or "").lower() != "strict":
            out.append(f"SameSite={self.attrs.get('samesite')!r} (want Strict)")
        if "domain" in self.attrs:
            out.append("Domain set (a __Host- cookie must not have one)")
        return out


def parse_set_cookie(raw: str) -> SetCookie:
    parts = raw.split(";")
    name, _, value = parts[0].partition("=")
    attrs: dict[str, str] = {}
    for p in parts[1:]:
        k, _, v = p.strip().partition("=")
        if k:
            attrs[k.strip().lower()] = v.strip()
    return SetCookie(name.strip(), value.strip(), attrs, raw)


def set_cookie_headers(resp: requests.Response) -> list[str]:
    """Every Set-Cookie header of the response, kept apart (requests joins them)."""
    return list(resp.raw.headers.getlist("Set-Cookie"))


def set_cookies(resp: requests.Response) -> dict[str, SetCookie]:
    """Set-Cookie by cookie name; a name set twice in one response is an error."""
    out: dict[str, SetCookie] = {}
    for raw in set_cookie_headers(resp):
        c = parse_set_cookie(raw)
        assert c.name not in out, \
            f"cookie {c.name!r} is set twice in one response: {set_cookie_headers(resp)}"
        out[c.name] = c
    return out


def session_cookie_names(cookies: dict[str, SetCookie], name: str = SESSION_COOKIE) -> list[str]:
    pat = re.compile(re.escape(name) + r"(\.\d+)?$")
    return [n for n in cookies if pat.match(n)]


def session_value(cookies: dict[str, SetCookie], name: str = SESSION_COOKIE) -> str | None:
    """The sealed session the response writes (plain or joined chunks; cleared ones ignored).
    None when the response writes no session."""
    live = {n: c for n, c in cookies.items() if n in session_cookie_names(cookies, name)
            and not c.clears}
    if not live:
        return None
    if name in live:
        assert len(live) == 1, f"plain session cookie written together with chunks: {list(live)}"
        return live[name].value
    idx = sorted(int(n.rsplit(".", 1)[1]) for n in live)
    assert idx == list(range(len(idx))), f"session chunks are not .0 .. .{len(idx) - 1}: {idx}"
    for i in idx:
        v = live[f"{name}.{i}"].value
        assert len(v) <= CHUNK_LIMIT, f"chunk {name}.{i} is {len(v)} bytes (> {CHUNK_LIMIT})"
    return "".join(live[f"{name}.{i}"].value for i in idx)


def cache_directives(resp: requests.Response) -> set[str]:
    """Cache-Control directive names (lower case), across all Cache-Control headers."""
    out = set()
    for h in resp.raw.headers.getlist("Cache-Control"):
        for d in h.split(","):
            d = d.strip().lower()
            if d:
                out.add(d.split("=", 1)[0].strip())
    return out


def vary_values(resp: requests.Response) -> set[str]:
    out = set()
    for h in resp.raw.headers.getlist("Vary"):
        out.update(v.strip().lower() for v in h.split(",") if v.strip())
    return out


# --------------------------------------------------------------------------------------------
# JWTs
# --------------------------------------------------------------------------------------------


def jwt_claims(token: str) -> dict:
    return json.loads(b64url_decode(token.split(".")[1]))


def jwt_header(token: str) -> dict:
    return json.loads(b64url_decode(token.split(".")[0]))


def verify_rs256(token: str, jwks: dict) -> dict:
    """Checks an RS256 JWS against a JWKS (by kid); returns its claims or raises."""
    header = jwt_header(token)
    if header.get("alg") != "RS256":
        raise InvalidSignature(f"alg {header.get('alg')}")
    jwk = next((k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")), None)
    if jwk is None:
        raise InvalidSignature(f"kid {header.get('kid')!r} not in the JWKS")
    pub = rsa.RSAPublicNumbers(int.from_bytes(b64url_decode(jwk["e"]), "big"),
                               int.from_bytes(b64url_decode(jwk["n"]), "big")).public_key()
    signing_input, _, sig = token.rpartition(".")
    pub.verify(b64url_decode(sig), signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return jwt_claims(token)


# --------------------------------------------------------------------------------------------
# Configuration and the relay under test
# --------------------------------------------------------------------------------------------


def refresh_plugin_config(session_keys: SessionKeys, *, token_path: str = "/token",
                          authority: str = "idp.example.com", timeout_ms: int = 3000,
                          client_id: str = "relay-client",
                          client_secret: str | None = "relay-secret",
                          client_auth: str | None = "basic", **overrides: Any) -> dict:
    """The foundation config (`support.default_plugin_config`) plus the refresh settings.
    `client_auth=None` / `client_secret=None` leave the field out. Overrides replace
    top-level fields (e.g. issuer, audiences, jwks, refresh_backoff_s)."""
    cfg = default_plugin_config()
    cfg["jwks"] = dict(cfg["jwks"], authority=authority)
    cfg.update({
        "session_keys": session_keys.config(),
        "token_endpoint": {"cluster": "idp", "authority": authority, "path": token_path,
                           "timeout_ms": timeout_ms},
        "client_id": client_id,
        "refresh_margin_s": 10,
        "refresh_grace_s": 60,
        "refresh_backoff_s": 5,
        "upstream_token_headers": {"access_token": "x-new-access-token",
                                   "refresh_token": "x-new-refresh-token"},
    })
    if client_secret is not None:
        cfg["client_secret"] = client_secret
    if client_auth is not None:
        cfg["client_auth"] = client_auth
    cfg.update(overrides)
    return cfg


class Relay:
    """Echo upstream + Envoy with the relay; cluster `idp` -> 127.0.0.1:`idp_port`.

    `expect` is a tally the tests keep of what the relay should have counted (token-endpoint
    calls, successes, refused sessions, ...), compared with its metrics at the end.
    """

    def __init__(self, name: str, idp_port: int, plugin_config: dict, *,
                 concurrency: int = 1, vm_env: dict | None = None,
                 env: dict[str, str | None] | None = None):
        self.name = name
        self.plugin_config = plugin_config
        # The VM's environment_variables, and Envoy's own environment (host_env_keys).
        self.vm_env = vm_env
        self.env = env
        self.concurrency = concurrency
        self.upstream = Upstream(name=f"{name}-upstream")
        self.envoy: Envoy | None = None
        self.idp_port = idp_port
        self.http = new_http_session()
        self.expect: Counter = Counter()

    def start(self) -> "Relay":
        try:
            self.upstream.start()
            cfg = relay_config(self.upstream.port, self.idp_port, self.plugin_config,
                               vm_env=self.vm_env)
            self.envoy = Envoy(cfg, concurrency=self.concurrency, name=self.name,
                               env=self.env).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.envoy is not None:
            self.envoy.stop()
        self.upstream.stop()
        self.http.close()

    def get(self, path: str = "/api/x", cookie: str | None = None, *, fresh: bool = True,
            new_connection: bool = False, headers: dict | None = None) -> requests.Response:
        """GET through Envoy. `fresh` clears the upstream's record first; `new_connection`
        uses a connection of its own (spreads requests over workers)."""
        assert self.envoy is not None
        if fresh:
            self.upstream.clear()
        hdrs = dict(headers or {})
        if cookie is not None:
            hdrs["Cookie"] = cookie
        kw = {"headers": hdrs, "timeout": 20, "allow_redirects": False}
        if new_connection:
            with new_http_session() as s:
                return s.get(self.envoy.url(path), **kw)
        return self.http.get(self.envoy.url(path), **kw)

    def wait_ready(self, token: str, timeout: float = 20.0) -> requests.Response:
        """Poll with a valid access token (no session) until the key set is loaded in every
        worker: a round of probes on new connections all relayed, and together they reached
        all `concurrency` workers."""
        last: list[requests.Response] = []
        rounds = 1 if self.concurrency == 1 else 4 * self.concurrency

        def settled():
            assert self.envoy is not None
            before = worker_connections(self.envoy)
            for _ in range(rounds):
                last[:] = [self.get("/api/ready-probe", f"{AT_COOKIE}={token}",
                                    new_connection=True)]
                if last[0].status_code == 503:
                    return False
            after = worker_connections(self.envoy)
            reached = sum(1 for w in after if after[w] > before.get(w, 0))
            return reached >= self.concurrency

        try:
            wait_until(settled, timeout, interval=0.05, what=f"{self.name}: JWKS loaded")
        except TimeoutError:
            pass
        return last[0]

    def metrics(self) -> dict[str, int]:
        assert self.envoy is not None
        return relay_metrics(self.envoy)


def relay_metrics(envoy: Envoy) -> dict[str, int]:
    """The relay's counters from `/stats`, by their full Envoy names."""
    return envoy.stats("edge_token_relay_")


def metric(stats: dict[str, int], name: str) -> int:
    return stats.get(METRIC_PREFIX + name, 0)


def prometheus_names(envoy: Envoy) -> set[str]:
    names = set()
    for line in envoy.admin("/stats/prometheus").text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def worker_connections(envoy: Envoy) -> dict[str, int]:
    """Downstream connections accepted per worker (listener stats)."""
    out: dict[str, int] = {}
    for name, value in envoy.stats(r"worker_\d+\.downstream_cx_total").items():
        m = re.search(r"\.(worker_\d+)\.downstream_cx_total$", name)
        if m and name.startswith("listener."):
            out[m.group(1)] = out.get(m.group(1), 0) + value
    return out


def relay_cookie_names(header: str) -> list[str]:
    """Relay cookie names (incl. session chunks) in a Cookie header."""
    out = []
    for part in header.split(";"):
        n = part.strip().partition("=")[0].strip()
        if n in (AT_COOKIE, SESSION_COOKIE, CSRF_COOKIE) or re.fullmatch(
                re.escape(SESSION_COOKIE) + r"\.\d+", n):
            out.append(n)
    return out


def now() -> int:
    return int(time.time())
