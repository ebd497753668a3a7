#!/usr/bin/env python3
"""Where Envoy's CPU goes for (p) and (b): a sampling profile of the Envoy worker, split by kind.

Runs `bench/run.py --only p,b` (or the two configurations `--pair` names) under
`perf record -a -g` and sorts every sample of Envoy's worker thread into four kinds by its call
chain:

- Wasm code: the leaf is JIT-compiled code (V8's compiled Wasm; perf shows it as anonymous
  executable memory);
- native under Wasm: native code with Wasm on the stack below it (host calls, V8 builtins
  such as memory.copy, the allocator callback);
- native elsewhere: Envoy's own work (codec, routing, the filter chain, entering the VM);
- kernel.

Each round's share of a kind, times that round's Envoy CPU µs/request (from run.py's results
JSON), gives µs
per request; the report prints medians over rounds and the median of the paired (b) − (p)
differences (rounds run p, b, p, b, ..., so each pair ran at nearly the same time). The
Wasm-code row is the stable one: it moves little when the machine's speed drifts, because it is
read off the same samples as the round's own total.

Needs Linux `perf` with permission to record every CPU (root, or
`kernel.perf_event_paranoid` <= 0). Not part of `make test`.

    .venv/bin/python bench/perf_split.py [--rounds 6] [--duration 4] [--warmup 1] [--pair p,b]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = "wrk:worker_0"  # Envoy's first worker thread (run.py runs --concurrency 1)
KINDS = ("Wasm code", "native under Wasm", "native elsewhere", "kernel")
SAMPLE_RE = re.compile(r"^\s*(\d+)\s*$")


def is_jit(dso: str) -> bool:
    """perf names anonymous executable memory (V8's code space) after a perf map or as anon."""
    return "perf-" in dso or "[JIT]" in dso or "anon" in dso


def kind_of(chain: list[str]) -> str:
    """`chain`: the dso of each frame, leaf first."""
    leaf = chain[0]
    if is_jit(leaf):
        return "Wasm code"
    if any(is_jit(d) for d in chain[1:]):
        return "native under Wasm"
    if "kernel" in leaf:
        return "kernel"
    return "native elsewhere"


def samples_by_pid(script: str) -> dict[int, collections.Counter]:
    """Counts per Envoy process (one per round) and kind, from `perf script -F pid,ip,dso`."""
    out: dict[int, collections.Counter] = {}
    pid, chain = None, []

    def flush():
        if pid is not None and chain:
            c = out.setdefault(pid, collections.Counter())
            c[kind_of(chain)] += 1
            c["total"] += 1

    for line in script.splitlines():
        m = SAMPLE_RE.match(line)
        if m:
            flush()
            pid, chain = int(m.group(1)), []
        elif line.strip():
            dso = line.strip().split(None, 1)
            chain.append(dso[1] if len(dso) > 1 else "")
        else:
            flush()
            pid, chain = None, []
    flush()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--pair", default="p,b", metavar="X,Y",
                    help="the two configurations to profile, alternated by round (default p,b; "
                         "b,e splits a cold RS256 verification)")
    args = ap.parse_args()
    x, _, y = args.pair.partition(",")
    if not x or not y or x == y:
        ap.error("--pair takes two different configurations, such as p,b")
    if shutil.which("perf") is None:
        print("perf_split: `perf` is not installed (Debian: apt-get install linux-perf)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edge-token-relay-perf-") as tmp:
        data = Path(tmp) / "perf.data"
        cmd = ["perf", "record", "-a", "-g", "-F", "999", "-o", str(data), "--",
               sys.executable, str(HERE / "run.py"), "--only", f"{x},{y}",
               "--rounds", str(args.rounds), "--duration", str(args.duration),
               "--warmup", str(args.warmup), "--results-dir", tmp]
        run = subprocess.run(cmd, capture_output=True, text=True)
        log = run.stdout + run.stderr
        if run.returncode != 0:
            print(log, file=sys.stderr)
            print("perf_split: the benchmark or perf failed (perf needs root or "
                  "kernel.perf_event_paranoid <= 0)", file=sys.stderr)
            return 1
        # The runs in the order they ran (one Envoy process each).
        runs = json.loads((Path(tmp) / "latest.json").read_text())["runs"]
        rounds = [(r["config"], r["cpu_us_per_request"]) for r in runs]
        script = subprocess.run(["perf", "script", "-i", str(data), "--comm", WORKER,
                                 "-F", "pid,ip,dso"], capture_output=True, text=True).stdout
    # One Envoy process per round, in start order (pids grow; the few samples of a process
    # that only started and stopped are not a round).
    counts = samples_by_pid(script)
    pids = sorted(p for p, c in counts.items() if c["total"] >= 200)
    if len(pids) != len(rounds):
        print(f"perf_split: {len(pids)} profiled Envoy processes for {len(rounds)} rounds; "
              "cannot pair them", file=sys.stderr)
        return 1
    per: dict[str, dict[str, list[float]]] = {k: {x: [], y: []} for k in KINDS}
    cpu: dict[str, list[float]] = {x: [], y: []}
    for pid, (name, us) in zip(pids, rounds):
        c = counts[pid]
        cpu[name].append(us)
        for k in KINDS:
            per[k][name].append(c[k] / c["total"] * us)
    print(f"{len(rounds)} rounds; µs of Envoy CPU per request, medians over rounds\n")
    print(f"| kind | ({x}) | ({y}) | ({y}) − ({x}), median of pairs |")
    print("|---|---:|---:|---:|")
    rows = [("Envoy CPU, all", cpu)] + [(k, per[k]) for k in KINDS]
    for label, v in rows:
        pairs = [b - a for a, b in zip(v[x], v[y])]
        print(f"| {label} | {statistics.median(v[x]):.2f} | {statistics.median(v[y]):.2f} "
              f"| {statistics.median(pairs):+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
