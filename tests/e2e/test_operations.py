"""What README.md's "Operations" part and its guards promise an operator, checked in the real
Envoy:

* the metric table lists exactly the relay metric names Envoy 1.40 prints on
  `/stats/prometheus`, with their types, and `/stats` shows them as `wasmcustom.<name>`;
* TRACE is CSRF-checked like any unsafe method (only GET, HEAD and OPTIONS are exempt);
* after a transient token-endpoint failure a session waits `refresh_backoff_s` (+1 s) before the
  next attempt, and the wait doubles with each failure in a row;
* each request's outcome is in filter state, and an access log prints it;
* README's `stats_tags` snippet turns status and reason into Prometheus labels;
* the start-up line names the version, the configuration hash, the prefixes and the features;
  a log level changed at runtime reaches the relay.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from checks import assert_forwarded, assert_nothing_upstream, describe
from fake_token_endpoint import FakeTokenEndpoint
from refresh_support import Relay, SessionKeys, refresh_plugin_config
from support import (AT_COOKIE, REPO_ROOT, Envoy, KeyPair, default_plugin_config, free_port,
                     make_claims, relay_config, wait_until)

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


# --------------------------------------------------------------------------------------------
# The request's reason in filter state, printed by an access log
# --------------------------------------------------------------------------------------------

REASON_FORMAT = "%REQ(:PATH)% %RESPONSE_CODE% reason=%FILTER_STATE(wasm.edge_token_relay.reason:PLAIN)%\n"


def hcm(cfg: dict) -> dict:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def with_access_log(cfg: dict, path: str) -> dict:
    hcm(cfg)["access_log"] = [{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {"text_format_source": {"inline_string": REASON_FORMAT}},
        },
    }]
    return cfg


def test_the_access_log_prints_each_requests_reason(relay_stack, keys, tmp_path):
    log = tmp_path / "access.log"
    with relay_stack(name="operations-reasons", envoy_config_fn=lambda s: with_access_log(
            relay_config(s.upstream.port, s.idp.port, None, s.wasm_path), str(log))) as s:
        assert s.wait_jwks_ready(keys["RS256"].sign(make_claims())).status_code == 200
        # A token this worker has not verified yet: a cache miss, then a hit.
        token = keys["RS256"].sign(make_claims(sub="reasons"))
        assert s.get_with_token("/api/fwd", token).status_code == 200
        assert s.get_with_token("/api/hit", token).status_code == 200
        assert s.get("/api/missing").status_code == 401
        evil = {"Origin": "https://evil.example", "Cookie": f"{AT_COOKIE}={token}"}
        assert s.request("POST", "/api/csrf", headers=evil).status_code == 403
        assert s.get("/untouched").status_code == 200
        assert s.get("/api/public/x").status_code == 200
        expected = {
            "/api/fwd 200 reason=forwarded",
            "/api/hit 200 reason=cache_hit",
            "/api/missing 401 reason=missing_token",
            "/api/csrf 403 reason=csrf_origin_not_allowed",
            "/untouched 200 reason=-",
            "/api/public/x 200 reason=-",
        }
        # The file logger flushes about once a second.
        lines = wait_until(
            lambda: (lambda ls: ls if expected <= ls else None)(
                set(log.read_text().splitlines()) if log.exists() else set()),
            timeout=10, what=f"{expected} in the access log")
        assert expected <= lines


class LoggedRelay(Relay):
    """A refresh-enabled relay whose Envoy writes the reason access log to `log_path`."""

    def __init__(self, *a, log_path: str, listener_port: int = 0, **kw):
        super().__init__(*a, **kw)
        self.log_path = log_path
        self.listener_port = listener_port

    def start(self) -> "LoggedRelay":
        try:
            self.upstream.start()
            cfg = relay_config(self.upstream.port, self.idp_port, self.plugin_config,
                               listener_port=self.listener_port)
            self.envoy = Envoy(with_access_log(cfg, self.log_path), name=self.name).start()
        except BaseException:
            self.stop()
            raise
        return self


def wait_for_log_lines(log, expected: set, starting_with: str = "") -> set:
    """Waits until the access log holds every line of `expected` (and, when given, a line
    starting with `starting_with`); returns the log's lines."""
    def lines():
        found = set(log.read_text().splitlines()) if log.exists() else set()
        extra = not starting_with or any(ln.startswith(starting_with) for ln in found)
        return found if expected <= found and extra else None
    return wait_until(lines, timeout=10, what=f"{expected} in the access log")


