//! The host, behind a narrow trait: everything the shell's state machines (single-flight,
//! JWKS sync, waiters, metrics) ask of Envoy. [`Envoy`] is the real host; the tests use an
//! in-memory fake (`filter/fake.rs`) so those state machines run without a proxy.
//!
//! Every call here is infallible for the caller or returns what failed: a host error never
//! panics (the SDK's trait helpers unwrap host errors and non-UTF-8 headers, so they are not used).

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

use super::header_map;
use crate::http::Reply;
use crate::idp::TokenRequest;
use crate::random::Random;
use crate::relay::Forward;

/// Why a shared-data write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetError {
    /// Someone wrote the key since it was read (compare-and-swap lost).
    CasMismatch,
    /// Any other host failure.
    Failed,
}

/// What the shell's state machines need from the proxy.
pub(crate) trait Host: Clone {
    /// Unix milliseconds (0 when the host cannot tell, which fails tokens closed).
    fn now_ms(&self) -> u64;
    /// A shared-data value and its CAS; `None` on a host error.
    fn shared_get(&self, key: &str) -> Option<(Option<Vec<u8>>, Option<u32>)>;
    /// Writes a shared-data value, only if its CAS is still `cas` when one is given.
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
    /// Starts an HTTP call; the answer comes to `on_http_call_response` with the returned token.
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String>;
    /// Sets (or with `None` removes) a header of the current request.
    fn set_request_header(&self, name: &str, value: Option<&str>);
    fn define_metric(&self, kind: MetricType, name: &str) -> Option<u32>;
    fn increment_metric(&self, id: u32, by: i64);
    fn record_metric(&self, id: u32, value: u64);
    fn set_tick_period(&self, period: Duration);
    /// Makes stream `id` the target of the next calls; false when the stream is gone.
    fn set_effective_context(&self, id: u32) -> bool;
    fn resume_request(&self);
    fn send_reply(&self, reply: &Reply);
    /// Fresh randomness for one request; `None` when the host has none.
    fn random(&self) -> Option<Random>;
    /// Records the current request's outcome in Envoy's filter state for access logs.
    fn set_reason(&self, reason: &str);
    /// The current response's whole header map in one call, in the wire format (read in place
    /// like the request's); empty when there is none.
    fn response_headers(&self) -> Vec<u8>;
    /// The first value of one header of the current response.
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Sets (or with `None` removes) a header of the current response.
    fn set_response_header(&self, name: &str, value: Option<&str>);
    /// Adds a line to the current response (another `Set-Cookie`).
    fn add_response_header(&self, name: &str, value: &str);

    fn now_s(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// Answers stream `ctx` with a reply the relay made itself: the debug line with its reason,
    /// the reason in filter state, then the reply.
    fn answer(&self, ctx: u32, reply: &Reply) {
        log::debug!(
            "[ctx {ctx}] refused: status={} reason={}",
            reply.status,
            reply.reason
        );
        self.set_reason(reply.reason);
        self.send_reply(reply);
    }

    /// Applies the header mutations of a verified request.
    fn apply_forward(&self, f: &Forward<'_>) {
        self.set_request_header("authorization", Some(&f.authorization));
        self.set_request_header("cookie", f.cookie.as_deref());
        for (name, value) in f.claim_headers() {
            self.set_request_header(name, value);
        }
    }

    /// Dispatches a POST built by the core (token exchange, revocation, refresh). The error is
    /// the host's reason; the caller logs it (rate-limited, see `filter::loud`).
    fn dispatch_post(
        &self,
        cluster: &str,
        req: &TokenRequest,
        timeout_ms: u64,
    ) -> Result<u32, String> {
        let headers: Vec<(&str, &str)> =
            req.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        self.dispatch(
            cluster,
            &headers,
            Some(req.body.as_bytes()),
            Duration::from_millis(timeout_ms),
        )
    }
}

/// The filter-state property that holds a request's outcome. Envoy prefixes a Wasm property
/// with `wasm.`, so access logs read it as `%FILTER_STATE(wasm.edge_token_relay.reason:PLAIN)%`.
pub(crate) const REASON_PROPERTY: &str = "edge_token_relay.reason";

/// The real host: Envoy through proxy-wasm host calls.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Envoy;

impl Host for Envoy {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            // Not `as_millis`: its u128 arithmetic is a library call on wasm32, on every request.
            .map(|d| {
                d.as_secs()
                    .saturating_mul(1000)
                    .saturating_add(u64::from(d.subsec_millis()))
            })
            .unwrap_or(0)
    }

    fn shared_get(&self, key: &str) -> Option<(Option<Vec<u8>>, Option<u32>)> {
        hostcalls::get_shared_data(key).ok()
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Failed),
        }
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], timeout)
            .map_err(|status| format!("{status:?}"))
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        // An error here means the stream is gone; nothing useful to do.
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Option<u32> {
        hostcalls::define_metric(kind, name).ok()
    }

    fn increment_metric(&self, id: u32, by: i64) {
        let _ = hostcalls::increment_metric(id, by);
    }

    fn record_metric(&self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }

    fn set_tick_period(&self, period: Duration) {
        let _ = hostcalls::set_tick_period(period);
    }

    fn set_effective_context(&self, id: u32) -> bool {
        hostcalls::set_effective_context(id).is_ok()
    }

    fn resume_request(&self) {
        let _ = hostcalls::resume_http_request();
    }

    fn send_reply(&self, reply: &Reply) {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        let _ = hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
    }

    fn random(&self) -> Option<Random> {
        Random::draw(|b| getrandom::fill(b).is_ok())
    }

    fn set_reason(&self, reason: &str) {
        // Fails only without a stream (a root context); the log line then has "-".
        let _ = hostcalls::set_property(vec![REASON_PROPERTY], Some(reason.as_bytes()));
    }

    fn response_headers(&self) -> Vec<u8> {
        header_map::read(MapType::HttpResponseHeaders).unwrap_or_default()
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn set_response_header(&self, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value);
    }

    fn add_response_header(&self, name: &str, value: &str) {
        let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
    }
}

// Stream-only reads and writes: used by the stream context alone, so not part of the trait.

/// Every request header, pseudo-headers included, in one host call: the map exactly as the host
/// wrote it into the VM (wire format, read in place by `http::RequestView::wire`), so no header
/// is copied again. Empty when the host has no map (no stream).
pub(crate) fn request_headers() -> Vec<u8> {
    header_map::read(MapType::HttpRequestHeaders).unwrap_or_default()
}

pub(crate) fn call_response_status() -> Option<u32> {
    let raw = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()?;
    std::str::from_utf8(&raw).ok()?.parse().ok()
}

pub(crate) fn call_response_body(size: usize, limit: usize) -> Option<Vec<u8>> {
    if size > limit {
        return None;
    }
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
}
