"""The soak (tests/e2e/soak.py, `make soak`) for 60 seconds: mixed valid, expiring, login and
hostile traffic through the real Envoy (two workers) with a token endpoint that fails part of
the time. The soak itself checks its pass criteria (no Wasm VM restart, flat memory after
warm-up, no session lost outside a deliberate invalid_grant, one token-endpoint call per
rotation, no 5xx but the deliberate 503s) and exits 1 when one fails; its summary table is
attached to the report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parent / "soak.py"
SOAK_S = 60


def test_soak_60_seconds(wasm_file, envoy_bin):
    env = dict(os.environ, SOAK_S=str(SOAK_S), ENVOY=envoy_bin)
    proc = subprocess.run([sys.executable, str(SOAK)], env=env, capture_output=True, text=True,
                          timeout=SOAK_S + 180)
    print(proc.stdout)
    summary = proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0, f"soak failed (exit {proc.returncode}):\n{summary}"
    assert "soak: PASSED" in proc.stdout, summary
    # The summary counts real traffic in every class (a driver that sent nothing would pass).
    for cls in ("valid", "expiring", "login", "hostile"):
        row = next((ln for ln in proc.stdout.splitlines() if ln.startswith(f"| {cls} |")), "")
        assert row and int(row.split("|")[2]) > 0, f"no {cls} traffic:\n{summary}"