def test_the_access_log_prints_refresh_reasons(wasm_file, tmp_path):
    log = tmp_path / "access.log"
    signer = KeyPair.generate("RS256")
    session_keys = SessionKeys.generate()
    fake = FakeTokenEndpoint(signer).start()
    relay = None
    try:
        pc = refresh_plugin_config(session_keys, authority="idp.example.com", timeout_ms=1000)
        relay = LoggedRelay("operations-refresh-reasons", fake.port, pc,
                            log_path=str(log)).start()
        assert relay.wait_ready(fake.mint_access_token()).status_code == 200
        session = lambda rt: f"__Host-relay-session={session_keys.seal(rt)}"  # noqa: E731
        assert relay.get("/api/refreshed", session("rt-reason-1")).status_code == 200
        fake.mode = "invalid_grant"
        assert relay.get("/api/revoked", session("rt-reason-2")).status_code == 401
        fake.mode = "status_500"
        assert relay.get("/api/unavailable", session("rt-reason-3")).status_code == 503
        expected = {
            "/api/refreshed 200 reason=refreshed",
            "/api/revoked 401 reason=session_revoked",
            "/api/unavailable 503 reason=refresh_unavailable",
        }
        wait_for_log_lines(log, expected)
    finally:
        if relay is not None:
            relay.stop()
        fake.stop()


def test_the_access_log_prints_login_path_reasons(wasm_file, tmp_path):
    log = tmp_path / "access.log"
    signer = KeyPair.generate("RS256")
    session_keys = SessionKeys.generate()
    fake = FakeTokenEndpoint(signer).start()
    relay = None
    try:
        port = free_port()
        pc = refresh_plugin_config(session_keys, authority="idp.example.com", timeout_ms=1000)
        pc.pop("upstream_token_headers", None)
        pc["login"] = {"authorization_endpoint": "https://idp.example.com/oauth2/authorize",
                       "redirect_uri": f"http://127.0.0.1:{port}/auth/callback",
                       "scopes": ["openid", "offline_access"]}
        relay = LoggedRelay("operations-login-reasons", fake.port, pc, log_path=str(log),
                            listener_port=port).start()
        assert relay.wait_ready(fake.mint_access_token()).status_code == 200
        page = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
        assert relay.get("/api/page", headers=page).status_code == 302
        assert relay.get("/auth/login").status_code == 302
        assert relay.get("/auth/callback?code=c0de&state=s1").status_code == 400
        assert relay.get("/auth/userinfo").status_code == 401
        expected = {
            "/api/page 302 reason=login_redirect",
            "/auth/login 302 reason=login_start",
            "/auth/userinfo 401 reason=userinfo_no_session",
        }
        lines = wait_for_log_lines(log, expected, starting_with="/auth/callback")
        (cb,) = [ln for ln in lines if ln.startswith("/auth/callback")]
        assert cb.endswith(" 400 reason=login_flow_missing"), cb
    finally:
        if relay is not None:
            relay.stop()
        fake.stop()


def test_the_shipped_configs_log_the_reason():
    for name in ("relay.yaml", "cognito.yaml", "oidc-generic.yaml"):
        text = (REPO_ROOT / "envoy" / name).read_text()
        assert "%FILTER_STATE(wasm.edge_token_relay.reason:PLAIN)%" in text, name


# --------------------------------------------------------------------------------------------
# README's stats_tags snippet: status and reason as Prometheus labels
# --------------------------------------------------------------------------------------------


def readme_stats_tags() -> list[dict]:
    """The `stats_config` YAML block of README.md's "Metrics" section, as data."""
    import yaml

    m = re.search(r"^```yaml\n(stats_config:\n.*?)^```", README.read_text(), re.M | re.S)
    assert m, "README.md has no ```yaml block starting with stats_config:"
    return yaml.safe_load(m.group(1))["stats_config"]["stats_tags"]


