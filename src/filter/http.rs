//! Stream context: one per HTTP request.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::host::{self, Envoy, Host};
use super::loud::Callout;
use super::response::ResponseDue;
use super::vm::{Outcome, SharedVm};
use crate::config::Route;
use crate::csrf;
use crate::http::{cookie, Reply, RequestView};
use crate::idp::{TokenRequest, MAX_RESPONSE_BYTES};
use crate::oidc::{self, CallbackOutcome, LoginContext, LoginStep, PendingCallback};

/// The answer when the VM state is held elsewhere (a re-entrant host call): never a panic.
fn busy() -> Reply {
    Reply::unavailable("busy", "the filter is busy; retry", 1)
}

pub(crate) struct Http {
    id: u32,
    vm: SharedVm<Envoy>,
    /// A login callback waiting for its code exchange.
    pending_login: Option<PendingCallback>,
    /// A logout answer waiting for its token revocation (best effort, bounded by the timeout).
    pending_logout: Option<Reply>,
    /// What the response must carry out (set by the request side).
    due: ResponseDue,
}

impl Http {
    pub(crate) fn new(id: u32, vm: SharedVm<Envoy>) -> Http {
        Http {
            id,
            vm,
            pending_login: None,
            pending_logout: None,
            due: ResponseDue::default(),
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        // A parked stream that the client abandoned must not be resumed later.
        if let Ok(mut st) = self.vm.try_borrow_mut() {
            // Both are empty on the hot path; a lookup in an empty map still hashes the key.
            if !st.waiters.is_empty() {
                st.waiters.remove(&self.id);
            }
            if !st.response_cookies.is_empty() {
                st.response_cookies.remove(&self.id);
            }
        }
    }
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let status = host::call_response_status();
        if let Some(reply) = self.pending_logout.take() {
            // Best effort: the session cookies are cleared whatever the IdP said.
            log::debug!("[ctx {}] token revocation answered {status:?}", self.id);
            self.answer(&reply);
            return;
        }
        let Some(pending) = self.pending_login.take() else {
            return;
        };
        let body = host::call_response_body(body_size, MAX_RESPONSE_BYTES).unwrap_or_default();
        let reply = self.finish_login(&pending, status, &body);
        self.answer(&reply);
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = host::request_headers();
        let view = RequestView::wire(&headers);
        if !self.serves(&view) {
            return Action::Continue;
        }
        let now = Envoy.now_s();
        if let Some(action) = self.login(&view, now) {
            return action;
        }

        let reply = {
            let Ok(mut guard) = self.vm.try_borrow_mut() else {
                return self.send(&busy());
            };
            let st = &mut *guard;
            let rotating = st.config.upstream_token_headers().is_some();
            let cookie = if rotating {
                view.cookie().map(|c| c.into_owned())
            } else {
                None
            };
            let outcome = st.admit(self.id, &view, now);
            self.due = ResponseDue::after(&outcome, cookie);
            match outcome {
                Outcome::Pass | Outcome::Continue => return Action::Continue,
                Outcome::Wait(_) => return Action::Pause,
                Outcome::Reply(r) => {
                    st.metrics.refused(&st.host, &r);
                    r
                }
            }
        };
        self.send(&reply)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Ok(mut st) = self.vm.try_borrow_mut() {
            st.on_response(self.id, std::mem::take(&mut self.due));
        }
        Action::Continue
    }
}

impl Http {
    /// Sends a locally generated answer; the stream waits for nothing more.
    fn send(&self, reply: &Reply) -> Action {
        Envoy.answer(self.id, reply);
        Action::Pause
    }

    /// Sends an answer the filter generated (login, callback, logout) and counts it.
    fn answer(&self, reply: &Reply) -> Action {
        if let Ok(st) = self.vm.try_borrow() {
            st.metrics.login(&st.host, reply);
        }
        self.send(reply)
    }

    /// Whether the request is for a host the relay serves (`hosts`). A request for another host
    /// is left entirely alone: no check, no header change, no login path, nothing on its
    /// response (the stream's flags stay off). Busy VM: served, so the next step answers 503.
    fn serves(&self, view: &RequestView<'_>) -> bool {
        self.vm
            .try_borrow()
            .map_or(true, |st| st.config.serves(view))
    }

