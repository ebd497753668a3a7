"""Many relay replicas behind a front tier (envoy/front-tier.yaml), against the real OpenID
provider (tests/idp, which revokes the whole grant when a refresh token is spent twice).

    browser --> front Envoy (envoy/front-tier.yaml: ring_hash on the session cookie,
                             health checks, retries; no Wasm filter)
                  +--> relay A (the built .wasm, --concurrency 2) --> echo upstream "relay-a"
                  +--> relay B (the built .wasm, --concurrency 2) --> echo upstream "relay-b"

Every Envoy has its own --base-id and ports. The front tier runs the shipped file itself, with
only its listener, admin and endpoint addresses swapped for loopback ports. Which replica served
a request is read from the echo upstream's `X-Echo-Server` header.

Proved here:
  * a real login (authorization code + PKCE at the IdP) through the front tier gives a session;
  * bursts of BURST parallel requests on that session, each burst after the access token
    expired, make exactly one refresh_token call at the IdP per burst, all answered 200 by one
    replica, and the grant is alive afterwards;
  * a replica killed (SIGKILL) while the session's requests flow on 4 keep-alive connections:
    no request is answered 401 or 5xx; requests the dead replica had not begun to answer are
    retried by the front tier on the next replica of the ring and get 200; a response it was in
    the middle of sending breaks (at most one per connection, at the moment of the kill: Envoy
    cannot retry once the headers went out); every later request gets 200 from the survivor;
    then the session refreshes on the survivor, once, and lives on.
    Not covered on purpose: a kill while the dead replica holds a refresh in flight (the IdP has
    rotated the token, the browser never got it); only the IdP's reuse grace window covers that
    case (README, "Many Envoy replicas").
"""

from __future__ import annotations

import copy
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from checks import describe, upstream_headers
from idp import Idp, authorize_via_http
from login_support import NAV_ACCEPT, Jar, login_plugin_config
from refresh_support import Relay, SessionKeys, jwt_claims, set_cookies
from support import (AT_COOKIE, REPO_ROOT, SESSION_COOKIE, Envoy, free_port, new_http_session,
                     validate_config, wait_until, wasm_failure_evidence)

FRONT_TIER = REPO_ROOT / "envoy" / "front-tier.yaml"
ACCESS_TOKEN_TTL = 10
BURST = 20
ROUNDS = 3
TRAFFIC_CONNECTIONS = 4
# A response cut off by the kill fails about 1 s after it on this machine (measured).
BROKEN_WINDOW_S = 2.5
CLIENT_ID = "relay-client"


# --------------------------------------------------------------------------------------------
# The front tier: the shipped file, on loopback ports
# --------------------------------------------------------------------------------------------


def front_tier_config(listener_port: int, relay_ports: list[int]) -> dict:
    """envoy/front-tier.yaml with the listener on 127.0.0.1:listener_port, the admin on a free
    port and the `relays` cluster's endpoints on the given loopback ports (STATIC)."""
    cfg = yaml.safe_load(FRONT_TIER.read_text())
    cfg = copy.deepcopy(cfg)  # YAML anchors share objects; edit a tree of our own
    cfg["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": "127.0.0.1",
                                             "port_value": listener_port}
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == "relays"]
    cluster["type"] = "STATIC"
    cluster.pop("dns_lookup_family", None)
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": p}}}}
        for p in relay_ports]}]
    return cfg


