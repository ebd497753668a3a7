"""Soak: mixed traffic through the real Envoy (two workers) running the built .wasm, with a
token endpoint that fails part of the time. `make soak` (10 minutes; `make soak SOAK_S=60`).

    .venv/bin/python tests/e2e/soak.py [--seconds N] [--workers N]

Traffic (each driver thread picks a class per request):
  valid     a browser with a long-lived access token and a session: must get 200, and the
            upstream must see the token's own claims (a forged x-user-sub never passes)
  expiring  browsers whose access tokens live EXPIRES_IN s (the driver threads share them, and
            a fifth of the picks is a page load of BURST_SIZE parallel requests, so a session's
            requests meet at its refresh): 200, or the deliberate 503
            (`refresh_unavailable` / `refresh_timeout`, with Retry-After) while the token
            endpoint fails for that session, or 401 only after the endpoint answered
            invalid_grant for the session's refresh token on purpose (then the browser starts
            a new session)
  login     the login flow at the edge: /auth/login, then the callback with a code the fake
            token endpoint exchanges (with an ID token carrying the flow's nonce), then an API
            call with the new cookies; the new session joins the expiring browsers
  hostile   garbage and tampered cookies, forged claim headers, oversized and non-UTF-8
            headers, many cookies, alg "none", path tricks: 3xx/400/401/431 (or 200 where a
            valid token is presented), never 5xx

The token endpoint (fake_token_endpoint.py) answers refresh_token grants: ok (rotating, with
reuse detection: a spent refresh token gets invalid_grant), or at random 5xx, a timeout (no
answer within the relay's timeout; nothing rotated), a non-JSON 200, or invalid_grant.

Pass criteria (the process exits 1 when one fails):
  * 0 Wasm VM restarts: the filter runs with failure_policy FAIL_RELOAD, so a crashed VM is
    replaced and counted in wasm.edge_token_relay.vm_reload*; those stay 0, Envoy's count of
    created V8 VMs (wasm.envoy.wasm.runtime.v8.created) does not grow after warm-up, and the log
    shows no panic or failed VM call;
  * memory flat after warm-up: see MEMORY_BOUND_MIB;
  * 0 sessions lost, except after a deliberate invalid_grant;
  * exactly one token-endpoint call per rotation: no refresh token is presented again after the
    call that rotated it (failed calls are retried after the back-off, which is not a rotation);
  * 0 5xx other than the deliberate 503s; 0 unexpected statuses in any class.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_token_endpoint import FakeTokenEndpoint  # noqa: E402
from login_support import NAV_ACCEPT, Jar, login_plugin_config  # noqa: E402
from refresh_support import SessionKeys, jwt_claims, set_cookies  # noqa: E402
from support import (AT_COOKIE, AUDIENCE, ISSUER, JWKS_PATH, SESSION_COOKIE, Envoy, KeyPair,  # noqa: E402
                     Upstream, b64url, encode_jws, free_port, make_claims, new_http_session,
                     raw_request, relay_config, wait_until, wasm_failure_evidence)

CLIENT_ID = "soak-client"
EXPIRES_IN = 8            # access-token life from the token endpoint (s)
REFRESH_MARGIN_S = 2
REFRESH_BACKOFF_S = 2
TIMEOUT_MS = 500          # the relay's token-endpoint timeout
SLOW_S = 1.2              # a "timeout" answer comes after this (> TIMEOUT_MS)
EXPIRING_BROWSERS = 12
BURST_SHARE = 0.2         # expiring-class picks that are a page load of BURST_SIZE requests
BURST_SIZE = 5
# Refresh answers: (mode, weight). invalid_grant is the only one that ends a session.
REFRESH_MODES = (("ok", 80), ("status_500", 5), ("status_503", 3), ("slow", 5),
                 ("garbage", 5), ("invalid_grant", 2))
CLASS_WEIGHTS = (("valid", 35), ("expiring", 35), ("login", 5), ("hostile", 25))
# Memory after warm-up may grow by at most this much (MiB), in server.memory_allocated (Envoy's
# heap) and in the process RSS (which also holds the V8 heaps of the Wasm VMs). Why 8: nothing in
# the relay should grow with the number of requests (a fixed-size token cache, a 4,096-slot
# refresh table, per-request state freed at the end of the stream), and runs of 30-60 s measured
# +0.0-0.3 MiB after warm-up, so 8 MiB leaves room for V8's heap to breathe between collections
# while a leak of ~200 bytes per request or more fails a 10-minute run (~40,000 requests on a
# 2-core machine).
MEMORY_BOUND_MIB = 8
WARMUP_FRACTION = 0.2
DELIBERATE_503_ERRORS = ("temporarily_unavailable",)


class Soak:
    def __init__(self, seconds: float, workers: int, seed: int | None = None):
        self.seconds = seconds
        self.workers = workers
        self.rng_seed = seed if seed is not None else random.randrange(1 << 30)
        self.signer = KeyPair.generate("RS256", kid="soak")
        self.keys = SessionKeys.generate(("soak-2", "soak-1"))
        self.fake = FakeTokenEndpoint(self.signer, expires_in=EXPIRES_IN, rotate=True)
        self.fake.reject_reuse = True
        self.fake.slow_s = SLOW_S
        self.fake.then = "status_504"  # a timed-out call never rotates anything
        self.fake_rng = random.Random(self.rng_seed ^ 0x5EED)
        self.fake.mode_fn = self._fake_mode
        self.fake.extra_response_fn = self._id_token
        self.upstream = Upstream(name="soak-upstream")
        self.port = free_port()
        self.envoy: Envoy | None = None
        self.lock = threading.Lock()
        self.requests = Counter()          # class -> requests
        self.statuses = defaultdict(Counter)  # class -> status -> n
        self.failures: list[str] = []
        self.deliberate_503 = 0
        self.revoked: set[str] = set()     # sessions (refresh tokens) ended on purpose
        self.lost = 0
        self.logins = 0
        self.memory: list[tuple[float, int, int, int]] = []  # t, allocated, heap, rss
        self.expiring: list[dict] = []     # {"jar": Jar, "lock": Lock}
        self.long_at = ""
        self.valid_cookie = ""
        self.pool = ThreadPoolExecutor(4 * BURST_SIZE, thread_name_prefix="burst")

    # -- the token endpoint's behaviour ------------------------------------------------------

    def _fake_mode(self, form: dict) -> str:
        if form.get("grant_type") != "refresh_token":
            return "ok"  # code exchanges succeed: logins are measured, not failed
        with self.lock:
            r = self.fake_rng.random() * sum(w for _, w in REFRESH_MODES)
        for mode, w in REFRESH_MODES:
            if r < w:
                return mode
            r -= w
        return "ok"

    def _id_token(self, record: dict) -> dict:
        form = record["form"]
        if form.get("grant_type") != "authorization_code":
            return {}
        now = int(time.time())
        nonce = form.get("code", "").removeprefix("code-")
        return {"id_token": self.signer.sign({"iss": ISSUER, "aud": CLIENT_ID, "sub": "alice",
                                              "nonce": nonce, "iat": now, "exp": now + 300})}

    # -- setup -------------------------------------------------------------------------------

    def start(self):
        self.fake.start()
        self.upstream.start()
        login = {"authorization_endpoint": "https://idp.example.com/oauth2/authorize",
                 "redirect_uri": f"http://127.0.0.1:{self.port}/auth/callback",
                 "scopes": ["openid", "offline_access"]}
        pc = login_plugin_config(
            self.keys, issuer=ISSUER, audiences=[AUDIENCE],
            required_claims={"token_use": "access"}, token_path="/token",
            authority="idp.example.com", jwks_path=JWKS_PATH, client_id=CLIENT_ID,
            client_secret="soak-secret", login=login, same_site="Lax", timeout_ms=TIMEOUT_MS,
            refresh_margin_s=REFRESH_MARGIN_S, refresh_backoff_s=REFRESH_BACKOFF_S)
        cfg = relay_config(self.upstream.port, self.fake.port, pc, listener_port=self.port)
        wasm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["http_filters"][0]["typed_config"]["config"]
        wasm["failure_policy"] = "FAIL_RELOAD"  # a crash becomes a counted VM reload
        self.envoy = Envoy(cfg, concurrency=2, log_level="warning", component_log_level=None,
                           name="soak").start()
        self.long_at = self.signer.sign(make_claims(exp=int(time.time()) + 7 * 86400))
        # Every worker must hold the keys before traffic starts: a new connection may land on
        # either worker, so 12 fresh connections in a row must all pass (2^-12 to miss one).
        def all_workers_ready() -> bool:
            for _ in range(12):
                with new_http_session() as s:
                    if s.get(self.envoy.url("/api/ready"),
                             headers={"Cookie": f"{AT_COOKIE}={self.long_at}"},
                             timeout=5).status_code != 200:
                        return False
            return True
        wait_until(all_workers_ready, 20, 0.1, "JWKS loaded on every worker")
        self.valid_cookie = (f"{AT_COOKIE}={self.long_at}; "
                             f"{SESSION_COOKIE}={self.keys.seal(self.fake.new_refresh_token())}")
        for _ in range(EXPIRING_BROWSERS):
            self.expiring.append({"jar": self._new_expiring_jar(), "lock": threading.Lock()})

    def stop(self, remove_files: bool = False):
        """Stop everything; `remove_files` also deletes Envoy's temp dir (config, log), else
        its path is printed."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.envoy is not None:
            self.envoy.stop()
            if remove_files:
                shutil.rmtree(self.envoy.tmp, ignore_errors=True)
            else:
                print(f"soak: Envoy's config and log kept in {self.envoy.tmp}", file=sys.stderr)
        self.upstream.stop()
        self.fake.stop()

    def _new_expiring_jar(self) -> Jar:
        """A session whose access token is missing: the first request refreshes."""
        jar = Jar()
        jar.set(SESSION_COOKIE, self.keys.seal(self.fake.new_refresh_token(),
                                               exp=int(time.time()) + 86400))
        return jar

    # -- bookkeeping -------------------------------------------------------------------------

    def record(self, cls: str, status: int, failure: str | None = None):
        with self.lock:
            self.requests[cls] += 1
            self.statuses[cls][status] += 1
            if failure:
                self.failures.append(f"{cls}: {failure}")

    def rt_modes(self, rt: str) -> list[str]:
        with self.fake.lock:
            return [r["mode"] for r in self.fake.requests
                    if r["form"].get("refresh_token") == rt]

    # -- traffic classes ---------------------------------------------------------------------

    def valid(self, http, rng):
        forged = rng.random() < 0.3
        headers = {"Cookie": self.valid_cookie}
        if forged:
            headers["x-user-sub"] = "admin"
        r = http.get(self.envoy.url(f"/api/valid/{rng.randrange(1000)}"), headers=headers,
                     timeout=20, allow_redirects=False)
        failure = None
        if r.status_code != 200:
            failure = f"status {r.status_code}: {r.text[:200]}"
            with self.lock:
                self.lost += 1
        else:
            seen = r.json()["headers"]
            if seen.get("x-user-sub") != "alice" or \
                    seen.get("authorization") != f"Bearer {self.long_at}":
                failure = f"upstream saw x-user-sub={seen.get('x-user-sub')!r}"
        self.record("valid", r.status_code, failure)

    def expiring_request(self, http, rng):
        """One request of a shared expiring browser, or (BURST_SHARE of the time) a page load:
        BURST_SIZE parallel requests with the same cookies, each on its own connection."""
        b = rng.choice(self.expiring)
        with b["lock"]:
            jar: Jar = b["jar"]
            cookie = jar.header()
            sent_rt = self.keys.unseal(jar.get(SESSION_COOKIE))[1]["rt"]
        if rng.random() >= BURST_SHARE:
            return self._expiring_answer(b, sent_rt, self._exp_get(http, cookie, rng))

        def one(seed: int):
            with new_http_session() as own:
                return self._exp_get(own, cookie, random.Random(seed))

        futures = [self.pool.submit(one, rng.randrange(1 << 30)) for _ in range(BURST_SIZE)]
        for f in futures:
            try:
                self._expiring_answer(b, sent_rt, f.result(timeout=30))
            except Exception as e:  # noqa: BLE001 - counted, never swallowed
                self.record("expiring", 0, f"burst request: {e!r}")

    def _exp_get(self, http, cookie: str, rng):
        return http.get(self.envoy.url(f"/api/exp/{rng.randrange(1000)}"),
                        headers={"Cookie": cookie}, timeout=20, allow_redirects=False)

    def _expiring_answer(self, b: dict, sent_rt: str, r):
        failure = None
        if r.status_code == 200:
            cookies = set_cookies(r)
            new_at = cookies.get(AT_COOKIE)
            if new_at is not None and not new_at.clears:
                with b["lock"]:
                    cur = b["jar"].get(AT_COOKIE)
                    # Newest wins: a slow answer must not put an older session back.
                    if cur is None or jwt_claims(new_at.value)["exp"] >= jwt_claims(cur)["exp"]:
                        b["jar"].absorb(r)
        elif r.status_code == 503:
            body = _json(r)
            modes = self.rt_modes(sent_rt)
            if r.headers.get("Retry-After", "").strip().isdigit() and \
                    body.get("error") in DELIBERATE_503_ERRORS and \
                    any(m != "ok" for m in modes):
                with self.lock:
                    self.deliberate_503 += 1
            else:
                failure = f"503 without a failing token endpoint (calls {modes}): {r.text[:200]}"
        elif r.status_code == 401:
            modes = self.rt_modes(sent_rt)
            with b["lock"]:
                if b["jar"].get(SESSION_COOKIE) is not None and \
                        self.keys.unseal(b["jar"].get(SESSION_COOKIE))[1]["rt"] == sent_rt:
                    b["jar"] = self._new_expiring_jar()
            if "invalid_grant" in modes:
                with self.lock:
                    self.revoked.add(sent_rt)
            else:
                with self.lock:
                    self.lost += 1
                failure = f"session lost: 401 {r.text[:200]} (token endpoint calls for its " \
                          f"refresh token: {modes})"
        else:
            failure = f"status {r.status_code}: {r.text[:200]}"
        self.record("expiring", r.status_code, failure)

    def login(self, http, rng):
        jar = Jar()
        nav = {"Accept": NAV_ACCEPT, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
        start = http.get(self.envoy.url("/auth/login?return_to=%2Fapi%2Fwelcome"),
                         headers=dict(nav, **{"Sec-Fetch-Site": "same-origin"}), timeout=20,
                         allow_redirects=False)
        if start.status_code != 302:
            return self.record("login", start.status_code, f"login start: {start.text[:200]}")
        jar.absorb(start)
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(start.headers["Location"]).query))
        cb = "/auth/callback?" + urllib.parse.urlencode({"code": "code-" + q.get("nonce", ""),
                                                         "state": q.get("state", "")})
        done = http.get(self.envoy.url(cb), headers=dict(nav, **{"Sec-Fetch-Site": "cross-site",
                                                                 "Cookie": jar.header()}),
                        timeout=20, allow_redirects=False)
        if done.status_code != 302 or done.headers.get("Location") != "/api/welcome":
            return self.record("login", done.status_code, f"callback: {done.text[:200]}")
        jar.absorb(done)
        api = http.get(self.envoy.url("/api/welcome"), headers={"Cookie": jar.header()},
                       timeout=20, allow_redirects=False)
        if api.status_code != 200:
            return self.record("login", api.status_code, f"first API call: {api.text[:200]}")
        with self.lock:
            self.logins += 1
        # The new session replaces one of the expiring browsers.
        b = rng.choice(self.expiring)
        with b["lock"]:
            b["jar"] = jar
        self.record("login", 200)

    def hostile(self, http, rng):
        case = rng.choice(HOSTILE_CASES)
        try:
            status, ok, detail = case(self, http, rng)
        except Exception as e:  # noqa: BLE001 - a dropped connection is a finding
            status, ok, detail = 0, False, repr(e)
        self.record("hostile", status,
                    None if ok else f"{case.__name__}: status {status} {detail[:200]}")

    # -- sampling ----------------------------------------------------------------------------

    def sample_memory(self):
        stats = self.envoy.stats(r"^server\.memory_")
        rss = 0
        try:
            for line in Path(f"/proc/{self.envoy.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        except OSError:
            pass
        self.memory.append((time.monotonic(), stats.get("server.memory_allocated", 0),
                            stats.get("server.memory_heap_size", 0), rss))

    def vm_stats(self) -> dict[str, int]:
        s = self.envoy.stats(r"^wasm\.")
        return {k: v for k, v in s.items()
                if k.startswith("wasm.edge_token_relay.vm_reload") or
                k in ("wasm.envoy.wasm.runtime.v8.created", "wasm.envoy.wasm.runtime.v8.active")}

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> int:
        t0 = time.monotonic()
        end = t0 + self.seconds
        warm_end = t0 + max(5.0, self.seconds * WARMUP_FRACTION)
        warm_vm: dict[str, int] = {}
        stop = threading.Event()

        def worker(i: int):
            rng = random.Random(self.rng_seed + i)
            actions = {"valid": self.valid, "expiring": self.expiring_request,
                       "login": self.login, "hostile": self.hostile}
            names = [c for c, _ in CLASS_WEIGHTS]
            weights = [w for _, w in CLASS_WEIGHTS]
            with new_http_session() as http:
                while not stop.is_set():
                    cls = rng.choices(names, weights)[0]
                    try:
                        actions[cls](http, rng)
                    except Exception as e:  # noqa: BLE001 - counted, never swallowed
                        self.record(cls, 0, f"exception {e!r}")

        threads = [threading.Thread(target=worker, args=(i,), daemon=True)
                   for i in range(self.workers)]
        for t in threads:
            t.start()
        while time.monotonic() < end:
            time.sleep(min(2.0, max(0.0, end - time.monotonic())))
            self.sample_memory()
            if not warm_vm and time.monotonic() >= warm_end:
                warm_vm = self.vm_stats()
                self.warm_index = len(self.memory) - 1
            if not self.envoy.running:
                self.failures.append("Envoy exited during the soak")
                break
        stop.set()
        for t in threads:
            t.join(30)
        self.elapsed = time.monotonic() - t0
        return self.report(warm_vm)

    # -- verdict -----------------------------------------------------------------------------

    def rotations(self) -> dict:
        """From the token endpoint's record: rotations, attempts, and refresh tokens presented
        again after the call that rotated them."""
        with self.fake.lock:
            reqs = [r for r in self.fake.requests if r["form"].get("grant_type") ==
                    "refresh_token"]
            exchanges = sum(1 for r in self.fake.requests
                            if r["form"].get("grant_type") == "authorization_code")
        by_rt: dict[str, list[str]] = defaultdict(list)
        for r in reqs:
            by_rt[r["form"].get("refresh_token", "")].append(r["mode"])
        reused = {rt[:16]: modes for rt, modes in by_rt.items()
                  if "ok" in modes and modes.index("ok") != len(modes) - 1}
        return {"calls": len(reqs), "rotations": sum(1 for m in by_rt.values() if "ok" in m),
                "modes": Counter(r["mode"] for r in reqs), "reused": reused,
                "exchanges": exchanges}

    def report(self, warm_vm: dict[str, int]) -> int:
        end_vm = self.vm_stats()
        rot = self.rotations()
        metrics = self.envoy.stats("edge_token_relay_")
        evidence = wasm_failure_evidence(self.envoy)
        mib = 1024 * 1024
        warm_i = getattr(self, "warm_index", 0)
        warm = self.memory[warm_i] if self.memory else (0, 0, 0, 0)
        after = self.memory[warm_i:] or [warm]
        last = self.memory[-1] if self.memory else warm
        growth_alloc = (max(m[1] for m in after) - warm[1]) / mib
        growth_rss = (max(m[3] for m in after) - warm[3]) / mib
        restarts = sum(v for k, v in end_vm.items() if k.startswith("wasm.edge_token_relay."))
        created_growth = end_vm.get("wasm.envoy.wasm.runtime.v8.created", 0) - \
            warm_vm.get("wasm.envoy.wasm.runtime.v8.created", 0) if warm_vm else 0
        unexpected_5xx = sum(n for cls, st in self.statuses.items() for s, n in st.items()
                             if s >= 500) - self.deliberate_503

        checks = [
            ("Wasm VM restarts (vm_reload*, v8 VMs created after warm-up, log)",
             restarts == 0 and created_growth == 0 and not evidence,
             f"{restarts} reloads, {created_growth} VMs created, log: {evidence or 'clean'}"),
            (f"memory growth after warm-up < {MEMORY_BOUND_MIB} MiB",
             bool(warm_vm) and growth_alloc < MEMORY_BOUND_MIB and growth_rss < MEMORY_BOUND_MIB,
             f"allocated +{growth_alloc:.1f} MiB, RSS +{growth_rss:.1f} MiB"),
            ("sessions lost outside a deliberate invalid_grant", self.lost == 0,
             f"{self.lost} requests of lost sessions, {len(self.revoked)} sessions ended by a "
             f"deliberate invalid_grant"),
            ("token-endpoint calls per rotation: exactly one (no reuse)", not rot["reused"],
             f"{len(rot['reused'])} refresh tokens presented after their rotation"
             + (f": {dict(list(rot['reused'].items())[:3])}" if rot["reused"] else "")),
            ("5xx other than the deliberate 503s", unexpected_5xx == 0,
             f"{unexpected_5xx} unexpected, {self.deliberate_503} deliberate"),
            ("unexpected answers in any class", not self.failures,
             f"{len(self.failures)}" + (f"; first: {self.failures[:3]}" if self.failures else "")),
        ]

        total = sum(self.requests.values())
        out = [f"soak: {self.elapsed:.0f} s, {self.workers} driver threads, Envoy "
               f"--concurrency 2, seed {self.rng_seed}",
               f"{total} requests ({total / max(self.elapsed, 1):.0f}/s)", "",
               "| class | requests | statuses |", "| --- | ---: | --- |"]
        for cls, _ in CLASS_WEIGHTS:
            st = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses[cls].items()))
            out.append(f"| {cls} | {self.requests[cls]} | {st} |")
        m = lambda name: metrics.get("wasmcustom." + name, 0)  # noqa: E731
        out += ["", "| measure | value |", "| --- | --- |",
                f"| logins completed | {self.logins} (code exchanges {rot['exchanges']}) |",
                f"| refresh calls at the token endpoint | {rot['calls']} "
                f"({', '.join(f'{k} {v}' for k, v in sorted(rot['modes'].items()))}) |",
                f"| rotations (refresh tokens rotated) | {rot['rotations']} |",
                f"| relay refresh_total / success / failed / waiters / reused | "
                f"{m('edge_token_relay_refresh_total')} / "
                f"{m('edge_token_relay_refresh_success_total')} / "
                f"{m('edge_token_relay_refresh_failed_total')} / "
                f"{m('edge_token_relay_refresh_waiters_total')} / "
                f"{m('edge_token_relay_refresh_reused_total')} |",
                f"| deliberate 503s (token endpoint failing) | {self.deliberate_503} |",
                f"| sessions ended by a deliberate invalid_grant | {len(self.revoked)} |",
                f"| requests of lost sessions | {self.lost} |",
                f"| memory_allocated at warm-up / end (MiB) | {warm[1] / mib:.1f} / "
                f"{last[1] / mib:.1f} |",
                f"| memory_heap_size at warm-up / end (MiB) | {warm[2] / mib:.1f} / "
                f"{last[2] / mib:.1f} |",
                f"| RSS at warm-up / end (MiB) | {warm[3] / mib:.1f} / {last[3] / mib:.1f} |",
                f"| Wasm VM restarts | {restarts} (v8 VMs created: "
                f"{warm_vm.get('wasm.envoy.wasm.runtime.v8.created', '?')} at warm-up, "
                f"{end_vm.get('wasm.envoy.wasm.runtime.v8.created', '?')} at end) |", ""]
        for name, ok, detail in checks:
            out.append(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
        passed = all(ok for _, ok, _ in checks)
        out.append("soak: PASSED" if passed else "soak: FAILED")
        print("\n".join(out), flush=True)
        if not passed and self.failures:
            print("\nunexpected answers (first 20):", *self.failures[:20], sep="\n", flush=True)
        return 0 if passed else 1


def _json(resp) -> dict:
    try:
        body = resp.json()
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}


