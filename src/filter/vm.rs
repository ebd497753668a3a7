//! Per-VM (per worker thread) state shared by the root context and every stream context.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::types::Action;

use super::host;
use super::jwks_sync::JwksSync;
use crate::config::{Config, JwksSource};
use crate::decision::{self, RequestView, Step};
use crate::jwks::KeySet;
use crate::reply::Reply;
use crate::token_cache::TokenCache;

pub type SharedVm = Rc<RefCell<Vm>>;

/// A request parked until the key set is refetched (its token named an unknown `kid`).
pub struct Waiter {
    pub path: String,
    pub cookie: Option<Vec<u8>>,
    pub since: u64,
}

pub struct Vm {
    pub config: Config,
    pub keys: Option<Rc<KeySet>>,
    /// Fingerprint of the JWKS document behind `keys`, to tell a real change from a refresh.
    pub keys_digest: u64,
    pub cache: TokenCache,
    pub jwks: Option<JwksSync>,
    pub waiters: BTreeMap<u32, Waiter>,
}

/// How a parked request ends once decided again.
enum Finish {
    Resume,
    Reply(Reply),
}

impl Vm {
    pub fn new(config: Config) -> Vm {
        let cache = TokenCache::new(config.token_cache_size);
        let (keys, jwks) = match &config.jwks {
            JwksSource::Inline(keys) => (Some(Rc::clone(keys)), None),
            JwksSource::Remote {
                upstream,
                refresh_s,
            } => (None, Some(JwksSync::new(upstream.clone(), *refresh_s))),
        };
        Vm {
            config,
            keys,
            keys_digest: 0,
            cache,
            jwks,
            waiters: BTreeMap::new(),
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
}

/// Decides again every parked request (the key set changed or its refetch ended) and resumes
/// or answers each. `all` also finishes those not yet timed out while a fetch is in flight.
pub fn finish_waiters(vm: &SharedVm, now: u64, max_wait_s: u64, all: bool) {
    let mut done: Vec<(u32, Finish)> = Vec::new();
    {
        let mut guard = vm.borrow_mut();
        let st = &mut *guard;
        let ids: Vec<u32> = st
            .waiters
            .iter()
            .filter(|(_, w)| all || now >= w.since.saturating_add(max_wait_s))
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
                path: &w.path,
                cookie: w.cookie.as_deref(),
            };
            let finish =
                match decision::decide(&st.config, st.keys.as_deref(), &mut st.cache, &view, now) {
                    Step::Pass => Finish::Resume,
                    Step::Forward(f) => {
                        // Header writes do not re-enter the VM, so they are safe under the borrow.
                        host::apply_forward(&f);
                        Finish::Resume
                    }
                    Step::Respond(r) => Finish::Reply(r),
                    Step::UnknownKid => Finish::Reply(decision::unknown_kid_reply()),
                };
            done.push((id, finish));
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
                let _: Action = host::send_reply(id, &r);
            }
        }
    }
}
