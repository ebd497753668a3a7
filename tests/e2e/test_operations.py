"""What README.md's "Operations" part and its guards promise an operator, checked in the real
Envoy:

* the metric table lists exactly the relay metric names Envoy 1.40 prints on
  `/stats/prometheus`, with their types, and `/stats` shows them as `wasmcustom.<name>`;
* TRACE is CSRF-checked like any unsafe method (only GET, HEAD and OPTIONS are exempt);
* after a transient token-endpoint failure a session waits `refresh_backoff_s` (+1 s) before the
  next attempt, and the wait doubles with each failure in a row.
"""

from __future__ import annotations

import re
import time

import pytest

from checks import assert_forwarded, assert_nothing_upstream, describe
from fake_token_endpoint import FakeTokenEndpoint
from refresh_support import Relay, SessionKeys, refresh_plugin_config
from support import AT_COOKIE, REPO_ROOT, KeyPair, make_claims, wait_until

README = REPO_ROOT / "README.md"
METRIC_PREFIX = "edge_token_relay_"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


# --------------------------------------------------------------------------------------------
# The README's metric table
# --------------------------------------------------------------------------------------------


def readme_metric_table() -> dict[str, str]:
    """{metric name: type} from the table of README.md's "Metrics" section: every backticked
    name in the first column, the type in the second."""
    text = README.read_text()
    m = re.search(r"^### Metrics\n(.*?)(?=^#{1,3} )", text, re.M | re.S)
    assert m, "README.md has no '### Metrics' section"
    out: dict[str, str] = {}
    for line in m.group(1).splitlines():
        if not line.startswith("|") or re.match(r"^\|[\s:|-]+\|?\s*$", line):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for name in re.findall(r"`([a-z0-9_]+)`", cells[0]):
            assert name not in out, f"{name} listed twice"
            out[name] = cells[1]
    return out


def prometheus_families(text: str) -> tuple[dict[str, str], set[str]]:
    """({family: type} from the `# TYPE` lines, {sample names}) for the relay's metrics."""
    families: dict[str, str] = {}
    samples: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^# TYPE (\S+) (\S+)$", line)
        if m and m.group(1).startswith(METRIC_PREFIX):
            families[m.group(1)] = m.group(2)
        elif line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            if name.startswith(METRIC_PREFIX):
                samples.add(name)
    return families, samples


def test_the_metric_table_parser_reads_the_readme():
    table = readme_metric_table()
    assert table.get("edge_token_relay_requests_forwarded_total") == "counter", table
    assert table.get("edge_token_relay_refresh_latency_ms") == "histogram", table
    assert all(n.startswith(METRIC_PREFIX) for n in table), table
    assert "envoy_wasmcustom_" not in README.read_text()


@pytest.fixture(scope="module")
def stack(relay_stack):
    with relay_stack(name="operations") as s:
        yield s


def test_prometheus_metric_names_are_the_readme_table(stack, keys):
    token = keys["RS256"].sign(make_claims())
    assert stack.wait_jwks_ready(token).status_code == 200
    # Touch what a plain relay can: forwarded (cache miss, then hits), 401, 403, 431.
    for _ in range(3):
        assert_forwarded(stack.get_with_token("/api/x", token), stack, token)
    assert stack.get("/api/x").status_code == 401
    evil = {"Origin": "https://evil.example", "Cookie": f"{AT_COOKIE}={token}"}
    assert stack.request("POST", "/api/x", headers=evil).status_code == 403
    big = {"Cookie": f"{AT_COOKIE}={token}", "X-Big": "x" * 9000}
    assert stack.request("GET", "/api/x", headers=big).status_code == 431

    used_expected = {"edge_token_relay_requests_forwarded_total",
                     "edge_token_relay_requests_denied_401_total",
                     "edge_token_relay_requests_denied_403_total",
                     "edge_token_relay_requests_denied_431_total",
                     "edge_token_relay_token_cache_hits_total",
                     "edge_token_relay_token_cache_misses_total",
                     "edge_token_relay_jwks_fetches_total"}
    # The per-request counters are flushed on the filter's tick (every 100 ms).
    used = wait_until(
        lambda: (lambda f: f if used_expected <= set(f) else None)(
            prometheus_families(stack.envoy.admin("/stats/prometheus?usedonly").text)[0]),
        timeout=5, what="the used counters on /stats/prometheus?usedonly")

    families, samples = prometheus_families(stack.envoy.admin("/stats/prometheus").text)
    table = readme_metric_table()
    # Both ways: every name Envoy prints is in the table, every name in the table is printed.
    assert set(families) - set(table) == set(), "printed by Envoy but not in README.md"
    assert set(table) - set(families) == set(), "in README.md but not printed by Envoy"
    assert families == table, "types differ between README.md and Envoy"
    # Without `usedonly`, Envoy prints every metric the filter defined, used or not.
    assert set(used) <= set(families)
    expected_samples = set()
    for name, kind in families.items():
        expected_samples |= ({name + s for s in HISTOGRAM_SERIES} if kind == "histogram"
                             else {name})
    assert samples == expected_samples
    # `/stats` shows the same metrics as `wasmcustom.<name>`.
    stats_names = {line.split(":")[0] for line in stack.envoy.admin("/stats").text.splitlines()
                   if line.startswith("wasmcustom." + METRIC_PREFIX)}
    assert stats_names == {"wasmcustom." + n for n in table}


