"""The Next.js example (examples/nextjs) behind the real Envoy with the built filter.

* its Envoy configuration passes `envoy --mode validate` (as shipped, and as the runner adapts
  it for TLS);
* a headless Chromium (tests/browser/nextjs.mjs) drives the production build (`next build` +
  `next start`) through Envoy terminating TLS and speaking HTTP/2: login at the real IdP,
  server-rendered user and API data, client calls, one refresh for parallel calls, Server Action
  and form post, their cross-origin forgeries, 503 retry, <Link> after the session ended,
  logout, and no token in document.cookie or in any body the browser saw;
* HTTP/2 requests whose Cookie arrives as several header fields;
* the dev loop: `next dev` behind Envoy, hot-reload websocket upgraded through Envoy.

The browser script prints its checks as JSON; this wrapper asserts on them and on what the
gateway, the IdP and Envoy saw, and keeps screenshots and logs under
tests/e2e/.artifacts/nextjs/ when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import nextjs_demo
from nextjs_demo import DEFAULT_PORTS, ENVOY_YAML, envoy_config_for, start_stack
from refresh_support import SessionKeys
from support import (ARTIFACTS_DIR, AT_COOKIE, REPO_ROOT, SESSION_COOKIE, b64url,
                     validate_config, wasm_failure_evidence)
from test_browser import ensure_node_modules

BROWSER_DIR = REPO_ROOT / "tests" / "browser"
SCRIPT = BROWSER_DIR / "nextjs.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ACCESS_TOKEN_TTL = 10  # the browser waits out one token life for the parallel-calls refresh
REFRESH_MARGIN_S = 2
NODE_TIMEOUT_S = 300
# The stacks' own throwaway certificate is not checked by `requests`.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

# Relay features the example relies on that are being added to the relay (see the README).
FEATURES = ("login.userinfo_path", "csrf.same_origin_posts")


# --------------------------------------------------------------------------------------------
# Envoy configuration
# --------------------------------------------------------------------------------------------


def test_example_envoy_yaml_validates(wasm_file, envoy_bin):
    """examples/nextjs/envoy.yaml as shipped (run from the repository root, like the README
    says); validate mode also runs the relay's configuration parser."""
    result = validate_config(ENVOY_YAML, envoy_bin, cwd=REPO_ROOT,
                             env={"RELAY_SESSION_KEY": b64url(os.urandom(32))})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def test_example_envoy_yaml_as_run_with_tls_validates(wasm_file, envoy_bin, tmp_path):
    """What `nextjs_demo.py --tls` and the browser test start: other ports and origins, a fresh
    session key, TLS with ALPN h2."""
    cert = nextjs_demo.make_test_certificate(tmp_path)
    ports = {k: v + 10000 for k, v in DEFAULT_PORTS.items()}
    cfg = envoy_config_for(ports=ports, app_origin=f"https://127.0.0.1:{ports['app']}",
                           idp_origin=f"http://localhost:{ports['idp']}",
                           session_keys=SessionKeys.generate(("k1",)), tls=cert)
    pc = nextjs_demo.plugin_config_of(cfg)
    assert pc["csrf"]["allowed_origins"] == [f"https://127.0.0.1:{ports['app']}"]
    assert pc["login"]["redirect_uri"] == f"https://127.0.0.1:{ports['app']}/auth/callback"
    assert pc["jwks"]["authority"] == f"localhost:{ports['idp']}" == pc["token_endpoint"]["authority"]
    assert pc["issuer"] == f"http://localhost:{ports['idp']}"
    assert all(isinstance(k["key"], str) for k in pc["session_keys"]), \
        "the runner gives the relay a fresh session key of its own"
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(cfg))
    result = validate_config(path, envoy_bin)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def test_example_envoy_yaml_routes_match_the_relay():
    """The Envoy routes that hand Next.js the relay's headers are exactly the relay's protected
    page prefixes, and the public route strips what only the relay may set."""
    cfg = nextjs_demo.load_envoy_yaml()
    pc = nextjs_demo.plugin_config_of(cfg)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    to_next = [r for r in routes if r["route"]["cluster"] == "nextjs"]
    protected_pages = [p for p in pc["protected_prefixes"] if p != "/api/"]
    assert protected_pages, pc["protected_prefixes"]
    for prefix in protected_pages:
        route = next(r for r in to_next if r["match"]["prefix"] == prefix)
        assert "request_headers_to_remove" not in route
    catch_all = next(r for r in routes if r["match"]["prefix"] == "/")
    assert set(catch_all["request_headers_to_remove"]) >= {"authorization", *pc["forward_claims"]}
    assert {"upgrade_type": "websocket"} in catch_all["route"]["upgrade_configs"]
    assert pc["csrf"]["double_submit"] is True and pc["csrf"].get("same_origin_posts") is True


