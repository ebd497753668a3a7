"""The real OpenID provider (tests/idp/server.js, oidc-provider) driven from Python.

TEST-ONLY. Everything listens on 127.0.0.1.

    idp = Idp.start(access_token_ttl=30)          # node tests/idp/server.js, TEST_GRANTS=1
    tokens = idp.mint("alice")                    # no browser: access + refresh (+ id) token
    r = idp.refresh(tokens["refresh_token"])      # a real refresh_token grant (rotates!)
    idp.stats(); idp.reset_stats(); idp.log_text()
    idp.stop()

    result = login_via_http(idp)                  # the real code + PKCE flow over HTTP

What the provider does (checked by tests/e2e/test_idp_standalone.py):
  * access tokens are JWTs (header typ "at+jwt", RS256 by default, kid in the JWKS) with
    iss=issuer, aud=`audience` (default "relay-client"), client_id, sub, scope, jti, iat,
    exp=iat+access_token_ttl — also those issued by a refresh;
  * every refresh rotates the refresh token; presenting a refresh token that was already
    used answers 400 invalid_grant AND revokes the whole grant, so the newest refresh token
    of that grant stops working too (invalid_grant "refresh token not found");
  * revoking a refresh token at the revocation endpoint also revokes its grant.

Clients (see tests/idp/server.js): relay-client / relay-secret (client_secret_basic),
relay-client-post / relay-secret-post (client_secret_post), relay-public (none). The
devInteractions login form accepts ANY login and password; the login becomes `sub`.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import hashlib
import html.parser
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterable

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
IDP_DIR = REPO_ROOT / "tests" / "idp"
SERVER_JS = IDP_DIR / "server.js"

TEST_GRANT = "urn:test:mint"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8080/auth/callback"
DEFAULT_POST_LOGOUT_REDIRECT_URI = "http://127.0.0.1:8080/"
DEFAULT_AUDIENCE = "relay-client"
DEFAULT_RESOURCE = "urn:edge-token-relay:api"
DEFAULT_SCOPE = "openid offline_access api"

# client_id -> (client_secret or None, token_endpoint_auth_method)
CLIENTS: dict[str, tuple[str | None, str]] = {
    "relay-client": ("relay-secret", "client_secret_basic"),
    "relay-client-post": ("relay-secret-post", "client_secret_post"),
    "relay-public": (None, "none"),
}

# Demo credentials for the devInteractions login form (any login/password is accepted).
DEMO_LOGIN = "alice"
DEMO_PASSWORD = "any-password"


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_parts(token: str) -> tuple[dict, dict]:
    """(header, claims) of a compact JWS, without verifying anything."""
    def dec(seg: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    head, payload, _sig = token.split(".")
    return dec(head), dec(payload)


def basic_auth_header(client_id: str, client_secret: str) -> str:
    """`Authorization` value for client_secret_basic per RFC 6749 §2.3.1 (id and secret are
    form-urlencoded before base64)."""
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode("ascii")


def client_auth(client_id: str, form: dict, headers: dict,
                client_secret: str | None = None, method: str | None = None) -> None:
    """Add the client's authentication to a token/revocation request (in place)."""
    known_secret, known_method = CLIENTS.get(client_id, (None, "none"))
    secret = client_secret if client_secret is not None else known_secret
    method = method or known_method
    if method == "client_secret_basic":
        headers["Authorization"] = basic_auth_header(client_id, secret or "")
    elif method == "client_secret_post":
        form["client_id"] = client_id
        form["client_secret"] = secret or ""
    else:
        form["client_id"] = client_id


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = b64url(secrets.token_bytes(32))
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _child_setup():  # between fork and exec; start_new_session already made a new group
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_npm_lock = threading.Lock()


