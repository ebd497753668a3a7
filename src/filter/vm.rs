//! Per-VM (per worker thread) state shared by the root context and every stream context, and
//! the one routine that takes a request from `decide` to done: `Vm::process`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use proxy_wasm::hostcalls;

use super::flight::{Flights, Known, Plan};
use super::host;
use super::jwks_sync::{JwksSync, KidRefetch};
use super::metrics::Metrics;
use crate::config::{Config, JwksSource};
use crate::decision::{self, RefreshOutcome, RequestView, Step};
use crate::jwks::KeySet;
use crate::refresh::RefreshId;
use crate::reply::Reply;
use crate::token_cache::TokenCache;

pub type SharedVm = Rc<RefCell<Vm>>;

/// Why a request is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOn {
    /// Its token named an unknown `kid`; a JWKS refetch is under way.
    Keys,
    /// Its session's refresh is in flight (here or in another VM).
    Refresh(RefreshId),
}

/// A parked request: what is needed to decide it again.
pub struct Waiter {
    pub headers: Vec<(String, Vec<u8>)>,
    pub since: u64,
    pub on: WaitOn,
}

/// What became of a request after `process`.
pub enum Outcome {
    /// Passed untouched (not protected).
    Pass,
    /// Forwarded with its mutations applied.
    Continue,
    /// Answer with this.
    Reply(Reply),
    /// Park until `on` resolves.
    Wait(WaitOn),
}

pub struct Vm {
    pub config: Config,
    pub keys: Option<Rc<KeySet>>,
    /// Fingerprint of the JWKS document behind `keys`, to tell a real change from a refresh.
    pub keys_digest: u64,
    pub cache: TokenCache,
    pub jwks: Option<JwksSync>,
    pub flights: Option<Flights>,
    pub waiters: BTreeMap<u32, Waiter>,
    /// Set-Cookie values for the response of a forwarded stream, by context id.
    pub response_cookies: HashMap<u32, Vec<String>>,
    pub metrics: Metrics,
}

impl Vm {
    pub fn new(config: Config, instance: u64) -> Vm {
        let cache = TokenCache::new(config.token_cache_size);
        let (keys, jwks) = match &config.jwks {
            JwksSource::Inline(keys) => (Some(Rc::clone(keys)), None),
            JwksSource::Remote {
                upstream,
                refresh_s,
            } => (None, Some(JwksSync::new(upstream.clone(), *refresh_s))),
        };
        let flights = config.refresh.as_ref().map(|_| Flights::new(instance));
        Vm {
            config,
            keys,
            keys_digest: 0,
            cache,
            jwks,
            flights,
            waiters: BTreeMap::new(),
            response_cookies: HashMap::new(),
            metrics: Metrics::define(),
        }
    }

    /// Installs a key set; verified tokens are forgotten only when the keys really changed.
    pub fn install_keys(&mut self, keys: KeySet, digest: u64) {
        if self.keys.is_none() || digest != self.keys_digest {
            self.cache.clear();
            self.keys = Some(Rc::new(keys));
            self.keys_digest = digest;
        }
    }

    /// Decides a request and carries out everything but resuming or answering it (those may
    /// re-enter the VM, so the caller does them after releasing its borrow). Request header
    /// writes happen here: they target the effective context and never call back.
    pub fn process(&mut self, ctx: u32, req: &RequestView<'_>, now: u64, fresh: bool) -> Outcome {
        let step = decision::decide(
            &self.config,
            self.keys.as_deref(),
            &mut self.cache,
            req,
            now,
            fresh,
        );
        let mut outcome = match step {
            Step::Pass => Outcome::Pass,
            Step::Forward(f) => {
                host::apply_forward(&f);
                self.metrics.forwarded();
                Outcome::Continue
            }
            Step::Respond(r) => Outcome::Reply(r),
            Step::UnknownKid => match self.jwks.as_mut().map(|j| j.want_kid_refetch(now)) {
                Some(KidRefetch::Wait) => Outcome::Wait(WaitOn::Keys),
                Some(KidRefetch::RateLimited) | None => {
                    Outcome::Reply(decision::unknown_kid_reply())
                }
            },
            Step::Refresh(need) => {
                let (Some(flights), Some(cfg)) =
                    (self.flights.as_mut(), self.config.refresh.as_ref())
                else {
                    return Outcome::Reply(Reply::missing_token());
                };
                let id = need.id;
                let owned_before = flights.owns(&id);
                let known = match flights.plan(cfg, id, &need.session.rt, now) {
                    Plan::Known(k) => k,
                    Plan::Wait => {
                        if fresh && (owned_before || !flights.owns(&id)) {
                            // Joined a refresh someone else started.
                            self.metrics.refresh_waiter();
                        }
                        // The root dispatches (or polls another VM's refresh) on its next tick.
                        let _ = hostcalls::set_tick_period(super::root::FAST_TICK);
                        return Outcome::Wait(WaitOn::Refresh(id));
                    }
                };
                if fresh && matches!(known, Known::Done(_)) {
                    // A fresh request served by an outcome it did not fetch.
                    self.metrics.refresh_reused();
                }
                let outcome = match &known {
                    Known::Done(tokens) => RefreshOutcome::Tokens(tokens),
                    Known::Invalid => RefreshOutcome::Invalid,
                    Known::Failed { retry_at } => RefreshOutcome::Unavailable {
                        retry_after_s: retry_at.saturating_sub(now),
                    },
                };
                let Some(rand) = host::random() else {
                    return Outcome::Reply(Reply::unavailable(
                        "no_randomness",
                        "the filter could not seal the session",
                        1,
                    ));
                };
                let done = decision::complete_refresh(
                    &self.config,
                    self.keys.as_deref(),
                    &mut self.cache,
                    req,
                    need,
                    outcome,
                    now,
                    &rand,
                );
                match done.step {
                    Step::Forward(f) => {
                        host::apply_forward(&f);
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
            let mut r = decision::navigation_redirect(&self.config, req, r);
            decision::add_cors(&self.config, req, &mut r);
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
pub fn finish_waiters(vm: &SharedVm, now: u64, max_wait_s: u64, select: impl Fn(&Waiter) -> bool) {
    let mut done: Vec<(u32, Finish)> = Vec::new();
    {
        let mut guard = vm.borrow_mut();
        let st = &mut *guard;
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
            if hostcalls::set_effective_context(id).is_err() {
                continue; // the stream is gone
            }
            let view = RequestView {
                headers: &w.headers,
            };
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
    // Resuming or answering a stream can call back into this VM: no borrow may be held.
    for (id, finish) in done {
        if hostcalls::set_effective_context(id).is_err() {
            continue;
        }
        match finish {
            Finish::Resume => {
                let _ = hostcalls::resume_http_request();
            }
            Finish::Reply(r) => {
                vm.borrow().metrics.refused(&r);
                host::send_reply(id, &r);
            }
        }
    }
}
