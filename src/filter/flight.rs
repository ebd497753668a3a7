//! Single-flight refresh across requests and worker VMs (the shell half of `relay::flight`).
//!
//! In this VM: `local` holds the refreshes this VM owns (queued, then dispatched by the root
//! context, so the call outlives any one client stream), `known` holds recent outcomes for the
//! grace window. Across VMs: the slot table in Envoy's shared data (see `crate::relay::flight`).
//! Every slot is created empty at start-up, because Envoy's compare-and-swap only protects
//! keys that already exist.

use super::host::Host;
use crate::config::RefreshConfig;
use crate::idp::{parse_token_response, refresh_request, RefreshError, Tokens, Transient};
use crate::relay::flight::{
    backoff_s, probe, Probe, Record, RecordState, RefreshId, RefreshOutcome, Seen, SLOTS,
};
use std::collections::HashMap;

/// A refresh this VM owns; `failures`: the session's consecutive failures before it.
enum Local {
    Queued {
        rt: String,
        slot: Option<u32>,
        failures: u32,
    },
    Dispatched {
        slot: Option<u32>,
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

    fn probe(&self, host: &impl Host, id: &RefreshId, now: u64, grace_s: u64) -> Probe {
        probe(id, now, grace_s, |slot| {
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
            let p = self.probe(host, &id, now, cfg.grace_s);
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
                // Every probed slot is busy with other sessions: coordinate within this VM only.
                self.local.insert(
                    id,
                    Local::Queued {
                        rt: rt.to_string(),
                        slot: None,
                        failures: 0,
                    },
                );
                return Plan::Wait;
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
                        slot: Some(slot),
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

    /// Dispatches every queued refresh (from the root context); returns how many went out.
    /// One that cannot even be dispatched is recorded as a transient failure.
    pub(crate) fn dispatch_queued(
        &mut self,
        host: &impl Host,
        cfg: &RefreshConfig,
        now: u64,
    ) -> usize {
        let queued: Vec<RefreshId> = self
            .local
            .iter()
            .filter(|(_, l)| matches!(l, Local::Queued { .. }))
            .map(|(id, _)| *id)
            .collect();
        let mut sent = 0;
        for id in queued {
            let Some(Local::Queued { rt, slot, failures }) = self.local.remove(&id) else {
                continue;
            };
            let req = refresh_request(cfg, &rt);
            match host.dispatch_post(&cfg.endpoint.cluster, &req, cfg.timeout_ms) {
                Some(token) => {
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
                None => {
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
        sent
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
        let (slot, started_ms, failures) = match self.local.remove(&id) {
            Some(Local::Dispatched {
                slot,
                started_ms,
                failures,
                ..
            }) => (slot, started_ms, failures),
            _ => (None, 0, 0),
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
        let late: Vec<(RefreshId, (Option<u32>, u32))> = self
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
        (slot, failures): (Option<u32>, u32),
        result: Result<Tokens, RefreshError>,
        now: u64,
        cfg: &RefreshConfig,
    ) {
        let (known, state) = match result {
            Ok(tokens) => (
                RefreshOutcome::Tokens(tokens.clone()),
                RecordState::Done { at: now, tokens },
            ),
            Err(RefreshError::InvalidGrant) => {
                (RefreshOutcome::Invalid, RecordState::Invalid { at: now })
            }
            Err(RefreshError::Transient(reason)) => {
                // Doubling with each failure in a row; the clock has whole seconds, so +1 keeps
                // the wait from being shorter than the backoff.
                let retry_at = now + backoff_s(cfg.backoff_s, failures) + 1;
                (
                    RefreshOutcome::Failed { retry_at },
                    RecordState::Failed {
                        retry_at,
                        reason: reason.code().to_string(),
                        failures: failures.saturating_add(1),
                    },
                )
            }
        };
        if let Some(slot) = slot {
            let record = Record {
                id: id.hex(),
                state,
            };
            let _ = host.shared_set(&self.key(slot), &record.encode(), None);
        }
        self.remember(id, known, now, cfg);
    }
}
