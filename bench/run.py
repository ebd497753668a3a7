#!/usr/bin/env python3
"""Load benchmark: wrk against one Envoy worker, with and without the relay filter.

Configurations (see envoy_configs.py and README.md):
  a  Envoy, no filter                       c  jwt_authn with its JWT cache
  n  a Wasm filter that does nothing        d  jwt_authn without its cache
     (bench/nop/, built here: the floor)    e  relay, a fresh RS256 token per request
  p  a Wasm filter making the relay's       e-ES256, e-EdDSA  the same with ES256 / EdDSA
     cache-hit host calls (bench/probe/)    f  Envoy's oauth2 filter, valid signed cookies
  b  relay, same token (cache hits)

--guard (what `make bench-quick` runs): a, n, p, b only, short runs, then the ratios, and a
non-zero exit when b/n falls below the value recorded in bench/guard.json by more than the
margin recorded there.

Method: a fresh Envoy (`--concurrency 1 -l warning`, pinned to one CPU) per run, wrk pinned
to the other CPU; pre-flight requests prove the configuration accepts the token (200) and
rejects a missing or forged one (401); warm-up, then the measured window; configurations
alternate round-robin over the rounds; medians are reported. Any non-2xx answer or socket
error during a run fails the benchmark.

Usage: .venv/bin/python bench/run.py [--rounds 3] [--duration 10] [--warmup 3]
                                     [--only a,n,b] [--quick]
The Envoy binary is $ENVOY, else .venv/bin/envoy, else `envoy` on PATH.
Results: Markdown on stdout, and Markdown + raw JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import base64
import hashlib
import hmac
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))
sys.path.insert(0, str(BENCH_DIR))

import support  # noqa: E402  (tests/e2e/support.py: JWT minting, the Envoy launcher)
import envoy_configs as ec  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
# (n): the do-nothing Wasm filter, a crate of its own under bench/nop (target/ git-ignored).
NOP_DIR = BENCH_DIR / "nop"
# (n) and (p) build into one target dir under the repository's target/ (git-ignored), so the
# standard library for wasm32-wasip1 is compiled once for both.
BENCH_TARGET = REPO_ROOT / "target" / "bench"
NOP_WASM = BENCH_TARGET / "wasm32-wasip1" / "release" / "bench_nop.wasm"
# (p): the host-call probe, a crate of its own under bench/probe.
PROBE_DIR = BENCH_DIR / "probe"
PROBE_WASM = BENCH_TARGET / "wasm32-wasip1" / "release" / "bench_probe.wasm"
GUARD_FILE = BENCH_DIR / "guard.json"
GUARD_CONFIGS = ("a", "n", "p", "b")
LUA_REPORT = BENCH_DIR / "lua" / "report.lua"
LUA_FRESH_TOKENS = BENCH_DIR / "lua" / "fresh_tokens.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SUB = ec.BENCH_SUB

# Tokens for (e): enough that no token repeats within one Envoy's life (warm-up + measured
# window), assuming the relay serves cache misses at up to this rate. After each (e) run the
# list is topped up to twice the most any run used, and a run that would reuse a token fails
# (see run_wrk), so this is a sizing guess, not a silent assumption. A 2-vCPU machine serves
# RS256 and EdDSA misses at 10,000-11,500 per second; the guess leaves room for one twice as fast.
MAX_MISS_RPS = 25000

# Ratios reported, as (numerator, denominator, what it means).
RATIOS = (
    ("n", "a", "do-nothing Wasm filter vs bare Envoy: the ceiling for any Wasm filter"),
    ("b", "a", "relay (cache hit) vs bare Envoy"),
    ("b", "p", "relay (cache hit) vs its own host calls alone: the cost of its logic"),
    ("b", "n", "relay (cache hit) vs the do-nothing Wasm filter: how close to the floor"),
    ("b", "c", "relay vs jwt_authn with its cache"),
    ("b", "d", "relay vs jwt_authn without cache"),
    ("b", "f", "relay vs Envoy's oauth2 filter (valid cookies, bearer forwarded)"),
    ("e", "a", "relay, every request an RS256 cache miss, vs bare Envoy"),
)
# Differences of Envoy CPU µs/req reported under the ratios: (key, x, y, what x - y means).
DIFFS = (
    ("wasm_floor_us", "n", "a", "any Wasm filter, doing nothing: (n) − (a)"),
    ("host_calls_us", "p", "n", "the relay's cache-hit host calls: (p) − (n)"),
    ("relay_logic_us", "b", "p", "the relay's own logic on a cache hit: (b) − (p)"),
    ("relay_own_us", "b", "n", "the relay's work beyond any Wasm filter: (b) − (n)"),
    ("relay_total_us", "b", "a", "the relay in all, cache hit: (b) − (a)"),
    ("cache_miss_us", "e", "b", "cold RS256 verification: (e) − (b)"),
    ("cache_miss_es256_us", "e-ES256", "b", "cold ES256 verification: (e-ES256) − (b)"),
    ("cache_miss_eddsa_us", "e-EdDSA", "b", "cold EdDSA verification: (e-EdDSA) − (b)"),
)

NOISY_SPREAD = 0.10      # (max - min) / median of req/s across rounds
NOISY_OTHER_CPU = 0.10   # share of Envoy's core busy with something other than Envoy
WRK_SATURATED = 0.95     # wrk this busy on its core: the load generator may be the limit


class BenchError(RuntimeError):
    """The benchmark cannot produce a trustworthy number: stop and say why."""


# --------------------------------------------------------------------------------------------
# Processes and /proc
# --------------------------------------------------------------------------------------------


def pinned(cpu: int, nice: int) -> list[str]:
    """Command prefix: run on `cpu` only, at niceness `nice` (both exec: the pid stays)."""
    prefix = ["nice", "-n", str(nice)] if nice else []
    return prefix + ["taskset", "-c", str(cpu)]


class PinnedEnvoy(support.Envoy):
    """support.Envoy started under `taskset -c <cpu>` (and `nice`)."""

    def __init__(self, config: dict, *, cpu: int, nice: int = 0, **kw: Any):
        super().__init__(config, **kw)
        self.cpu = cpu
        self.nice = nice

    def command(self) -> list[str]:
        return pinned(self.cpu, self.nice) + super().command()


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


def cpu_line_ticks(cpu: int) -> tuple[int, int]:
    """(busy, total) ticks of one CPU from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                vals = [int(v) for v in line.split()[1:]]
                idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
                total = sum(vals[:8])
                return total - idle, total
    raise BenchError(f"cpu{cpu} not found in /proc/stat")