def test_the_readme_stats_tags_make_status_and_reason_labels(relay_stack, keys):
    tags = readme_stats_tags()

    def config(s):
        cfg = relay_config(s.upstream.port, s.idp.port, None, s.wasm_path)
        cfg["stats_config"] = {"stats_tags": tags}
        return cfg

    with relay_stack(name="operations-tags", envoy_config_fn=config) as s:
        token = keys["RS256"].sign(make_claims())
        assert s.wait_jwks_ready(token).status_code == 200
        assert s.get("/api/x").status_code == 401
        assert s.get("/api/x").status_code == 401
        evil = {"Origin": "https://evil.example", "Cookie": f"{AT_COOKIE}={token}"}
        assert s.request("POST", "/api/x", headers=evil).status_code == 403
        text = s.envoy.admin("/stats/prometheus").text
        # Envoy prints an untagged sample as `name{} value`.
        samples = {line.rsplit(" ", 1)[0].removesuffix("{}"): line.rsplit(" ", 1)[1]
                   for line in text.splitlines() if line.startswith("edge_token_relay_")}
        assert samples.get('edge_token_relay_denied_total{reason="missing_token"}') == "2", samples
        assert samples.get('edge_token_relay_denied_total{reason="csrf_origin_not_allowed"}') == "1"
        assert samples.get('edge_token_relay_denied_total{reason="expired"}') == "0"
        assert samples.get('edge_token_relay_requests_denied_total{status="401"}') == "2"
        assert samples.get('edge_token_relay_requests_denied_total{status="403"}') == "1"
        assert 'edge_token_relay_requests_unavailable_total{status="503"}' in samples
        # Other names are untouched, and no per-reason or per-status name is left untagged.
        assert "edge_token_relay_requests_forwarded_total" in samples
        assert not [n for n in samples if re.match(
            r"edge_token_relay_(denied_\w+|requests_(denied|unavailable)_\d{3})_total$", n)]


# --------------------------------------------------------------------------------------------
# The start-up line, and a log level changed at runtime
# --------------------------------------------------------------------------------------------


def expected_config_hash(pc: dict) -> str:
    """The relay's hash: FNV-1a of the JSON with keys sorted and secrets removed, folded to 32
    bits."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "session_keys" and "secret" not in k}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    data = json.dumps(strip(pc), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    h = 0xcbf29ce484222325
    for b in data.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{(h >> 32) ^ (h & 0xFFFFFFFF):08x}"


def test_the_startup_line_and_a_runtime_log_level(relay_stack, keys):
    version = re.search(r'^version *= *"(.*)"', (REPO_ROOT / "Cargo.toml").read_text(), re.M)[1]
    pc = default_plugin_config(protected_prefixes=["/api/", "/admin/"],
                               csrf={"allowed_origins": ["https://app.example.com"],
                                     "double_submit": True})
    with relay_stack(name="operations-startup", plugin_config=pc,
                     component_log_level=None) as s:
        line = (f"edge-token-relay {version} configured: config={expected_config_hash(pc)} "
                "protected_prefixes=2 features=csrf,double_submit,remote_jwks")
        s.envoy.wait_for_log(line, timeout=5)
        assert "[info]" in next(ln for ln in s.envoy.log_text().splitlines() if line in ln)

        token = keys["RS256"].sign(make_claims())
        assert s.wait_jwks_ready(token).status_code == 200
        offset = s.envoy.log_size()
        assert s.get("/api/x").status_code == 401
        time.sleep(0.3)
        assert LINE not in s.envoy.log_tail(since_offset=offset)
        # Raised through the admin API: the relay picks it up on its next tick (100 ms).
        import requests
        assert requests.post(s.envoy.admin_base + "/logging?wasm=debug", timeout=5).ok
        time.sleep(0.3)
        offset = s.envoy.log_size()
        assert s.get("/api/x").status_code == 401
        s.envoy.wait_for_log(LINE, timeout=5, since_offset=offset)