def ensure_node_modules() -> None:
    """`npm ci` in tests/idp when its node_modules is missing (the Makefile does it too)."""
    marker = IDP_DIR / "node_modules" / "oidc-provider" / "package.json"
    if marker.is_file():
        return
    with _npm_lock:
        if marker.is_file():
            return
        lock_path = IDP_DIR / ".npm-ci.lock"
        with open(lock_path, "w") as lock_file:
            import fcntl
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # parallel test processes
            try:
                if not marker.is_file():
                    proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"],
                                          cwd=IDP_DIR, capture_output=True, text=True,
                                          timeout=600)
                    if proc.returncode != 0:
                        raise RuntimeError(f"npm ci in {IDP_DIR} failed:\n{proc.stdout}\n"
                                           f"{proc.stderr}")
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            lock_path.unlink()


class IdpStartError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# The provider process
# --------------------------------------------------------------------------------------------


class Idp:
    """A running tests/idp/server.js. Create with `Idp.start(...)`; also a context manager.

    Attributes: `issuer`, `port`, `base_url`, `discovery` (the openid-configuration document),
    endpoint URLs `jwks_uri`, `token_endpoint`, `revocation_endpoint`,
    `introspection_endpoint`, `authorization_endpoint`, `end_session_endpoint`, and their
    paths `jwks_path`, `token_path`, `revocation_path`, `introspection_path`,
    `authorization_path`, `end_session_path` (for Envoy clusters pointing at 127.0.0.1:port).
    """

    instances: list["Idp"] = []

    def __init__(self, proc: subprocess.Popen, log_path: Path, tmp: Path, info: dict,
                 name: str):
        self.proc = proc
        self.log_path = log_path
        self.tmp = tmp
        self.info = info
        self.name = name
        self.issuer: str = info["issuer"]
        self.port: int = info["port"]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.audience: str = info["audience"]
        self.resource: str = info["resource"]
        self.access_token_ttl: int = info["access_token_ttl"]
        self.http = requests.Session()
        self.http.trust_env = False
        # A fresh connection per call: no race with the server closing an idle keep-alive one.
        self.http.headers["Connection"] = "close"
        self.discovery: dict = {}

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def start(cls, port: int | None = None, access_token_ttl: int = 300, *,
              redirect_uris: Iterable[str] = (DEFAULT_REDIRECT_URI,),
              post_logout_redirect_uris: Iterable[str] = (DEFAULT_POST_LOGOUT_REDIRECT_URI,),
              audience: str = DEFAULT_AUDIENCE, resource: str = DEFAULT_RESOURCE,
              access_token_alg: str = "RS256", refresh_token_ttl: int | None = None,
              extra_access_token_claims: dict | None = None, issuer: str | None = None,
              test_grants: bool = True, env: dict | None = None, config: dict | None = None,
              name: str = "idp", ready_timeout: float = 90.0) -> "Idp":
        """Start the provider (port None = any free port) and wait for its discovery document.

        `issuer` defaults to http://127.0.0.1:<port>. `extra_access_token_claims` are added
        to every access token (e.g. {"token_use": "access"}). `env` adds raw environment
        variables; `config` is written to a JSON file passed as server.js's argument (same
        keys as the environment variables; it wins over them). See tests/idp/server.js.
        """
        ensure_node_modules()
        tmp = Path(tempfile.mkdtemp(prefix=f"e2e-{name}-"))
        log_path = tmp / "idp.log"
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_OPTIONS")}
        child_env.update({
            "PORT": str(port or 0),
            "ACCESS_TOKEN_TTL": str(access_token_ttl),
            "REDIRECT_URIS": ",".join(redirect_uris),
            "POST_LOGOUT_REDIRECT_URIS": ",".join(post_logout_redirect_uris),
            "AUDIENCE": audience,
            "RESOURCE": resource,
            "ACCESS_TOKEN_ALG": access_token_alg,
            "TEST_GRANTS": "1" if test_grants else "0",
            "DEBUG": "",
        })
        if refresh_token_ttl is not None:
            child_env["REFRESH_TOKEN_TTL"] = str(refresh_token_ttl)
        if extra_access_token_claims:
            child_env["EXTRA_ACCESS_TOKEN_CLAIMS"] = json.dumps(extra_access_token_claims)
        if issuer:
            child_env["ISSUER"] = issuer
        child_env.update(env or {})
        argv = ["node", str(SERVER_JS)]
        if config is not None:
            config_path = tmp / "idp-config.json"
            config_path.write_text(json.dumps(config))
            argv.append(str(config_path))
        # A start that hangs (seen once in a full e2e run: the provider printed its first line,
        # then nothing for 90 s; never reproduced) gets one fresh process after half the
        # budget; the hung one's state is kept in the log directory for inspection.
        attempt_timeout = ready_timeout / 2
        for attempt in (1, 2):
            proc, info, text = _spawn_until_ready(argv, child_env, log_path, attempt_timeout)
            if info is not None:
                break
            if proc.poll() is not None:
                raise IdpStartError(f"{name} exited with {proc.returncode}:\n{text[-4000:]}")
            state = _process_state(proc.pid)
            _kill_group(proc)
            hung_log = tmp / f"idp.attempt{attempt}.log"
            hung_log.write_text(f"{text}\n[not ready after {attempt_timeout}s; {state}]\n")
            if attempt == 2:
                raise IdpStartError(f"{name} not ready after two starts of {attempt_timeout}s "
                                    f"each ({state}):\n{text[-4000:]}")
            print(f"{name}: not ready after {attempt_timeout}s ({state}); starting it again",
                  file=sys.stderr)
        deadline = time.monotonic() + attempt_timeout

        idp = cls(proc, log_path, tmp, info, name)
        Idp.instances.append(idp)
        try:
            idp._load_discovery(deadline)
        except BaseException:
            idp.stop()
            raise
        return idp

    def _load_discovery(self, deadline: float) -> None:
        while True:
            try:
                r = self.http.get(self.base_url + "/.well-known/openid-configuration", timeout=2)
                if r.status_code == 200:
                    self.discovery = r.json()
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise IdpStartError(f"{self.name}: no discovery document:\n{self.log_text()}")
            time.sleep(0.02)
        d = self.discovery
        self.jwks_uri: str = d["jwks_uri"]
        self.token_endpoint: str = d["token_endpoint"]
        self.revocation_endpoint: str = d["revocation_endpoint"]
        self.introspection_endpoint: str = d.get("introspection_endpoint", "")
        self.authorization_endpoint: str = d["authorization_endpoint"]
        self.end_session_endpoint: str = d["end_session_endpoint"]
        path = lambda url: urllib.parse.urlsplit(url).path  # noqa: E731
        self.jwks_path = path(self.jwks_uri)
        self.token_path = path(self.token_endpoint)
        self.revocation_path = path(self.revocation_endpoint)
        self.introspection_path = path(self.introspection_endpoint)
        self.authorization_path = path(self.authorization_endpoint)
        self.end_session_path = path(self.end_session_endpoint)

    def url(self, path_or_url: str) -> str:
        """An issuer-relative path as a URL on 127.0.0.1:port (absolute URLs unchanged)."""
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self.base_url + path_or_url

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process group (SIGTERM, then SIGKILL). The work dir `tmp` (its log) stays:
        tests may read the log afterwards; the e2e conftest removes it after a passing run."""
        _kill_group(self.proc, timeout)
        self.http.close()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def __enter__(self) -> "Idp":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- tokens ------------------------------------------------------------------------------

    def token_request(self, form: dict, client_id: str = "relay-client",
                      client_secret: str | None = None, method: str | None = None,
                      **kw: Any) -> requests.Response:
        """POST to the token endpoint with the client's authentication added."""
        form = dict(form)
        headers: dict = {"Accept": "application/json"}
        client_auth(client_id, form, headers, client_secret, method)
        kw.setdefault("timeout", 10)
        return self.http.post(self.token_endpoint, data=form, headers=headers, **kw)

    def mint(self, sub: str = "alice", client_id: str = "relay-client",
             scope: str | None = None, access_token_ttl: int | None = None) -> dict:
        """Tokens for `sub` without a browser (the test grant; needs test_grants=True):
        {access_token, refresh_token, id_token (with openid), expires_in, token_type, scope}.
        The refresh token is an ordinary one: it rotates and its reuse revokes the grant.
        `access_token_ttl` overrides the TTL of this first access token only."""
        form = {"grant_type": TEST_GRANT, "sub": sub}
        if scope is not None:
            form["scope"] = scope
        if access_token_ttl is not None:
            form["access_token_ttl"] = str(access_token_ttl)
        r = self.token_request(form, client_id)
        if r.status_code != 200:
            raise AssertionError(f"mint failed: {r.status_code} {r.text}")
        return r.json()

    def refresh(self, refresh_token: str, client_id: str = "relay-client",
                **kw: Any) -> requests.Response:
        """A real refresh_token grant (client_secret_basic for relay-client). NOTE: this USES
        the refresh token: it rotates (the answer holds the new one) and using the same value
        again revokes the grant. To look at a token without consuming it, use introspect()."""
        return self.token_request({"grant_type": "refresh_token",
                                   "refresh_token": refresh_token}, client_id, **kw)

    def exchange_code(self, code: str, code_verifier: str,
                      redirect_uri: str = DEFAULT_REDIRECT_URI,
                      client_id: str = "relay-client") -> requests.Response:
        return self.token_request({"grant_type": "authorization_code", "code": code,
                                   "code_verifier": code_verifier,
                                   "redirect_uri": redirect_uri}, client_id)

    def introspect(self, token: str, client_id: str = "relay-client",
                   token_type_hint: str | None = None) -> dict:
        """RFC 7662 introspection (does not consume anything): {"active": bool, ...}. For
        refresh tokens; oidc-provider refuses to introspect its JWT access tokens (400
        unsupported_token_type), so this raises for those."""
        form = {"token": token}
        if token_type_hint:
            form["token_type_hint"] = token_type_hint
        headers: dict = {"Accept": "application/json"}
        client_auth(client_id, form, headers)
        r = self.http.post(self.introspection_endpoint, data=form, headers=headers, timeout=10)
        r.raise_for_status()
        return r.json()

    def refresh_token_active(self, refresh_token: str, client_id: str = "relay-client") -> bool:
        """Is this refresh token still usable? (introspection; consumes nothing). A consumed
        (rotated) refresh token is inactive; a revoked grant makes all its tokens inactive."""
        return bool(self.introspect(refresh_token, client_id, "refresh_token").get("active"))

    def revoke(self, token: str, client_id: str = "relay-client",
               token_type_hint: str | None = None) -> requests.Response:
        """RFC 7009 revocation. Revoking a refresh token also revokes its whole grant."""
        form = {"token": token}
        if token_type_hint:
            form["token_type_hint"] = token_type_hint
        headers: dict = {}
        client_auth(client_id, form, headers)
        return self.http.post(self.revocation_endpoint, data=form, headers=headers, timeout=10)

    def jwks(self) -> dict:
        return self.http.get(self.jwks_uri, timeout=5).json()

    # -- test endpoints, log -----------------------------------------------------------------

    def stats(self) -> dict:
        """Token endpoint counters since start / last reset: token_requests, token_errors,
        refresh_requests, refresh_ok, refresh_errors, mint_requests, revocation_requests,
        by_grant_type {gty: {requests, ok, errors}}, errors {"code: detail": n}."""
        r = self.http.get(self.base_url + "/__test/stats", timeout=5)
        r.raise_for_status()
        return r.json()

    def reset_stats(self) -> dict:
        r = self.http.post(self.base_url + "/__test/reset", timeout=5)
        r.raise_for_status()
        return r.json()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def token_log_lines(self) -> list[str]:
        """The one-line records of token endpoint calls (`token grant_type=... result=...`)."""
        return [ln for ln in self.log_text().splitlines() if ln.startswith("token ")]

    def wait_for_stats(self, pred, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"IdP stats never matched; last: {s}")
            time.sleep(0.02)


