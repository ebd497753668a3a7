//! A proxy-wasm HTTP filter that does nothing: the benchmark's floor reference (config `n`).
//!
//! Root context plus one HTTP context per stream whose request- and response-header callbacks
//! return `Continue` at once; no host call of its own. Everything (n) costs over bare Envoy
//! is the price of having any Wasm filter in the chain.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(NopRoot));
}}

struct NopRoot;

impl Context for NopRoot {}

impl RootContext for NopRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NopHttp))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct NopHttp;

impl Context for NopHttp {}

impl HttpContext for NopHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}
