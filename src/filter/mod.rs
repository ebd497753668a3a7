//! The shell: the only code that talks to Envoy (proxy-wasm). It reads what `decision` needs,
//! calls it, and carries out the resulting `Step`. Host calls go through `hostcalls` directly
//! (not the SDK's trait helpers, which unwrap host errors and non-UTF-8 headers).

// On the host nothing constructs the root context (only the wasm entry point does).
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod flight;
mod host;
mod http;
mod jwks_sync;
mod metrics;
mod root;
mod vm;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    // The real level is read from Envoy in on_configure; until then, let everything through.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}
