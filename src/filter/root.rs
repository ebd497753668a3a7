//! Root context: configuration, the JWKS refresh loop, and JWKS fetch answers.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};

use super::host;
use super::http::Http;
use super::jwks_sync::{Fetched, FETCH_TIMEOUT_S};
use super::vm::{finish_waiters, SharedVm, Vm};
use crate::config::Config;

/// How often each VM looks for a new shared key set and for due fetches. Short, because a
/// request with a new `kid` waits for the next tick; a tick costs one small shared-data read.
const TICK: Duration = Duration::from_millis(100);

pub struct Root {
    id: u32,
    vm: Option<SharedVm>,
}

impl Root {
    pub fn new(id: u32) -> Root {
        Root { id, vm: None }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(vm) = &self.vm else { return };
        let now = host::now_s();
        {
            let mut st = vm.borrow_mut();
            let Some(jwks) = st.jwks.as_mut() else { return };
            if !jwks.owns(token) {
                return;
            }
            let status = host::call_response_status();
            let body = host::call_response_body(body_size, 1 << 20);
            if let Fetched::Keys(keys, digest) = jwks.on_response(status, body, now) {
                st.install_keys(keys, digest);
            }
        }
        finish_waiters(vm, now, 0, true);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        // Per-request debug lines cost more than the filter's work: ask Envoy what it will keep.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match Config::parse(&raw) {
            Ok(c) => c,
            Err(e) => {
                // One line naming the field; the plugin refuses to start.
                let _ = hostcalls::log(LogLevel::Error, &format!("edge-token-relay: {e}"));
                return false;
            }
        };
        let remote = matches!(config.jwks, crate::config::JwksSource::Remote { .. });
        self.vm = Some(Rc::new(RefCell::new(Vm::new(config))));
        if remote {
            let _ = hostcalls::set_tick_period(TICK);
        }
        log::info!("edge-token-relay configured (root context {})", self.id);
        true
    }

    fn on_tick(&mut self) {
        let Some(vm) = &self.vm else { return };
        let now = host::now_s();
        let keys_changed;
        let idle_waiters;
        {
            let mut st = vm.borrow_mut();
            let Some(jwks) = st.jwks.as_mut() else { return };
            let fresh = jwks.sync();
            jwks.tick(now);
            let in_flight = jwks.in_flight();
            keys_changed = fresh.is_some();
            if let Some((keys, digest)) = fresh {
                st.install_keys(keys, digest);
            }
            idle_waiters = !st.waiters.is_empty() && !in_flight;
        }
        // New keys, or no fetch left to wait for: decide parked requests again. Otherwise only
        // those that waited past the fetch timeout.
        finish_waiters(vm, now, FETCH_TIMEOUT_S + 2, keys_changed || idle_waiters);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(Http::new(context_id, vm)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