def _spawn_until_ready(argv: list[str], env: dict, log_path: Path, timeout: float
                       ) -> tuple[subprocess.Popen, dict | None, str]:
    """Start server.js and wait for its IDP_READY line: (process, the line's JSON or None when
    the process exited or the time ran out, the log so far)."""
    log_file = open(log_path, "wb")
    try:
        proc = subprocess.Popen(argv, cwd=str(IDP_DIR), env=env,
                                stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                # PDEATHSIG fires when the forking THREAD ends: only
                                # from the main thread does it mean "the test process"
                                preexec_fn=(_child_setup if threading.current_thread()
                                            is threading.main_thread() else None))
    finally:
        log_file.close()
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("IDP_READY "):
                return proc, json.loads(line[len("IDP_READY "):]), text
        if proc.poll() is not None or time.monotonic() > deadline:
            return proc, None, text
        time.sleep(0.02)


def _process_state(pid: int) -> str:
    """Scheduler state, CPU seconds and wait channel of a process (Linux /proc), for a report."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
        threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
        return f"state {fields[0]}, cpu {cpu:.2f}s, wchan {wchan}, {threads} threads"
    except (OSError, ValueError, IndexError) as e:
        return f"state unknown: {e}"


def _kill_group(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    else:  # the leader is gone; anything left in its group still goes
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@atexit.register
def _stop_all() -> None:
    for idp in list(Idp.instances):
        with contextlib.suppress(Exception):
            idp.stop(2)


# --------------------------------------------------------------------------------------------
# The browser flow over plain HTTP (devInteractions pages)
# --------------------------------------------------------------------------------------------


class _FormParser(html.parser.HTMLParser):
    """Collects <form> elements: [{"action", "method", "fields": {name: value}}]."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._current: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self._current = {"action": a.get("action", ""), "method": (a.get("method") or
                             "get").lower(), "fields": {}, "id": a.get("id")}
            self.forms.append(self._current)
        elif tag in ("input", "button") and a.get("name"):
            form = self._current
            if form is None and a.get("form"):
                form = next((f for f in self.forms if f.get("id") == a["form"]), None)
            if form is not None and (tag == "input" or a.get("value") is not None):
                form["fields"].setdefault(a["name"], a.get("value") or "")

    def handle_endtag(self, tag):
        if tag == "form":
            self._current = None


