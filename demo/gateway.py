"""The demo "API gateway" behind the relay (stdlib + `cryptography`; TEST/DEMO-ONLY).

It stands for whatever already sits behind Envoy (API Gateway, an ALB authorizer, a service
with its own JWT middleware): for `/api/*` it checks the `Authorization: Bearer` header
itself and knows nothing about cookies or the relay. That is the point of the demo: the
downstream contract stays a plain Bearer check.

    gw = Gateway(issuer=..., audience=..., jwks_url=..., app_origin="http://127.0.0.1:8080")
    gw.start(); gw.port; gw.records(); gw.stop()

Routes
  GET  /                    demo/index.html (the demo page; unprotected in the relay config)
  GET  /evil.html           demo/evil.html: an attacker's page that POSTs to <app>/api/me
                            (`?target=logout`: to the relay's logout) on load; open it from
                            another origin: http://localhost:<port>/evil.html through Envoy
                            (cross-site), or this gateway's own port directly (same site)
  GET  /demo/config.json    what the page (and the browser test) needs to know
  GET  /demo/gateway-log    the last API calls the gateway saw (no token values)
  *    /api/...             verify the bearer (RS256 against the IdP's JWKS; iss, aud, exp,
                            nbf), answer 200 JSON with the claims it saw, else 401
  GET  /api/notes           (bearer verified) the caller's notes: {"sub", "notes": [...]}
  POST /api/notes           (bearer verified) add one: JSON {"text", "via"} or a form body;
                            201 {"note": {...}}; 400 without text (notes live in memory,
                            per `sub`, at most 50 kept; the Next.js example's "something to
                            change through the API")

The gateway never echoes a token: it shows the claims and a short SHA-256 fingerprint.
"""

from __future__ import annotations

import base64
import hashlib
import html
import http.server
import json
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

DEMO_DIR = Path(__file__).resolve().parent
RELAY_COOKIE_PREFIX = "__Host-relay"


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenRejected(Exception):
    """Why a bearer was refused (becomes the 401's error_description)."""


class JwksCache:
    """The IdP's RSA keys by kid, fetched over HTTP; refetched on an unknown kid at most
    once per `min_refetch_s`."""

    def __init__(self, url: str, min_refetch_s: float = 5.0):
        self.url = url
        self.min_refetch_s = min_refetch_s
        self.keys: dict[str, rsa.RSAPublicKey] = {}
        self.fetched_at = 0.0
        self.lock = threading.Lock()

    def _fetch(self) -> None:
        with urllib.request.urlopen(self.url, timeout=5) as resp:  # noqa: S310 - loopback
            doc = json.load(resp)
        keys = {}
        for jwk in doc.get("keys", []):
            if jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig" or "kid" not in jwk:
                continue
            numbers = rsa.RSAPublicNumbers(int.from_bytes(_b64url_decode(jwk["e"]), "big"),
                                           int.from_bytes(_b64url_decode(jwk["n"]), "big"))
            keys[jwk["kid"]] = numbers.public_key()
        self.keys = keys
        self.fetched_at = time.monotonic()

    def key(self, kid: str) -> rsa.RSAPublicKey:
        with self.lock:
            if kid not in self.keys and time.monotonic() - self.fetched_at >= self.min_refetch_s:
                try:
                    self._fetch()
                except OSError as e:
                    raise TokenRejected(f"JWKS unavailable: {e}") from None
            try:
                return self.keys[kid]
            except KeyError:
                raise TokenRejected(f"unknown kid {kid!r}") from None