def check_affinity(pid: int, cpu: int) -> int:
    """Every thread of `pid` may run on `cpu` only; returns the thread count."""
    tids = os.listdir(f"/proc/{pid}/task")
    for tid in tids:
        try:
            aff = os.sched_getaffinity(int(tid))
        except ProcessLookupError:
            continue
        if aff != {cpu}:
            raise BenchError(f"Envoy thread {tid} has CPU affinity {sorted(aff)}, expected [{cpu}]")
    return len(tids)


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (out.stdout + out.stderr).strip().splitlines()
    return next((ln.strip() for ln in text if ln.strip()), "unknown")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------------------------
# Building (n), the do-nothing filter
# --------------------------------------------------------------------------------------------

# The recipe of the Makefile's `wasm` target (see docs/building.md): rustup's
# wasm32-wasip1 target when it is installed, else Debian's rustc-web building std itself.
DEB_RUSTFLAGS = ("-C linker=/usr/lib/llvm-16/bin/wasm-ld -C link-self-contained=no "
                 "-L native=/usr/lib/wasm32-wasi -Zunstable-options -Cpanic=immediate-abort")
# The Makefile's DEB_STD_SPEED: the standard library built for speed, as for the filter.
DEB_STD_SPEED = [arg for crate in ("core", "alloc", "std")
                 for arg in ("--config", f"profile.release.package.{crate}.opt-level=3")]
DEB_TOOLCHAIN = ("/usr/bin/cargo", "/usr/bin/rustc", "/usr/lib/llvm-16/bin/wasm-ld",
                 "/usr/lib/wasm32-wasi", "/usr/lib/rustlib/src/rust/library")
WASM_OPT_FEATURES = ["--enable-bulk-memory", "--enable-sign-ext", "--enable-mutable-globals",
                     "--enable-nontrapping-float-to-int"]


def rustup_has_wasm_target() -> bool:
    """Whether rustup has the wasm32-wasip1 target installed (the Makefile's test)."""
    try:
        out = subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True,
                             text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "wasm32-wasip1" in out.stdout.split()


def build_nop(dest: Path) -> dict:
    """(n): bench/nop, see build_bench_module."""
    return build_bench_module(NOP_DIR, NOP_WASM, dest, "do-nothing Wasm filter (n)")


def build_probe(dest: Path, repeat: str | None = None, whole_map: bool = False) -> dict:
    """(p): bench/probe; `repeat` ("<step>=<n>") builds the variant that repeats one step,
    `whole_map` the one that writes the request headers as one replacement of the map."""
    extra = {"BENCH_PROBE_REPEAT": repeat} if repeat else {}
    if whole_map:
        extra["BENCH_PROBE_WHOLE_MAP"] = "1"
    return build_bench_module(PROBE_DIR, PROBE_WASM, dest, "host-call probe (p)", extra)


def build_bench_module(crate: Path, built: Path, dest: Path, what: str,
                       extra_env: dict[str, str] | None = None) -> dict:
    """Builds a bench crate (cargo is incremental: a no-op when nothing changed) with the same
    toolchain, flags and release profile as the filter, then, like `make wasm`, runs
    `wasm-opt -Oz` on it, writing the result to `dest`. Returns how it was built."""
    env = dict(os.environ)
    env.pop("BENCH_PROBE_REPEAT", None)
    env.pop("BENCH_PROBE_WHOLE_MAP", None)
    env.update(extra_env or {})
    target_dir = BENCH_TARGET
    if rustup_has_wasm_target():
        recipe = "rustup wasm32-wasip1"
        cmd = ["cargo", "build", "--release", "--target", "wasm32-wasip1", "--lib"]
    else:
        recipe = "Debian rustc-web, -Zbuild-std"
        missing = [p for p in DEB_TOOLCHAIN if not Path(p).exists()]
        if missing:
            raise BenchError(f"cannot build the {what}: {', '.join(missing)} "
                             "missing. `make toolchain` installs them (or leave it out with "
                             "--only).")
        cmd = ["/usr/bin/cargo", "build", "--release", "--target", "wasm32-wasip1", "--lib",
               "-Zbuild-std=std,panic_abort", *DEB_STD_SPEED]
        env.update(RUSTC="/usr/bin/rustc", RUSTC_BOOTSTRAP="1", RUSTFLAGS=DEB_RUSTFLAGS)
    # Its own target dir, whatever CARGO_TARGET_DIR says: the path below must hold.
    cmd += ["--target-dir", str(target_dir)]
    print(f"building the {what} in {crate.relative_to(REPO_ROOT)} ({recipe}"
          + (f", {extra_env}" if extra_env else "") + ") ...", file=sys.stderr, flush=True)
    try:
        # cargo's progress goes to our stderr; the first build (std from source) takes ~1 min.
        proc = subprocess.run(cmd, cwd=crate, env=env, stdout=sys.stderr, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"building the {what} failed: {e}") from None
    if proc.returncode != 0 or not built.is_file():
        raise BenchError(f"building the {what} failed (exit {proc.returncode}): "
                         f"{' '.join(cmd)} in {crate}")
    wasm_opt = shutil.which("wasm-opt")
    if wasm_opt:
        out = subprocess.run([wasm_opt, "-Oz", *WASM_OPT_FEATURES, "-o", str(dest),
                              str(built)], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise BenchError(f"wasm-opt on {built} failed:\n{out.stderr}")
    else:
        shutil.copyfile(built, dest)
    return {"recipe": recipe, "wasm_opt": bool(wasm_opt)}


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------


def _jws(key: support.KeyPair, claims: dict) -> str:
    """Sign without support.KeyPair.sign, which keeps every token in a global list."""
    header = json.dumps(key.header(), separators=(",", ":"))
    payload = json.dumps(claims, separators=(",", ":"))
    signing_input = f"{support.b64url(header)}.{support.b64url(payload)}"
    return f"{signing_input}.{support.b64url(key.raw_signature(signing_input.encode()))}"


def bench_claims(jti: str, now: int) -> dict:
    return support.make_claims(sub=SUB, iat=now, exp=now + 3600, jti=jti)


_worker_key: support.KeyPair | None = None


def _mint_init(pem: bytes, alg: str, kid: str):
    global _worker_key
    _worker_key = support.KeyPair.from_pem(pem, alg, kid)


def _mint_range(args: tuple[int, int, int]) -> list[str]:
    start, stop, now = args
    assert _worker_key is not None
    return [_jws(_worker_key, bench_claims(f"miss-{i}", now)) for i in range(start, stop)]


def mint_tokens(key: support.KeyPair, start: int, stop: int, path: Path,
                cpus: set[int]) -> float:
    """Append distinct tokens (signed with `key`) number `start`..`stop-1` (one per line) to `path`, signing
    on all of `cpus`; returns seconds taken."""
    t0 = time.monotonic()
    now = int(time.time())
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)  # the pool's processes inherit this
    try:
        chunk = 2000
        ranges = [(s, min(s + chunk, stop), now) for s in range(start, stop, chunk)]
        with concurrent.futures.ProcessPoolExecutor(
                max_workers=len(cpus), initializer=_mint_init,
                initargs=(key.private_pem(), key.alg, key.kid)) as pool, open(path, "a") as out:
            for tokens in pool.map(_mint_range, ranges):
                out.write("\n".join(tokens))
                out.write("\n")
    finally:
        os.sched_setaffinity(0, own)
    return time.monotonic() - t0