def parse_forms(html_text: str) -> list[dict]:
    p = _FormParser()
    p.feed(html_text)
    return p.forms


def authorize_via_http(idp: Idp, authorize_url: str, redirect_uri: str, *,
                       login: str = DEMO_LOGIN, password: str = DEMO_PASSWORD,
                       session: requests.Session | None = None, max_steps: int = 20) -> dict:
    """Play the browser from an authorization URL (e.g. the relay's redirect to the IdP)
    until the IdP redirects to `redirect_uri`; that last redirect is NOT followed.

    Fills the devInteractions login form (any login/password) and confirms consent.
    Returns {"callback_url", "params" (query of the callback: code, state, iss or error),
    "session" (the requests.Session holding the IdP's cookies, for SSO or logout later),
    "steps" (the URLs visited)}.
    """
    http = session or requests.Session()
    http.trust_env = False
    url = idp.url(authorize_url)
    steps: list[str] = []
    method, data = "GET", None
    for _ in range(max_steps):
        steps.append(f"{method} {url}")
        r = http.request(method, url, data=data, allow_redirects=False, timeout=10)
        method, data = "GET", None
        if r.is_redirect or r.status_code in (301, 302, 303, 307, 308):
            location = urllib.parse.urljoin(url, r.headers["Location"])
            if location.startswith(redirect_uri):
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
                return {"callback_url": location, "params": query, "session": http,
                        "steps": steps}
            url = location
            continue
        if r.status_code != 200:
            raise AssertionError(f"authorization flow: {r.status_code} at {url}:\n{r.text[:2000]}")
        forms = [f for f in parse_forms(r.text) if f["method"] == "post"]
        form = next((f for f in forms if f["fields"].get("prompt") in ("login", "consent")), None)
        if form is None:
            raise AssertionError(f"authorization flow: no login/consent form at {url}:\n"
                                 f"{r.text[:2000]}")
        data = dict(form["fields"])
        if data.get("prompt") == "login":
            data["login"] = login
            data["password"] = password
        method, url = "POST", urllib.parse.urljoin(url, form["action"])
    raise AssertionError(f"authorization flow did not reach {redirect_uri}: {steps}")


