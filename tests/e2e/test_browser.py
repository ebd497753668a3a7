"""The browser end-to-end test: headless Chromium (Debian's /usr/bin/chromium, driven by
playwright-core from tests/browser) logs in through the real OpenID provider, calls the API,
waits out the access token for a silent refresh, is attacked by cross-origin form POSTs and
logs out, against the demo stack of tests/e2e/demo.py (IdP + demo gateway + Envoy with the
built filter).

The browser script (tests/browser/run.mjs) makes its own checks and prints them as JSON; this
wrapper starts the stack, runs it, asserts on that JSON and on what the gateway and the IdP
saw, and keeps the screenshots (and logs) under tests/e2e/.artifacts/browser/ when it fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from demo import start_stack
from support import ARTIFACTS_DIR, REPO_ROOT, wasm_failure_evidence

BROWSER_DIR = REPO_ROOT / "tests" / "browser"
RUN_MJS = BROWSER_DIR / "run.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ACCESS_TOKEN_TTL = 8   # seconds: the test waits one token life for the silent refresh
REFRESH_MARGIN_S = 2
NODE_TIMEOUT_S = 240


def ensure_node_modules() -> None:
    """`npm ci` in tests/browser when playwright-core is missing (pinned by package-lock)."""
    marker = BROWSER_DIR / "node_modules" / "playwright-core" / "package.json"
    if marker.is_file():
        return
    lock_path = BROWSER_DIR / ".npm-ci.lock"
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if not marker.is_file():
                proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                                      cwd=BROWSER_DIR, capture_output=True, text=True,
                                      timeout=600)
                if proc.returncode != 0:
                    pytest.fail(f"npm ci in {BROWSER_DIR} failed:\n{proc.stdout}\n{proc.stderr}",
                                pytrace=False)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        lock_path.unlink()


@pytest.fixture(scope="module")
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium (`apt-get install -y "
                    f"chromium`; `make test` does it). The test never downloads a browser.",
                    pytrace=False)
    ensure_node_modules()
    return CHROMIUM


@pytest.fixture(scope="module")
def stack(wasm_file):
    s = start_stack(access_token_ttl=ACCESS_TOKEN_TTL, refresh_margin_s=REFRESH_MARGIN_S,
                    name="browser")
    yield s
    s.stop()  # Envoy's and the IdP's dirs: conftest (kept on failure)


def run_browser(base_url: str, shots: Path) -> tuple[int, dict | None, str, str, float]:
    """node run.mjs in its own process group (killed whole on timeout: no stray Chromium)."""
    env = dict(os.environ, CHROMIUM=CHROMIUM, BROWSER_TEST_TIMEOUT_S=str(NODE_TIMEOUT_S - 20))
    started = time.monotonic()
    proc = subprocess.Popen(["node", str(RUN_MJS), base_url, str(shots)], cwd=BROWSER_DIR,
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
        with contextlib.suppress(ProcessLookupError):  # anything left in the group
            os.killpg(proc.pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    result = None
    for line in reversed(out.splitlines()):
        if line.startswith("BROWSER_RESULT "):
            result = json.loads(line[len("BROWSER_RESULT "):])
            break
    return proc.returncode, result, out, err, elapsed


def keep_artifacts(shots: Path, stack, out: str, err: str) -> Path:
    dest = ARTIFACTS_DIR / "browser" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for f in shots.glob("*"):
        shutil.copy2(f, dest / f.name)
    (dest / "node-stdout.txt").write_text(out)
    (dest / "node-stderr.txt").write_text(err)
    with contextlib.suppress(Exception):
        (dest / "envoy.log").write_text(stack.envoy.log_text())
    with contextlib.suppress(Exception):
        (dest / "idp.log").write_text(stack.idp.log_text())
    with contextlib.suppress(Exception):
        (dest / "gateway-calls.json").write_text(json.dumps(stack.gateway.records(), indent=1))
    return dest


def describe(result: dict | None, err: str) -> str:
    if result is None:
        return f"the browser script printed no result; its stderr:\n{err[-6000:]}"
    lines = [f"{len(result['failures'])} browser check(s) failed:"]
    lines += [f"  - {f}" for f in result["failures"]]
    lines.append("steps: " + ", ".join(f"{s['name']}={'ok' if s['ok'] else 'FAILED'}"
                                       f" ({s['seconds']}s)" for s in result["steps"]))
    lines.append("observations: " + json.dumps(result.get("observations", {}))[:3000])
    return "\n".join(lines)


def test_browser_login_refresh_csrf_logout(chromium, stack):
    shots = Path(tempfile.mkdtemp(prefix="e2e-browser-shots-"))
    failed = True
    try:
        code, result, out, err, elapsed = run_browser(stack.app_origin, shots)
        print(f"browser run: exit {code}, {elapsed:.1f} s, "
              f"{len(result['checks']) if result else '?'} checks")
        try:
            assert result is not None, describe(result, err)
            assert code == 0 and result["ok"] and not result["failures"], describe(result, err)
            names = [s["name"] for s in result["steps"]]
            for needed in ("login through the IdP", "silent refresh after the access token expired",
                           "cross-site forged POST is refused",
                           "same-site other-origin forged POST is refused by CSRF",
                           "same-site other-origin forged logout is refused by CSRF", "logout",
                           "no token in any response body"):
                assert needed in names, f"step {needed!r} did not run: {names}"

            # What the gateway saw: the user's GETs with two different tokens, and no POST.
            calls = stack.gateway.records()
            ok_calls = [c for c in calls if c["status"] == 200]
            assert not [c for c in calls if c["method"] != "GET"], \
                f"a forged POST reached the gateway: {calls}"
            assert {c["sub"] for c in ok_calls} == {"alice"}, ok_calls
            assert len({c["token_fp"] for c in ok_calls}) >= 2, \
                f"the gateway never saw a refreshed token: {ok_calls}"
            assert all(not c["cookies_seen"] or not any(n.startswith("__Host-relay")
                                                        for n in c["cookies_seen"])
                       for c in calls), f"relay cookies reached the gateway: {calls}"

            # What the IdP saw: one code exchange, refreshes, one revocation at logout.
            idp_log = stack.idp.token_log_lines() + [
                ln for ln in stack.idp.log_text().splitlines() if ln.startswith("revocation ")]
            codes = [ln for ln in idp_log if "grant_type=authorization_code" in ln]
            assert len(codes) == 1 and "result=ok" in codes[0], idp_log
            refreshes = [ln for ln in idp_log if "grant_type=refresh_token" in ln]
            assert any("result=ok" in ln for ln in refreshes), idp_log
            revocations = [ln for ln in idp_log if ln.startswith("revocation ")]
            assert len(revocations) == 1 and "result=ok" in revocations[0], idp_log

            evidence = wasm_failure_evidence(stack.envoy)
            assert not evidence, f"the Wasm VM failed: {evidence}"
            failed = False
        finally:
            if failed:
                dest = keep_artifacts(shots, stack, out, err)
                print(f"browser screenshots and logs kept in {dest}")
    finally:
        shutil.rmtree(shots, ignore_errors=True)