def fingerprint(token: str) -> str:
    """A short, non-reversible name for a token (so the page can show that it changed)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class Gateway:
    def __init__(self, *, issuer: str, audience: str, jwks_url: str, app_origin: str,
                 port: int = 0, leeway_s: int = 5, page_config: dict | None = None,
                 log_size: int = 50):
        self.issuer = issuer
        self.audience = audience
        self.jwks = JwksCache(jwks_url)
        self.app_origin = app_origin.rstrip("/")
        self.requested_port = port
        self.leeway_s = leeway_s
        self.page_config = dict(page_config or {})
        self._records: deque[dict] = deque(maxlen=log_size)
        self._all_api_calls: list[dict] = []
        self._notes: dict[str, list[dict]] = {}
        self.lock = threading.Lock()
        self.httpd: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Gateway":
        gateway = self

        class Handler(_Handler):
            gw = gateway

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):  # broken pipes etc.
                pass

        self.httpd = Server(("127.0.0.1", self.requested_port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True,
                                       name="demo-gateway")
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    @property
    def port(self) -> int:
        assert self.httpd is not None, "gateway not started"
        return self.httpd.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what it saw -------------------------------------------------------------------------

    def records(self) -> list[dict]:
        """Every /api/ call since start (method, path, status, sub, iat, exp, fp, ...)."""
        with self.lock:
            return list(self._all_api_calls)

    def _record(self, rec: dict) -> None:
        with self.lock:
            self._records.append(rec)
            self._all_api_calls.append(rec)

    def recent(self) -> list[dict]:
        with self.lock:
            return list(self._records)[::-1]

    def notes(self, sub: str) -> list[dict]:
        with self.lock:
            return list(self._notes.get(sub, []))

    def add_note(self, sub: str, text: str, via: str) -> dict:
        with self.lock:
            notes = self._notes.setdefault(sub, [])
            note = {"id": (notes[-1]["id"] + 1) if notes else 1, "text": text, "via": via,
                    "at": round(time.time(), 3)}
            notes.append(note)
            del notes[:-50]
            return note

    # -- the bearer check --------------------------------------------------------------------

    def verify(self, token: str) -> tuple[dict, dict]:
        """(header, claims) of a valid RS256 access token, else TokenRejected."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRejected("not a compact JWS")
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except ValueError:
            raise TokenRejected("malformed token") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenRejected("malformed token")
        if header.get("alg") != "RS256":
            raise TokenRejected(f"alg {header.get('alg')!r} not accepted")
        key = self.jwks.key(str(header.get("kid")))
        try:
            key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"), padding.PKCS1v15(),
                       hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise TokenRejected("bad signature") from None
        now = time.time()
        if claims.get("iss") != self.issuer:
            raise TokenRejected(f"iss {claims.get('iss')!r} is not {self.issuer!r}")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if self.audience not in auds:
            raise TokenRejected(f"aud {aud!r} does not contain {self.audience!r}")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp + self.leeway_s < now:
            raise TokenRejected("expired" if isinstance(exp, (int, float)) else "no exp")
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and nbf - self.leeway_s > now:
            raise TokenRejected("not yet valid")
        return header, claims

    # -- pages -------------------------------------------------------------------------------

    def config_document(self) -> dict:
        return {"app_origin": self.app_origin, "gateway_origin": self.origin,
                "evil_same_site": f"{self.origin}/evil.html",
                "evil_cross_site": cross_site_url(self.app_origin) + "/evil.html",
                "issuer": self.issuer, "audience": self.audience, **self.page_config}

    def render(self, name: str, target: str = "api") -> bytes:
        """A page of demo/ with its placeholders filled. `target` picks what the attacker's
        page POSTs to: "api" (/api/me) or "logout" (the relay's logout)."""
        text = (DEMO_DIR / name).read_text()
        cfg = self.config_document()
        target_path = self.page_config.get("paths", {}).get("logout", "/auth/logout") \
            if target == "logout" else "/api/me"
        replacements = {
            "__APP_ORIGIN__": self.app_origin,
            "__TARGET__": self.app_origin + target_path,
            "__EVIL_CROSS_SITE__": cfg["evil_cross_site"],
            "__EVIL_SAME_SITE__": cfg["evil_same_site"],
            "__IDP__": str(cfg.get("idp_origin", "")),
            "__LOGIN__": str(cfg.get("demo_login", "")),
            "__TTL__": str(cfg.get("access_token_ttl", "")),
        }
        for needle, value in replacements.items():
            text = text.replace(needle, html.escape(value, quote=True))
        return text.encode()