def oauth2_cookie(token: str, expires: int) -> str:
    """The Cookie header Envoy's oauth2 filter sets after a login (tokens not encrypted): the
    bearer token, its expiry, and their HMAC-SHA256 under the filter's HMAC secret over
    "<cookie domain>\\n<expires>\\n<access token>\\n<id token>\\n<refresh token>" (base64)."""
    payload = "\n".join([ec.OAUTH2_COOKIE_DOMAIN, str(expires), token, "", ""])
    mac = hmac.new(ec.OAUTH2_HMAC_SECRET.encode(), payload.encode(), hashlib.sha256).digest()
    return (f"BearerToken={token}; OauthHMAC={base64.b64encode(mac).decode()}; "
            f"OauthExpires={expires}")


def forged(token: str) -> str:
    """The token with one character in the middle of its signature changed."""
    head, _, sig = token.rpartition(".")
    mid = len(sig) // 2
    swap = "A" if sig[mid] != "A" else "B"
    return f"{head}.{sig[:mid]}{swap}{sig[mid + 1:]}"


# --------------------------------------------------------------------------------------------
# One run: fresh Envoy, pre-flight, warm-up, measured window
# --------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.key = support.KeyPair.generate("RS256", kid="bench-rs256")
        self.jwks = support.jwks_of([self.key])
        # The (e-*) configurations: one key per algorithm, each alone in its configuration's
        # key set, and a token list each.
        self.miss_keys = {"RS256": self.key,
                          "ES256": support.KeyPair.generate("ES256", kid="bench-es256"),
                          "EdDSA": support.KeyPair.generate("EdDSA", kid="bench-eddsa")}
        self.miss_jwks = {alg: support.jwks_of([k]) for alg, k in self.miss_keys.items()}
        now = int(time.time())
        self.token = _jws(self.key, bench_claims("hit", now))
        self.oauth2_cookie = oauth2_cookie(self.token, now + 3600)
        self.tokens_file = {alg: workdir / f"tokens-{alg}.txt" for alg in self.miss_keys}
        self.tokens_count = {alg: 0 for alg in self.miss_keys}
        self.mint_seconds = 0.0
        self.cpus = os.sched_getaffinity(0)
        self.wrk = os.environ.get("WRK") or shutil.which("wrk") or ""
        try:
            self.envoy_bin = support.find_envoy()
        except FileNotFoundError as e:
            raise BenchError(str(e)) from None
        # Every run loads this snapshot of the module, so a rebuild during the benchmark
        # cannot mix two builds into one table.
        self.wasm_copy = workdir / "edge_token_relay.wasm"
        if support.WASM_PATH.is_file():
            shutil.copyfile(support.WASM_PATH, self.wasm_copy)
        # (b2)'s module (--compare), snapshotted the same way.
        self.compare_copy = workdir / "compare.wasm"
        self.compare_source = args.compare
        if args.compare is not None:
            shutil.copyfile(args.compare, self.compare_copy)
        # (n)'s and (p)'s modules, built into the work directory when selected.
        self.nop_copy = workdir / "bench_nop.wasm"
        self.probe_copy = workdir / "bench_probe.wasm"

    def envoy_config(self, name: str, originals: bool = False) -> dict:
        """`name`'s Envoy configuration, loading the snapshots of the modules (or, for the
        results file, the paths they were copied from)."""
        if originals:
            relay, compare, nop, probe = (support.WASM_PATH, self.compare_source, NOP_WASM,
                                          PROBE_WASM)
        else:
            relay, compare, nop, probe = (self.wasm_copy, self.compare_copy, self.nop_copy,
                                          self.probe_copy)
        return ec.config_for(name, jwks=self.jwks,
                             wasm_path=compare if name == ec.COMPARE_CONFIG else relay,
                             nop_wasm_path=nop, probe_wasm_path=probe, token=self.token,
                             miss_jwks=self.miss_jwks)

    def ensure_tokens(self, alg: str, n: int):
        """At least `n` distinct `alg` tokens in that algorithm's tokens file."""
        if n <= self.tokens_count[alg]:
            return
        print(f"minting {n - self.tokens_count[alg]:,} {alg} tokens ...", file=sys.stderr,
              flush=True)
        took = mint_tokens(self.miss_keys[alg], self.tokens_count[alg], n,
                           self.tokens_file[alg], self.cpus)
        self.mint_seconds += took
        self.tokens_count[alg] = n
        print(f"  done in {took:.1f} s", file=sys.stderr, flush=True)

    # -- wrk ---------------------------------------------------------------------------------

    def run_wrk(self, url_base: str, name: str, seconds: int, first_token: int = 0) -> dict:
        a = self.args
        cmd = pinned(a.wrk_cpu, a.nice) + [self.wrk, "-t", str(a.threads),
               "-c", str(a.connections), "-d", f"{seconds}s", "--latency", "--timeout", "2s"]
        if name in ec.MISS_CONFIGS:
            cmd += ["-s", str(LUA_FRESH_TOKENS), url_base + ec.BENCH_PATH, "--",
                    str(self.tokens_file[ec.MISS_CONFIGS[name]]), str(first_token),
                    ec.BENCH_PATH]
        else:
            cookie = (self.oauth2_cookie if name in ec.OAUTH2_CONFIGS
                      else f"{ec.AT_COOKIE}={self.token}")
            cmd += ["-H", f"Cookie: {cookie}", "-s", str(LUA_REPORT), url_base + ec.BENCH_PATH]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        result = None
        for line in proc.stdout.splitlines():
            if line.startswith("BENCH_RESULT "):
                result = json.loads(line[len("BENCH_RESULT "):])
        text = "\n".join(ln for ln in proc.stdout.splitlines()
                         if not ln.startswith("BENCH_RESULT "))
        if proc.returncode != 0 or result is None:
            raise BenchError(f"wrk failed for ({name}) (exit {proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
        result["text"] = text
        errs = result["errors"]
        if errs["status"]:
            raise BenchError(f"({name}): wrk saw {errs['status']} non-2xx/3xx responses; a "
                             f"benchmark of error answers is worthless.\n{text}")
        if any(errs[k] for k in ("connect", "read", "write", "timeout")):
            raise BenchError(f"({name}): wrk saw socket errors {errs}\n{text}")
        if result["requests"] <= 0:
            raise BenchError(f"({name}): wrk completed no request\n{text}")
        if name in ec.MISS_CONFIGS and first_token + result["issued"] > result["tokens"]:
            raise BenchError(
                f"({name}): {first_token + result['issued']} requests issued but only "
                f"{result['tokens']} distinct tokens were minted, so some tokens repeated and "
                f"hit the relay's cache. Rerun with --tokens "
                f"{2 * (first_token + result['issued'])}.")
        return result

    # -- pre-flight --------------------------------------------------------------------------

    def preflight(self, env: PinnedEnvoy, name: str) -> dict:
        """Prove the configuration does what the benchmark claims before timing it."""
        http = support.new_http_session()
        problems: list[str] = []

        oauth2 = name in ec.OAUTH2_CONFIGS
        # The token a request of this configuration carries (an (e-*) configuration's first
        # token is its list's first line, which the measured runs then use: a cache entry for it
        # changes nothing, as the warm-up starts there too).
        if name in ec.MISS_CONFIGS and ec.MISS_CONFIGS[name] != "RS256":
            alg = ec.MISS_CONFIGS[name]
            token = _jws(self.miss_keys[alg], bench_claims("preflight", int(time.time())))
        else:
            token = self.token

        def get(path: str, tok: str | None):
            if tok is None:
                headers = {}
            elif oauth2:
                headers = {"Cookie": self.oauth2_cookie if tok == token
                           else oauth2_cookie(tok, int(time.time()) + 3600).replace(
                               "OauthHMAC=", "OauthHMAC=x")}
            else:
                headers = {"Cookie": f"{ec.AT_COOKIE}={tok}"}
            return http.get(env.url(path), headers=headers, timeout=10, allow_redirects=False)

        def expect(what: str, resp, status: int):
            if resp.status_code != status:
                problems.append(f"{what}: expected {status}, got {resp.status_code} "
                                f"{resp.text[:200]!r}")

        r = get(ec.BENCH_PATH, token)
        expect(f"GET {ec.BENCH_PATH} with a valid token", r, 200)
        if r.status_code == 200 and r.text != ec.RESPONSE_BODY:
            problems.append(f"GET {ec.BENCH_PATH}: unexpected body {r.text[:200]!r}")
        probe = get(ec.PROBE_PATH, token)
        expect(f"GET {ec.PROBE_PATH} with a valid token", probe, 200)
        seen = {"authorization": probe.headers.get(ec.PROBE_AUTH_HEADER),
                "x-user-sub": probe.headers.get(ec.PROBE_SUB_HEADER)}
        if name in ec.RELAY_CONFIGS + ec.PROBE_CONFIGS + ec.OAUTH2_CONFIGS:
            if seen["authorization"] != f"Bearer {token}":
                problems.append(f"({name}) did not forward `Authorization: Bearer <token>` "
                                f"(route saw {str(seen['authorization'])[:60]!r})")
        if (name in ec.RELAY_CONFIGS + ec.JWT_AUTHN_CONFIGS + ec.PROBE_CONFIGS
                and seen["x-user-sub"] != SUB):
            problems.append(f"the `sub` claim was not forwarded as x-user-sub "
                            f"(route saw {seen['x-user-sub']!r})")
        missing = get(ec.BENCH_PATH, None)
        bad = get(ec.BENCH_PATH, forged(token))
        if oauth2:
            # No valid cookies: the oauth2 filter starts a login (302 to the IdP).
            expect("missing cookies", missing, 302)
            expect("forged HMAC", bad, 302)
        elif name in ec.PROBE_CONFIGS:
            # Checks nothing: everything passes (with the relay's header writes).
            expect("no token check, no cookie", missing, 200)
            expect("no token check, forged signature", bad, 200)
        elif name in ("a",) + ec.NOP_CONFIGS:
            # Nothing checks tokens: everything passes, and nothing is forwarded.
            expect("no token check, no cookie", missing, 200)
            expect("no token check, forged signature", bad, 200)
            if seen["authorization"] is not None:
                problems.append(f"({name}) set an Authorization header: "
                                f"{seen['authorization'][:60]!r}")
        else:
            expect("missing cookie", missing, 401)
            expect("forged signature", bad, 401)
        http.close()
        if name in ec.WASM_PLUGIN_NAMES:
            # The module is loaded and running in a V8 VM (not silently skipped).
            active = env.stats(r"^wasm\.envoy\.wasm\.runtime\.v8\.active$").get(
                "wasm.envoy.wasm.runtime.v8.active", 0)
            if active < 1:
                problems.append(f"no active V8 Wasm VM (wasm.envoy.wasm.runtime.v8.active = "
                                f"{active})")
        if problems:
            raise BenchError(f"pre-flight of ({name}) failed:\n  - " + "\n  - ".join(problems))
        shown = {k: (v[:24] + "...") if v and len(v) > 27 else v for k, v in seen.items()}
        return {"valid": r.status_code, "missing_cookie": missing.status_code,
                "forged": bad.status_code, "forwarded": shown}

    # -- one run -----------------------------------------------------------------------------

    def run_one(self, name: str, round_no: int) -> dict:
        a = self.args
        env = PinnedEnvoy(self.envoy_config(name), cpu=a.envoy_cpu, nice=a.nice, concurrency=1,
                          log_level="warning", component_log_level=None,
                          name=f"bench-{name}{round_no}", binary=self.envoy_bin,
                          ready_timeout=60, workdir=self.workdir)
        env.start()
        try:
            pid = env.proc.pid  # type: ignore[union-attr]
            threads = check_affinity(pid, a.envoy_cpu)
            pre = self.preflight(env, name)
            url = f"http://127.0.0.1:{env.port}"
            stats_re = rf"^http\.{ec.STAT_PREFIX}\.(downstream_rq_|jwt_authn\.)"
            stats0 = env.stats(stats_re)

            warm = self.run_wrk(url, name, a.warmup) if a.warmup > 0 else None
            first = warm["issued"] if (warm and name in ec.MISS_CONFIGS) else 0

            busy0, total0 = cpu_line_ticks(a.envoy_cpu)
            wbusy0, wtotal0 = cpu_line_ticks(a.wrk_cpu)
            ticks0 = proc_cpu_ticks(pid)
            kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            res = self.run_wrk(url, name, a.duration, first_token=first)
            t1 = time.monotonic()
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            ticks1 = proc_cpu_ticks(pid)
            busy1, total1 = cpu_line_ticks(a.envoy_cpu)
            wbusy1, wtotal1 = cpu_line_ticks(a.wrk_cpu)

            stats1 = env.stats(stats_re)
            evidence = (support.wasm_failure_evidence(env, ec.WASM_PLUGIN_NAMES[name])
                        if name in ec.WASM_PLUGIN_NAMES else {})
        except BenchError as e:
            env.stop()
            raise BenchError(f"{e}\n--- Envoy log ({env.log_path}) ---\n"
                             f"{env.log_tail(40)}") from None
        finally:
            env.stop()
        delta = {k: stats1.get(k, 0) - stats0.get(k, 0) for k in stats1}
        p = f"http.{ec.STAT_PREFIX}."
        non2xx = sum(delta.get(f"{p}downstream_rq_{c}xx", 0) for c in (1, 3, 4, 5))
        ok2xx = delta.get(f"{p}downstream_rq_2xx", 0)
        sent = res["requests"] + (warm["requests"] if warm else 0)
        if non2xx or ok2xx < sent:
            raise BenchError(f"({name}) round {round_no}: Envoy answered {ok2xx} 2xx and "
                             f"{non2xx} other responses for {sent} completed wrk requests")
        if evidence:
            raise BenchError(f"({name}) round {round_no}: the Wasm VM failed: {evidence}")
        log_problems = [ln for ln in env.log_text().splitlines()
                        if "[critical]" in ln or "[error]" in ln]
        if log_problems:
            raise BenchError(f"({name}) round {round_no}: Envoy logged errors:\n"
                             + "\n".join(log_problems[:20]))
        warnings = [ln for ln in env.log_text().splitlines() if "[warning]" in ln]
        shutil.rmtree(env.tmp, ignore_errors=True)

        cpu_s = (ticks1 - ticks0) / CLK_TCK
        window = t1 - t0
        other = ((busy1 - busy0) - (ticks1 - ticks0)) / max(1, total1 - total0)
        wrk_s = res["duration_us"] / 1e6
        # taskset execs wrk, so the only child reaped in the window is wrk itself.
        wrk_cpu = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
        wrk_other = ((wbusy1 - wbusy0) / CLK_TCK - wrk_cpu) / max(1, wtotal1 - wtotal0) * CLK_TCK
        run = {
            "config": name,
            "round": round_no,
            "requests": res["requests"],
            "rps": res["requests"] / wrk_s,
            "latency_us": res["latency_us"],
            "envoy_cpu_s": cpu_s,
            "cpu_us_per_request": cpu_s * 1e6 / res["requests"],
            "envoy_cpu_utilisation": cpu_s / window,
            "window_s": window,
            "wrk_duration_s": wrk_s,
            "envoy_core_other_busy": max(0.0, other),
            "wrk_cpu_utilisation": wrk_cpu / window,
            "wrk_core_other_busy": max(0.0, wrk_other),
            "envoy_threads": threads,
            "preflight": pre,
            "stats_delta": delta,
            "warmup": {k: warm[k] for k in ("requests", "duration_us", "issued")} if warm else None,
            "first_token": first if name in ec.MISS_CONFIGS else None,
            "tokens_issued": (first + res["issued"]) if name in ec.MISS_CONFIGS else None,
            "envoy_warnings": warnings[:10],
            "wrk_text": res["text"],
        }
        return run


# --------------------------------------------------------------------------------------------
# Summary and report
# --------------------------------------------------------------------------------------------


def summarize(runs: list[dict], names: list[str]) -> dict:
    per: dict[str, dict] = {}
    for name in names:
        rs = [r for r in runs if r["config"] == name]
        if not rs:
            continue
        rps = [r["rps"] for r in rs]
        med = statistics.median(rps)
        per[name] = {
            "description": ec.DESCRIPTIONS[name],
            "rounds": len(rs),
            "rps": med,
            "rps_per_round": rps,
            "rps_spread": (max(rps) - min(rps)) / med if med else 0.0,
            "p50_ms": statistics.median(r["latency_us"]["p50"] for r in rs) / 1000,
            "p99_ms": statistics.median(r["latency_us"]["p99"] for r in rs) / 1000,
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in rs),
            # Other work on the machine only ever adds CPU time: the fastest round is the one
            # least disturbed (the guard's statistic).
            "cpu_us_per_request_fastest": min(r["cpu_us_per_request"] for r in rs),
            "envoy_cpu_utilisation": statistics.median(r["envoy_cpu_utilisation"] for r in rs),
            "envoy_core_other_busy_max": max(r["envoy_core_other_busy"] for r in rs),
            "wrk_cpu_utilisation": statistics.median(r["wrk_cpu_utilisation"] for r in rs),
            "wrk_core_other_busy_max": max(r.get("wrk_core_other_busy", 0.0) for r in rs),
        }
    ratios: dict[str, float | None] = {}
    cpu_ratios: dict[str, float | None] = {}
    for num, den, _ in RATIOS:
        both = num in per and den in per
        ratios[f"{num}/{den}"] = per[num]["rps"] / per[den]["rps"] if both else None
        # The same comparison from CPU cost: the req/s ratio a saturated core would give.
        cpu_ratios[f"{num}/{den}"] = (per[den]["cpu_us_per_request"]
                                      / per[num]["cpu_us_per_request"] if both else None)

    def cpu_diff(x: str, y: str) -> float | None:
        return (per[x]["cpu_us_per_request"] - per[y]["cpu_us_per_request"]
                if x in per and y in per else None)

    noisy = [f"({n}) req/s varies {p['rps_spread']:.0%} across rounds"
             for n, p in per.items() if p["rounds"] > 1 and p["rps_spread"] > NOISY_SPREAD]
    noisy += [f"({n}) Envoy's core was up to {p['envoy_core_other_busy_max']:.0%} busy with "
              f"other work" for n, p in per.items()
              if p["envoy_core_other_busy_max"] > NOISY_OTHER_CPU]
    noisy += [f"({n}) wrk's core was up to {p['wrk_core_other_busy_max']:.0%} busy with "
              f"other work" for n, p in per.items()
              if p["wrk_core_other_busy_max"] > NOISY_OTHER_CPU]
    limited = [f"({n}) wrk used {p['wrk_cpu_utilisation']:.0%} of its core"
               for n, p in per.items() if p["wrk_cpu_utilisation"] > WRK_SATURATED]
    compare = None
    if "b" in per and ec.COMPARE_CONFIG in per:
        # Paired by round: adjacent runs share the machine's drift, which the pair cancels.
        cpu = {(r["config"], r["round"]): r["cpu_us_per_request"] for r in runs}
        pairs = [cpu[(ec.COMPARE_CONFIG, k)] - cpu[("b", k)]
                 for (name, k) in cpu if name == "b" and (ec.COMPARE_CONFIG, k) in cpu]
        compare = {"b2_minus_b_per_round": pairs,
                   "median_us": statistics.median(pairs) if pairs else None,
                   "b/b2": (per[ec.COMPARE_CONFIG]["cpu_us_per_request"]
                            / per["b"]["cpu_us_per_request"])}
    return {"configs": per, "ratios": ratios, "cpu_ratios": cpu_ratios, "compare": compare,
            # Differences of CPU µs/req (DIFFS): host calls, logic, cold verification.
            **{key: cpu_diff(x, y) for key, x, y, _ in DIFFS},
            "noise": noisy,
            "load_generator_limited": limited}