    /// Login, callback and logout paths; `None` for every other request.
    fn login(&mut self, view: &RequestView<'_>, now: u64) -> Option<Action> {
        let Ok(mut guard) = self.vm.try_borrow_mut() else {
            return Some(self.send(&busy()));
        };
        let st = &mut *guard;
        let login = st.config.login.as_ref()?;
        let route = login.route(&view.path())?;
        if route == Route::Logout && view.method() == "POST" {
            // Logging out is a state change: a cross-site page must not log the user out.
            let csrf_cookie = view
                .cookie()
                .and_then(|c| String::from_utf8(c.into_owned()).ok())
                .and_then(|c| cookie::find(&c, &st.config.cookies.csrf).map(str::to_string));
            let policy = st.config.csrf.as_ref();
            if let Err(e) = csrf::check_request(policy, view, csrf_cookie.as_deref()) {
                let mut r = Reply::forbidden_csrf(e.code(), &e.to_string());
                csrf::add_cors(policy, view, &mut r);
                st.metrics.refused(&st.host, &r);
                drop(guard);
                return Some(self.send(&r));
            }
        }
        let Some(random) = st.host.random() else {
            drop(guard);
            let r = Reply::unavailable("no_randomness", "the filter has no randomness", 1);
            return Some(self.send(&r));
        };
        let step = oidc::handle(&st.config, login, view, now, &random)?;
        let timeout = st
            .config
            .refresh
            .as_ref()
            .map(|r| (r.endpoint.cluster.clone(), r.timeout_ms));
        drop(guard);
        let reply = match step {
            LoginStep::Respond(r) => r,
            LoginStep::Exchange { request, pending } => {
                let sent = timeout.is_some_and(|(cluster, ms)| {
                    self.post(Callout::CodeExchange, &cluster, &request, ms, now)
                });
                if sent {
                    self.pending_login = Some(pending);
                    return Some(Action::Pause);
                }
                self.finish_login(&pending, None, b"")
            }
            LoginStep::Logout(l) => match (l.revocation, timeout) {
                (Some(rev), Some((cluster, ms)))
                    if self.post(Callout::Revocation, &cluster, &rev, ms, now) =>
                {
                    self.pending_logout = Some(l.reply);
                    return Some(Action::Pause);
                }
                _ => l.reply,
            },
        };
        Some(self.answer(&reply))
    }

    /// Dispatches a login-path call to the token endpoint; one that cannot even be dispatched
    /// is logged at error level (rate-limited per worker), and the caller answers without it.
    fn post(
        &self,
        kind: Callout,
        cluster: &str,
        req: &TokenRequest,
        timeout_ms: u64,
        now: u64,
    ) -> bool {
        match Envoy.dispatch_post(cluster, req, timeout_ms) {
            Ok(_) => true,
            Err(why) => {
                if let Ok(mut st) = self.vm.try_borrow_mut() {
                    st.alarms.failed(kind, cluster, &why, now);
                }
                false
            }
        }
    }

    /// Finishes a callback with the token endpoint's answer (`status` None: no answer).
    fn finish_login(
        &mut self,
        pending: &PendingCallback,
        status: Option<u32>,
        body: &[u8],
    ) -> Reply {
        let now = Envoy.now_s();
        let Some(rand) = Envoy.random() else {
            return Reply::unavailable("no_randomness", "the filter has no randomness", 1);
        };
        let Ok(mut guard) = self.vm.try_borrow_mut() else {
            return busy();
        };
        let st = &mut *guard;
        let Some(login) = st.config.login.as_ref() else {
            return Reply::unavailable("login_not_configured", "login is not configured", 60);
        };
        // A token naming a key id we have not fetched yet: refetch, then decide once more without
        // waiting (the code is spent, so the answer asks the user to log in again).
        let mut allow_kid_refetch = true;
        loop {
            let ctx = LoginContext {
                config: &st.config,
                login,
                keys: st.keys.as_deref(),
            };
            match oidc::finish_callback(&ctx, pending, status, body, now, &rand, allow_kid_refetch)
            {
                CallbackOutcome::Respond(r) => return r,
                CallbackOutcome::UnknownKid if allow_kid_refetch => {
                    if let Some(j) = st.jwks.as_mut() {
                        let _ = j.want_kid_refetch(now);
                    }
                    allow_kid_refetch = false;
                }
                CallbackOutcome::UnknownKid => {
                    return Reply::unavailable(
                        "login_keys_not_ready",
                        "the identity provider's signing key is not known yet; log in again",
                        1,
                    )
                }
            }
        }
    }
}