def cross_site_url(origin: str) -> str:
    """The same origin under the other loopback name: 127.0.0.1 <-> localhost (two different
    sites for the browser, so SameSite cookies are not sent between them)."""
    u = urllib.parse.urlsplit(origin)
    host = "localhost" if u.hostname == "127.0.0.1" else "127.0.0.1"
    return f"{u.scheme}://{host}:{u.port}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gw: Gateway
    server_version = "demo-gateway"
    sys_version = ""

    def log_message(self, fmt, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json",
              extra: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, extra: list[tuple[str, str]] | None = None) -> None:
        self._send(status, json.dumps(obj, indent=1).encode(), "application/json", extra)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def handle_any(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        body = self._read_body()
        if path.startswith("/api/"):
            self.api(path, body)
        elif self.command not in ("GET", "HEAD"):
            self._json(405, {"error": "method_not_allowed"})
        elif path in ("/", "/index.html"):
            self._send(200, self.gw.render("index.html"), "text/html; charset=utf-8")
        elif path == "/evil.html":
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            target = "logout" if query.get("target") == ["logout"] else "api"
            self._send(200, self.gw.render("evil.html", target), "text/html; charset=utf-8")
        elif path == "/demo/config.json":
            self._json(200, self.gw.config_document())
        elif path == "/demo/gateway-log":
            self._json(200, {"calls": self.gw.recent()})
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._json(404, {"error": "not_found", "path": path})

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    def api(self, path: str, body: bytes = b"") -> None:
        gw = self.gw
        cookie_names = sorted({c.split("=", 1)[0].strip()
                               for c in (self.headers.get("Cookie") or "").split(";")
                               if c.strip()})
        rec: dict[str, Any] = {"at": round(time.time(), 3), "method": self.command, "path": path,
                               "origin": self.headers.get("Origin"),
                               "sec_fetch_site": self.headers.get("Sec-Fetch-Site"),
                               "cookies_seen": cookie_names}
        auth = self.headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            rec.update(status=401, error="no bearer")
            gw._record(rec)
            self._json(401, {"error": "unauthorized", "gateway": "demo-gateway",
                             "error_description": "no Authorization: Bearer header"},
                       [("WWW-Authenticate", 'Bearer realm="demo-gateway"')])
            return
        token = token.strip()
        try:
            header, claims = gw.verify(token)
        except TokenRejected as e:
            rec.update(status=401, error=str(e), token_fp=fingerprint(token))
            gw._record(rec)
            self._json(401, {"error": "invalid_token", "gateway": "demo-gateway",
                             "error_description": str(e)},
                       [("WWW-Authenticate", 'Bearer error="invalid_token"')])
            return
        now = time.time()
        rec.update(status=200, sub=claims.get("sub"), iat=claims.get("iat"),
                   exp=claims.get("exp"), jti=claims.get("jti"), token_fp=fingerprint(token))
        if path == "/api/notes":
            self.notes(rec, claims, body)
            return
        gw._record(rec)
        self._json(200, {
            "gateway": "demo-gateway",
            "message": ("The gateway verified the Bearer token itself (RS256 against the "
                        "IdP's JWKS; iss, aud, exp). It never saw a cookie of the relay."),
            "method": self.command,
            "path": path,
            "sub": claims.get("sub"),
            "claims": claims,
            "token": {"alg": header.get("alg"), "typ": header.get("typ"),
                      "kid": header.get("kid"), "fingerprint": fingerprint(token),
                      "iat": claims.get("iat"), "exp": claims.get("exp"),
                      "seconds_left": round(claims.get("exp", now) - now, 1)},
            "authorization": "Bearer <verified; not echoed>",
            "cookies_seen": cookie_names,
            "relay_cookies_seen": [n for n in cookie_names
                                   if n.startswith(RELAY_COOKIE_PREFIX)],
            "server_time": round(now, 3),
        })

    def notes(self, rec: dict, claims: dict, body: bytes) -> None:
        """GET/POST /api/notes for the verified caller (rec is recorded here)."""
        gw = self.gw
        sub = str(claims.get("sub"))
        if self.command in ("GET", "HEAD"):
            gw._record(rec)
            self._json(200, {"gateway": "demo-gateway", "sub": sub, "notes": gw.notes(sub)})
            return
        if self.command != "POST":
            rec.update(status=405)
            gw._record(rec)
            self._json(405, {"error": "method_not_allowed"})
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            if ctype == "application/json":
                data = json.loads(body or b"{}")
            else:
                data = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            data = {}
        text = str(data.get("text") or "").strip()[:200]
        via = str(data.get("via") or "api").strip()[:40]
        if not text:
            rec.update(status=400, error="no text")
            gw._record(rec)
            self._json(400, {"error": "invalid_request", "error_description": "text is required"})
            return
        note = gw.add_note(sub, text, via)
        rec.update(status=201, note={"id": note["id"], "via": via})
        gw._record(rec)
        self._json(201, {"gateway": "demo-gateway", "sub": sub, "note": note})