# --------------------------------------------------------------------------------------------
# CSRF: TRACE is not exempt
# --------------------------------------------------------------------------------------------


def test_trace_is_csrf_checked(stack, keys):
    token = keys["RS256"].sign(make_claims())
    assert stack.wait_jwks_ready(token).status_code == 200
    headers = {"Origin": "https://evil.example"}
    resp = stack.request("TRACE", "/api/x", cookie=f"{AT_COOKIE}={token}", headers=headers)
    assert resp.status_code == 403, describe(resp)
    assert resp.json()["error"] == "csrf"
    assert_nothing_upstream(stack)
    for method in ("GET", "HEAD", "OPTIONS"):
        resp = stack.request(method, "/api/x", cookie=f"{AT_COOKIE}={token}", headers=headers)
        assert resp.status_code == 200, f"{method}: {describe(resp)}"


# --------------------------------------------------------------------------------------------
# The refresh backoff is a fixed interval
# --------------------------------------------------------------------------------------------

BACKOFF_S = 2


def test_refresh_backoff_doubles_with_each_failure(wasm_file):
    signer = KeyPair.generate("RS256")
    session_keys = SessionKeys.generate()
    fake = FakeTokenEndpoint(signer).start()
    relay = None
    try:
        pc = refresh_plugin_config(session_keys, authority="idp.example.com", timeout_ms=1000,
                                   refresh_backoff_s=BACKOFF_S)
        relay = Relay("operations-backoff", fake.port, pc).start()
        ready = relay.wait_ready(fake.mint_access_token())
        assert ready.status_code == 200, describe(ready)
        fake.mode = "status_500"
        cookie = f"__Host-relay-session={session_keys.seal('rt-doubling-backoff')}"
        n0 = fake.count
        retry_afters = []
        waits = [BACKOFF_S * 2 ** i + 1 for i in range(3)]  # 3, 5, 9 s with BACKOFF_S = 2
        deadline = time.monotonic() + sum(waits) + 8
        while fake.count - n0 < 4:
            resp = relay.get("/api/x", cookie)
            assert resp.status_code == 503, describe(resp)
            retry_afters.append(int(resp.headers["Retry-After"]))
            assert time.monotonic() < deadline, f"only {fake.count - n0} attempts"
            time.sleep(0.1)
        times = [r["t"] for r in fake.requests[n0:n0 + 4]]
        gaps = [b - a for a, b in zip(times, times[1:])]
        print(f"gaps between attempts: {[round(g, 2) for g in gaps]} (refresh_backoff_s={BACKOFF_S})")
        # Each wait doubles (backoff_s * 2^n + 1 s on a whole-second clock), plus polling.
        for gap, wait in zip(gaps, waits):
            assert wait - 1 <= gap <= wait + 0.8, (gaps, waits)
        # The last answers already announce the wait after the fourth failure.
        assert max(retry_afters) <= BACKOFF_S * 2 ** 3 + 1, retry_afters
    finally:
        if relay is not None:
            relay.stop()
        fake.stop()


# --------------------------------------------------------------------------------------------
# The runbook's way to see reason codes: Envoy started with the Wasm component at debug level
# --------------------------------------------------------------------------------------------

LINE = "refused: status=401 reason=missing_token"


@pytest.mark.parametrize("level", [None, "wasm:debug"])
def test_reason_codes_are_logged_at_debug_level(relay_stack, keys, level):
    with relay_stack(name="operations-logging", component_log_level=level) as s:
        token = keys["RS256"].sign(make_claims())
        assert s.wait_jwks_ready(token).status_code == 200
        offset = s.envoy.log_size()
        assert s.get("/api/x").status_code == 401
        if level is None:
            time.sleep(0.3)
            assert LINE not in s.envoy.log_tail(since_offset=offset)
        else:
            s.envoy.wait_for_log(LINE, timeout=5, since_offset=offset)
