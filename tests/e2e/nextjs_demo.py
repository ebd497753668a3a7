#!/usr/bin/env python3
"""`make run` / `make dev`: the Next.js example (examples/nextjs) behind Envoy + the relay, with
the real OpenID provider and the verifying demo API gateway, all on 127.0.0.1.

Starts
  * the OpenID provider (tests/idp: `oidc-provider`; its dev login form accepts any username
    and password), reached by the browser as http://localhost:<port> (another site than the
    app, as a real IdP is);
  * the demo API gateway (demo/gateway.py): verifies `Authorization: Bearer` itself against the
    IdP's JWKS, echoes the claims it saw, keeps per-user notes (`/api/notes`);
  * the Next.js app: `next start` on the production build (`make run`), or `next dev` with hot
    reload (`make dev`); server code reaches the gateway directly (GATEWAY_URL);
  * Envoy with the filter, configured by examples/nextjs/envoy.yaml (the same file you would
    run by hand), with ports moved when the defaults are taken, a fresh session key, and
    optionally TLS (a certificate generated on the spot) with HTTP/2;
prints what to try, and stops everything on Ctrl-C / SIGTERM.

Importable: `start_stack(...)` returns a `Stack` (used by tests/e2e/test_nextjs.py);
`stack.stop()` stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO_ROOT / "demo"))

import requests  # noqa: E402
import urllib3  # noqa: E402
import yaml  # noqa: E402

from gateway import Gateway  # noqa: E402
from idp import DEMO_LOGIN, DEMO_PASSWORD, Idp  # noqa: E402
from refresh_support import SessionKeys  # noqa: E402
from support import (AT_COOKIE, CSRF_COOKIE, SESSION_COOKIE, WASM_PATH,  # noqa: E402
                     WASM_REL_PATH, Envoy, EnvoyStartError, free_port, port_is_free, wait_until)

NEXT_DIR = REPO_ROOT / "examples" / "nextjs"
ENVOY_YAML = NEXT_DIR / "envoy.yaml"
NEXT_BIN = NEXT_DIR / "node_modules" / "next" / "dist" / "bin" / "next"
BUILD_STAMP = NEXT_DIR / ".next" / ".built"

# What examples/nextjs/envoy.yaml is written for (the defaults of `make run`).
DEFAULT_PORTS = {"app": 8080, "admin": 9901, "next": 3000, "gateway": 3001, "idp": 9000}
YAML_APP_ORIGIN = "http://127.0.0.1:8080"
YAML_IDP_AUTHORITY = "localhost:9000"
YAML_IDP_ORIGIN = "http://" + YAML_IDP_AUTHORITY
# The IdP paths envoy.yaml names (checked against the IdP's discovery document at start).
YAML_IDP_PATHS = {"authorization_path": "/auth", "token_path": "/token", "jwks_path": "/jwks",
                  "revocation_path": "/token/revocation", "end_session_path": "/session/end"}
LOGIN_PATH = "/auth/login"
CALLBACK_PATH = "/auth/callback"
LOGOUT_PATH = "/auth/logout"
USERINFO_PATH = "/auth/userinfo"
# Relay configuration fields the example uses that older builds of the filter refuse.
PENDING_RELAY_FIELDS = ("same_origin_posts", "userinfo_path")

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _child_setup():  # between fork and exec (start_new_session made a new group already)
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# --------------------------------------------------------------------------------------------
# The app: install, build, run
# --------------------------------------------------------------------------------------------


def ensure_app(dev: bool = False) -> None:
    """`make nextjs` (npm ci + next build, cached by stamp files) or, for `next dev`, `make
    nextjs-deps` (npm ci only). One at a time across processes."""
    target = "nextjs-deps" if dev else "nextjs"
    lock_path = NEXT_DIR / ".make.lock"
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            proc = subprocess.run(["make", "--no-print-directory", "-C", str(REPO_ROOT), target],
                                  capture_output=True, text=True, timeout=900)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        lock_path.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"make {target} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


class NextApp:
    """`next start` (or `next dev`) on 127.0.0.1:<port> in its own process group."""

    def __init__(self, port: int, gateway_url: str, dev: bool, name: str):
        self.port = port
        self.dev = dev
        self.tmp = Path(tempfile.mkdtemp(prefix=f"e2e-{name}-"))
        self.log_path = self.tmp / "next.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_OPTIONS")}
        env.update({"GATEWAY_URL": gateway_url, "NEXT_TELEMETRY_DISABLED": "1",
                    "PORT": str(port), "HOSTNAME": "127.0.0.1"})
        env.pop("NODE_ENV", None)
        argv = ["node", str(NEXT_BIN), "dev" if dev else "start", "--hostname", "127.0.0.1",
                "--port", str(port)]
        log_file = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                argv, cwd=str(NEXT_DIR), env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=(_child_setup if threading.current_thread() is threading.main_thread()
                            else None))
        finally:
            log_file.close()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        """Until Next.js answers `/` (`next dev` compiles it on this first request)."""
        http = requests.Session()
        http.trust_env = False

        def ready() -> bool:
            if not self.running:
                raise RuntimeError(f"next exited with {self.proc.returncode}:\n"
                                   f"{self.log_text()[-3000:]}")
            try:
                return http.get(self.origin + "/", timeout=max(5.0, timeout / 2)).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_until(ready, timeout, interval=0.2, what="Next.js to answer /")
        except TimeoutError:
            raise TimeoutError(f"Next.js not ready after {timeout}s:\n"
                               f"{self.log_text()[-3000:]}") from None
        finally:
            http.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # next's workers too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


# --------------------------------------------------------------------------------------------
# Envoy: examples/nextjs/envoy.yaml, adapted
# --------------------------------------------------------------------------------------------


def load_envoy_yaml(path: Path = ENVOY_YAML) -> dict:
    return yaml.safe_load(path.read_text())


def _wasm_config(cfg: dict) -> dict:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")
    return wasm["typed_config"]["config"]


def plugin_config_of(cfg: dict) -> dict:
    """The relay's configuration inside an Envoy config (the StringValue's JSON)."""
    return json.loads(_wasm_config(cfg)["configuration"]["value"])


def make_test_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (TEST-ONLY, made at test time)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-token-relay test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def envoy_config_for(*, ports: dict[str, int], app_origin: str, idp_origin: str,
                     session_keys: SessionKeys | None, tls: tuple[Path, Path] | None = None,
                     plugin_overrides: dict | None = None,
                     source: Path = ENVOY_YAML) -> dict:
    """examples/nextjs/envoy.yaml with its ports, origins and session key replaced, the .wasm
    path made absolute, and (with `tls` = (cert, key)) TLS with ALPN h2 + http/1.1."""
    cfg = copy.deepcopy(load_envoy_yaml(source))
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = ports["app"]
    cluster_ports = {"nextjs": ports["next"], "gateway": ports["gateway"], "idp": ports["idp"]}
    for cluster in cfg["static_resources"]["clusters"]:
        sock = (cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"])
        sock["port_value"] = cluster_ports[cluster["name"]]

    wasm = _wasm_config(cfg)
    wasm["vm_config"]["code"]["local"]["filename"] = str(WASM_PATH)
    text = wasm["configuration"]["value"]
    idp_authority = idp_origin.split("://", 1)[1]
    text = (text.replace(YAML_APP_ORIGIN, app_origin)
            .replace(YAML_IDP_ORIGIN, idp_origin)
            .replace(f'"{YAML_IDP_AUTHORITY}"', f'"{idp_authority}"'))
    pc = json.loads(text)
    if session_keys is not None:
        pc["session_keys"] = session_keys.config()
    for key, value in (plugin_overrides or {}).items():
        pc[key] = value
    wasm["configuration"]["value"] = json.dumps(pc, indent=1)

    if tls is not None:
        cert, key = tls
        listener["filter_chains"][0]["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificates": [{"certificate_chain": {"filename": str(cert)},
                                          "private_key": {"filename": str(key)}}],
                },
            },
        }
    return cfg


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """A running example: IdP + gateway + Next.js + Envoy. `stop()` stops all (idempotent)."""

    idp: Idp
    gateway: Gateway
    app: NextApp
    envoy: Envoy
    app_origin: str
    idp_origin: str
    plugin_config: dict
    session_keys: SessionKeys
    access_token_ttl: int
    tls: bool
    tmp: Path
    extra: dict = field(default_factory=dict)
    _stopped: bool = False

    def stop(self, remove_files: bool = False) -> None:
        if not self._stopped:
            self._stopped = True
            for part in (self.envoy, self.app, self.gateway, self.idp):
                with contextlib.suppress(Exception):
                    part.stop()
        if remove_files:
            for tmp in (self.envoy.tmp, self.idp.tmp, self.app.tmp, self.tmp):
                shutil.rmtree(tmp, ignore_errors=True)

    def http(self) -> requests.Session:
        """A requests session for the app's origin (certificate not checked: it is the test's)."""
        s = requests.Session()
        s.trust_env = False
        s.verify = False
        return s

    def facts(self) -> dict:
        """What the browser test needs to know (no secrets beyond the test IdP's demo user)."""
        return {
            "app": self.app_origin, "idp_origin": self.idp_origin, "idp_base": self.idp.base_url,
            "gateway": self.gateway.origin, "tls": self.tls,
            "issuer": self.idp.issuer, "audience": self.idp.audience,
            "access_token_ttl": self.access_token_ttl,
            "refresh_margin_s": self.plugin_config.get("refresh_margin_s"),
            "login": DEMO_LOGIN, "password": DEMO_PASSWORD,
            "cookies": {"access_token": AT_COOKIE, "session": SESSION_COOKIE, "csrf": CSRF_COOKIE},
            "paths": {"login": LOGIN_PATH, "callback": CALLBACK_PATH, "logout": LOGOUT_PATH,
                      "userinfo": USERINFO_PATH},
            "authorization_endpoint": self.idp_origin + self.idp.authorization_path,
            "end_session_endpoint": self.idp_origin + self.idp.end_session_path,
        }


def _pick(port: int, fixed: bool) -> int:
    return port if fixed and port_is_free(port) else free_port()


def start_stack(*, tls: bool = False, dev: bool = False, default_ports: bool = False,
                access_token_ttl: int = 30, refresh_margin_s: int | None = None,
                test_grants: bool = False, concurrency: int = 1, log_level: str = "info",
                component_log_level: str | None = "wasm:debug", name: str = "nextjs",
                plugin_overrides: dict | None = None, ready_timeout: float = 60.0) -> Stack:
    """Start IdP, gateway, Next.js and Envoy; wait until the relay has its keys and the app
    answers through Envoy.

    `default_ports`: use envoy.yaml's ports where they are free (make run), else any free
    ones. `refresh_margin_s` defaults to envoy.yaml's (10 s) or, when that is not below the
    token's life, a third of it. `plugin_overrides` replace top-level relay fields."""
    if not WASM_PATH.is_file():
        raise FileNotFoundError(f"{WASM_REL_PATH} is missing; run `make wasm` first")
    ensure_app(dev=dev)
    ports = {k: _pick(v, default_ports) for k, v in DEFAULT_PORTS.items()}
    scheme = "https" if tls else "http"
    app_origin = f"{scheme}://127.0.0.1:{ports['app']}"
    idp_origin = f"http://localhost:{ports['idp']}"
    tmp = Path(tempfile.mkdtemp(prefix=f"e2e-{name}-stack-"))
    overrides = dict(plugin_overrides or {})
    if refresh_margin_s is not None:
        overrides["refresh_margin_s"] = refresh_margin_s
    elif plugin_config_of(load_envoy_yaml()).get("refresh_margin_s", 10) >= access_token_ttl:
        overrides["refresh_margin_s"] = max(1, access_token_ttl // 3)

    idp = gateway = app = envoy = None
    try:
        idp = Idp.start(port=ports["idp"], access_token_ttl=access_token_ttl, issuer=idp_origin,
                        redirect_uris=[app_origin + CALLBACK_PATH],
                        post_logout_redirect_uris=[app_origin + "/"],
                        test_grants=test_grants, name=f"{name}-idp")
        drift = {k: (getattr(idp, k), v) for k, v in YAML_IDP_PATHS.items() if getattr(idp, k) != v}
        if drift:
            raise RuntimeError(f"examples/nextjs/envoy.yaml names IdP paths the IdP does not "
                               f"serve: {drift}")
        gateway = Gateway(issuer=idp.issuer, audience=idp.audience,
                          jwks_url=f"{idp.base_url}{idp.jwks_path}", app_origin=app_origin,
                          port=ports["gateway"]).start()
        app = NextApp(ports["next"], gateway.origin, dev, name=f"{name}-next")
        keys = SessionKeys.generate(("example-1",))
        cfg = envoy_config_for(ports=ports, app_origin=app_origin, idp_origin=idp_origin,
                               session_keys=keys,
                               tls=make_test_certificate(tmp) if tls else None,
                               plugin_overrides=overrides)
        envoy = Envoy(cfg, concurrency=concurrency, log_level=log_level,
                      component_log_level=component_log_level, name=name)
        try:
            envoy.start()
        except EnvoyStartError as e:
            pending = [f for f in PENDING_RELAY_FIELDS if f"unknown field `{f}`" in str(e)]
            if pending:
                why = "\n".join(ln for ln in str(e).splitlines() if "invalid configuration" in ln)
                raise EnvoyStartError(
                    f"this .wasm does not know {', '.join(pending)}, which the example's relay "
                    f"configuration uses (a relay feature being added; rebuild the filter from a "
                    f"branch that has it):\n{why}\n(Envoy log: {envoy.log_path})") from None
            raise
        app.wait_ready(ready_timeout if dev else 30.0)
        stack = Stack(idp=idp, gateway=gateway, app=app, envoy=envoy, app_origin=app_origin,
                      idp_origin=idp_origin, plugin_config=plugin_config_of(cfg),
                      session_keys=keys, access_token_ttl=access_token_ttl, tls=tls, tmp=tmp)
        wait_ready(stack, ready_timeout)
        return stack
    except BaseException:
        for part in (envoy, app, gateway, idp):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        for part in (app, idp):  # Envoy's directory stays: its config and log explain the failure
            if part is not None:
                shutil.rmtree(part.tmp, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def wait_ready(stack: Stack, timeout: float) -> None:
    """Until the relay has fetched the IdP's JWKS (a plain API call gets 401, not 503) and
    the app answers `/` through Envoy."""
    http = stack.http()
    last: list[Any] = [None]

    def ready() -> bool:
        if stack.envoy.stats(r"^cluster\.idp\.upstream_rq_2xx$").get(
                "cluster.idp.upstream_rq_2xx", 0) < 1:
            return False
        r = http.get(stack.app_origin + "/api/me", headers={"Accept": "application/json"},
                     timeout=5, allow_redirects=False)
        last[0] = r
        if r.status_code != 401:
            return False
        r = http.get(stack.app_origin + "/", timeout=30, allow_redirects=False)
        last[0] = r
        return r.status_code == 200

    try:
        wait_until(ready, timeout, interval=0.2, what="the relay's keys and the app")
    except TimeoutError:
        r = last[0]
        detail = f"last answer {r.status_code} {r.text[:300]!r}" if r is not None else \
            "no JWKS fetch answered 2xx"
        raise TimeoutError(f"not ready after {timeout}s: {detail}\nEnvoy log tail:\n"
                           f"{stack.envoy.log_tail(40)}") from None
    finally:
        http.close()


# --------------------------------------------------------------------------------------------
# make run / make dev
# --------------------------------------------------------------------------------------------


def banner(stack: Stack) -> str:
    app = stack.app_origin
    mode = ("next dev (hot reload: edit examples/nextjs/app/**, the page updates)" if stack.app.dev
            else "next start (production build)")
    k = "-k " if stack.tls else ""
    return f"""
edge-token-relay + Next.js example  ({mode})
  open                 {app}/
  log in with          any username and password at the IdP's login form
                       (e.g. {DEMO_LOGIN} / {DEMO_PASSWORD}), then accept the consent screen
  then                 {app}/dashboard: server-rendered user and API data, the browser's own
                       API calls (watch the token's iat/exp change), a Server Action, a plain
                       form post, logout
  identity provider    {stack.idp_origin}   (oidc-provider; log: {stack.idp.log_path})
  demo API gateway     {stack.gateway.origin}   (verifies the Bearer itself)
  Next.js              {stack.app.origin}   (log: {stack.app.log_path}; only Envoy calls it)
  Envoy admin          {stack.envoy.admin_base}   (try /stats?filter=edge_token_relay)
  Envoy log            {stack.envoy.log_path}

Access tokens live {stack.access_token_ttl} s; the relay refreshes them silently
{stack.plugin_config.get('refresh_margin_s')} s before they expire.

Without a browser:
  curl {k}-si {app}/api/me                                   # 401 JSON (fetch style)
  curl {k}-si -H 'Sec-Fetch-Mode: navigate' {app}/dashboard  # 302 to the login

Ctrl-C stops everything.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--dev", action="store_true", help="next dev (hot reload) instead of next start")
    ap.add_argument("--tls", action="store_true",
                    help="TLS + HTTP/2 on Envoy's listener with a throwaway self-signed certificate")
    ap.add_argument("--ttl", type=int, default=30, help="access-token lifetime, s (default 30)")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--log-level", default="info", help="Envoy -l (wasm component: debug)")
    args = ap.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    try:
        stack = start_stack(tls=args.tls, dev=args.dev, default_ports=True,
                            access_token_ttl=args.ttl, concurrency=args.concurrency,
                            log_level=args.log_level, ready_timeout=180.0 if args.dev else 60.0)
    except Exception as e:  # noqa: BLE001 - report and exit cleanly
        print(f"error: could not start the example: {e}", file=sys.stderr)
        return 1

    code = 0
    try:
        print(banner(stack), flush=True)
        while not stop.wait(0.5):
            dead = [n for n, alive in (("Envoy", stack.envoy.running), ("the IdP", stack.idp.running),
                                       ("Next.js", stack.app.running)) if not alive]
            # Ctrl-C in a terminal also reaches Envoy (same process group): give our own
            # handler a moment before calling it a crash.
            if dead and not stop.wait(1.0):
                print(f"{' and '.join(dead)} exited; Envoy log tail:\n{stack.envoy.log_tail(40)}\n"
                      f"Next.js log tail:\n{stack.app.log_text()[-2000:]}", file=sys.stderr)
                code = 1
                break
    finally:
        print("stopping...", flush=True)
        started = time.monotonic()
        stack.stop(remove_files=code == 0)
        print(f"stopped ({time.monotonic() - started:.1f} s)", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