# --------------------------------------------------------------------------------------------
# Hostile requests: each returns (status, acceptable, detail)
# --------------------------------------------------------------------------------------------

REFUSED = (400, 401)


def _get(soak: Soak, http, path: str, headers: dict):
    return http.get(soak.envoy.url(path), headers=headers, timeout=20, allow_redirects=False)


def garbage_access_token(soak, http, rng):
    junk = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-_.") for _ in range(200))
    r = _get(soak, http, "/api/g", {"Cookie": f"{AT_COOKIE}={junk}"})
    return r.status_code, r.status_code == 401, r.text


def garbage_session(soak, http, rng):
    r = _get(soak, http, "/api/g", {"Cookie": f"{SESSION_COOKIE}={b64url(os.urandom(300))}"})
    cleared = SESSION_COOKIE in set_cookies(r) and set_cookies(r)[SESSION_COOKIE].clears
    return r.status_code, r.status_code == 401 and cleared, r.text


def tampered_session(soak, http, rng):
    sealed = soak.keys.seal(f"fake-rt-tampered-{rng.randrange(1 << 30)}")
    parts = sealed.split(".")
    ct = list(parts[3])
    i = rng.randrange(len(ct))
    ct[i] = "A" if ct[i] != "A" else "B"
    parts[3] = "".join(ct)
    r = _get(soak, http, "/api/t", {"Cookie": f"{SESSION_COOKIE}={'.'.join(parts)}"})
    return r.status_code, r.status_code == 401, r.text


