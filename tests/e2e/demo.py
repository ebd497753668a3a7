#!/usr/bin/env python3
"""`make run`: a local demo of the relay on 127.0.0.1.

Starts
  * the demo IdP: `GET /.well-known/jwks.json` and `GET /token?sub=alice` (a fresh RS256
    access token; `&ttl=-60` gives an expired one),
  * the demo gateway: an echo server that shows what the relay forwarded,
  * Envoy with the filter (built .wasm), configured like envoy/relay.yaml,
prints what to try, and stops everything on Ctrl-C / SIGTERM.

Ports default to 8080 (Envoy), 8081 (gateway), 8082 (IdP), 9901 (admin) and fall back to
free ports when taken. Options: --port N, --concurrency N, --log-level LEVEL.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import (AT_COOKIE, WASM_PATH, WASM_REL_PATH, KeyPair,  # noqa: E402
                     RelayStack, make_claims, port_is_free, relay_config)


def pick(port: int) -> int:
    return port if port and port_is_free(port) else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8080, help="Envoy listener (default 8080)")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--log-level", default="info", help="Envoy -l (wasm component: debug)")
    args = ap.parse_args()

    if not WASM_PATH.is_file():
        print(f"error: {WASM_REL_PATH} is missing; run `make wasm` first", file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    key = KeyPair.generate("RS256", kid="demo-key-1")
    admin_port = pick(9901)
    stack = RelayStack(
        [key], token_key=key, name="demo", concurrency=args.concurrency,
        log_level=args.log_level, idp_port=pick(8082), upstream_port=pick(8081),
        envoy_config_fn=lambda s: relay_config(s.upstream.port, s.idp.port,
                                               listener_port=pick(args.port),
                                               admin_port=admin_port))
    try:
        stack.start()
    except Exception as e:  # noqa: BLE001 - report and exit cleanly
        print(f"error: could not start the demo: {e}", file=sys.stderr)
        stack.stop()
        return 1

    env = stack.envoy
    assert env is not None
    # Wait until the relay has fetched the JWKS (it answers 503 before that).
    ready = stack.wait_jwks_ready(key.sign(make_claims(sub="demo-probe")), timeout=15)
    if ready.status_code != 200:
        print(f"warning: the relay answers {ready.status_code} to a valid token "
              f"(JWKS not loaded?): {ready.text[:200]}", file=sys.stderr)
    base = f"http://127.0.0.1:{env.port}"
    idp = f"http://127.0.0.1:{stack.idp.port}"
    print(f"""
edge-token-relay demo
  relay (Envoy + filter)  {base}
  demo IdP                {idp}   (JWKS: {idp}/.well-known/jwks.json)
  demo gateway (echo)     http://127.0.0.1:{stack.upstream.port}
  Envoy admin             {env.admin_base}   (try /stats?filter=wasm)
  Envoy log               {env.log_path}

Try:
  # a fresh access token for alice
  TOKEN=$(curl -s '{idp}/token?sub=alice' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

  # protected, with the cookie: the gateway sees Authorization: Bearer ... and x-user-sub
  curl -s {base}/api/orders -H "Cookie: theme=dark; {AT_COOKIE}=$TOKEN" | python3 -m json.tool

  # protected, without the cookie: 401 from the relay, nothing reaches the gateway
  curl -si {base}/api/orders

  # public path: passes untouched
  curl -s {base}/api/public/info | python3 -m json.tool

  # an expired token (expired 60 s beyond the 30 s clock skew): 401 invalid_token
  OLD=$(curl -s '{idp}/token?sub=alice&ttl=-90' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -si {base}/api/orders -H "Cookie: {AT_COOKIE}=$OLD"

Ctrl-C stops everything.
""", flush=True)

    try:
        while not stop.wait(0.5):
            if not env.running:
                print(f"Envoy exited ({env.proc.returncode}); log tail:\n{env.log_tail(40)}",
                      file=sys.stderr)
                return 1
    finally:
        print("stopping...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
