"""Log hygiene: with the wasm component at debug level, no token (nor a token's signature or
payload segment) appears in Envoy's log, whatever the outcome of the request."""

from __future__ import annotations

import time

from checks import describe
from support import AT_COOKIE, CSRF_COOKIE, SESSION_COOKIE, KeyPair, make_claims


def test_no_token_material_in_debug_log(relay_stack, keys):
    with relay_stack(name="log-hygiene", log_level="info",
                     component_log_level="wasm:debug") as s:
        rs = keys["RS256"]
        first = s.wait_jwks_ready(rs.sign(make_claims()))
        assert first.status_code == 200, describe(first)
        now = int(time.time())
        tokens = [k.sign(make_claims(sub=f"hygiene-{a}")) for a, k in keys.items()]
        tokens += [
            rs.sign(make_claims(exp=now - 3600)),                      # expired
            rs.sign(make_claims(aud="someone-else")),                  # wrong audience
            rs.sign(make_claims(token_use="id")),                      # wrong token_use
            rs.with_kid("unknown-kid").sign(make_claims()),            # unknown kid
            KeyPair.generate("RS256", kid=rs.kid).sign(make_claims()),  # bad signature
        ]
        tampered = tokens[0].split(".")
        tokens.append(f"{tampered[0]}.{tampered[1]}x.{tampered[2]}")
        session_value = "sealed-session-value-0123456789abcdef"
        csrf_value = "csrf-value-0123456789abcdef"
        for tok in tokens:
            s.get("/api/x", f"a=1; {AT_COOKIE}={tok}; {SESSION_COOKIE}={session_value}; "
                            f"{CSRF_COOKIE}={csrf_value}")
            s.get("/api/public/x", f"{AT_COOKIE}={tok}")
        s.get("/api/x", f"{AT_COOKIE}=garbage-cookie-value-0123456789")

        log = s.envoy.log_text()
        assert "wasm log edge_token_relay" in log and "refused" in log, \
            "no debug lines from the plugin: is the wasm log level applied?"
        leaks = []
        for tok in tokens:
            header, payload, sig = tok.split(".")
            for label, part in (("token", tok), ("payload segment", payload),
                                ("signature", sig)):
                if len(part) >= 16 and part in log:
                    leaks.append(f"{label} of {tok[:24]}...")
        for label, value in (("session cookie", session_value), ("csrf cookie", csrf_value),
                             ("garbage cookie", "garbage-cookie-value-0123456789")):
            if value in log:
                leaks.append(label)
        assert not leaks, f"secrets in Envoy's log ({s.envoy.log_path}): {leaks}"
