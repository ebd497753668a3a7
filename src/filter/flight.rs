//! Single-flight refresh across requests and worker VMs (the shell half of `relay::flight`).
//!
//! In this VM: `local` holds the refreshes this VM owns (queued, then dispatched by the root
//! context, so the call outlives any one client stream), `known` holds recent outcomes for the
//! grace window. Across VMs: the slot table in Envoy's shared data (see `crate::relay::flight`).
//! Every slot is created empty at start-up, because Envoy's compare-and-swap only protects
//! keys that already exist. A VM clears the new-token records it wrote once their grace window
//! is over (`sweep`), so sealed tokens do not outlive their use even in sealed form.

use super::host::Host;
use super::loud::LogLimit;
use crate::config::RefreshConfig;
use crate::idp::{parse_token_response, refresh_request, RefreshError, Tokens, Transient};
use crate::relay::flight::{
    backoff_s, probe, Probe, Record, RecordState, RefreshId, RefreshOutcome, Seen, SLOTS,
};
use std::collections::HashMap;

/// At most one "no free slot" warning per this many seconds per VM.
const FULL_LOG_EVERY_S: u64 = 60;

/// A refresh this VM owns; `failures`: the session's consecutive failures before it.
enum Local {
    Queued {
        rt: String,
        slot: u32,
        failures: u32,
    },
    Dispatched {
        slot: u32,
        deadline: u64,
        started_ms: u64,
        failures: u32,
    },
}

pub(crate) struct Flights {
    prefix: String,
    local: HashMap<RefreshId, Local>,
    by_token: HashMap<u32, RefreshId>,
    known: HashMap<RefreshId, (RefreshOutcome, u64)>,
    /// New-token records this VM wrote: (slot, id, end of grace), cleared by `sweep`.
    written: Vec<(u32, RefreshId, u64)>,
    /// The second `sweep` last ran in (it runs at most once per clock second).
    swept_at: u64,
    full_log: LogLimit,
}

/// A refresh that could not even be dispatched: the cluster and the host's reason.
pub(crate) struct Undispatched {
    pub(crate) cluster: String,
    pub(crate) why: String,
}

/// What a request should do about its session's refresh.
pub(crate) enum Plan {
    /// The outcome is known: complete the request now.
    Known(RefreshOutcome),
    /// Wait for a refresh in flight (here or in another VM).
    Wait,
}

impl Flights {
    pub(crate) fn new(instance: u64) -> Flights {
        Flights {
            prefix: format!("edge_token_relay.refresh.{instance:016x}."),
            local: HashMap::new(),
            by_token: HashMap::new(),
            known: HashMap::new(),
            written: Vec::new(),
            swept_at: 0,
            full_log: LogLimit::default(),
        }
    }

    fn key(&self, slot: u32) -> String {
        format!("{}{slot}", self.prefix)
    }

    /// Creates the slots that do not exist yet (see the module comment).
    pub(crate) fn init_slots(&self, host: &impl Host) {
        for slot in 0..SLOTS {
            let key = self.key(slot);
            if let Some((None, None)) = host.shared_get(&key) {
                let _ = host.shared_set(&key, b"", None);
            }
        }
    }

    fn probe(&self, host: &impl Host, id: &RefreshId, now: u64, cfg: &RefreshConfig) -> Probe {
        probe(id, now, cfg.grace_s, &cfg.session_keys, |slot| {
            host.shared_get(&self.key(slot)).unwrap_or((None, None))
        })
    }

    /// An outcome this VM already knows for `id`.
    fn known(&self, id: &RefreshId, now: u64) -> Option<RefreshOutcome> {
        self.known
            .get(id)
            .filter(|(_, until)| now < *until)
            .map(|(k, _)| k.clone())
    }

    pub(crate) fn owns(&self, id: &RefreshId) -> bool {
        self.local.contains_key(id)
    }

    pub(crate) fn has_queued(&self) -> bool {
        self.local
            .values()
            .any(|l| matches!(l, Local::Queued { .. }))
    }

