//! Thin wrappers over proxy-wasm host calls that never panic on request data.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType};

use crate::decision::{Forward, Random};
use crate::refresh::TokenRequest;
use crate::reply::Reply;

/// Unix seconds from the host clock (0 if the host cannot tell, which fails tokens closed).
pub fn now_s() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every request header, pseudo-headers included, in one host call.
pub fn request_headers() -> Vec<(String, Vec<u8>)> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
}

/// Unix milliseconds from the host clock (for latency metrics).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn request_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

pub fn set_request_header(name: &str, value: Option<&str>) {
    // An error here means the stream is gone; nothing useful to do.
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
}

pub fn call_response_status() -> Option<u32> {
    let raw = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()?;
    std::str::from_utf8(&raw).ok()?.parse().ok()
}

pub fn call_response_body(size: usize, limit: usize) -> Option<Vec<u8>> {
    if size > limit {
        return None;
    }
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
}

/// Applies the mutations of a verified request.
pub fn apply_forward(f: &Forward<'_>) {
    set_request_header("authorization", Some(&f.authorization));
    set_request_header("cookie", f.cookie.as_deref());
    for (name, value) in f.claim_headers() {
        set_request_header(name, value);
    }
}

/// Fresh randomness for one request from the host (WASI `random_get`).
pub fn random() -> Option<Random> {
    let mut r = Random::fixed(0);
    getrandom::fill(&mut r.iv).ok()?;
    getrandom::fill(&mut r.csrf).ok()?;
    Some(r)
}

pub fn response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

pub fn set_response_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value);
}

pub fn add_response_header(name: &str, value: &str) {
    let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
}

/// Dispatches a POST built by the pure core (token exchange, revocation) to `cluster`; the
/// answer comes to the calling context's `on_http_call_response`.
pub fn dispatch(cluster: &str, req: &TokenRequest, timeout_ms: u64) -> Option<u32> {
    let headers: Vec<(&str, &str)> = req.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    match hostcalls::dispatch_http_call(
        cluster,
        headers,
        Some(req.body.as_bytes()),
        vec![],
        Duration::from_millis(timeout_ms),
    ) {
        Ok(token) => Some(token),
        Err(status) => {
            log::warn!("call to cluster {cluster:?} could not be dispatched ({status:?})");
            None
        }
    }
}

/// Sends a locally generated answer for the current (effective) stream.
pub fn send_reply(ctx: u32, reply: &Reply) -> Action {
    log::debug!(
        "[ctx {ctx}] refused: status={} reason={}",
        reply.status,
        reply.reason
    );
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    let _ = hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
    Action::Pause
}
