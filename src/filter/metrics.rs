//! Counters (and one gauge, `jwks_keys`) through proxy-wasm metrics; Envoy shows them as `wasmcustom.<name>` in `/stats`
//! and in `/stats/prometheus`. Defined once per VM (Envoy shares a metric across VMs by name).
//! The per-request counter is added up in the VM and flushed on each tick: one host call per
//! request saved on the hot path.

use std::cell::Cell;

use proxy_wasm::types::MetricType;

use super::host::Host;
use crate::http::Reply;

/// The reason codes of the relay's own 4xx and 5xx answers, each counted as
/// `edge_token_relay_denied_<reason>_total` (README "Metrics" lists the same set). Fixed, so the
/// metric names are known before the first request and a reason never makes a new name.
pub(crate) const DENIED_REASONS: &[&str] = &[
    // 400
    "cookie_not_utf8",
    // 401: tokens
    "missing_token",
    "malformed",
    "unsupported_alg",
    "bad_type",
    "missing_kid",
    "missing_exp",
    "too_large",
    "unknown_kid",
    "rejected_key",
    "bad_signature",
    "bad_issuer",
    "bad_audience",
    "claim_mismatch",
    "expired",
    "not_yet_valid",
    // 401: sessions
    "session_invalid",
    "session_revoked",
    // 403
    "csrf_origin_not_allowed",
    "csrf_referer_not_allowed",
    "csrf_no_origin",
    "csrf_cross_site",
    "csrf_missing_token",
    "csrf_token_mismatch",
    // 431
    "headers_too_large",
    // 503
    "jwks_not_ready",
    "refresh_unavailable",
    "refresh_timeout",
    "refreshed_token_rejected",
    "busy",
    "no_randomness",
    // login, callback, logout and userinfo paths
    "login_idp_error",
    "login_bad_callback",
    "login_wrong_issuer",
    "login_flow_missing",
    "login_flow_invalid",
    "login_flow_expired",
    "login_state_mismatch",
    "login_code_rejected",
    "login_idp_unavailable",
    "login_exchange_failed",
    "login_id_token_missing",
    "login_id_token_invalid",
    "login_nonce_mismatch",
    "login_access_token_invalid",
    "login_keys_not_ready",
    "login_not_configured",
    "login_method_not_allowed",
    "userinfo_no_session",
    "userinfo_no_id_token",
];

pub(crate) struct Metrics {
    forwarded: Option<u32>,
    forwarded_pending: Cell<i64>,
    cache_hits: Option<u32>,
    cache_misses: Option<u32>,
    refresh_latency_ms: Option<u32>,
    denied_400: Option<u32>,
    denied_401: Option<u32>,
    denied_403: Option<u32>,
    denied_431: Option<u32>,
    unavailable_503: Option<u32>,
    sessions_refused: Option<u32>,
    refresh: Option<u32>,
    refresh_success: Option<u32>,
    refresh_failed: Option<u32>,
    refresh_invalid_grant: Option<u32>,
    refresh_waiters: Option<u32>,
    refresh_reused: Option<u32>,
    jwks_fetches: Option<u32>,
    jwks_failures: Option<u32>,
    jwks_keys: Option<u32>,
    /// The key count last written to `jwks_keys` by this VM.
    jwks_keys_written: Cell<Option<u64>>,
    login_started: Option<u32>,
    login_succeeded: Option<u32>,
    login_failed: Option<u32>,
    logout: Option<u32>,
    /// One counter per entry of [`DENIED_REASONS`], in the same order.
    denied_by_reason: Vec<Option<u32>>,
}

fn add(host: &impl Host, id: Option<u32>, n: i64) {
    if let (Some(id), true) = (id, n > 0) {
        host.increment_metric(id, n);
    }
}

fn inc(host: &impl Host, id: Option<u32>) {
    if let Some(id) = id {
        host.increment_metric(id, 1);
    }
}

