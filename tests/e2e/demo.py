#!/usr/bin/env python3
"""`make run-plain`: the relay in front of a demo API, with a real OpenID provider, on 127.0.0.1.

Starts
  * the OpenID provider (tests/idp: `oidc-provider`; its dev login form accepts any username
    and password), reached by the browser as http://localhost:<port> (another site than the
    app, as a real IdP is);
  * the demo API gateway (demo/gateway.py): verifies `Authorization: Bearer` itself against the
    IdP's JWKS and answers with the claims it saw; also serves the demo page at `/`;
  * Envoy with the filter (the built .wasm): `/api/` protected, login/callback/logout at
    `/auth/*`, silent refresh, CSRF;
prints the URL and the demo credentials, and stops everything on Ctrl-C / SIGTERM.

Importable: `start_stack(...)` returns a `Stack` (used by tests/e2e/test_browser.py);
`stack.stop()` stops it. Options of `main()`: --port (default 8080, falls back to a free
port), --ttl (access-token lifetime, default 30 s), --concurrency, --log-level.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
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

from gateway import Gateway, cross_site_url  # noqa: E402
from idp import DEMO_LOGIN, DEMO_PASSWORD, Idp  # noqa: E402
from refresh_support import SessionKeys  # noqa: E402
from support import (AT_COOKIE, CSRF_COOKIE, SESSION_COOKIE, WASM_PATH,  # noqa: E402
                     WASM_REL_PATH, Envoy, free_port, port_is_free, relay_config, wait_until)

CLIENT_ID = "relay-client"
CLIENT_SECRET = "relay-secret"
SCOPES = ["openid", "offline_access"]
LOGIN_PATH = "/auth/login"
CALLBACK_PATH = "/auth/callback"
LOGOUT_PATH = "/auth/logout"


@dataclass
class Stack:
    """A running demo: IdP + gateway + Envoy. `stop()` stops all three (idempotent)."""

    idp: Idp
    gateway: Gateway
    envoy: Envoy
    app_origin: str            # http://127.0.0.1:<envoy port>: the browser's app
    idp_origin: str            # what the browser uses for the IdP
    plugin_config: dict
    session_keys: SessionKeys
    access_token_ttl: int
    extra: dict = field(default_factory=dict)
    _stopped: bool = False

    @property
    def base_url(self) -> str:
        return self.app_origin

    def stop(self, remove_files: bool = False) -> None:
        """Stop everything; `remove_files` also deletes Envoy's and the IdP's temp dirs
        (config, logs)."""
        if not self._stopped:
            self._stopped = True
            for part in (self.envoy, self.gateway, self.idp):
                with contextlib.suppress(Exception):
                    part.stop()
        if remove_files:
            for tmp in (self.envoy.tmp, self.idp.tmp):
                shutil.rmtree(tmp, ignore_errors=True)

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def plugin_config(*, app_origin: str, idp: Idp, idp_origin: str, authority: str,
                  session_keys: SessionKeys, refresh_margin_s: int, clock_skew_s: int,
                  prompt: str | None = "consent") -> dict:
    """The relay's configuration for the demo (also a worked example of the public
    interface: README "Configuration reference")."""
    login: dict[str, Any] = {
        "authorization_endpoint": idp_origin + idp.authorization_path,
        "redirect_uri": app_origin + CALLBACK_PATH,
        "login_path": LOGIN_PATH,
        "logout_path": LOGOUT_PATH,
        "scopes": SCOPES,
        "revocation_path": idp.revocation_path,
        "end_session_endpoint": idp_origin + idp.end_session_path,
        "post_logout_redirect": "/",
    }
    if prompt:
        # oidc-provider keeps offline_access only with prompt=consent.
        login["prompt"] = prompt
    return {
        "protected_prefixes": ["/api/"],
        "issuer": idp.issuer,
        "audiences": [idp.audience],
        "algorithms": ["RS256", "ES256"],
        "clock_skew_s": clock_skew_s,
        "jwks": {"cluster": "idp", "authority": authority, "path": idp.jwks_path,
                 "refresh_s": 300},
        "cookies": {"access_token": AT_COOKIE, "session": SESSION_COOKIE, "csrf": CSRF_COOKIE,
                    "path": "/", "same_site": "Strict", "secure": True},
        "session_keys": session_keys.config(),
        "token_endpoint": {"cluster": "idp", "authority": authority, "path": idp.token_path,
                           "timeout_ms": 3000},
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "client_auth": "basic",
        "refresh_margin_s": refresh_margin_s,
        "csrf": {"allowed_origins": [app_origin], "double_submit": False},
        "login": login,
    }


def start_stack(*, port: int = 0, access_token_ttl: int = 30, refresh_margin_s: int | None = None,
                clock_skew_s: int = 5, concurrency: int = 1, log_level: str = "info",
                component_log_level: str | None = "wasm:debug", idp_host: str = "localhost",
                admin_port: int = 0, name: str = "demo",
                plugin_overrides: dict | None = None, ready_timeout: float = 30.0) -> Stack:
    """Start IdP, gateway and Envoy on 127.0.0.1 and wait until the relay has its keys.

    `port` 0 = a free port for Envoy's listener (it must be known before the IdP starts: the
    redirect URI is registered with it). `idp_host` is the host name the browser uses for the
    IdP ("localhost": another site than the app at 127.0.0.1, like a real IdP; the IdP still
    listens on 127.0.0.1). `refresh_margin_s` defaults to a third of the token's life.
    `plugin_overrides` replace top-level fields of the relay's configuration."""
    if not WASM_PATH.is_file():
        raise FileNotFoundError(f"{WASM_REL_PATH} is missing; run `make wasm` first")
    envoy_port = port or free_port()
    app_origin = f"http://127.0.0.1:{envoy_port}"
    idp_port = free_port()
    idp_origin = f"http://{idp_host}:{idp_port}"
    if refresh_margin_s is None:
        refresh_margin_s = max(1, access_token_ttl // 3)

    idp = gateway = envoy = None
    try:
        idp = Idp.start(port=idp_port, access_token_ttl=access_token_ttl, issuer=idp_origin,
                        redirect_uris=[app_origin + CALLBACK_PATH],
                        post_logout_redirect_uris=[app_origin + "/"],
                        test_grants=False, name=f"{name}-idp")
        keys = SessionKeys.generate(("demo-1",))
        authority = f"{idp_host}:{idp_port}"
        pc = plugin_config(app_origin=app_origin, idp=idp, idp_origin=idp_origin,
                           authority=authority, session_keys=keys,
                           refresh_margin_s=refresh_margin_s, clock_skew_s=clock_skew_s)
        pc.update(plugin_overrides or {})
        gateway = Gateway(
            issuer=idp.issuer, audience=idp.audience,
            jwks_url=f"http://127.0.0.1:{idp_port}{idp.jwks_path}", app_origin=app_origin,
            page_config={
                "idp_origin": idp_origin,
                "access_token_ttl": access_token_ttl,
                "refresh_margin_s": refresh_margin_s,
                "clock_skew_s": clock_skew_s,
                "demo_login": DEMO_LOGIN,
                "demo_password": DEMO_PASSWORD,
                "cookies": {"access_token": AT_COOKIE, "session": SESSION_COOKIE,
                            "csrf": CSRF_COOKIE},
                "paths": {"login": LOGIN_PATH, "callback": CALLBACK_PATH,
                          "logout": LOGOUT_PATH},
                "end_session_endpoint": idp_origin + idp.end_session_path,
                "authorization_endpoint": idp_origin + idp.authorization_path,
                "scopes": SCOPES,
                "prompt": pc["login"].get("prompt"),
            }).start()
        cfg = relay_config(gateway.port, idp_port, pc, listener_port=envoy_port,
                           admin_port=admin_port)
        envoy = Envoy(cfg, concurrency=concurrency, log_level=log_level,
                      component_log_level=component_log_level, name=name).start()
        stack = Stack(idp=idp, gateway=gateway, envoy=envoy, app_origin=app_origin,
                      idp_origin=idp_origin, plugin_config=pc, session_keys=keys,
                      access_token_ttl=access_token_ttl,
                      extra={"evil_cross_site": cross_site_url(app_origin) + "/evil.html",
                             "evil_same_site": gateway.origin + "/evil.html",
                             "refresh_margin_s": refresh_margin_s})
        wait_relay_ready(stack, ready_timeout)
        return stack
    except BaseException:
        for part in (envoy, gateway, idp):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        raise


def wait_relay_ready(stack: Stack, timeout: float = 30.0) -> None:
    """Until the relay has fetched the IdP's JWKS (it answers 503 before that): the `idp`
    cluster has had a 2xx answer and a plain API call is refused with 401, not 503."""
    http = requests.Session()
    http.trust_env = False
    last: list[Any] = [None]

    def ready() -> bool:
        if stack.envoy.stats(r"^cluster\.idp\.upstream_rq_2xx$").get(
                "cluster.idp.upstream_rq_2xx", 0) < 1:
            return False
        r = http.get(stack.app_origin + "/api/me", headers={"Accept": "application/json"},
                     timeout=5, allow_redirects=False)
        last[0] = r
        return r.status_code == 401

    try:
        wait_until(ready, timeout, interval=0.1, what="the relay to load the IdP's JWKS")
    except TimeoutError:
        r = last[0]
        detail = f"last answer {r.status_code} {r.text[:300]!r}" if r is not None else \
            "no JWKS fetch answered 2xx"
        raise TimeoutError(f"relay not ready after {timeout}s: {detail}\n"
                           f"Envoy log tail:\n{stack.envoy.log_tail(40)}") from None
    finally:
        http.close()


def banner(stack: Stack) -> str:
    env = stack.envoy
    return f"""
edge-token-relay demo
  open                 {stack.app_origin}/
  log in with          any username and password at the IdP's dev login form
                       (e.g. {DEMO_LOGIN} / {DEMO_PASSWORD}), then accept the consent screen
  identity provider    {stack.idp_origin}   (oidc-provider; log: {stack.idp.log_path})
  demo API gateway     {stack.gateway.origin}   (verifies the Bearer itself)
  Envoy admin          {env.admin_base}   (try /stats?filter=edge_token_relay)
  Envoy log            {env.log_path}

Access tokens live {stack.access_token_ttl} s; the relay refreshes them silently
{stack.extra['refresh_margin_s']} s before they expire. Try the page's "Call the API" button
(or "call it every 5 s") and watch the token's iat/exp change without any navigation.

Without a browser:
  curl -si {stack.app_origin}/api/me                      # 401 (fetch/XHR style)
  curl -si -H 'Sec-Fetch-Mode: navigate' -H 'Accept: text/html' {stack.app_origin}/api/me
                                                          # 302 to the login

Ctrl-C stops everything.
"""


def pick(port: int) -> int:
    return port if port and port_is_free(port) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--port", type=int, default=8080,
                    help="Envoy listener (default 8080; a free port when taken)")
    ap.add_argument("--ttl", type=int, default=30, help="access-token lifetime, s (default 30)")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--log-level", default="info", help="Envoy -l (wasm component: debug)")
    args = ap.parse_args(argv)

    if not WASM_PATH.is_file():
        print(f"error: {WASM_REL_PATH} is missing; run `make wasm` first", file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    try:
        stack = start_stack(port=pick(args.port), access_token_ttl=args.ttl,
                            concurrency=args.concurrency, log_level=args.log_level,
                            admin_port=pick(9901))
    except Exception as e:  # noqa: BLE001 - report and exit cleanly
        print(f"error: could not start the demo: {e}", file=sys.stderr)
        return 1

    code = 0
    try:
        print(banner(stack), flush=True)
        while not stop.wait(0.5):
            dead = [n for n, alive in (("Envoy", stack.envoy.running),
                                       ("the IdP", stack.idp.running)) if not alive]
            # Ctrl-C in a terminal also reaches Envoy (same process group): give our own
            # handler a moment before calling it a crash.
            if dead and not stop.wait(1.0):
                print(f"{' and '.join(dead)} exited; Envoy log tail:\n"
                      f"{stack.envoy.log_tail(40)}\nIdP log tail:\n"
                      f"{stack.idp.log_text()[-2000:]}", file=sys.stderr)
                code = 1
                break
    finally:
        print("stopping...", flush=True)
        started = time.monotonic()
        stack.stop(remove_files=code == 0)  # after a crash the logs stay for a look
        print(f"stopped ({time.monotonic() - started:.1f} s)", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