def login_via_http(idp: Idp, client: str = "relay-client",
                   redirect_uri: str = DEFAULT_REDIRECT_URI, *, login: str = DEMO_LOGIN,
                   password: str = DEMO_PASSWORD, scope: str = DEFAULT_SCOPE,
                   exchange: bool = True, extra_params: dict | None = None,
                   session: requests.Session | None = None,
                   prompt: str | None = "auto") -> dict:
    """The authorization code + PKCE (S256) flow as a browser and a client would do it:
    GET /auth -> login form -> consent -> code at `redirect_uri` (read from Location, not
    followed) -> (exchange=True) POST /token with the client's authentication.

    `prompt="auto"` sends prompt=consent when the scope has offline_access: oidc-provider
    silently DROPS offline_access from any authorization request without prompt=consent.
    Refresh tokens are issued either way (issueRefreshToken is always true here), but
    without offline_access they are bound to the IdP browser session and die at its logout.
    Pass prompt=None to send no prompt.

    Returns {"code", "state", "nonce", "code_verifier", "callback_url", "session",
    "steps", and with exchange: "token_response" (requests.Response) and "tokens" (its
    JSON when 200)}."""
    verifier, challenge = pkce_pair()
    state = b64url(secrets.token_bytes(16))
    nonce = b64url(secrets.token_bytes(16))
    params = {"client_id": client, "response_type": "code", "redirect_uri": redirect_uri,
              "scope": scope, "state": state, "nonce": nonce, "code_challenge": challenge,
              "code_challenge_method": "S256"}
    if prompt == "auto":
        prompt = "consent" if "offline_access" in scope.split() else None
    if prompt:
        params["prompt"] = prompt
    params.update(extra_params or {})
    url = idp.authorization_endpoint + "?" + urllib.parse.urlencode(params)
    flow = authorize_via_http(idp, url, redirect_uri, login=login, password=password,
                              session=session)
    q = flow["params"]
    if "error" in q:
        raise AssertionError(f"authorization error: {q}")
    if q.get("state") != state:
        raise AssertionError(f"state mismatch: sent {state}, got {q.get('state')}")
    result = {"code": q["code"], "state": state, "nonce": nonce, "code_verifier": verifier,
              "callback_url": flow["callback_url"], "session": flow["session"],
              "steps": flow["steps"], "iss": q.get("iss")}
    if exchange:
        r = idp.exchange_code(q["code"], verifier, redirect_uri, client)
        result["token_response"] = r
        result["tokens"] = r.json() if r.status_code == 200 else None
    return result