    /// Decides how a request with session `id` (refresh token `rt`) gets its outcome:
    /// known here, known in the shared table, in flight somewhere, or this VM takes the lease.
    pub(crate) fn plan(
        &mut self,
        host: &impl Host,
        cfg: &RefreshConfig,
        id: RefreshId,
        rt: &str,
        now: u64,
    ) -> Plan {
        if let Some(k) = self.known(&id, now) {
            return Plan::Known(k);
        }
        if self.owns(&id) {
            return Plan::Wait;
        }
        for _ in 0..3 {
            let p = self.probe(host, &id, now, cfg);
            match p.seen {
                // A backoff is not remembered here: the shared record already carries it.
                Seen::Settled(failed @ RefreshOutcome::Failed { .. }) => {
                    return Plan::Known(failed)
                }
                Seen::Settled(outcome) => return Plan::Known(self.remember(id, outcome, now, cfg)),
                Seen::InFlight => return Plan::Wait,
                Seen::Free => {}
            }
            let Some((slot, cas)) = p.slot else {
                // Every slot this session may use is held by other sessions' leases or new
                // tokens (a flood). Refreshing without a record could spend the token twice
                // (another worker would not see this refresh): answer 503 until one frees.
                if let Some(suppressed) = self.full_log.allow(now, FULL_LOG_EVERY_S) {
                    log::warn!(
                        "refresh {id:?}: every shared slot it may use is held by other sessions; \
                         answering 503 refresh_unavailable until one frees ({suppressed} more \
                         since the last line)"
                    );
                }
                return Plan::Known(RefreshOutcome::Failed {
                    retry_at: p.free_at.max(now.saturating_add(1)),
                });
            };
            let lease = Record {
                id: id.hex(),
                state: RecordState::Lease {
                    until: now + cfg.timeout_ms.div_ceil(1000) + 2,
                    failures: p.failures,
                },
            };
            if host
                .shared_set(&self.key(slot), &lease.encode(), cas)
                .is_ok()
            {
                self.local.insert(
                    id,
                    Local::Queued {
                        rt: rt.to_string(),
                        slot,
                        failures: p.failures,
                    },
                );
                return Plan::Wait;
            }
            // Lost the race for the slot: look again.
        }
        Plan::Wait
    }

    fn remember(
        &mut self,
        id: RefreshId,
        known: RefreshOutcome,
        now: u64,
        cfg: &RefreshConfig,
    ) -> RefreshOutcome {
        let until = match &known {
            RefreshOutcome::Failed { retry_at } => *retry_at,
            _ => now + cfg.grace_s,
        };
        if self.known.len() > 4096 {
            self.known.retain(|_, (_, u)| now < *u);
        }
        self.known.insert(id, (known.clone(), until));
        known
    }

    /// Dispatches every queued refresh (from the root context); returns how many went out and
    /// those that could not even be dispatched (each recorded as a transient failure).
    pub(crate) fn dispatch_queued(
        &mut self,
        host: &impl Host,
        cfg: &RefreshConfig,
        now: u64,
    ) -> (usize, Vec<Undispatched>) {
        let queued: Vec<RefreshId> = self
            .local
            .iter()
            .filter(|(_, l)| matches!(l, Local::Queued { .. }))
            .map(|(id, _)| *id)
            .collect();
        let mut sent = 0;
        let mut failed = Vec::new();
        for id in queued {
            let Some(Local::Queued { rt, slot, failures }) = self.local.remove(&id) else {
                continue;
            };
            let req = refresh_request(cfg, &rt);
            match host.dispatch_post(&cfg.endpoint.cluster, &req, cfg.timeout_ms) {
                Ok(token) => {
                    sent += 1;
                    log::debug!("refresh {id:?} dispatched");
                    self.by_token.insert(token, id);
                    self.local.insert(
                        id,
                        Local::Dispatched {
                            slot,
                            deadline: now + cfg.timeout_ms.div_ceil(1000) + 2,
                            started_ms: host.now_ms(),
                            failures,
                        },
                    );
                }
                Err(why) => {
                    failed.push(Undispatched {
                        cluster: cfg.endpoint.cluster.clone(),
                        why,
                    });
                    self.record(
                        host,
                        id,
                        (slot, failures),
                        Err(RefreshError::Transient(Transient::DispatchFailed)),
                        now,
                        cfg,
                    );
                }
            }
        }
        (sent, failed)
    }