def forged_claims_without_token(soak, http, rng):
    r = _get(soak, http, "/api/f", {"x-user-sub": "admin", "Authorization": "Bearer forged"})
    return r.status_code, r.status_code == 401, r.text


def forged_claims_with_token(soak, http, rng):
    r = _get(soak, http, "/api/f", {"Cookie": f"{AT_COOKIE}={soak.long_at}",
                                    "x-user-sub": "admin", "X-User-Sub": "root"})
    if r.status_code != 200:
        return r.status_code, False, r.text
    seen = r.json()["headers"].get("x-user-sub")
    return 200, seen == "alice", f"upstream saw x-user-sub={seen!r}"


def alg_none(soak, http, rng):
    tok = encode_jws({"alg": "none", "typ": "JWT"}, make_claims(sub="admin"))
    r = _get(soak, http, "/api/n", {"Cookie": f"{AT_COOKIE}={tok}"})
    return r.status_code, r.status_code == 401, r.text


def oversized_cookie(soak, http, rng):
    size = rng.choice((20_000, 70_000))
    r = raw_request(soak.envoy.port, "/api/o", [("Cookie", f"{AT_COOKIE}=" + "a" * size)])
    return r.status_code, r.status_code in (400, 401, 431), r.body[:200].decode("latin-1")


