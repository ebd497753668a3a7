//! Root context: reads the configuration, and hands ticks and callout answers to `events`.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};

use super::events;
use super::host::{self, Envoy, Host};
use super::http::Http;
use super::jwks_sync::fnv1a;
use super::vm::{SharedVm, Vm, TICK};
use crate::config::{startup_line, Config};

pub(crate) struct Root {
    id: u32,
    vm: Option<SharedVm<Envoy>>,
}

impl Root {
    pub(crate) fn new(id: u32) -> Root {
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
        events::on_call_response(&vm, token, host::call_response_status(), |limit| {
            host::call_response_body(body_size, limit)
        });
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        sync_log_level();
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        // Secrets may come from the VM's environment (`vm_config.environment_variables`).
        let config = match Config::parse_with_env(&raw, &|name| std::env::var(name).ok()) {
            Ok(c) => c,
            Err(e) => {
                // One line naming the field; the plugin refuses to start.
                let _ = hostcalls::log(LogLevel::Error, &format!("edge-token-relay: {e}"));
                return false;
            }
        };
        let line = startup_line(&config, &raw);
        // Shared records are named by configuration, so two filter instances never mix.
        let vm = Vm::new(Envoy, config, fnv1a(&raw));
        if let Some(flights) = &vm.flights {
            flights.init_slots(&vm.host);
        }
        self.vm = Some(Rc::new(RefCell::new(vm)));
        // Every VM ticks: key sync, refresh dispatch and metric flushes run there.
        Envoy.set_tick_period(TICK);
        log::info!("{line} (root context {})", self.id);
        true
    }

    fn on_tick(&mut self) {
        // One host call per tick, none per request: `POST /logging?wasm=debug` reaches the
        // relay within a tick.
        sync_log_level();
        if let Some(vm) = &self.vm {
            events::on_tick(vm);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(Http::new(context_id, vm)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Per-request debug lines cost more than the filter's work: ask Envoy what it will keep.
fn sync_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}
