//! Per-VM (per worker thread) state shared by the root context and every stream context, and
//! the one routine that takes a request from `decide` to done: `Vm::process`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use super::flight::{Flights, Plan};
use super::host::Host;
use super::jwks_sync::{JwksSync, KidRefetch};
use super::loud::DispatchAlarms;
use super::metrics::Metrics;
use crate::config::{Config, JwksSource};
use crate::csrf::add_cors;
use crate::http::{Reply, RequestView};
use crate::jwt::jwks::KeySet;
use crate::jwt::token_cache::TokenCache;
use crate::jwt::Verifier;
use crate::relay::{self, RefreshId, RefreshOutcome, Step};

/// How often each VM looks for a new shared key set, due fetches and settled refreshes.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// While requests wait (a refresh to dispatch, another VM's refresh to watch): poll often.
pub(crate) const FAST_TICK: Duration = Duration::from_millis(5);

/// The VM state shared by the root and stream contexts of one worker. Borrowed only with
/// `try_borrow*` (a clippy lint forbids the panicking forms): a context that finds it busy
/// degrades (answers 503 or skips a tick) instead of aborting the VM.
pub(crate) type SharedVm<H> = Rc<RefCell<Vm<H>>>;

/// Why a request is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitOn {
    /// Its token named an unknown `kid`; a JWKS refetch is under way.
    Keys,
    /// Its session's refresh is in flight (here or in another VM).
    Refresh(RefreshId),
}

/// A parked request: what is needed to decide it again.
pub(crate) struct Waiter {
    /// Its header map as the host handed it over (wire format, see `http::request`).
    pub(crate) headers: Vec<u8>,
    pub(crate) since: u64,
    pub(crate) on: WaitOn,
}

/// What became of a request after `process`.
pub(crate) enum Outcome {
    /// Passed untouched (not protected).
    Pass,
    /// Forwarded with its mutations applied.
    Continue,
    /// Answer with this.
    Reply(Reply),
    /// Park until `on` resolves.
    Wait(WaitOn),
}

pub(crate) struct Vm<H> {
    pub(crate) host: H,
    pub(crate) config: Config,
    pub(crate) keys: Option<Rc<KeySet>>,
    /// Fingerprint of the JWKS document behind `keys`, to tell a real change from a refresh.
    keys_digest: u64,
    pub(crate) cache: TokenCache,
    pub(crate) jwks: Option<JwksSync>,
    pub(crate) flights: Option<Flights>,
    /// Parked requests by context id.
    pub(crate) waiters: HashMap<u32, Waiter>,
    /// Set-Cookie values for the response of a forwarded stream, by context id.
    pub(crate) response_cookies: HashMap<u32, Vec<String>>,
    pub(crate) metrics: Metrics,
    /// Rate limits for the error lines of callouts that cannot be dispatched.
    pub(crate) alarms: DispatchAlarms,
}

impl<H: Host> Vm<H> {
    pub(crate) fn new(host: H, config: Config, instance: u64) -> Vm<H> {
        let cache = TokenCache::new(config.token_cache_size);
        let (keys, jwks) = match &config.jwks {
            JwksSource::Inline(keys) => (Some(Rc::clone(keys)), None),
            JwksSource::Remote {
                upstream,
                refresh_s,
            } => (None, Some(JwksSync::new(upstream.clone(), *refresh_s))),
        };
        let flights = config.refresh.as_ref().map(|_| Flights::new(instance));
        let metrics = Metrics::define(&host);
        Vm {
            host,
            config,
            keys,
            keys_digest: 0,
            cache,
            jwks,
            flights,
            waiters: HashMap::new(),
            response_cookies: HashMap::new(),
            metrics,
            alarms: DispatchAlarms::default(),
        }
    }

    /// Installs a key set; verified tokens are forgotten only when the keys really changed.
    pub(crate) fn install_keys(&mut self, keys: KeySet, digest: u64) {
        if self.keys.is_none() || digest != self.keys_digest {
            self.cache.clear();
            self.keys = Some(Rc::new(keys));
            self.keys_digest = digest;
        }
    }

    /// Removes client-sent copies of forward-claim headers (before any is set).
    fn strip_forged_claims(&self, req: &RequestView<'_>) {
        for name in relay::forged_claim_headers(&self.config, req) {
            self.host.set_request_header(name, None);
        }
    }

    /// A new request (its header map, read once): decided, and parked when it must wait (a copy
    /// of its map kept for the second decision).
    pub(crate) fn admit(&mut self, ctx: u32, req: &RequestView<'_>, now: u64) -> Outcome {
        if self.keys.is_none() {
            // Another VM may have fetched the keys since this one's last tick: one shared-data
            // read, only until this worker holds keys, spares a start-up 503.
            if let Some((keys, digest)) = self.jwks.as_mut().and_then(|j| j.sync(&self.host)) {
                self.install_keys(keys, digest);
            }
        }
        let outcome = self.process(ctx, req, now, true);
        if let Outcome::Wait(on) = outcome {
            log::debug!("[ctx {ctx}] parked: {on:?}");
            self.waiters.insert(
                ctx,
                Waiter {
                    headers: req.to_wire(),
                    since: now,
                    on,
                },
            );
        }
        outcome
    }