    /// The answer to one of this VM's refresh calls; `None` when `token` is not one.
    pub(crate) fn on_response(
        &mut self,
        host: &impl Host,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        now: u64,
        cfg: &RefreshConfig,
    ) -> Option<(RefreshId, Result<(), RefreshError>, u64)> {
        let id = self.by_token.remove(&token)?;
        // `expire` forgets a call's token and its entry together: both are here or neither.
        let Some(Local::Dispatched {
            slot,
            started_ms,
            failures,
            ..
        }) = self.local.remove(&id)
        else {
            return None;
        };
        let result = parse_token_response(status, body);
        let summary = result.as_ref().map(|_| ()).map_err(Clone::clone);
        if let Err(e) = &result {
            log::warn!("refresh {id:?} failed: {e} (reason={})", e.code());
        }
        self.record(host, id, (slot, failures), result, now, cfg);
        Some((id, summary, started_ms))
    }

    /// Refreshes whose answer never came (the host lost the call): failed, transiently.
    pub(crate) fn expire(
        &mut self,
        host: &impl Host,
        now: u64,
        cfg: &RefreshConfig,
    ) -> Vec<RefreshId> {
        let late: Vec<(RefreshId, (u32, u32))> = self
            .local
            .iter()
            .filter_map(|(id, l)| match l {
                Local::Dispatched {
                    slot,
                    deadline,
                    failures,
                    ..
                } if now >= *deadline => Some((*id, (*slot, *failures))),
                _ => None,
            })
            .collect();
        for (id, at) in &late {
            self.local.remove(id);
            self.by_token.retain(|_, v| v != id);
            self.record(
                host,
                *id,
                *at,
                Err(RefreshError::Transient(Transient::Timeout)),
                now,
                cfg,
            );
        }
        late.into_iter().map(|(id, _)| id).collect()
    }

    /// Stores an outcome here and in the shared slot (this VM holds the slot's lease).
    fn record(
        &mut self,
        host: &impl Host,
        id: RefreshId,
        (slot, failures): (u32, u32),
        result: Result<Tokens, RefreshError>,
        now: u64,
        cfg: &RefreshConfig,
    ) {
        let (known, record) = match result {
            Ok(tokens) => {
                let record = match host.random() {
                    Some(r) => Record::done(&id, now, &tokens, &cfg.session_keys, r.iv),
                    // Nothing to seal with: the other workers wait the record out (an unreadable
                    // outcome) rather than spend the old refresh token again.
                    None => Record {
                        id: id.hex(),
                        state: RecordState::Done {
                            at: now,
                            sealed: String::new(),
                        },
                    },
                };
                self.written
                    .push((slot, id, now.saturating_add(cfg.grace_s)));
                (RefreshOutcome::Tokens(tokens), record)
            }
            Err(RefreshError::InvalidGrant) => (
                RefreshOutcome::Invalid,
                Record {
                    id: id.hex(),
                    state: RecordState::Invalid { at: now },
                },
            ),
            Err(RefreshError::Transient(reason)) => {
                // Doubling with each failure in a row; the clock has whole seconds, so +1 keeps
                // the wait from being shorter than the backoff.
                let retry_at = now + backoff_s(cfg.backoff_s, failures) + 1;
                (
                    RefreshOutcome::Failed { retry_at },
                    Record {
                        id: id.hex(),
                        state: RecordState::Failed {
                            retry_at,
                            reason: reason.code().to_string(),
                            failures: failures.saturating_add(1),
                        },
                    },
                )
            }
        };
        let _ = host.shared_set(&self.key(slot), &record.encode(), None);
        self.remember(id, known, now, cfg);
    }

    /// Clears the new-token records this VM wrote whose grace window is over (a slot another
    /// session has taken since is left alone; the CAS keeps a concurrent writer's record), and
    /// forgets outcomes this VM no longer needs. Called on every tick; works once a second.
    pub(crate) fn sweep(&mut self, host: &impl Host, now: u64, grace_s: u64) {
        if now == self.swept_at {
            return;
        }
        self.swept_at = now;
        if !self.known.is_empty() {
            self.known.retain(|_, (_, until)| now < *until);
        }
        if self.written.iter().all(|(_, _, until)| now < *until) {
            return;
        }
        let (due, keep): (Vec<_>, Vec<_>) = self
            .written
            .drain(..)
            .partition(|(_, _, until)| now >= *until);
        self.written = keep;
        for (slot, id, _) in due {
            let key = self.key(slot);
            let Some((Some(bytes), cas)) = host.shared_get(&key) else {
                continue;
            };
            let ours = Record::decode(&bytes).is_some_and(|r| {
                r.id == id.hex()
                    && matches!(r.state, RecordState::Done { .. })
                    && !r.live(now, grace_s)
            });
            if ours {
                let _ = host.shared_set(&key, b"", cas);
            }
        }
    }
}