def many_cookies(soak, http, rng):
    cookie = "; ".join(f"c{i}={i}" for i in range(300)) + f"; {AT_COOKIE}=x.y.z"
    r = _get(soak, http, "/api/m", {"Cookie": cookie})
    return r.status_code, r.status_code in (401, 431), r.text


def cookie_not_utf8(soak, http, rng):
    r = raw_request(soak.envoy.port, "/api/u", [("Cookie", b"a=\xff\xfe; " +
                                                  AT_COOKIE.encode() + b"=\xc3\x28")])
    return r.status_code, r.status_code in REFUSED, r.body[:200].decode("latin-1")


PATH_TRICKS = ("/api/public/../private", "/api/public/%2e%2e/private", "//api///private",
               "/api/public/..%2Fprivate", "/api/public/..%5Cprivate", "/api/./private",
               "/x/../api/private")


def path_trick(soak, http, rng):
    path = rng.choice(PATH_TRICKS)
    r = raw_request(soak.envoy.port, path, [])
    # Protected after normalisation and no token: refused, or redirected to the plain form.
    return r.status_code, r.status_code in (301, 302, 307, 308, 400, 401, 404), \
        f"{path}: {r.body[:150].decode('latin-1')}"


HOSTILE_CASES = (garbage_access_token, garbage_session, tampered_session,
                 forged_claims_without_token, forged_claims_with_token, alg_none,
                 oversized_cookie, many_cookies, cookie_not_utf8, path_trick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_S", "600")),
                    help="duration (default $SOAK_S or 600)")
    ap.add_argument("--workers", type=int, default=6, help="driver threads (default 6)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    args = ap.parse_args(argv)
    soak = Soak(args.seconds, args.workers, args.seed)
    code = 1
    try:
        soak.start()
        code = soak.run()
        return code
    finally:
        soak.stop(remove_files=code == 0)  # after a failure the log stays for a look


if __name__ == "__main__":
    sys.exit(main())
