//! The shell's state machines against the in-memory host: two `Vm`s sharing one fake are two
//! worker VMs of one Envoy.
#![allow(clippy::disallowed_methods)] // RefCell borrows in test code only.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{json, Value};

use super::events::{on_call_response, on_tick};
use super::fake::Fake;
use super::host::Host;
use super::jwks_sync::FETCH_TIMEOUT_S;
use super::response::ResponseDue;
use super::vm::{Outcome, SharedVm, Vm, WaitOn, FAST_TICK};
use crate::http::{encode_wire, RequestView};
use crate::relay::flight::SLOTS;
use crate::relay::RefreshId;
use crate::testkit::{claims, jwks, refresh_config, request, sealed, sign, NOW};

const INSTANCE: u64 = 7;
const SLOT_PREFIX: &str = "edge_token_relay.refresh.";

/// A worker VM on the shared fake host, with its slot table created as `on_configure` does.
fn worker(host: &Fake, extra: Value) -> SharedVm<Fake> {
    let vm = Vm::new(host.clone(), refresh_config(extra), INSTANCE);
    if let Some(f) = &vm.flights {
        f.init_slots(&vm.host);
    }
    Rc::new(RefCell::new(vm))
}

/// A request to a protected path carrying only a session (no access token): it needs a refresh.
fn session_request(vm: &SharedVm<Fake>, rt: &str) -> Vec<(String, Vec<u8>)> {
    let s = sealed(&vm.borrow().config, rt, None, 0);
    request(
        "GET",
        "/api/orders",
        Some(format!("__Host-relay-session={s}").as_bytes()),
        &[],
    )
}