# --------------------------------------------------------------------------------------------
# The production build in a real browser, over TLS + HTTP/2
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium (`make browser`). The "
                    f"test never downloads a browser.", pytrace=False)
    ensure_node_modules()
    return CHROMIUM


@pytest.fixture(scope="module")
def stack(wasm_file):
    s = start_stack(tls=True, access_token_ttl=ACCESS_TOKEN_TTL, refresh_margin_s=REFRESH_MARGIN_S,
                    test_grants=True, name="nextjs")
    yield s
    s.stop()
    for tmp in (s.app.tmp, s.tmp):  # Envoy's and the IdP's dirs: conftest (kept on failure)
        shutil.rmtree(tmp, ignore_errors=True)


def run_browser(facts: Path, shots: Path) -> tuple[int, dict | None, str, str, float]:
    """node nextjs.mjs in its own process group (killed whole on timeout: no stray Chromium)."""
    env = dict(os.environ, CHROMIUM=CHROMIUM, BROWSER_TEST_TIMEOUT_S=str(NODE_TIMEOUT_S - 20))
    started = time.monotonic()
    proc = subprocess.Popen(["node", str(SCRIPT), str(facts), str(shots)], cwd=BROWSER_DIR,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=NODE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        err += f"\n(node killed after {NODE_TIMEOUT_S} s)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    result = None
    for line in reversed(out.splitlines()):
        if line.startswith("BROWSER_RESULT "):
            result = json.loads(line[len("BROWSER_RESULT "):])
            break
    return proc.returncode, result, out, err, time.monotonic() - started


def describe(result: dict | None, err: str) -> str:
    if result is None:
        return f"the browser script printed no result; its stderr:\n{err[-6000:]}"
    blocked = [b["check"] for b in result.get("blocked", [])]
    others = [f for f in result["failures"] if f not in blocked]
    lines = [f"{len(result['failures'])} browser check(s) failed"]
    if others:
        lines += ["failing:"] + [f"  - {f}" for f in others]
    for feature in FEATURES:
        mine = [b["check"] for b in result.get("blocked", []) if b["needs"] == feature]
        if mine:
            lines += [f"failing, about the relay feature {feature}:"]
            lines += [f"  - {f}" for f in mine]
    lines.append("steps: " + ", ".join(f"{s['name']}={'ok' if s['ok'] else 'FAILED'} ({s['seconds']}s)"
                                       for s in result["steps"]))
    lines.append("observations: " + json.dumps(result.get("observations", {}))[:4000])
    return "\n".join(lines)


def keep_artifacts(shots: Path, stack, out: str, err: str) -> Path:
    dest = ARTIFACTS_DIR / "nextjs" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for f in shots.glob("*"):
        shutil.copy2(f, dest / f.name)
    (dest / "node-stdout.txt").write_text(out)
    (dest / "node-stderr.txt").write_text(err)
    for name, text in (("envoy.log", stack.envoy.log_text), ("idp.log", stack.idp.log_text),
                       ("next.log", stack.app.log_text)):
        with contextlib.suppress(Exception):
            (dest / name).write_text(text())
    with contextlib.suppress(Exception):
        (dest / "gateway-calls.json").write_text(json.dumps(stack.gateway.records(), indent=1))
    return dest


def test_nextjs_in_chromium_over_tls_h2(chromium, stack, tmp_path):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(stack.facts()))
    shots = Path(tempfile.mkdtemp(prefix="e2e-nextjs-shots-"))
    stack.idp.reset_stats()
    calls_before = len(stack.gateway.records())
    failed = True
    out = err = ""
    try:
        code, result, out, err, elapsed = run_browser(facts, shots)
        print(f"browser run: exit {code}, {elapsed:.1f} s, "
              f"{len(result['checks']) if result else '?'} checks")
        assert result is not None, describe(result, err)
        names = [s["name"] for s in result["steps"]]
        for needed in ("login through the IdP", "client component calls the API",
                       "client component POSTs with X-CSRF-Token",
                       "expired token: parallel calls, exactly one refresh",
                       "server-rendered page refreshes on navigation", "Server Action",
                       "plain form post", "forged cross-origin posts are refused",
                       "503 is retried after Retry-After",
                       "Link navigation after the session ended", "logout",
                       "prefetch and Link after logout land on the login",
                       "no token in any response body"):
            assert needed in names, f"step {needed!r} did not run: {names}\n{describe(result, err)}"
        assert code == 0 and result["ok"] and not result["failures"], describe(result, err)

        # The gateway: every call with alice's verified token; the only POSTs are the notes of
        # the client fetch, the Server Action and the form; no relay cookie ever reached it.
        calls = stack.gateway.records()[calls_before:]
        assert calls and {c.get("sub") for c in calls if c["status"] in (200, 201)} == {"alice"}, calls
        posts = [c for c in calls if c["method"] != "GET"]
        assert sorted(c["note"]["via"] for c in posts) == ["client-fetch", "form-post",
                                                           "server-action"], posts
        assert all(c["status"] == 201 and c["path"] == "/api/notes" for c in posts), posts
        assert not [c for c in calls if any(n.startswith("__Host-relay") for n in c["cookies_seen"])]
        assert len({c["token_fp"] for c in calls if c["status"] == 200}) >= 3, \
            "the gateway should have seen the first, the refreshed and the re-login tokens"

        # The IdP: two logins (the first, and after the session ended), refreshes that all
        # succeeded (no refresh token spent twice), one revocation at logout.
        stats = stack.idp.stats()
        by_grant = stats["by_grant_type"]
        assert by_grant["authorization_code"]["ok"] == 2, stats
        assert stats["refresh_errors"] == 0 and stats["refresh_ok"] >= 2, stats
        assert stats["revocation_requests"] == 1, stats

        # Envoy: the browser spoke HTTP/2 over TLS; the Wasm VM never failed.
        h2 = stack.envoy.stats(r"downstream_cx_http2_total").get(
            "http.ingress_http.downstream_cx_http2_total", 0)
        assert h2 >= 1, "no HTTP/2 connection reached Envoy"
        evidence = wasm_failure_evidence(stack.envoy)
        assert not evidence, f"the Wasm VM failed: {evidence}"
        next_errors = [ln for ln in stack.app.log_text().splitlines() if "⨯" in ln or "Error" in ln]
        assert not next_errors, f"Next.js logged errors:\n" + "\n".join(next_errors[:20])
        failed = False
    finally:
        if failed:
            dest = keep_artifacts(shots, stack, out, err)
            print(f"browser screenshots and logs kept in {dest}")
        shutil.rmtree(shots, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# HTTP/2: a Cookie header split into several fields
# --------------------------------------------------------------------------------------------


def curl_h2(stack, path: str, headers: list[str], tmp_path: Path) -> tuple[str, int, dict, str]:
    """curl over HTTP/2 (TLS, the test certificate) with the given request header lines,
    passed in a file (never on the command line). Returns (http version, status, response
    headers (lower-case name -> list), body)."""
    hfile = tmp_path / "headers.txt"
    hfile.write_text("\n".join(headers) + "\n")
    os.chmod(hfile, 0o600)
    dump = tmp_path / "response-headers.txt"
    proc = subprocess.run(
        ["curl", "-sk", "--http2", "--max-time", "20", "-H", f"@{hfile}", "-D", str(dump),
         "-w", "\n%{http_version} %{http_code}", stack.app_origin + path],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    body, _, tail = proc.stdout.rpartition("\n")
    version, status = tail.split()
    resp: dict[str, list[str]] = {}
    for line in dump.read_text().splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            resp.setdefault(name.strip().lower(), []).append(value.strip())
    return version, int(status), resp, body


def test_http2_split_cookie_headers(stack, tmp_path):
    """HTTP/2 clients may send the Cookie header as several fields (RFC 9113 §8.2.3): the
    relay finds its cookies among them, strips them, and passes the others on."""
    tokens = stack.idp.mint("bob")
    version, status, _, body = curl_h2(stack, "/api/me", [
        "Accept: application/json", "Cookie: theme=dark", f"Cookie: {AT_COOKIE}={tokens['access_token']}",
        "Cookie: lang=en"], tmp_path)
    assert version == "2", "curl did not speak HTTP/2"
    assert status == 200, body[:300]
    seen = json.loads(body)
    assert seen["sub"] == "bob" and sorted(seen["cookies_seen"]) == ["lang", "theme"], seen

    # Only the session, split from another cookie: the relay refreshes, and Next.js renders
    # the protected page with the new bearer.
    sealed = stack.session_keys.seal(tokens["refresh_token"], exp=int(time.time()) + 3600)
    version, status, resp, body = curl_h2(stack, "/dashboard", [
        "Accept: text/html", "Sec-Fetch-Mode: navigate", "Cookie: theme=dark",
        f"Cookie: {SESSION_COOKIE}={sealed}"], tmp_path)
    assert version == "2" and status == 200, (status, body[:300])
    assert 'id="server-sub">bob<' in body, body[:2000]
    assert any(c.startswith(f"{AT_COOKIE}=") for c in resp.get("set-cookie", [])), resp


# --------------------------------------------------------------------------------------------
# The dev loop: next dev behind Envoy
# --------------------------------------------------------------------------------------------


def websocket_upgrade(host: str, port: int, path: str, timeout: float = 60.0) -> str:
    """Open a websocket through Envoy (plain HTTP/1.1 upgrade); returns the status line."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   f"Origin: http://{host}:{port}\r\n\r\n").encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n", 1)[0].decode(errors="replace")


def test_next_dev_behind_envoy(wasm_file):
    """`make dev`: pages come from `next dev` through Envoy and the relay, and the hot-reload
    websocket is upgraded through Envoy."""
    s = start_stack(dev=True, name="nextjs-dev", ready_timeout=240.0)
    try:
        http = s.http()
        r = http.get(s.app_origin + "/", timeout=60)
        assert r.status_code == 200 and "Log in" in r.text, r.text[:500]
        r = http.get(s.app_origin + "/dashboard", headers={"Sec-Fetch-Mode": "navigate",
                                                           "Accept": "text/html"},
                     allow_redirects=False, timeout=30)
        assert r.status_code == 302 and r.headers["Location"].startswith("/auth/login?return_to="), r
        status = websocket_upgrade("127.0.0.1", s.envoy.port, "/_next/hmr?id=test")
        assert status.startswith("HTTP/1.1 101"), status
        upgrades = s.envoy.stats(r"downstream_cx_upgrades_total").get(
            "http.ingress_http.downstream_cx_upgrades_total", 0)
        assert upgrades >= 1
    finally:
        s.stop()
        for tmp in (s.app.tmp, s.tmp):  # Envoy's and the IdP's dirs: conftest
            shutil.rmtree(tmp, ignore_errors=True)
