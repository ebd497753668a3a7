//! The shell: the only code that talks to Envoy (proxy-wasm). It reads what the core needs,
//! calls it, and carries out the result. The host sits behind `host::Host` so the stateful
//! parts (single-flight, JWKS sync, waiters) are unit-tested against an in-memory fake.
//!
//! ```text
//! root.rs    Envoy's root context: configure, then hand ticks and callout answers to events
//! http.rs    Envoy's stream context: login paths, then Vm::process for everything else;
//!            the response to Vm::on_response
//! response.rs  the response side: refresh cookies, upstream rotation, the cache policy
//! events.rs  tick and callout-answer handling, generic over the host
//! vm.rs      per-worker state and Vm::process (decide, refresh, park), finish_waiters
//! flight.rs  single-flight refresh: local queue + shared-data slot table
//! jwks_sync.rs  one JWKS fetch for every worker, via shared data and a CAS lease
//! metrics.rs counters, the key-count gauge and the refresh latency histogram
//! loud.rs   rate-limited error lines for callouts that cannot be dispatched
//! host.rs    the Host trait and the real Envoy host
//! ```

// On the host nothing constructs the root context (only the wasm entry point does).
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod events;
#[cfg(test)]
mod fake;
mod flight;
mod header_map;
mod host;
mod http;
mod jwks_sync;
mod loud;
mod metrics;
mod response;
mod root;
#[cfg(test)]
mod tests;
mod vm;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    // The real level is read from Envoy in on_configure; until then, let everything through.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}