/// A stream's first arrival on `vm`, as the stream context does it.
fn arrive(vm: &SharedVm<Fake>, ctx: u32, headers: Vec<(String, Vec<u8>)>) -> Outcome {
    let mut st = vm.borrow_mut();
    st.host.set_effective_context(ctx);
    let now = st.host.now_s();
    let wire = encode_wire(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    st.admit(ctx, &RequestView::wire(&wire), now)
}

thread_local! {
    /// One signed access token (signing is not deterministic, and tests compare the header).
    static ACCESS_TOKEN: String = sign(&claims());
}

fn access_token() -> String {
    ACCESS_TOKEN.with(Clone::clone)
}

fn token_answer(rt: &str) -> Vec<u8> {
    json!({"access_token": access_token(), "token_type": "Bearer", "expires_in": 300, "refresh_token": rt})
        .to_string()
        .into_bytes()
}

fn answer(vm: &SharedVm<Fake>, token: u32, status: u32, body: Vec<u8>) {
    on_call_response(vm, token, Some(status), move |limit| {
        (body.len() <= limit).then(|| body.clone())
    });
}

fn owns(vm: &SharedVm<Fake>, rt: &str) -> bool {
    vm.borrow()
        .flights
        .as_ref()
        .is_some_and(|f| f.owns(&RefreshId::of(rt)))
}

fn is_wait(o: &Outcome) -> bool {
    matches!(o, Outcome::Wait(WaitOn::Refresh(_)))
}

#[test]
fn racing_workers_refresh_a_session_once() {
    let host = Fake::at(NOW);
    let (a, b) = (worker(&host, json!({})), worker(&host, json!({})));
    assert!(is_wait(&arrive(&a, 1, session_request(&a, "rt-1"))));
    assert!(is_wait(&arrive(&b, 2, session_request(&b, "rt-1"))));
    assert!(is_wait(&arrive(&a, 3, session_request(&a, "rt-1"))));
    // Exactly one worker holds the lease; the other watches the shared record.
    assert!(owns(&a, "rt-1"));
    assert!(!owns(&b, "rt-1"));
    assert_eq!(host.tick_period(), Some(FAST_TICK));

    on_tick(&a);
    on_tick(&b);
    let calls = host.calls();
    assert_eq!(calls.len(), 1, "one refresh for the whole Envoy");
    assert_eq!(calls[0].cluster, "idp");
    let body = String::from_utf8_lossy(&calls[0].body).to_string();
    assert!(body.contains("grant_type=refresh_token") && body.contains("refresh_token=rt-1"));
    assert!(host.resumed().is_empty());

    answer(&a, calls[0].token, 200, token_answer("rt-2"));
    // The owner's two requests go on at once (one pass, in no set order), with the new token
    // and the rotated session.
    let mut resumed = host.resumed();
    resumed.sort_unstable();
    assert_eq!(resumed, vec![1, 3]);
    let bearer = format!("Bearer {}", access_token());
    assert_eq!(
        host.request_header(1, "authorization"),
        Some(bearer.clone())
    );
    let cookies = a
        .borrow()
        .response_cookies
        .get(&1)
        .cloned()
        .unwrap_or_default();
    assert!(cookies.iter().any(|c| c.starts_with("__Host-relay-at=")));
    assert!(cookies
        .iter()
        .any(|c| c.starts_with("__Host-relay-session=")));
    // The other worker learns the outcome from shared data on its next tick.
    on_tick(&b);
    assert_eq!(host.resumed().get(2..), Some(&[2][..]));
    assert_eq!(host.request_header(2, "authorization"), Some(bearer));
    assert_eq!(host.calls().len(), 1);
    assert_eq!(host.metric("edge_token_relay_refresh_total"), 1);
    assert_eq!(host.metric("edge_token_relay_refresh_success_total"), 1);
    assert_eq!(host.metric("edge_token_relay_refresh_waiters_total"), 2);
    // A request arriving within the grace window is served by the known outcome.
    assert!(matches!(
        arrive(&b, 4, session_request(&b, "rt-1")),
        Outcome::Continue
    ));
    assert_eq!(host.calls().len(), 1);
}

#[test]
fn a_dead_workers_lease_expires_and_another_takes_over() {
    let host = Fake::at(NOW);
    let a = worker(
        &host,
        json!({"token_endpoint": {"cluster": "idp", "authority": "idp", "path": "/token", "timeout_ms": 2000}}),
    );
    let b = worker(
        &host,
        json!({"token_endpoint": {"cluster": "idp", "authority": "idp", "path": "/token", "timeout_ms": 2000}}),
    );
    assert!(is_wait(&arrive(&a, 1, session_request(&a, "rt-1"))));
    // Worker a dies before dispatching: its lease (timeout 2 s + 2 s) is all that is left.
    drop(a);
    assert!(is_wait(&arrive(&b, 2, session_request(&b, "rt-1"))));
    assert!(!owns(&b, "rt-1"));
    host.set_now(NOW + 3);
    on_tick(&b);
    assert!(host.calls().is_empty(), "the lease is still live");
    host.set_now(NOW + 4);
    on_tick(&b); // the waiter is decided again, finds the slot free and takes the lease
    assert!(owns(&b, "rt-1"));
    on_tick(&b); // and dispatches
    let calls = host.calls();
    assert_eq!(calls.len(), 1);
    answer(&b, calls[0].token, 200, token_answer("rt-2"));
    assert_eq!(host.resumed(), vec![2]);
}

#[test]
fn a_callout_that_never_answers_fails_its_waiters_with_503() {
    let host = Fake::at(NOW);
    let a = worker(&host, json!({}));
    assert!(is_wait(&arrive(&a, 1, session_request(&a, "rt-1"))));
    on_tick(&a);
    assert_eq!(host.calls().len(), 1);
    // Default timeout 3 s: the deadline is 5 s after dispatch.
    host.set_now(NOW + 4);
    on_tick(&a);
    assert!(host.replies_to(1).is_empty());
    assert_eq!(host.metric("edge_token_relay_refresh_failed_total"), 0);
    host.set_now(NOW + 5);
    on_tick(&a);
    assert_eq!(host.replies_to(1), vec![(503, "refresh_unavailable")]);
    assert!(host.resumed().is_empty());
    // Counted once, as a failed refresh.
    assert_eq!(host.metric("edge_token_relay_refresh_failed_total"), 1);
    assert_eq!(host.metric("edge_token_relay_refresh_total"), 1);
    // The failure is shared: another worker backs off instead of calling again.
    let b = worker(&host, json!({}));
    match arrive(&b, 2, session_request(&b, "rt-1")) {
        Outcome::Reply(r) => assert_eq!((r.status, r.reason), (503, "refresh_unavailable")),
        _ => panic!("expected the shared backoff"),
    }
    assert_eq!(host.calls().len(), 1);
    // A late answer to the forgotten call changes nothing.
    answer(&a, 1, 200, token_answer("rt-2"));
    assert!(host.resumed().is_empty());
}

#[test]
fn a_lost_compare_and_swap_makes_the_loser_wait() {
    let host = Fake::at(NOW);
    let (a, b) = (worker(&host, json!({})), worker(&host, json!({})));
    let headers_b = session_request(&b, "rt-1");
    let b2 = Rc::clone(&b);
    // Between a's read of the slot and its write, worker b takes the same slot.
    host.interleave(move || {
        assert!(is_wait(&arrive(&b2, 2, headers_b)));
    });
    assert!(is_wait(&arrive(&a, 1, session_request(&a, "rt-1"))));
    assert!(owns(&b, "rt-1"));
    assert!(!owns(&a, "rt-1"), "the loser must not hold the lease too");
    on_tick(&a);
    on_tick(&b);
    assert_eq!(host.calls().len(), 1);
    assert_eq!(host.shared_keys(SLOT_PREFIX), 1);
}

#[test]
fn an_undispatchable_refresh_answers_503_and_invalid_grant_ends_the_session() {
    let host = Fake::at(NOW);
    let a = worker(&host, json!({}));
    host.0.refuse_dispatch.set(true);
    assert!(is_wait(&arrive(&a, 1, session_request(&a, "rt-1"))));
    on_tick(&a);
    assert_eq!(host.replies_to(1), vec![(503, "refresh_unavailable")]);

    host.0.refuse_dispatch.set(false);
    assert!(is_wait(&arrive(&a, 2, session_request(&a, "rt-9"))));
    on_tick(&a);
    let token = host.calls()[0].token;
    answer(&a, token, 400, br#"{"error":"invalid_grant"}"#.to_vec());
    let replies = host.replies_to(2);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, 401);
    assert_eq!(
        host.metric("edge_token_relay_refresh_invalid_grant_total"),
        1
    );
}

#[test]
fn a_gone_stream_is_not_resumed() {
    let host = Fake::at(NOW);
    let a = worker(&host, json!({}));
    assert!(is_wait(&arrive(&a, 1, session_request(&a, "rt-1"))));
    on_tick(&a);
    host.0.gone.borrow_mut().insert(1);
    answer(&a, host.calls()[0].token, 200, token_answer("rt-2"));
    assert!(host.resumed().is_empty());
    assert!(a.borrow().waiters.is_empty());
}

#[test]
fn a_busy_vm_is_skipped_not_a_panic() {
    let host = Fake::at(NOW);
    let a = worker(&host, json!({}));
    let held = a.borrow_mut();
    on_tick(&a);
    on_call_response(&a, 1, Some(200), |_| None);
    drop(held);
    on_tick(&a);
}

// ---- JWKS sync -------------------------------------------------------------------------------

fn remote_jwks() -> Value {
    json!({"jwks": {"cluster": "idp", "authority": "idp", "path": "/jwks", "refresh_s": 300}})
}

fn token_request() -> Vec<(String, Vec<u8>)> {
    let t = access_token();
    request(
        "GET",
        "/api/x",
        Some(format!("__Host-relay-at={t}").as_bytes()),
        &[],
    )
}

#[test]
fn one_worker_fetches_the_jwks_and_every_worker_uses_it() {
    let host = Fake::at(NOW);
    let (a, b) = (worker(&host, remote_jwks()), worker(&host, remote_jwks()));
    // No keys yet: a token request waits for them (bounded), it is not refused outright.
    let parked = arrive(&b, 5, token_request());
    assert!(
        matches!(parked, Outcome::Wait(WaitOn::Keys) | Outcome::Reply(_)),
        "no keys: wait or 503"
    );
    on_tick(&a);
    on_tick(&b);
    let calls = host.calls();
    assert_eq!(calls.len(), 1, "the lease lets one worker fetch");
    let path = calls[0].headers.iter().find(|(n, _)| n == ":path");
    assert_eq!(path.map(|(_, v)| v.as_str()), Some("/jwks"));
    answer(&a, calls[0].token, 200, jwks().to_string().into_bytes());
    assert!(a.borrow().keys.is_some());
    assert!(b.borrow().keys.is_none());
    on_tick(&b);
    assert!(b.borrow().keys.is_some(), "picked up from shared data");
    assert!(matches!(arrive(&b, 6, token_request()), Outcome::Continue));
    assert_eq!(host.calls().len(), 1);
    assert_eq!(host.metric("edge_token_relay_jwks_fetches_total"), 1);
}

#[test]
fn a_worker_without_keys_looks_in_shared_data_before_refusing() {
    let host = Fake::at(NOW);
    let (a, b) = (worker(&host, remote_jwks()), worker(&host, remote_jwks()));
    on_tick(&a);
    let calls = host.calls();
    answer(&a, calls[0].token, 200, jwks().to_string().into_bytes());
    // No tick on b since the fetch: its first request still finds the keys.
    assert!(b.borrow().keys.is_none());
    assert!(matches!(arrive(&b, 7, token_request()), Outcome::Continue));
    assert!(b.borrow().keys.is_some());
    assert_eq!(host.calls().len(), 1);
}

#[test]
fn a_failed_jwks_fetch_backs_off_for_every_worker() {
    let host = Fake::at(NOW);
    let (a, b) = (worker(&host, remote_jwks()), worker(&host, remote_jwks()));
    on_tick(&a);
    let token = host.calls()[0].token;
    answer(&a, token, 503, Vec::new());
    assert_eq!(host.metric("edge_token_relay_jwks_failures_total"), 1);
    // Within the backoff neither worker calls again.
    on_tick(&a);
    on_tick(&b);
    assert_eq!(host.calls().len(), 1);
    host.set_now(NOW + 2);
    on_tick(&b);
    on_tick(&a);
    assert_eq!(host.calls().len(), 2, "one retry after the backoff");
    // A fetch that never answers is forgotten after its deadline and retried.
    host.set_now(NOW + 2 + FETCH_TIMEOUT_S + 2);
    on_tick(&b);
    on_tick(&a);
    assert_eq!(host.calls().len(), 3);
}

#[test]
fn consecutive_failures_double_the_backoff_and_a_success_resets_it() {
    let host = Fake::at(NOW);
    let a = worker(&host, json!({"refresh_backoff_s": 5}));
    let b = worker(&host, json!({"refresh_backoff_s": 5}));
    let mut now = NOW;
    let mut ctx = 1;
    // Each round: a request needs a refresh, the IdP answers 503; the Retry-After of the next
    // request (on the other worker, which learns it from shared data) is the wait.
    for want_wait in [6, 11, 21, 41, 81, 81] {
        host.set_now(now);
        assert!(is_wait(&arrive(&a, ctx, session_request(&a, "rt-1"))));
        on_tick(&a);
        let token = host.calls().last().map(|c| c.token).unwrap();
        answer(&a, token, 503, Vec::new());
        assert_eq!(host.replies_to(ctx), vec![(503, "refresh_unavailable")]);
        ctx += 1;
        match arrive(&b, ctx, session_request(&b, "rt-1")) {
            Outcome::Reply(r) => {
                let retry = r.headers.iter().find(|(n, _)| *n == "retry-after");
                assert_eq!(retry.map(|(_, v)| v.clone()), Some(want_wait.to_string()));
            }
            _ => panic!("expected the backoff"),
        }
        ctx += 1;
        now += want_wait;
    }
    // A success resets the count: the next failure waits the base again.
    host.set_now(now);
    assert!(is_wait(&arrive(&a, ctx, session_request(&a, "rt-1"))));
    on_tick(&a);
    let token = host.calls().last().map(|c| c.token).unwrap();
    answer(&a, token, 200, token_answer("rt-1"));
    now += 120; // past the grace window
    host.set_now(now);
    ctx += 1;
    assert!(is_wait(&arrive(&b, ctx, session_request(&b, "rt-1"))));
    on_tick(&b);
    let token = host.calls().last().map(|c| c.token).unwrap();
    answer(&b, token, 503, Vec::new());
    ctx += 1;
    match arrive(&a, ctx, session_request(&a, "rt-1")) {
        Outcome::Reply(r) => assert!(r.headers.contains(&("retry-after", "6".to_string()))),
        _ => panic!("expected the base backoff"),
    }
}

#[test]
fn forged_claim_headers_are_removed_from_every_request() {
    let host = Fake::at(NOW);
    let a = worker(&host, json!({}));
    // Unprotected: passed on, but without the client's claim headers (either spelling).
    let h = request(
        "GET",
        "/static/app.js",
        None,
        &[
            ("x-user-sub", "admin"),
            ("x_user_sub", "admin"),
            ("x-other", "1"),
        ],
    );
    assert!(matches!(arrive(&a, 1, h), Outcome::Pass));
    let removed: Vec<String> = host
        .0
        .request_headers
        .borrow()
        .iter()
        .filter(|(c, _, v)| *c == 1 && v.is_none())
        .map(|(_, n, _)| n.clone())
        .collect();
    assert_eq!(removed, vec!["x-user-sub", "x_user_sub"]);
    // Protected: the forged copies go first, then the relay sets the verified claim.
    let t = access_token();
    let h = request(
        "GET",
        "/api/x",
        Some(format!("__Host-relay-at={t}").as_bytes()),
        &[("X_User_Sub", "admin")],
    );
    assert!(matches!(arrive(&a, 2, h), Outcome::Continue));
    assert_eq!(
        host.request_header(2, "x-user-sub"),
        Some("alice".to_string())
    );
    assert!(host
        .0
        .request_headers
        .borrow()
        .iter()
        .any(|(c, n, v)| *c == 2 && n == "X_User_Sub" && v.is_none()));
}

#[test]
fn passed_requests_lose_relay_cookies_with_one_write_and_only_when_present() {
    let host = Fake::at(NOW);
    let vm = worker(&host, json!({}));
    let cookie = b"theme=dark; __Host-relay-at=t; __Host-relay-session.0=s; __Host-relay-csrf=c";
    let o = arrive(&vm, 1, request("GET", "/static/app.js", Some(cookie), &[]));
    assert!(matches!(o, Outcome::Pass));
    assert_eq!(
        host.request_header(1, "cookie").as_deref(),
        Some("theme=dark")
    );
    // No relay cookie: no header write at all.
    let o = arrive(&vm, 2, request("GET", "/", Some(b"theme=dark"), &[]));
    assert!(matches!(o, Outcome::Pass));
    let writes = host.0.request_headers.borrow().clone();
    assert!(writes.iter().all(|(ctx, _, _)| *ctx != 2), "{writes:?}");
    // Only relay cookies: the header is removed.
    let o = arrive(
        &vm,
        3,
        request("GET", "/api/public/x", Some(b"__Host-relay-at=t"), &[]),
    );
    assert!(matches!(o, Outcome::Pass));
    let writes = host.0.request_headers.borrow().clone();
    assert!(
        writes.contains(&(3, "cookie".to_string(), None)),
        "{writes:?}"
    );

    // The opt-out: nothing is written.
    let host = Fake::at(NOW);
    let vm = worker(&host, json!({"forward_relay_cookies_to_unprotected": true}));
    let o = arrive(&vm, 1, request("GET", "/static/app.js", Some(cookie), &[]));
    assert!(matches!(o, Outcome::Pass));
    assert!(host.0.request_headers.borrow().is_empty());
}

#[test]
fn forwarded_requests_record_how_their_token_was_trusted() {
    let host = Fake::at(NOW);
    let vm = worker(&host, json!({}));
    let cookie = format!("__Host-relay-at={}", access_token());
    let get = || request("GET", "/api/orders", Some(cookie.as_bytes()), &[]);
    assert!(matches!(arrive(&vm, 1, get()), Outcome::Continue));
    assert!(matches!(arrive(&vm, 2, get()), Outcome::Continue));
    assert_eq!(host.reasons_of(1), vec!["forwarded"]);
    assert_eq!(host.reasons_of(2), vec!["cache_hit"]);
    // Unprotected paths record nothing.
    let public = request("GET", "/api/public/x", Some(cookie.as_bytes()), &[]);
    assert!(matches!(arrive(&vm, 3, public), Outcome::Pass));
    assert!(host.reasons_of(3).is_empty());

    // A session-only request is forwarded after the refresh it waited for.
    assert!(is_wait(&arrive(&vm, 4, session_request(&vm, "rt-r"))));
    assert!(host.reasons_of(4).is_empty());
    on_tick(&vm);
    let calls = host.calls();
    assert_eq!(calls.len(), 1);
    answer(&vm, calls[0].token, 200, token_answer("rt-r2"));
    assert_eq!(host.resumed(), vec![4]);
    assert_eq!(host.reasons_of(4), vec!["refreshed"]);
}

#[test]
fn a_parked_request_answered_later_records_its_reason_and_counter() {
    let host = Fake::at(NOW);
    let vm = worker(&host, json!({}));
    assert!(is_wait(&arrive(&vm, 1, session_request(&vm, "rt-g"))));
    on_tick(&vm);
    let calls = host.calls();
    answer(
        &vm,
        calls[0].token,
        400,
        br#"{"error":"invalid_grant"}"#.to_vec(),
    );
    assert_eq!(host.replies_to(1), vec![(401, "session_revoked")]);
    assert_eq!(host.reasons_of(1), vec!["session_revoked"]);
    assert_eq!(
        host.metric("edge_token_relay_denied_session_revoked_total"),
        1
    );
    assert_eq!(host.metric("edge_token_relay_requests_denied_401_total"), 1);
}

#[test]
fn every_denied_reason_has_its_own_counter() {
    use super::metrics::{Metrics, DENIED_REASONS};
    use crate::http::Reply;
    let host = Fake::at(NOW);
    let m = Metrics::define(&host);
    let mut seen = std::collections::BTreeSet::new();
    for r in DENIED_REASONS {
        assert!(seen.insert(*r), "{r} listed twice");
        assert!(
            r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{r}"
        );
        m.refused(&host, &Reply::error(401, r, "x", "y"));
        assert_eq!(
            host.metric(&format!("edge_token_relay_denied_{r}_total")),
            1
        );
    }
    // The core's reason codes are all in the list.
    use crate::csrf::CsrfError;
    use crate::jwt::token::TokenError;
    for code in TokenError::ALL
        .iter()
        .map(TokenError::code)
        .chain(CsrfError::ALL.iter().map(CsrfError::code))
    {
        assert!(DENIED_REASONS.contains(&code), "{code}");
    }
    // Answers that are not refusals count nowhere, and unknown reasons make no new name.
    m.refused(&host, &Reply::redirect("/auth/login", "login_redirect"));
    m.refused(&host, &Reply::error(401, "not_a_listed_reason", "x", "y"));
    assert!(host
        .0
        .metrics
        .borrow()
        .keys()
        .all(|k| !k.contains("login_redirect") && !k.contains("not_a_listed")));
}

// ---- Callouts that cannot be dispatched ------------------------------------------------------

#[test]
fn a_jwks_fetch_to_an_unknown_cluster_is_a_failure_every_backoff_and_keys_stay_at_zero() {
    let host = Fake::at(NOW);
    host.0.unknown_clusters.borrow_mut().insert("idp".into());
    let (a, b) = (worker(&host, remote_jwks()), worker(&host, remote_jwks()));
    on_tick(&a);
    on_tick(&b);
    assert_eq!(host.metric("edge_token_relay_jwks_failures_total"), 1);
    assert_eq!(host.metric("edge_token_relay_jwks_fetches_total"), 1);
    assert_eq!(host.metric("edge_token_relay_jwks_keys"), 0);
    // The counter keeps moving at the pace of the shared backoff (at most 4 s with no keys),
    // not once per tick and not once per worker.
    let mut failures = Vec::new();
    for t in 1..=20 {
        host.set_now(NOW + t);
        for _ in 0..10 {
            on_tick(&a);
            on_tick(&b);
        }
        failures.push(host.metric("edge_token_relay_jwks_failures_total"));
    }
    assert!(host.calls().is_empty());
    // 20 s at one attempt per (at most) 4 s, for two workers ticking 10 times a second.
    let last = failures.last().copied().unwrap_or(0);
    assert!((5..=8).contains(&last), "{failures:?}");
    assert!(
        failures.windows(2).all(|w| w[1] - w[0] <= 1),
        "{failures:?}"
    );
    assert_eq!(
        host.metric("edge_token_relay_jwks_fetches_total"),
        host.metric("edge_token_relay_jwks_failures_total")
    );
    // Protected requests meanwhile: 503 jwks_not_ready (or a bounded wait), never a pass.
    match arrive(&a, 1, token_request()) {
        Outcome::Reply(r) => assert_eq!((r.status, r.reason), (503, "jwks_not_ready")),
        Outcome::Wait(WaitOn::Keys) => {}
        _ => panic!("no keys: wait or 503"),
    }
    // The cluster is fixed: keys arrive and the gauge shows them.
    host.0.unknown_clusters.borrow_mut().clear();
    host.set_now(NOW + 30);
    on_tick(&a);
    on_tick(&b);
    let calls = host.calls();
    assert_eq!(calls.len(), 1);
    answer(&a, calls[0].token, 200, jwks().to_string().into_bytes());
    on_tick(&a);
    on_tick(&b);
    let served = i64::try_from(jwks()["keys"].as_array().map_or(0, Vec::len)).unwrap();
    assert!(served > 0);
    assert_eq!(host.metric("edge_token_relay_jwks_keys"), served);
    assert_eq!(host.metric("edge_token_relay_jwks_failures_total"), last);
}

#[test]
fn a_refresh_to_an_unknown_cluster_counts_as_failed() {
    let host = Fake::at(NOW);
    host.0.unknown_clusters.borrow_mut().insert("idp".into());
    let a = worker(&host, json!({}));
    for (i, ctx) in (1..=3).enumerate() {
        host.set_now(NOW + 100 * i as u64); // past each backoff
        assert!(is_wait(&arrive(&a, ctx, session_request(&a, "rt-1"))));
        on_tick(&a);
        assert_eq!(host.replies_to(ctx), vec![(503, "refresh_unavailable")]);
    }
    assert!(host.calls().is_empty());
    assert_eq!(host.metric("edge_token_relay_refresh_failed_total"), 3);
    assert_eq!(host.metric("edge_token_relay_refresh_total"), 0);
}

// ---- A flooded single-flight table -----------------------------------------------------------

fn slot_key(slot: u32) -> String {
    format!("{SLOT_PREFIX}{INSTANCE:016x}.{slot}")
}

/// Fills every slot with the leases of distinct sealed sessions (alternating workers), as an
/// attacker driving refreshes would; returns the next free context id.
fn flood(host: &Fake, a: &SharedVm<Fake>, b: &SharedVm<Fake>) -> u32 {
    let mut ctx = 1000;
    let mut i = 0u32;
    while host.shared_keys(SLOT_PREFIX) < SLOTS as usize {
        let vm = if i % 2 == 0 { a } else { b };
        let _ = arrive(vm, ctx, session_request(vm, &format!("flood-{i}")));
        i += 1;
        ctx += 1;
        assert!(i < 200_000, "the table does not fill");
    }
    // Some flood sessions found all their slots held: they were refused, not refreshed.
    assert!(i > SLOTS);
    on_tick(a);
    on_tick(b);
    ctx
}

fn calls_for(host: &Fake, rt: &str) -> usize {
    let needle = format!("refresh_token={rt}&");
    host.calls()
        .iter()
        .filter(|c| {
            let body = String::from_utf8_lossy(&c.body).to_string() + "&";
            body.contains(&needle)
        })
        .count()
}

#[test]
fn a_full_table_answers_503_and_never_refreshes_without_a_record() {
    let host = Fake::at(NOW);
    let (a, b) = (worker(&host, json!({})), worker(&host, json!({})));
    let ctx = flood(&host, &a, &b);
    // Every slot the legitimate session may use holds a live lease of another session: both
    // workers answer 503 with a Retry-After, and nobody calls the token endpoint for it.
    for (vm, ctx) in [(&a, ctx), (&b, ctx + 1)] {
        match arrive(vm, ctx, session_request(vm, "rt-legit")) {
            Outcome::Reply(r) => {
                assert_eq!((r.status, r.reason), (503, "refresh_unavailable"));
                assert!(r.headers.contains(&("retry-after", "5".to_string())));
            }
            _ => panic!("a full table must not refresh uncoordinated"),
        }
    }
    on_tick(&a);
    on_tick(&b);
    assert_eq!(calls_for(&host, "rt-legit"), 0);
    // The flood's calls never answer: their leases die, the slots are reclaimed, and the
    // session's parallel requests on both workers make exactly one call.
    host.set_now(NOW + 5);
    on_tick(&a);
    on_tick(&b);
    for (vm, c) in [(&a, ctx + 2), (&b, ctx + 3), (&a, ctx + 4), (&b, ctx + 5)] {
        assert!(is_wait(&arrive(vm, c, session_request(vm, "rt-legit"))));
    }
    for _ in 0..3 {
        on_tick(&a);
        on_tick(&b);
    }
    assert_eq!(calls_for(&host, "rt-legit"), 1);
}

#[test]
fn flood_records_that_failed_give_way_to_a_legitimate_session_once() {
    let host = Fake::at(NOW);
    let (a, b) = (worker(&host, json!({})), worker(&host, json!({})));
    let ctx = flood(&host, &a, &b);
    // The IdP refuses the flood (forged-looking or replayed refresh tokens): half invalid_grant,
    // half server errors. Those records are live (grace, backoff) but hold no slot.
    for (n, call) in host.calls().iter().enumerate() {
        let (status, body) = if n % 2 == 0 {
            (400, br#"{"error":"invalid_grant"}"#.to_vec())
        } else {
            (503, Vec::new())
        };
        answer(&a, call.token, status, body.clone());
        answer(&b, call.token, status, body);
    }
    assert_eq!(host.shared_keys(SLOT_PREFIX), SLOTS as usize);
    let flood_calls = host.calls().len();
    for (vm, c) in [(&a, ctx), (&b, ctx + 1), (&a, ctx + 2), (&b, ctx + 3)] {
        assert!(is_wait(&arrive(vm, c, session_request(vm, "rt-legit"))));
    }
    for _ in 0..3 {
        on_tick(&a);
        on_tick(&b);
    }
    assert_eq!(host.calls().len(), flood_calls + 1);
    assert_eq!(calls_for(&host, "rt-legit"), 1);
    let token = host.calls().last().map(|c| c.token).unwrap();
    answer(&a, token, 200, token_answer("rt-legit-2"));
    answer(&b, token, 200, token_answer("rt-legit-2"));
    on_tick(&a);
    on_tick(&b);
    let mut resumed = host.resumed();
    resumed.sort_unstable();
    assert_eq!(resumed, vec![ctx, ctx + 1, ctx + 2, ctx + 3]);
    assert_eq!(calls_for(&host, "rt-legit"), 1);
}

// ---- Outcomes in shared data -----------------------------------------------------------------

fn slot_of(host: &Fake, rt: &str) -> Option<u32> {
    let hex = RefreshId::of(rt).hex();
    RefreshId::of(rt)
        .slots()
        .find(|s| String::from_utf8_lossy(&host.shared_value(&slot_key(*s))).contains(&hex))
}

#[test]
fn new_tokens_in_shared_data_are_sealed_and_cleared_after_the_grace_window() {
    let host = Fake::at(NOW);
    let (a, b) = (worker(&host, json!({})), worker(&host, json!({})));
    assert!(is_wait(&arrive(&a, 1, session_request(&a, "rt-1"))));
    assert!(is_wait(&arrive(&b, 2, session_request(&b, "rt-1"))));
    on_tick(&a);
    let token = host.calls()[0].token;
    answer(&a, token, 200, token_answer("rt-2"));
    let slot = slot_of(&host, "rt-1").unwrap();
    let stored = String::from_utf8_lossy(&host.shared_value(&slot_key(slot))).to_string();
    for secret in [
        access_token().as_str(),
        "rt-2",
        "access_token",
        "refresh_token",
    ] {
        assert!(!stored.contains(secret), "{secret} readable in shared data");
    }
    // The other worker still opens it (same session key) and serves its request.
    on_tick(&b);
    assert_eq!(host.resumed(), vec![1, 2]);
    assert_eq!(
        host.request_header(2, "authorization"),
        Some(format!("Bearer {}", access_token()))
    );
    // Grace (60 s) over: the writer clears the record.
    host.set_now(NOW + 59);
    on_tick(&a);
    assert_eq!(host.shared_keys(SLOT_PREFIX), 1);
    host.set_now(NOW + 60);
    on_tick(&a);
    assert_eq!(host.shared_keys(SLOT_PREFIX), 0);
}

#[test]
fn an_expired_outcome_is_not_used_and_its_slot_is_reused() {
    let host = Fake::at(NOW);
    let a = worker(&host, json!({}));
    assert!(is_wait(&arrive(&a, 1, session_request(&a, "rt-1"))));
    on_tick(&a);
    answer(&a, host.calls()[0].token, 200, token_answer("rt-2"));
    let slot = slot_of(&host, "rt-1").unwrap();
    // The writer is gone before it could clear the record; past the grace window another
    // worker does not reuse the stale tokens: the old token is refreshed again (the IdP then
    // decides), in the same slot.
    drop(a);
    host.set_now(NOW + 61);
    let b = worker(&host, json!({}));
    assert!(is_wait(&arrive(&b, 2, session_request(&b, "rt-1"))));
    assert_eq!(slot_of(&host, "rt-1"), Some(slot));
    let rec = String::from_utf8_lossy(&host.shared_value(&slot_key(slot))).to_string();
    assert!(rec.contains("\"k\":\"lease\""), "{rec}");
    on_tick(&b);
    assert_eq!(calls_for(&host, "rt-1"), 2);
}

// ---- the response side ------------------------------------------------------------------------

/// A stream's response on `vm`, as the stream context hands it over: the upstream answered
/// with `upstream`; what the filter made of it is read with `Fake::response_lines`.
fn respond(vm: &SharedVm<Fake>, ctx: u32, due: ResponseDue, upstream: &[(&str, &str)]) {
    let mut st = vm.borrow_mut();
    st.host.set_effective_context(ctx);
    st.host.upstream_responds(upstream);
    st.on_response(ctx, due);
}

#[test]
fn a_protected_response_is_kept_out_of_shared_caches_and_others_are_untouched() {
    let host = Fake::at(NOW);
    let vm = worker(&host, json!({}));
    let cookie = format!("__Host-relay-at={}", access_token());
    let upstream = [
        ("content-type", "application/json"),
        ("cache-control", "public, max-age=60, s-maxage=600"),
        ("vary", "Accept-Encoding"),
        ("cdn-cache-control", "max-age=3600"),
    ];
    let o = arrive(
        &vm,
        1,
        request("GET", "/api/orders", Some(cookie.as_bytes()), &[]),
    );
    respond(&vm, 1, ResponseDue::after(&o, None), &upstream);
    assert_eq!(
        host.response_lines("cache-control"),
        ["private, max-age=60"]
    );
    assert_eq!(host.response_lines("vary"), ["Accept-Encoding, Cookie"]);
    assert_eq!(
        host.response_lines("cdn-cache-control"),
        ["no-store, max-age=0"]
    );
    assert_eq!(host.response_lines("content-type"), ["application/json"]);
    assert!(host.response_lines("set-cookie").is_empty());

    // A public path: the response goes out as the upstream sent it.
    let o = arrive(
        &vm,
        2,
        request("GET", "/api/public/x", Some(cookie.as_bytes()), &[]),
    );
    assert!(matches!(o, Outcome::Pass));
    respond(&vm, 2, ResponseDue::after(&o, None), &upstream);
    assert_eq!(
        host.response_lines("cache-control"),
        ["public, max-age=60, s-maxage=600"]
    );
    assert_eq!(host.response_lines("vary"), ["Accept-Encoding"]);
    assert_eq!(host.response_lines("cdn-cache-control"), ["max-age=3600"]);

    // The relay's own refusal is not a protected response either.
    let o = arrive(&vm, 3, request("GET", "/api/orders", None, &[]));
    assert!(matches!(o, Outcome::Reply(_)));
    respond(&vm, 3, ResponseDue::after(&o, None), &upstream);
    assert_eq!(host.response_lines("vary"), ["Accept-Encoding"]);
}

#[test]
fn a_refreshed_response_carries_the_new_cookies_and_is_never_stored() {
    let host = Fake::at(NOW);
    let vm = worker(&host, json!({}));
    let o = arrive(&vm, 4, session_request(&vm, "rt-r"));
    assert!(is_wait(&o));
    on_tick(&vm);
    let calls = host.calls();
    assert_eq!(calls.len(), 1);
    answer(&vm, calls[0].token, 200, token_answer("rt-r2"));
    assert_eq!(host.resumed(), vec![4]);
    respond(
        &vm,
        4,
        ResponseDue::after(&o, None),
        &[("cache-control", "max-age=60")],
    );
    let cookies = host.response_lines("set-cookie");
    let names: Vec<&str> = cookies.iter().filter_map(|c| c.split('=').next()).collect();
    assert!(names.contains(&"__Host-relay-at"), "{cookies:?}");
    assert!(names.contains(&"__Host-relay-session"), "{cookies:?}");
    assert_eq!(host.response_lines("cache-control"), ["private, no-store"]);
    assert_eq!(host.response_lines("vary"), ["Cookie"]);
    // Handed over once: the stream's cookies are gone from the VM.
    assert!(vm.borrow().response_cookies.is_empty());
}

#[test]
fn tokens_an_upstream_rotates_become_cookies_on_protected_paths_and_vanish_elsewhere() {
    let host = Fake::at(NOW);
    let rotating = json!({"upstream_token_headers": {
        "access_token": "x-new-access-token", "refresh_token": "x-new-refresh-token"}});
    let vm = worker(&host, rotating);
    let cookie = format!("__Host-relay-at={}", access_token());
    let new_at = sign(&claims());
    let upstream = [
        ("x-new-access-token", new_at.as_str()),
        ("x-new-refresh-token", "rt-upstream"),
    ];

    let o = arrive(
        &vm,
        1,
        request("GET", "/api/orders", Some(cookie.as_bytes()), &[]),
    );
    assert!(matches!(o, Outcome::Continue));
    let due = ResponseDue::after(&o, Some(cookie.clone().into_bytes()));
    respond(&vm, 1, due, &upstream);
    assert!(host.response_lines("x-new-access-token").is_empty());
    assert!(host.response_lines("x-new-refresh-token").is_empty());
    let cookies = host.response_lines("set-cookie");
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with(&format!("__Host-relay-at={new_at}"))),
        "{cookies:?}"
    );
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("__Host-relay-session=")),
        "{cookies:?}"
    );
    assert_eq!(host.response_lines("cache-control"), ["private, no-store"]);

    // Not a session the relay owns: the headers are removed, nothing becomes a cookie.
    let o = arrive(
        &vm,
        2,
        request("GET", "/api/public/x", Some(cookie.as_bytes()), &[]),
    );
    assert!(matches!(o, Outcome::Pass));
    let due = ResponseDue::after(&o, Some(cookie.into_bytes()));
    assert!(due.cookie.is_none() && !due.protected);
    respond(&vm, 2, due, &upstream);
    assert!(host.response_lines("x-new-access-token").is_empty());
    assert!(host.response_lines("x-new-refresh-token").is_empty());
    assert!(host.response_lines("set-cookie").is_empty());
    assert!(host.response_lines("cache-control").is_empty());
}