def logout_via_http(idp: Idp, session: requests.Session, id_token_hint: str | None = None,
                    post_logout_redirect_uri: str | None = None,
                    client_id: str | None = None, state: str | None = None) -> dict:
    """RP-initiated logout: GET end_session -> confirm form (logout=yes) -> redirect.
    Returns {"location" (the final redirect, not followed), "status"}."""
    params = {k: v for k, v in {"id_token_hint": id_token_hint, "client_id": client_id,
                                "post_logout_redirect_uri": post_logout_redirect_uri,
                                "state": state}.items() if v}
    url = idp.end_session_endpoint + ("?" + urllib.parse.urlencode(params) if params else "")
    r = session.get(url, allow_redirects=False, timeout=10)
    if r.status_code != 200:
        raise AssertionError(f"end_session: {r.status_code} {r.text[:1000]}")
    form = next(f for f in parse_forms(r.text) if f["method"] == "post")
    data = dict(form["fields"])
    data["logout"] = "yes"
    r = session.post(urllib.parse.urljoin(url, form["action"]), data=data,
                     allow_redirects=False, timeout=10)
    location = r.headers.get("Location")
    if location:  # the provider's own success page is one more hop
        location = urllib.parse.urljoin(url, location)
    return {"status": r.status_code, "location": location}