def fmt(v: float | None, spec: str, suffix: str = "") -> str:
    # Not "n/a": that is also the name of a ratio, (n)/(a).
    return "—" if v is None else f"{v:{spec}}{suffix}"


def render_markdown(summary: dict, meta: dict) -> str:
    per = summary["configs"]
    lines = [
        f"# edge-token-relay load benchmark ({meta['date']})",
        "",
        f"wrk `-t{meta['params']['threads']} -c{meta['params']['connections']}` on CPU "
        f"{meta['params']['wrk_cpu']}, Envoy `--concurrency 1 -l warning` on CPU "
        f"{meta['params']['envoy_cpu']}"
        + (f" (both at nice {meta['params']['nice']})" if meta["params"].get("nice") else "")
        + ", fresh Envoy per run; warm-up "
        f"{meta['params']['warmup_s']} s, measured {meta['params']['duration_s']} s; "
        f"{meta['params']['rounds']} round(s) alternating {','.join(meta['params']['configs'])}; "
        "medians. Route: direct_response 200 (no upstream).",
        "",
        "| config | what | Envoy CPU µs/req | vs (a) from CPU | req/s | req/s per round "
        "| vs (a) from req/s | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    base = per.get("a", {}).get("rps")
    base_cpu = per.get("a", {}).get("cpu_us_per_request")
    for name, p in per.items():
        rounds = " / ".join(f"{v:,.0f}" for v in p["rps_per_round"])
        vs = f"{p['rps'] / base:.2f}" if base else "—"
        vs_cpu = f"{base_cpu / p['cpu_us_per_request']:.2f}" if base_cpu else "—"
        lines.append(f"| {name} | {p['description']} | {p['cpu_us_per_request']:.1f} | "
                     f"{vs_cpu} | {p['rps']:,.0f} | {rounds} | {vs} | "
                     f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} |")
    lines += ["", "Ratios: the headline is the one from Envoy CPU µs/req (for x/y: "
              "CPU(y) / CPU(x), the req/s ratio a saturated core gives); the req/s one scatters "
              "when the machine is busy. — : a configuration was not run.", "",
              "| ratio | meaning | from CPU µs/req | from req/s |",
              "|---|---|---:|---:|"]
    meanings = {f"{num}/{den}": what for num, den, what in RATIOS}
    for k, v in summary["ratios"].items():
        lines.append(f"| {k} | {meanings.get(k, '')} | "
                     f"{fmt(summary['cpu_ratios'].get(k), '.2f')} | {fmt(v, '.2f')} |")
    lines += ["", "| Envoy CPU per request | µs |", "|---|---:|"]
    lines += [f"| {what} | {fmt(summary.get(key), '.1f')} |" for key, _, _, what in DIFFS]
    if summary.get("compare"):
        c = summary["compare"]
        rounds = ", ".join(f"{d:+.1f}" for d in c["b2_minus_b_per_round"])
        lines += ["", f"**(b2) − (b), paired by round** (the `--compare` build minus this one, "
                  f"Envoy CPU µs/req): {rounds}; median {fmt(c['median_us'], '+.1f')} µs; "
                  f"b/b2 by CPU {c['b/b2']:.3f} (above 1: this build is cheaper)."]
    lines += ["", "Where the CPU went (medians over the measured windows; a config whose Envoy is "
              "not near 100 % was limited by something else):", "",
              "| config | Envoy CPU | wrk CPU | other work on Envoy's core (max) "
              "| other work on wrk's core (max) |",
              "|---|---:|---:|---:|---:|"]
    for name, p in per.items():
        lines.append(f"| {name} | {p['envoy_cpu_utilisation']:.0%} | "
                     f"{p['wrk_cpu_utilisation']:.0%} | {p['envoy_core_other_busy_max']:.0%} | "
                     f"{p.get('wrk_core_other_busy_max', 0.0):.0%} |")
    lines += [
        "",
        f"- filter: `{meta['wasm']['path']}`, {meta['wasm']['size_bytes']:,} bytes"
        if meta["wasm"].get("size_bytes") is not None
        else "- filter: not built (relay configs not run)",
    ]
    if meta.get("compare_wasm"):
        cw = meta["compare_wasm"]
        lines.append(f"- (b2): `{cw['path']}`, {cw['size_bytes']:,} bytes")
    for key, label in (("nop_wasm", "(n)"), ("probe_wasm", "(p)")):
        if meta.get(key):
            nw = meta[key]
            lines.append(f"- {label}: `{nw['path']}` built with {nw['recipe']}"
                         + (" + wasm-opt -Oz" if nw.get("wasm_opt") else "")
                         + f", {nw['size_bytes']:,} bytes")
    lines += [
        f"- Envoy: {meta['envoy_version']}",
        f"- wrk: {meta['wrk_version']}",
        f"- machine: {meta['machine']['cpu']}, {meta['machine']['cpus']} CPUs, "
        f"kernel {meta['machine']['kernel']}, "
        f"load average at start {meta['machine']['loadavg_start']}",
    ]
    if meta.get("tokens"):
        t = meta["tokens"]
        counts = ", ".join(f"{n:,} {alg}" for alg, n in t["count"].items() if n)
        lines.append(f"- (e*): distinct tokens ({counts}), minted in {t['mint_s']:.1f} s; "
                     f"each Envoy saw each token at most once (the most one Envoy used: "
                     f"{t['max_issued']:,})")
    if meta.get("guard"):
        g = meta["guard"]
        lines += ["", "**Guard (b/n from CPU µs/req, each configuration's fastest round):** "
                  f"{fmt(g['measured'], '.3f')}, recorded "
                  f"{g['recorded']:.3f}, margin {g['margin']:.3f}: "
                  + ("ok" if g["ok"] else "FAILED, the relay's hot path got slower")]
    if summary["load_generator_limited"]:
        lines += ["", "**Load generator limit:** " + "; ".join(summary["load_generator_limited"])
                  + ". wrk, not Envoy, may have set those req/s; compare Envoy CPU µs/req."]
    if summary["noise"]:
        lines += ["", "**Noise warning:** " + "; ".join(summary["noise"])
                  + ". Something else was running; rerun on a quiet machine."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def can_raise_priority() -> bool:
    """Whether `nice -n -10` works here (root or CAP_SYS_NICE)."""
    try:
        out = subprocess.run(["nice", "-n", "-10", "nice"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == str(os.nice(0) - 10)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="round-robin rounds (default 3)")
    ap.add_argument("--duration", type=int, default=None, help="measured seconds per run (10)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up seconds per run (3)")
    ap.add_argument("--only", default=None,
                    help=f"comma-separated subset of {','.join(ec.CONFIG_NAMES)} (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 round, 3 s measured, 1 s warm-up")
    ap.add_argument("--guard", action="store_true",
                    help="regression guard (make bench-quick): a,n,p,b, 2 rounds of 3 s "
                         "(1 s warm-up), fails when b/n (each configuration's fastest round) is "
                         "below bench/guard.json's value "
                         "by more than its margin")
    ap.add_argument("--probe-repeat", metavar="STEP=N",
                    help="build (p) repeating one host call N times per request (the "
                         "per-step table in bench/README.md)")
    ap.add_argument("--probe-whole-map", action="store_true",
                    help="build (p) writing the request headers as one replacement of the "
                         "whole map instead of three single writes (bench/README.md)")
    ap.add_argument("--compare", type=Path, metavar="WASM",
                    help="also run (b2): (b) with this other build of the relay, right after "
                         "(b) in every round; the report adds (b2) − (b) paired by round")
    ap.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    ap.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    ap.add_argument("--tokens", type=int, default=None,
                    help="tokens to mint for (e) (default: sized from the run length)")
    ap.add_argument("--envoy-cpu", type=int, default=0, help="CPU for Envoy (0)")
    ap.add_argument("--wrk-cpu", type=int, default=1, help="CPU for wrk (1)")
    ap.add_argument("--nice", type=int, default=None,
                    help="niceness of Envoy and wrk, so other work on the machine disturbs "
                         "them less (default -10 when allowed, else 0)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="print the report of an earlier run's raw JSON and exit")
    args = ap.parse_args(argv)
    # --quick changes the defaults only: explicit options still win.
    if args.guard:
        defaults = {"rounds": 2, "duration": 3, "warmup": 1}
        if args.only is None:
            args.only = ",".join(GUARD_CONFIGS)
    elif args.quick:
        defaults = {"rounds": 1, "duration": 3, "warmup": 1}
    else:
        defaults = {"rounds": 3, "duration": 10, "warmup": 3}
    if args.only is None:
        args.only = ",".join(ec.CONFIG_NAMES)
    for opt, value in defaults.items():
        if getattr(args, opt) is None:
            setattr(args, opt, value)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ec.CONFIG_NAMES]
    if unknown or not names:
        ap.error(f"--only: unknown configuration(s) {unknown}; choose from "
                 f"{','.join(ec.CONFIG_NAMES)}")
    args.configs = [n for n in ec.CONFIG_NAMES if n in names]  # canonical order
    if args.compare is not None:
        if not args.compare.is_file():
            ap.error(f"--compare: {args.compare} is not a file")
        if "b" not in args.configs:
            ap.error("--compare runs next to (b): include b in --only")
        at = args.configs.index("b") + 1
        args.configs = args.configs[:at] + [ec.COMPARE_CONFIG] + args.configs[at:]
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        ap.error("--rounds and --duration must be >= 1, --warmup >= 0")
    if any(n in ec.MISS_CONFIGS for n in args.configs) and args.threads != 1:
        ap.error("(e*) walk one token list in order: use --threads 1")
    if args.guard and not {"n", "b"} <= set(args.configs):
        ap.error("--guard needs (n) and (b)")
    if args.nice is None:
        args.nice = -10 if can_raise_priority() else 0
    if args.tokens is None:
        args.tokens = MAX_MISS_RPS * (args.warmup + args.duration + 2)
    return args


def check_machine(args: argparse.Namespace, bench: Bench):
    allowed = os.sched_getaffinity(0)
    for what, cpu in (("--envoy-cpu", args.envoy_cpu), ("--wrk-cpu", args.wrk_cpu)):
        if cpu not in allowed:
            raise BenchError(f"{what} {cpu}: this process may only use CPUs {sorted(allowed)}")
    if args.envoy_cpu == args.wrk_cpu:
        raise BenchError("Envoy and wrk must run on different CPUs")
    if not shutil.which("taskset"):
        raise BenchError("taskset is missing (util-linux)")
    if not bench.wrk:
        raise BenchError("wrk is missing: apt-get install wrk (or set WRK=/path/to/wrk)")
    needs_wasm = [n for n in args.configs if n in ec.RELAY_CONFIGS]
    if needs_wasm and not bench.wasm_copy.is_file():
        raise BenchError(f"configs {needs_wasm} need the filter, but {support.WASM_PATH} is "
                         "missing: run `make wasm` (or choose others with --only a,n,c,d)")


def guard_verdict(summary: dict) -> dict:
    """b/n (from CPU µs/req, one run's ratio, never an absolute time) against the recorded one:
    it fails only below recorded - margin. The ratio is taken between each configuration's
    fastest round, so one round slowed by other work does not move it; a slower hot path slows
    every round of (b). bench/README.md says how the margin was chosen."""
    recorded = json.loads(GUARD_FILE.read_text())
    per = summary["configs"]
    measured = (per["n"]["cpu_us_per_request_fastest"] / per["b"]["cpu_us_per_request_fastest"]
                if "n" in per and "b" in per else None)
    floor = recorded["b/n"] - recorded["margin"]
    return {"measured": measured, "recorded": recorded["b/n"], "margin": recorded["margin"],
            "ok": measured is not None and measured >= floor}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        raw = json.loads(args.render.read_text())
        configs = raw["meta"]["params"]["configs"]
        print(render_markdown(summarize(raw["runs"], configs), raw["meta"]))
        return 0
    started = time.monotonic()
    own_cpus = os.sched_getaffinity(0)
    workdir = Path(tempfile.mkdtemp(prefix="edge-token-relay-bench-"))
    ok = False
    try:
        bench = Bench(args, workdir)
        check_machine(args, bench)
        meta: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "params": {"rounds": args.rounds, "duration_s": args.duration,
                       "warmup_s": args.warmup, "connections": args.connections,
                       "threads": args.threads, "envoy_cpu": args.envoy_cpu,
                       "wrk_cpu": args.wrk_cpu, "nice": args.nice, "configs": args.configs,
                       "path": ec.BENCH_PATH, "jwt_authn_cache_size": ec.JWT_AUTHN_CACHE_SIZE},
            "envoy": bench.envoy_bin,
            "envoy_version":
                tool_version([bench.envoy_bin, "--version"]).split("version:")[-1].strip(),
            "wrk_version": tool_version([bench.wrk, "--version"]).split("Copyright")[0].strip(),
            "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(),
                        "kernel": platform.release(),
                        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg())},
            "wasm": {"path": str(support.WASM_PATH.relative_to(REPO_ROOT))},
        }
        if bench.wasm_copy.is_file():
            data = bench.wasm_copy.read_bytes()
            meta["wasm"].update(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        else:
            meta["wasm"]["size_bytes"] = None
        if args.compare is not None:
            data = bench.compare_copy.read_bytes()
            meta["compare_wasm"] = {"path": str(args.compare), "size_bytes": len(data),
                                    "sha256": hashlib.sha256(data).hexdigest()}
        if any(n in ec.NOP_CONFIGS for n in args.configs):
            how = build_nop(bench.nop_copy)
            data = bench.nop_copy.read_bytes()
            meta["nop_wasm"] = {"path": str(NOP_WASM.relative_to(REPO_ROOT)), **how,
                                "size_bytes": len(data),
                                "sha256": hashlib.sha256(data).hexdigest()}
        if any(n in ec.PROBE_CONFIGS for n in args.configs):
            how = build_probe(bench.probe_copy, args.probe_repeat, args.probe_whole_map)
            data = bench.probe_copy.read_bytes()
            meta["probe_wasm"] = {"path": str(PROBE_WASM.relative_to(REPO_ROOT)), **how,
                                  "repeat": args.probe_repeat,
                                  "whole_map": args.probe_whole_map, "size_bytes": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest()}

        for name in args.configs:
            if name in ec.MISS_CONFIGS:
                bench.ensure_tokens(ec.MISS_CONFIGS[name], args.tokens)
        # The orchestrator itself stays off Envoy's core (it sleeps while wrk runs).
        os.sched_setaffinity(0, {args.wrk_cpu})

        total_runs = args.rounds * len(args.configs)
        est = total_runs * (args.warmup + args.duration + 2)
        print(f"{total_runs} runs, about {est // 60} min {est % 60} s", file=sys.stderr, flush=True)
        runs: list[dict] = []
        for rnd in range(1, args.rounds + 1):
            for name in args.configs:
                run = bench.run_one(name, rnd)
                runs.append(run)
                if name in ec.MISS_CONFIGS:  # keep the list well ahead of what a run uses
                    alg = ec.MISS_CONFIGS[name]
                    most = max(r["tokens_issued"] for r in runs if r["config"] == name)
                    if bench.tokens_count[alg] < 2 * most:
                        bench.ensure_tokens(alg, 3 * most)
                print(f"  round {rnd} ({name}) {run['rps']:>9,.0f} req/s  "
                      f"p50 {run['latency_us']['p50'] / 1000:.2f} ms  "
                      f"p99 {run['latency_us']['p99'] / 1000:.2f} ms  "
                      f"{run['cpu_us_per_request']:.1f} µs CPU/req  "
                      f"(Envoy {run['envoy_cpu_utilisation']:.0%}, wrk "
                      f"{run['wrk_cpu_utilisation']:.0%}, others on their cores "
                      f"{run['envoy_core_other_busy']:.0%} / {run['wrk_core_other_busy']:.0%})",
                      file=sys.stderr, flush=True)

        if any(n in ec.MISS_CONFIGS for n in args.configs):
            meta["tokens"] = {"count": bench.tokens_count, "mint_s": bench.mint_seconds,
                              "max_issued": max(r["tokens_issued"] for r in runs
                                                if r["config"] in ec.MISS_CONFIGS),
                              "scheme": "distinct per request within each Envoy's life, no reuse"}
        meta["machine"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        summary = summarize(runs, args.configs)
        if args.guard:
            meta["guard"] = guard_verdict(summary)
        md = render_markdown(summary, meta)
        print(md)

        args.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        raw = {"meta": meta, "summary": summary, "runs": runs,
               "envoy_configs": {n: bench.envoy_config(n, originals=True)
                                 for n in args.configs}}
        for base in (f"bench-{stamp}", "latest"):
            (args.results_dir / f"{base}.md").write_text(md)
            (args.results_dir / f"{base}.json").write_text(json.dumps(raw, indent=2) + "\n")
        print(f"results: {args.results_dir / f'bench-{stamp}.md'} (+ .json), "
              f"also latest.md / latest.json; took {meta['elapsed_s']:.0f} s", file=sys.stderr)
        ok = True
        if args.guard and not meta["guard"]["ok"]:
            print("bench-quick: b/n fell below the recorded value by more than the margin "
                  f"({GUARD_FILE.relative_to(REPO_ROOT)})", file=sys.stderr)
            return 1
        return 0
    except (BenchError, support.EnvoyStartError) as e:
        print(f"\nBENCHMARK FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        support.stop_all_envoys()
        os.sched_setaffinity(0, own_cpus)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept Envoy configs and logs in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