def test_front_tier_example_validates(envoy_bin, tmp_path):
    """The shipped file as written, from a working directory that is not the repository (it
    names no file: nothing in it may depend on where Envoy starts)."""
    result = validate_config(FRONT_TIER, envoy_bin, cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    routes = yaml.safe_load(FRONT_TIER.read_text())["static_resources"]["listeners"][0][
        "filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0][
        "routes"]
    for r in routes:
        names = [p["cookie"]["name"] for p in r["route"]["hash_policy"]]
        assert names == [SESSION_COOKIE, SESSION_COOKIE + ".0"], names
        assert all("ttl" not in p["cookie"] for p in r["route"]["hash_policy"]), \
            "a cookie hash policy with a ttl makes Envoy set the session cookie itself"


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


class Tier:
    """The front Envoy and the two relay replicas."""

    def __init__(self, front: Envoy, relays: dict[str, Relay], idp: Idp, keys: SessionKeys):
        self.front = front
        self.relays = relays
        self.idp = idp
        self.keys = keys
        self.http = new_http_session()
        self.origin = f"http://127.0.0.1:{front.port}"

    def get(self, path: str, cookie: str | None = None, headers: dict | None = None,
            new_connection: bool = True):
        hdrs = dict(headers or {})
        if cookie:
            hdrs["Cookie"] = cookie
        kw = {"headers": hdrs, "timeout": 20, "allow_redirects": False}
        url = path if path.startswith("http") else self.front.url(path)
        if new_connection:
            with new_http_session() as s:
                return s.get(url, **kw)
        return self.http.get(url, **kw)


def served_by(resp) -> str | None:
    """The replica whose upstream answered (None: the relay itself answered)."""
    name = resp.headers.get("X-Echo-Server")
    return name.removesuffix("-upstream") if name else None


@pytest.fixture(scope="module")
def tier(wasm_file):
    keys = SessionKeys.generate(("replicas-2", "replicas-1"))
    front_port = free_port()
    redirect_uri = f"http://127.0.0.1:{front_port}/auth/callback"
    idp = Idp.start(access_token_ttl=ACCESS_TOKEN_TTL, name="idp-replicas",
                    redirect_uris=[redirect_uri],
                    post_logout_redirect_uris=[f"http://127.0.0.1:{front_port}/"])
    relays: dict[str, Relay] = {}
    front = None
    try:
        authority = f"127.0.0.1:{idp.port}"
        login = {"authorization_endpoint": idp.authorization_endpoint,
                 "redirect_uri": redirect_uri, "login_path": "/auth/login",
                 "logout_path": "/auth/logout", "scopes": ["openid", "offline_access"],
                 "post_logout_redirect": "/", "prompt": "consent"}
        # One configuration for both replicas (the same session keys): that is the contract.
        pc = login_plugin_config(
            keys, issuer=idp.issuer, audiences=[idp.audience], token_path=idp.token_path,
            authority=authority, jwks_path=idp.jwks_path, client_id=CLIENT_ID,
            client_secret="relay-secret", login=login, same_site="Lax",
            clock_skew_s=0, refresh_margin_s=0)
        probe = idp.mint("ready-probe", access_token_ttl=120)["access_token"]
        for name in ("relay-a", "relay-b"):
            relays[name] = Relay(name, idp.port, pc, concurrency=2).start()
            ready = relays[name].wait_ready(probe)
            assert ready.status_code == 200, f"{name} does not relay a valid token: " \
                                             f"{describe(ready)}"
        front = Envoy(front_tier_config(front_port, [r.envoy.port for r in relays.values()]),
                      concurrency=2, name="front", component_log_level=None).start()
        t = Tier(front, relays, idp, keys)
        # Both replicas healthy in the front tier before any test traffic.
        wait_until(lambda: t.front.stats(r"cluster\.relays\.membership_healthy").get(
            "cluster.relays.membership_healthy") == 2, 20, 0.1, "both replicas healthy")
        yield t
    finally:
        if front is not None:
            front.stop()
        for r in relays.values():
            r.stop()
        idp.stop()


@pytest.fixture(scope="module")
def browser(tier) -> dict:
    """A session from a real login through the front tier: {"jar": Jar}."""
    jar = Jar()
    nav = {"Accept": NAV_ACCEPT, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    start = tier.get("/auth/login?return_to=%2Fapi%2Fhome", jar.header(),
                     dict(nav, **{"Sec-Fetch-Site": "same-origin"}))
    assert start.status_code == 302, f"login start: {describe(start)}"
    jar.absorb(start)
    with requests.Session() as idp_http:  # holds the IdP's own cookies
        idp_http.trust_env = False
        flow = authorize_via_http(tier.idp, start.headers["Location"],
                                  f"{tier.origin}/auth/callback", session=idp_http)
    assert "code" in flow["params"], f"the IdP did not issue a code: {flow['params']}"
    cb = urllib.parse.urlsplit(flow["callback_url"])
    calls0 = tier.idp.stats()["token_requests"]
    resp = tier.get(f"{cb.path}?{cb.query}", jar.header(),
                    dict(nav, **{"Sec-Fetch-Site": "cross-site"}))
    assert resp.status_code == 302 and resp.headers.get("Location") == "/api/home", \
        f"login callback: {describe(resp)}"
    assert tier.idp.stats()["token_requests"] - calls0 == 1, "one code exchange"
    jar.absorb(resp)
    assert jar.get(AT_COOKIE) and jar.get(SESSION_COOKIE), \
        f"no session after login: {jar.names()}"
    home = tier.get("/api/home", jar.header())
    assert home.status_code == 200, f"first request after login: {describe(home)}"
    return {"jar": jar}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def session_rt(tier: Tier, jar: Jar) -> str:
    return tier.keys.unseal(jar.get(SESSION_COOKIE))[1]["rt"]


def wait_access_token_expired(jar: Jar) -> None:
    """Until the access token in the jar has expired (the jar still sends it: a browser keeps
    sending a cookie until its Max-Age, which ends at the same second, so send it explicitly)."""
    exp = jwt_claims(jar.get(AT_COOKIE))["exp"]
    wait_until(lambda: time.time() > exp + 0.3, ACCESS_TOKEN_TTL + 5, 0.05,
               "the access token to expire")


def burst(tier: Tier, cookie: str, n: int, path: str) -> list:
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait(timeout=10)
        return tier.get(path, cookie)

    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(one, range(n)))


def expired_cookie(jar: Jar, at: str) -> str:
    """The jar's cookies with `at` as the access token (the jar drops an expired one)."""
    return "; ".join([f"{AT_COOKIE}={at}"] + [f"{n}={v}" for n, v in jar.live().items()
                                              if n != AT_COOKIE])


def refresh_burst(tier: Tier, jar: Jar, path: str) -> dict:
    """Wait for the access token to expire, fire BURST parallel requests with the session,
    absorb the answer into the jar. Returns what happened."""
    old_at = jar.get(AT_COOKIE)
    old_rt = session_rt(tier, jar)
    wait_access_token_expired(jar)
    cookie = expired_cookie(jar, old_at)
    before = tier.idp.stats()
    responses = burst(tier, cookie, BURST, path)
    after = tier.idp.stats()
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * BURST, \
        f"statuses {statuses}; first non-200: " \
        f"{next((describe(r) for r in responses if r.status_code != 200), '')}"
    new_ats = {set_cookies(r)[AT_COOKIE].value for r in responses}
    assert len(new_ats) == 1, f"{len(new_ats)} different access tokens in one burst"
    jar.absorb(responses[0])
    return {"refreshes": after["refresh_requests"] - before["refresh_requests"],
            "refresh_errors": after["refresh_errors"] - before["refresh_errors"],
            "replicas": {served_by(r) for r in responses}, "old_rt": old_rt,
            "new_rt": session_rt(tier, jar), "old_at": old_at, "new_at": new_ats.pop()}


# --------------------------------------------------------------------------------------------
# Tests (in file order: they share one session)
# --------------------------------------------------------------------------------------------


def test_bursts_through_the_front_tier_refresh_once_per_rotation(tier, browser):
    jar = browser["jar"]
    seen_replicas = []
    for i in range(ROUNDS):
        b = refresh_burst(tier, jar, f"/api/burst-{i}")
        assert b["refreshes"] == 1 and b["refresh_errors"] == 0, \
            f"round {i}: {BURST} parallel requests made {b['refreshes']} refresh_token calls " \
            f"({b['refresh_errors']} refused) at the IdP; expected exactly 1"
        assert len(b["replicas"]) == 1, \
            f"round {i}: one session was served by several replicas: {b['replicas']}"
        assert b["new_rt"] != b["old_rt"] and b["new_at"] != b["old_at"]
        assert not tier.idp.refresh_token_active(b["old_rt"])
        assert tier.idp.refresh_token_active(b["new_rt"]), \
            f"round {i}: the grant was revoked (a refresh token was spent twice)"
        seen_replicas.append(b["replicas"].pop())
    # The grant survived every round: a later request works without calling the IdP.
    calls = tier.idp.stats()["token_requests"]
    later = tier.get("/api/later", jar.header())
    assert later.status_code == 200, describe(later)
    assert tier.idp.stats()["token_requests"] == calls
    browser["rounds_served_by"] = seen_replicas


def test_a_replica_stopped_mid_traffic_loses_no_session(tier, browser):
    jar = browser["jar"]
    # Start from a fresh access token (a refresh now, not during the kill).
    b = refresh_burst(tier, jar, "/api/pre-failover")
    assert b["refreshes"] == 1, f"pre-failover refresh: {b['refreshes']} IdP calls"
    cookie = jar.header()
    probe = tier.get("/api/which", cookie)
    assert probe.status_code == 200, describe(probe)
    victim = served_by(probe)
    survivor = next(n for n in tier.relays if n != victim)
    idp_calls = tier.idp.stats()["token_requests"]

    results: list[tuple[float, int, str | None, str]] = []
    stop = threading.Event()

    def traffic():
        with new_http_session() as s:  # keep-alive to the front tier, like a browser
            while not stop.is_set():
                try:
                    r = s.get(tier.front.url("/api/failover"), headers={"Cookie": cookie},
                              timeout=20, allow_redirects=False)
                    results.append((time.monotonic(), r.status_code, served_by(r),
                                    r.text[:200] if r.status_code != 200 else ""))
                except Exception as e:  # noqa: BLE001 - a lost request is a result here
                    results.append((time.monotonic(), 0, None, repr(e)))

    threads = [threading.Thread(target=traffic, daemon=True) for _ in range(TRAFFIC_CONNECTIONS)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    tier.relays[victim].envoy.proc.kill()  # a crash: no drain, connections reset
    tier.relays[victim].envoy.proc.wait(5)
    time.sleep(BROKEN_WINDOW_S + 2.0)
    stop.set()
    for t in threads:
        t.join(30)

    before = [r for r in results if r[0] < killed_at]
    after = [r for r in results if r[0] >= killed_at]
    # The window: a response the dead replica had begun to send (headers already passed on
    # to the browser) cannot be retried; its connection breaks. At most one such response per
    # concurrent connection, right at the kill; never a status (no 401, no 5xx).
    answered_not_200 = [r for r in results if r[1] not in (0, 200)]
    assert not answered_not_200, f"answers other than 200 around the kill: {answered_not_200[:5]}"
    broken = [r for r in results if r[1] == 0]
    assert len(broken) <= TRAFFIC_CONNECTIONS, \
        f"{len(broken)} requests broke (more than one per connection): {broken[:5]}"
    assert all(killed_at - 0.1 <= r[0] <= killed_at + BROKEN_WINDOW_S for r in broken), \
        f"requests broke outside the moment of the kill ({killed_at}): {broken[:5]}"
    assert before and {r[2] for r in before} == {victim}, \
        f"before the kill the session must be served by {victim}: {[r[2] for r in before][:10]}"
    # A request that started before the kill may finish after it, on either replica; the
    # later ones all land on the survivor.
    late = [r for r in after if r[0] >= killed_at + BROKEN_WINDOW_S]
    assert late and {r[2] for r in late} == {survivor}, \
        f"after the kill the session must move to {survivor}: {[r[2] for r in late][:10]}"
    assert tier.idp.stats()["token_requests"] == idp_calls, \
        "the access token was valid: moving replicas must not call the IdP"
    healthy = tier.front.stats(r"cluster\.relays\.")
    browser["failover"] = {"requests": len(results), "after_kill": len(after),
                           "broken": len(broken),
                           "retries": healthy.get("cluster.relays.upstream_rq_retry", 0)}

    # The session lives on at the survivor: the next rotation happens there, once.
    b = refresh_burst(tier, jar, "/api/after-failover")
    assert b["refreshes"] == 1 and b["refresh_errors"] == 0, \
        f"refresh on the survivor: {b['refreshes']} IdP calls, {b['refresh_errors']} refused"
    assert b["replicas"] == {survivor}, b["replicas"]
    assert tier.idp.refresh_token_active(b["new_rt"]), "the grant did not survive the failover"
    final = tier.get("/api/final", jar.header())
    assert final.status_code == 200 and served_by(final) == survivor, describe(final)
    # By path, not the upstream's last request: the front tier's /healthz checks reach the
    # echo upstream too, every 2 s, and one may land right after this request.
    finals = tier.relays[survivor].upstream.received_at("/api/final")
    assert len(finals) == 1, f"{len(finals)} upstream requests for /api/final"
    assert upstream_headers(finals[0], "authorization") == [f"Bearer {b['new_at']}"]


def test_zz_no_wasm_vm_failure_in_any_replica(tier):
    for name, relay in tier.relays.items():
        evidence = wasm_failure_evidence(relay.envoy) if relay.envoy.running else {
            k: v for k, v in {"log": [ln for ln in relay.envoy.log_text().splitlines()
                                      if "panicked at" in ln or "Uncaught RuntimeError" in ln]
                              }.items() if v}
        assert not evidence, f"{name}: {evidence}"
