//! Stream context: one per HTTP request.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::host;
use super::vm::{Outcome, SharedVm, Waiter};
use crate::cache_policy;
use crate::decision::{self, RequestView};

pub struct Http {
    id: u32,
    vm: SharedVm,
    /// The request was protected and forwarded: its response must stay out of shared caches.
    protected: bool,
    /// The request's Cookie header, kept only when an upstream may rotate tokens itself.
    cookie: Option<Vec<u8>>,
}

impl Http {
    pub fn new(id: u32, vm: SharedVm) -> Http {
        Http {
            id,
            vm,
            protected: false,
            cookie: None,
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        // A parked stream that the client abandoned must not be resumed later.
        if let Ok(mut st) = self.vm.try_borrow_mut() {
            st.waiters.remove(&self.id);
            st.response_cookies.remove(&self.id);
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = host::request_headers();
        let now = host::now_s();
        let view = RequestView { headers: &headers };

        let reply = {
            let mut st = self.vm.borrow_mut();
            match st.process(self.id, &view, now, true) {
                Outcome::Pass => return Action::Continue,
                Outcome::Continue => {
                    self.protected = true;
                    let rotating = st
                        .config
                        .refresh
                        .as_ref()
                        .is_some_and(|r| r.upstream_token_headers.is_some());
                    if rotating {
                        self.cookie = view.cookie().map(|c| c.into_owned());
                    }
                    return Action::Continue;
                }
                Outcome::Wait(on) => {
                    log::debug!("[ctx {}] parked: {on:?}", self.id);
                    drop(st);
                    // A parked request may be resumed by the root later: it is protected.
                    self.protected = true;
                    let rotating = self
                        .vm
                        .borrow()
                        .config
                        .refresh
                        .as_ref()
                        .is_some_and(|r| r.upstream_token_headers.is_some());
                    if rotating {
                        self.cookie = view.cookie().map(|c| c.into_owned());
                    }
                    self.vm.borrow_mut().waiters.insert(
                        self.id,
                        Waiter {
                            headers,
                            since: now,
                            on,
                        },
                    );
                    return Action::Pause;
                }
                Outcome::Reply(r) => {
                    st.metrics.refused(&r);
                    r
                }
            }
        };
        host::send_reply(self.id, &reply)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut cookies = {
            let Ok(mut st) = self.vm.try_borrow_mut() else {
                return Action::Continue;
            };
            st.response_cookies.remove(&self.id).unwrap_or_default()
        };
        if self.cookie.is_some() {
            cookies.extend(self.upstream_rotation());
        }
        if !self.protected {
            return Action::Continue;
        }
        if cookies.is_empty() {
            // A protected response: shared caches must not keep it; the browser's cache may.
            let cc = host::response_header("cache-control");
            let cc = cc.as_deref().and_then(|v| std::str::from_utf8(v).ok());
            if let Some(v) = cache_policy::private_cache_control(cc) {
                host::set_response_header("cache-control", Some(&v));
            }
            // A second Vary header is the same as a merged one (RFC 9110 §5.3): no read needed.
            host::add_response_header("vary", "Cookie");
            return Action::Continue;
        }
        for c in &cookies {
            host::add_response_header("set-cookie", c);
        }
        host::set_response_header("cache-control", Some(cache_policy::NO_STORE));
        let vary = host::response_header("vary");
        let vary = vary.as_deref().and_then(|v| std::str::from_utf8(v).ok());
        if let Some(v) = cache_policy::vary_with(vary, "Cookie") {
            host::set_response_header("vary", Some(&v));
        }
        Action::Continue
    }
}

impl Http {
    /// Turns `upstream_token_headers` into cookies and removes those headers.
    fn upstream_rotation(&mut self) -> Vec<String> {
        let Ok(mut guard) = self.vm.try_borrow_mut() else {
            return Vec::new();
        };
        let st = &mut *guard;
        let Some(names) = st
            .config
            .refresh
            .as_ref()
            .and_then(|r| r.upstream_token_headers.clone())
        else {
            return Vec::new();
        };
        let read = |name: &Option<String>| -> Option<String> {
            let name = name.as_deref()?;
            let value = host::response_header(name)?;
            host::set_response_header(name, None);
            String::from_utf8(value).ok()
        };
        let at = read(&names.access_token);
        let rt = read(&names.refresh_token);
        if at.is_none() && rt.is_none() {
            return Vec::new();
        }
        let Some(rand) = host::random() else {
            return Vec::new();
        };
        let cookie = self.cookie.take().unwrap_or_default();
        let cookie_header = std::str::from_utf8(&cookie).unwrap_or("");
        decision::upstream_rotation(
            &st.config,
            st.keys.as_deref(),
            &mut st.cache,
            cookie_header,
            at.as_deref(),
            rt.as_deref(),
            host::now_s(),
            &rand,
        )
    }
}