impl Metrics {
    pub(crate) fn define(host: &impl Host) -> Metrics {
        let counter = |name: &str| host.define_metric(MetricType::Counter, name);
        Metrics {
            forwarded: counter("edge_token_relay_requests_forwarded_total"),
            forwarded_pending: Cell::new(0),
            cache_hits: counter("edge_token_relay_token_cache_hits_total"),
            cache_misses: counter("edge_token_relay_token_cache_misses_total"),
            refresh_latency_ms: host
                .define_metric(MetricType::Histogram, "edge_token_relay_refresh_latency_ms"),
            denied_400: counter("edge_token_relay_requests_denied_400_total"),
            denied_401: counter("edge_token_relay_requests_denied_401_total"),
            denied_403: counter("edge_token_relay_requests_denied_403_total"),
            denied_431: counter("edge_token_relay_requests_denied_431_total"),
            unavailable_503: counter("edge_token_relay_requests_unavailable_503_total"),
            sessions_refused: counter("edge_token_relay_sessions_refused_total"),
            refresh: counter("edge_token_relay_refresh_total"),
            refresh_success: counter("edge_token_relay_refresh_success_total"),
            refresh_failed: counter("edge_token_relay_refresh_failed_total"),
            refresh_invalid_grant: counter("edge_token_relay_refresh_invalid_grant_total"),
            refresh_waiters: counter("edge_token_relay_refresh_waiters_total"),
            refresh_reused: counter("edge_token_relay_refresh_reused_total"),
            jwks_fetches: counter("edge_token_relay_jwks_fetches_total"),
            jwks_failures: counter("edge_token_relay_jwks_failures_total"),
            jwks_keys: host.define_metric(MetricType::Gauge, "edge_token_relay_jwks_keys"),
            jwks_keys_written: Cell::new(None),
            login_started: counter("edge_token_relay_login_started_total"),
            login_succeeded: counter("edge_token_relay_login_succeeded_total"),
            login_failed: counter("edge_token_relay_login_failed_total"),
            logout: counter("edge_token_relay_logout_total"),
            denied_by_reason: DENIED_REASONS
                .iter()
                .map(|r| counter(&format!("edge_token_relay_denied_{r}_total")))
                .collect(),
        }
    }

    pub(crate) fn forwarded(&self) {
        self.forwarded_pending.set(self.forwarded_pending.get() + 1);
    }

    /// Sends the counts added up since the last flush (and the cache's hits and misses).
    pub(crate) fn flush(&self, host: &impl Host, cache: (u64, u64)) {
        let n = self.forwarded_pending.replace(0);
        add(host, self.forwarded, n);
        add(
            host,
            self.cache_hits,
            i64::try_from(cache.0).unwrap_or(i64::MAX),
        );
        add(
            host,
            self.cache_misses,
            i64::try_from(cache.1).unwrap_or(i64::MAX),
        );
    }

    /// How long a token-endpoint refresh call took.
    pub(crate) fn refresh_latency(&self, host: &impl Host, ms: u64) {
        if let Some(id) = self.refresh_latency_ms {
            host.record_metric(id, ms);
        }
    }

    /// A request the filter answered itself.
    pub(crate) fn refused(&self, host: &impl Host, reply: &Reply) {
        inc(
            host,
            match reply.status {
                400 => self.denied_400,
                401 => self.denied_401,
                403 => self.denied_403,
                431 => self.denied_431,
                503 => self.unavailable_503,
                _ => None,
            },
        );
        if matches!(reply.reason, "session_invalid" | "session_revoked") {
            inc(host, self.sessions_refused);
        }
        self.denied_reason(host, reply);
    }

    /// The per-reason counter of a 4xx or 5xx answer (a scan of a short list, on refusals only).
    fn denied_reason(&self, host: &impl Host, reply: &Reply) {
        if reply.status < 400 {
            return;
        }
        let id = DENIED_REASONS
            .iter()
            .position(|r| *r == reply.reason)
            .and_then(|i| self.denied_by_reason.get(i).copied().flatten());
        inc(host, id);
    }

    pub(crate) fn refresh_dispatched(&self, host: &impl Host) {
        inc(host, self.refresh);
    }

    pub(crate) fn refresh_result(&self, host: &impl Host, ok: bool, invalid_grant: bool) {
        inc(
            host,
            if ok {
                self.refresh_success
            } else {
                self.refresh_failed
            },
        );
        if invalid_grant {
            inc(host, self.refresh_invalid_grant);
        }
    }

    pub(crate) fn refresh_waiter(&self, host: &impl Host) {
        inc(host, self.refresh_waiters);
    }

    pub(crate) fn refresh_reused(&self, host: &impl Host) {
        inc(host, self.refresh_reused);
    }

    /// A login, callback or logout answer, by its reason code.
    pub(crate) fn login(&self, host: &impl Host, reply: &Reply) {
        inc(
            host,
            match reply.reason {
                "login_start" => self.login_started,
                "login" | "login_no_refresh_token" => self.login_succeeded,
                "logout" => self.logout,
                r if r.starts_with("login_") => self.login_failed,
                _ => None,
            },
        );
        self.denied_reason(host, reply);
    }

    /// The number of keys this VM verifies with now (0 before the first key set). Written on
    /// a change only; every VM holds the same set within a tick, so the shared gauge settles.
    pub(crate) fn jwks_keys(&self, host: &impl Host, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        if self.jwks_keys_written.get() == Some(n) {
            return;
        }
        if let Some(id) = self.jwks_keys {
            host.record_metric(id, n);
            self.jwks_keys_written.set(Some(n));
        }
    }

    /// A JWKS fetch answered (or not); `ok`: it brought a usable key set. A fetch that could
    /// not even be dispatched counts here too, as a failed fetch.
    pub(crate) fn jwks_fetch(&self, host: &impl Host, ok: bool) {
        inc(host, self.jwks_fetches);
        if !ok {
            inc(host, self.jwks_failures);
        }
    }
}