    /// Decides a request and carries out everything but resuming or answering it (those may
    /// re-enter the VM, so the caller does them after releasing its borrow). Request header
    /// writes happen here: they target the effective context and never call back.
    pub(crate) fn process(
        &mut self,
        ctx: u32,
        req: &RequestView<'_>,
        now: u64,
        fresh: bool,
    ) -> Outcome {
        let step = relay::decide(
            &self.config,
            self.keys.as_deref(),
            &mut self.cache,
            req,
            now,
            fresh,
        );
        let mut outcome = match step {
            Step::Pass => {
                self.strip_forged_claims(req);
                if let Some(cookie) = relay::passed_cookie(&self.config, req) {
                    self.host.set_request_header("cookie", cookie.as_deref());
                }
                Outcome::Pass
            }
            Step::Forward(f) => {
                self.strip_forged_claims(req);
                self.host.apply_forward(&f);
                self.host.set_reason(f.via.code());
                self.metrics.forwarded();
                Outcome::Continue
            }
            Step::Respond(r) => Outcome::Reply(r),
            Step::UnknownKid => match self.jwks.as_mut().map(|j| j.want_kid_refetch(now)) {
                Some(KidRefetch::Wait) => Outcome::Wait(WaitOn::Keys),
                Some(KidRefetch::RateLimited) | None => Outcome::Reply(relay::unknown_kid_reply()),
            },
            Step::Refresh(need) => {
                let (Some(flights), Some(cfg)) =
                    (self.flights.as_mut(), self.config.refresh.as_ref())
                else {
                    return Outcome::Reply(Reply::missing_token());
                };
                let id = need.id;
                let owned_before = flights.owns(&id);
                let outcome = match flights.plan(&self.host, cfg, id, &need.session.rt, now) {
                    Plan::Known(k) => k,
                    Plan::Wait => {
                        if fresh && (owned_before || !flights.owns(&id)) {
                            // Joined a refresh someone else started.
                            self.metrics.refresh_waiter(&self.host);
                        }
                        // The root dispatches (or polls another VM's refresh) on its next tick.
                        self.host.set_tick_period(FAST_TICK);
                        return Outcome::Wait(WaitOn::Refresh(id));
                    }
                };
                if fresh && matches!(outcome, RefreshOutcome::Tokens(_)) {
                    // A fresh request served by an outcome it did not fetch.
                    self.metrics.refresh_reused(&self.host);
                }
                let Some(rand) = self.host.random() else {
                    return Outcome::Reply(Reply::unavailable(
                        "no_randomness",
                        "the filter could not seal the session",
                        1,
                    ));
                };
                let verifier = Verifier {
                    keys: self.keys.as_deref(),
                    cache: &mut self.cache,
                };
                let done = relay::complete_refresh(
                    &self.config,
                    verifier,
                    req,
                    need,
                    &outcome,
                    now,
                    &rand,
                );
                match done.step {
                    Step::Forward(f) => {
                        self.strip_forged_claims(req);
                        self.host.apply_forward(&f);
                        self.host.set_reason(f.via.code());
                        self.metrics.forwarded();
                        if !done.set_cookies.is_empty() {
                            self.response_cookies.insert(ctx, done.set_cookies);
                        }
                        Outcome::Continue
                    }
                    Step::Respond(r) => Outcome::Reply(r),
                    // complete_refresh only forwards or responds.
                    Step::Pass | Step::UnknownKid | Step::Refresh(_) => Outcome::Continue,
                }
            }
        };
        if let Outcome::Reply(r) = outcome {
            let mut r = relay::navigation_redirect(&self.config, req, r);
            add_cors(self.config.csrf.as_ref(), req, &mut r);
            outcome = Outcome::Reply(r);
        }
        outcome
    }
}

/// How a parked request ends.
enum Finish {
    Resume,
    Reply(Reply),
}

/// Decides parked requests again and resumes or answers those that are settled. `select`
/// picks which to look at; a waiter older than `max_wait_s` is answered whatever happens.
pub(crate) fn finish_waiters<H: Host>(
    vm: &SharedVm<H>,
    now: u64,
    max_wait_s: u64,
    select: impl Fn(&Waiter) -> bool,
) {
    let mut done: Vec<(u32, Finish)> = Vec::new();
    {
        // Busy: a caller up the stack holds the VM; the next tick looks again.
        let Ok(mut guard) = vm.try_borrow_mut() else {
            return;
        };
        let st = &mut *guard;
        // All of them are decided in this one pass, so their order does not matter.
        let ids: Vec<u32> = st
            .waiters
            .iter()
            .filter(|(_, w)| select(w) || now >= w.since.saturating_add(max_wait_s))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(w) = st.waiters.remove(&id) else {
                continue;
            };
            if !st.host.set_effective_context(id) {
                continue; // the stream is gone
            }
            let view = RequestView::wire(&w.headers);
            let timed_out = now >= w.since.saturating_add(max_wait_s);
            match st.process(id, &view, now, false) {
                Outcome::Continue | Outcome::Pass => done.push((id, Finish::Resume)),
                Outcome::Reply(r) => done.push((id, Finish::Reply(r))),
                Outcome::Wait(_) if timed_out => done.push((
                    id,
                    Finish::Reply(Reply::unavailable(
                        "refresh_timeout",
                        "the identity provider did not answer in time",
                        1,
                    )),
                )),
                Outcome::Wait(on) => {
                    st.waiters.insert(id, Waiter { on, ..w });
                }
            }
        }
    }
    // Resuming or answering a stream can call back into this VM: no borrow may be held, so
    // the host is copied out first (it is a handle).
    let Ok(host) = vm.try_borrow().map(|st| st.host.clone()) else {
        return;
    };
    for (id, finish) in done {
        if !host.set_effective_context(id) {
            continue;
        }
        match finish {
            Finish::Resume => host.resume_request(),
            Finish::Reply(r) => {
                if let Ok(st) = vm.try_borrow() {
                    st.metrics.refused(&host, &r);
                }
                host.answer(id, &r);
            }
        }
    }
}
