//! Stream context: one per HTTP request.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::host;
use super::jwks_sync::KidRefetch;
use super::vm::{SharedVm, Waiter};
use crate::decision::{self, RequestView, Step};

pub struct Http {
    id: u32,
    vm: SharedVm,
}

impl Http {
    pub fn new(id: u32, vm: SharedVm) -> Http {
        Http { id, vm }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        // A parked stream that the client abandoned must not be resumed later.
        if let Ok(mut st) = self.vm.try_borrow_mut() {
            st.waiters.remove(&self.id);
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path_raw = host::request_header(":path").unwrap_or_default();
        let path = String::from_utf8_lossy(&path_raw);
        let cookie = host::request_header("cookie");
        let now = host::now_s();

        let mut guard = self.vm.borrow_mut();
        let st = &mut *guard;
        let view = RequestView {
            path: &path,
            cookie: cookie.as_deref(),
        };
        let reply =
            match decision::decide(&st.config, st.keys.as_deref(), &mut st.cache, &view, now) {
                Step::Pass => return Action::Continue,
                Step::Forward(f) => {
                    host::apply_forward(&f);
                    return Action::Continue;
                }
                Step::Respond(r) => r,
                Step::UnknownKid => match st.jwks.as_mut().map(|j| j.want_kid_refetch(now)) {
                    Some(KidRefetch::Wait) => {
                        log::debug!("[ctx {}] unknown kid: waiting for a JWKS refetch", self.id);
                        st.waiters.insert(
                            self.id,
                            Waiter {
                                path: path.to_string(),
                                cookie: cookie.clone(),
                                since: now,
                            },
                        );
                        return Action::Pause;
                    }
                    Some(KidRefetch::RateLimited) | None => decision::unknown_kid_reply(),
                },
            };
        drop(guard);
        host::send_reply(self.id, &reply)
    }
}
