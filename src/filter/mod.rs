//! The shell: the only code that talks to Envoy (proxy-wasm). It reads what `decision` needs,
//! calls it, and carries out the resulting `Step`. Host calls go through `hostcalls` directly
//! (not the SDK's trait helpers, which unwrap host errors and non-UTF-8 headers).

mod flight;
mod host;
mod http;
mod jwks_sync;
mod metrics;
mod root;
mod vm;

proxy_wasm::main! {{
    // The real level is read from Envoy in on_configure; until then, let everything through.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}
