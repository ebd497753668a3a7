//! Root context: configuration, the JWKS refresh loop, refresh dispatch, and callout answers.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};

use super::host;
use super::http::Http;
use super::jwks_sync::{fnv1a, Fetched, FETCH_TIMEOUT_S};
use super::vm::{finish_waiters, SharedVm, Vm, WaitOn};
use crate::config::Config;
use crate::refresh::{RefreshError, RefreshId, MAX_RESPONSE_BYTES};

/// How often each VM looks for a new shared key set, due fetches and settled refreshes.
const TICK: Duration = Duration::from_millis(100);
/// While requests wait (a refresh to dispatch, another VM's refresh to watch): poll often.
pub const FAST_TICK: Duration = Duration::from_millis(5);

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
        let Some(vm) = self.vm.clone() else { return };
        let now = host::now_s();
        let status = host::call_response_status();
        let settled: Option<WaitOn> = {
            let mut guard = vm.borrow_mut();
            let st = &mut *guard;
            if let Some(jwks) = st.jwks.as_mut().filter(|j| j.owns(token)) {
                let body = host::call_response_body(body_size, 1 << 20);
                let fetched = jwks.on_response(status, body, now);
                st.metrics.jwks_fetch(matches!(fetched, Fetched::Keys(..)));
                if let Fetched::Keys(keys, digest) = fetched {
                    st.install_keys(keys, digest);
                }
                Some(WaitOn::Keys)
            } else if let (Some(flights), Some(cfg)) =
                (st.flights.as_mut(), st.config.refresh.as_ref())
            {
                let body =
                    host::call_response_body(body_size, MAX_RESPONSE_BYTES).unwrap_or_default();
                match flights.on_response(token, status, &body, now, cfg) {
                    Some((id, result, started_ms)) => {
                        st.metrics
                            .refresh_latency(host::now_ms().saturating_sub(started_ms));
                        st.metrics.refresh_result(
                            result.is_ok(),
                            result == Err(RefreshError::InvalidGrant),
                        );
                        Some(WaitOn::Refresh(id))
                    }
                    None => None,
                }
            } else {
                None
            }
        };
        match settled {
            // Keys changed or the fetch failed: everyone parked on keys is decided again.
            Some(WaitOn::Keys) => {
                finish_waiters(&vm, now, FETCH_TIMEOUT_S + 2, |w| w.on == WaitOn::Keys)
            }
            Some(on) => finish_waiters(&vm, now, u64::MAX, |w| w.on == on),
            None => {}
        }
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
        // Shared records are named by configuration, so two filter instances never mix.
        let vm = Vm::new(config, fnv1a(&raw));
        if let Some(flights) = &vm.flights {
            flights.init_slots();
        }
        self.vm = Some(Rc::new(RefCell::new(vm)));
        // Every VM ticks: key sync, refresh dispatch and metric flushes run there.
        let _ = hostcalls::set_tick_period(TICK);
        log::info!("edge-token-relay configured (root context {})", self.id);
        true
    }

    fn on_tick(&mut self) {
        let Some(vm) = self.vm.clone() else { return };
        {
            let st = vm.borrow();
            st.metrics.flush(st.cache.take_counts());
        }
        let now = host::now_s();
        let mut keys_settled = false;
        let mut settled_refreshes: Vec<RefreshId> = Vec::new();
        let fast;
        {
            let mut guard = vm.borrow_mut();
            let st = &mut *guard;
            if let Some(jwks) = st.jwks.as_mut() {
                let fresh = jwks.sync();
                jwks.tick(now);
                let in_flight = jwks.in_flight();
                keys_settled = fresh.is_some() || !in_flight;
                if let Some((keys, digest)) = fresh {
                    st.install_keys(keys, digest);
                }
            }
            if let (Some(flights), Some(cfg)) = (st.flights.as_mut(), st.config.refresh.as_ref()) {
                let (sent, failed) = flights.dispatch_queued(cfg, now);
                settled_refreshes.extend(failed);
                settled_refreshes.extend(flights.expire(now, cfg));
                for _ in 0..sent {
                    st.metrics.refresh_dispatched();
                }
            }
            // Requests parked on another VM's refresh are polled on every tick.
            fast = st
                .waiters
                .values()
                .any(|w| matches!(w.on, WaitOn::Refresh(_)))
                || st.flights.as_ref().is_some_and(|f| f.has_queued());
        }
        let _ = hostcalls::set_tick_period(if fast { FAST_TICK } else { TICK });
        // Refresh waiters are decided again on every tick: that is how a request learns the
        // outcome of another VM's refresh (or takes over when that VM's lease died).
        let _ = settled_refreshes;
        finish_waiters(&vm, now, FETCH_TIMEOUT_S + 2, |w| match w.on {
            WaitOn::Keys => keys_settled,
            WaitOn::Refresh(_) => true,
        });
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(Http::new(context_id, vm)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
