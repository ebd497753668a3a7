"""A scripted fake OAuth token endpoint for fault injection (TEST-ONLY, 127.0.0.1).

    fake = FakeTokenEndpoint(KeyPair.generate("RS256")).start()
    fake.mode = "status_500"                 # every following request, until changed
    fake.script("close", "ok")               # or: the next requests, one mode each, then `mode`
    ... drive the relay ...
    fake.count, fake.requests[-1]["form"], fake.requests[-1]["client_auth"]
    fake.stop()

Modes:
  ok             200 {"access_token": <fresh JWT>, "token_type": "Bearer", "expires_in": N,
                 "refresh_token": <new value, only when rotate=True>}; with reject_reuse=True a
                 refresh_token that is not the current one of its chain gets invalid_grant
  status_500     500 {"error": "server_error"}        (also status_<N> for any N, e.g. 503)
  slow           sleep `slow_s` seconds, then answer as `then` (default "ok")
  hold           wait until release() (or `hold_timeout_s`), then answer as `then`
  garbage        200 with a body that is not JSON
  invalid_grant  400 {"error": "invalid_grant"}
  invalid_client 401 {"error": "invalid_client"} with WWW-Authenticate: Basic
  close          read the request, then close the connection without an answer (FIN)
  reset          read the request, then reset the connection (RST)

Every request is recorded in `requests` (dicts with method, path, query, headers (a dict
with the header names as sent; use `header(rec, name)` for case-insensitive access), body
(bytes), form (parsed urlencoded body, single values), client_auth (see `parse_client_auth`),
mode (the mode that answered), t (time.monotonic() at arrival)). GET `/.well-known/jwks.json`
serves the signer's public key (the relay can fetch its JWKS here too); those GETs are
recorded in `jwks_requests`, not in `requests`.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import json
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable

from support import AUDIENCE, ISSUER, JWKS_PATH, KeyPair, jwks_of, make_claims, wait_until

MODES = ("ok", "status_500", "slow", "hold", "garbage", "invalid_grant", "invalid_client",
         "close", "reset")


def header(record: dict, name: str) -> str | None:
    """A header of a recorded request, case-insensitively (None when absent)."""
    for key, value in record["headers"].items():
        if key.lower() == name.lower():
            return value
    return None


def parse_client_auth(headers: dict, form: dict) -> dict:
    """How the client authenticated: {"method": "basic" | "post" | "none" | "invalid",
    "client_id", "client_secret", "raw"}. Basic credentials are base64 of
    form-urlencoded id ":" secret (RFC 6749 §2.3.1) and are decoded accordingly."""
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "basic":
            return {"method": "invalid", "client_id": None, "client_secret": None, "raw": auth}
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return {"method": "invalid", "client_id": None, "client_secret": None, "raw": auth}
        cid, sep, secret = decoded.partition(":")
        if not sep:
            return {"method": "invalid", "client_id": None, "client_secret": None, "raw": auth}
        return {"method": "basic", "client_id": urllib.parse.unquote_plus(cid),
                "client_secret": urllib.parse.unquote_plus(secret), "raw": auth}
    if "client_secret" in form:
        return {"method": "post", "client_id": form.get("client_id"),
                "client_secret": form["client_secret"], "raw": None}
    return {"method": "none", "client_id": form.get("client_id"), "client_secret": None,
            "raw": None}


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):  # broken pipes, resets: not our business
        pass


class FakeTokenEndpoint:
    """See the module docstring. Settable at any time: `mode`, `expires_in`, `rotate`,
    `reject_reuse`, `slow_s`, `hold_timeout_s`, `then`, `claims` (overrides for the minted access
    tokens, as for support.make_claims; `None` removes a claim), `claims_fn(record) -> dict`
    (full claims, wins over `claims`), `extra_response` (merged into `ok` answers),
    `mode_fn(form) -> mode` (picks the mode of each request from its parsed form when no script
    is pending; wins over `mode`), `extra_response_fn(record) -> dict` (merged into `ok`
    answers after `extra_response`)."""

    def __init__(self, signer: KeyPair, port: int = 0, *, token_path: str = "/token",
                 expires_in: int = 300, rotate: bool = True, sub: str = "alice"):
        self._requested_port = port
        self.httpd: _HTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.signer = signer
        self.token_path = token_path
        self.mode = "ok"
        self.expires_in = expires_in
        self.rotate = rotate
        self.reject_reuse = False
        self.slow_s = 5.0
        self.hold_timeout_s = 30.0
        self.then = "ok"  # how `slow` and `hold` answer after waiting
        self.sub = sub
        self.claims: dict[str, Any] = {}
        self.claims_fn: Callable[[dict], dict] | None = None
        self.extra_response: dict[str, Any] = {}
        self.mode_fn: Callable[[dict], str] | None = None
        self.extra_response_fn: Callable[[dict], dict] | None = None
        self.requests: list[dict] = []
        self.jwks_requests: list[dict] = []
        self.issued: list[dict] = []  # every `ok` answer body
        self._script: list[str] = []
        self._released = threading.Event()
        self._current_rts: set[str] = set()  # the live refresh token of each chain

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "FakeTokenEndpoint":
        outer = self

        class Handler(_Handler):
            server_obj = outer

        self.httpd = _HTTPServer(("127.0.0.1", self._requested_port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True,
                                       name="FakeTokenEndpoint")
        self.thread.start()
        return self

    def stop(self) -> None:
        self._released.set()  # let held requests finish
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self) -> "FakeTokenEndpoint":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self.httpd is not None, "not started"
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control -----------------------------------------------------------------------------

    def set_mode(self, mode: str) -> "FakeTokenEndpoint":
        _check_mode(mode)
        self.mode = mode
        return self

    def script(self, *modes: str) -> "FakeTokenEndpoint":
        """The next len(modes) token requests are answered in these modes, in order; after
        that `mode` applies again."""
        for m in modes:
            _check_mode(m)
        with self.lock:
            self._script.extend(modes)
        return self

    def release(self) -> None:
        """Let every request held in mode `hold` (now and later) answer."""
        self._released.set()

    def rearm(self) -> None:
        """Hold again after a release()."""
        self._released.clear()

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.jwks_requests.clear()
            self.issued.clear()
            self._script.clear()

    def new_refresh_token(self) -> str:
        """A refresh token this endpoint accepts (the start of a chain), e.g. to put into a
        relay session by hand."""
        rt = f"fake-rt-{uuid.uuid4().hex}"
        with self.lock:
            self._current_rts.add(rt)
        return rt

    @property
    def count(self) -> int:
        """Token requests received so far."""
        with self.lock:
            return len(self.requests)

    def wait_for_count(self, n: int, timeout: float = 10.0) -> int:
        return wait_until(lambda: self.count >= n and self.count, timeout,
                          what=f"{n} token requests")

    @property
    def url(self) -> str:
        return self.base_url + self.token_path

    def mint_access_token(self, record: dict | None = None) -> str:
        now = int(time.time())
        if self.claims_fn is not None:
            claims = self.claims_fn(record or {})
        else:
            claims = make_claims(sub=self.sub, iat=now, exp=now + self.expires_in,
                                 jti=uuid.uuid4().hex)
            for name, value in self.claims.items():
                if value is None:
                    claims.pop(name, None)
                else:
                    claims[name] = value
        return self.signer.sign(claims)

    # -- serving -----------------------------------------------------------------------------

    def _next_mode(self, form: dict | None = None) -> str:
        with self.lock:
            if self._script:
                return self._script.pop(0)
        if self.mode_fn is not None:
            mode = self.mode_fn(form or {})
            _check_mode(mode)
            return mode
        return self.mode

    def _answer_ok(self, record: dict) -> tuple[int, bytes]:
        form = record["form"]
        if self.reject_reuse and form.get("grant_type") == "refresh_token":
            with self.lock:
                presented = form.get("refresh_token")
                if presented not in self._current_rts:
                    return 400, json.dumps({"error": "invalid_grant"}).encode()
                if self.rotate:
                    self._current_rts.discard(presented)
        body: dict[str, Any] = {"access_token": self.mint_access_token(record),
                                "token_type": "Bearer", "expires_in": self.expires_in}
        if self.rotate:
            rt = f"fake-rt-{uuid.uuid4().hex}"
            with self.lock:
                self._current_rts.add(rt)
            body["refresh_token"] = rt
        body.update(self.extra_response)
        if self.extra_response_fn is not None:
            body.update(self.extra_response_fn(record))
        with self.lock:
            self.issued.append(body)
        return 200, json.dumps(body).encode()


def _check_mode(mode: str) -> None:
    if mode in MODES:
        return
    if mode.startswith("status_") and mode[len("status_"):].isdigit():
        return
    raise ValueError(f"unknown mode {mode!r}; one of {MODES} or status_<N>")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_obj: FakeTokenEndpoint

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
              extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        fake = self.server_obj
        path = urllib.parse.urlsplit(self.path).path
        if path == JWKS_PATH:
            with fake.lock:
                fake.jwks_requests.append({"path": self.path, "headers": dict(self.headers)})
            self._send(200, json.dumps(jwks_of([fake.signer])).encode())
            return
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def _handle(self, method: str):
        fake = self.server_obj
        body = self._read_body()
        split = urllib.parse.urlsplit(self.path)
        form: dict[str, str] = {}
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded" or (body and not ctype):
            try:
                form = dict(urllib.parse.parse_qsl(body.decode("utf-8"),
                                                   keep_blank_values=True))
            except UnicodeDecodeError:
                form = {}
        headers = dict(self.headers.items())
        mode = fake._next_mode(form)
        record = {"method": method, "path": self.path, "query": split.query,
                  "headers": headers, "body": body, "form": form,
                  "client_auth": parse_client_auth(headers, form), "mode": mode,
                  "t": time.monotonic()}
        with fake.lock:
            fake.requests.append(record)

        if mode == "slow":
            # Decided on arrival: a late answer must not issue a token because a later test
            # has reset `then` meanwhile.
            then = fake.then
            time.sleep(fake.slow_s)
            mode = then
        elif mode == "hold":
            fake._released.wait(fake.hold_timeout_s)
            mode = fake.then

        if mode in ("close", "reset"):
            self.close_connection = True
            if mode == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
            elif mode == "close":
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return
        if mode == "ok":
            status, payload = fake._answer_ok(record)
            self._send(status, payload, extra=[("Cache-Control", "no-store")])
        elif mode == "garbage":
            self._send(200, b"<html>this is not JSON {", content_type="application/json")
        elif mode == "invalid_grant":
            self._send(400, b'{"error":"invalid_grant"}')
        elif mode == "invalid_client":
            self._send(401, b'{"error":"invalid_client"}',
                       extra=[("WWW-Authenticate", 'Basic realm="fake"')])
        else:  # status_<N>
            status = int(mode[len("status_"):])
            self._send(status, json.dumps({"error": "server_error"}).encode())


__all__ = ["FakeTokenEndpoint", "MODES", "header", "parse_client_auth", "AUDIENCE", "ISSUER"]
