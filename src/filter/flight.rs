//! Single-flight refresh across requests and worker VMs (the shell half of `refresh`).
//!
//! In this VM: `local` holds the refreshes this VM owns (queued, then dispatched by the root
//! context, so the call outlives any one client stream), `known` holds recent outcomes for the
//! grace window. Across VMs: the slot table in Envoy's shared data (see `crate::refresh`).
//! Every slot is created empty at start-up, because Envoy's compare-and-swap only protects
//! keys that already exist.

use std::collections::HashMap;
use std::time::Duration;

use proxy_wasm::hostcalls;

use crate::config::RefreshConfig;
use crate::refresh::{
    self, parse_token_response, probe, Probe, Record, RecordState, RefreshError, RefreshId, Seen,
    Tokens,
};

/// A refresh outcome this VM knows.
#[derive(Debug, Clone)]
pub enum Known {
    Done(Tokens),
    Invalid,
    Failed { retry_at: u64 },
}

enum Local {
    Queued {
        rt: String,
        slot: Option<u32>,
    },
    Dispatched {
        slot: Option<u32>,
        deadline: u64,
        started_ms: u64,
    },
}

pub struct Flights {
    prefix: String,
    local: HashMap<RefreshId, Local>,
    by_token: HashMap<u32, RefreshId>,
    known: HashMap<RefreshId, (Known, u64)>,
}

/// What a request should do about its session's refresh.
pub enum Plan {
    /// The outcome is known: complete the request now.
    Known(Known),
    /// Wait for a refresh in flight (here or in another VM).
    Wait,
}

impl Flights {
    pub fn new(instance: u64) -> Flights {
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
    pub fn init_slots(&self) {
        for slot in 0..refresh::SLOTS {
            let key = self.key(slot);
            if let Ok((None, None)) = hostcalls::get_shared_data(&key) {
                let _ = hostcalls::set_shared_data(&key, Some(b""), None);
            }
        }
    }

    fn read(&self, slot: u32) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(&self.key(slot)).unwrap_or((None, None))
    }

    fn probe(&self, id: &RefreshId, now: u64, grace_s: u64) -> Probe {
        probe(id, now, grace_s, |slot| self.read(slot))
    }

    /// An outcome this VM already knows for `id`.
    pub fn known(&self, id: &RefreshId, now: u64) -> Option<Known> {
        self.known
            .get(id)
            .filter(|(_, until)| now < *until)
            .map(|(k, _)| k.clone())
    }

    pub fn owns(&self, id: &RefreshId) -> bool {
        self.local.contains_key(id)
    }

    pub fn has_queued(&self) -> bool {
        self.local
            .values()
            .any(|l| matches!(l, Local::Queued { .. }))
    }

    /// Decides how a request with session `id` (refresh token `rt`) gets its outcome:
    /// known here, known in the shared table, in flight somewhere, or this VM takes the lease.
    pub fn plan(&mut self, cfg: &RefreshConfig, id: RefreshId, rt: &str, now: u64) -> Plan {
        if let Some(k) = self.known(&id, now) {
            return Plan::Known(k);
        }
        if self.owns(&id) {
            return Plan::Wait;
        }
        for _ in 0..3 {
            let p = self.probe(&id, now, cfg.grace_s);
            match p.seen {
                Seen::Done(tokens) => {
                    return Plan::Known(self.remember(id, Known::Done(tokens), now, cfg))
                }
                Seen::Invalid => return Plan::Known(self.remember(id, Known::Invalid, now, cfg)),
                Seen::BackingOff { retry_at } => {
                    return Plan::Known(Known::Failed { retry_at });
                }
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
                    },
                );
                return Plan::Wait;
            };
            let lease = Record {
                id: id.hex(),
                state: RecordState::Lease {
                    until: now + cfg.timeout_ms.div_ceil(1000) + 2,
                },
            };
            if hostcalls::set_shared_data(&self.key(slot), Some(&lease.encode()), cas).is_ok() {
                self.local.insert(
                    id,
                    Local::Queued {
                        rt: rt.to_string(),
                        slot: Some(slot),
                    },
                );
                return Plan::Wait;
            }
            // Lost the race for the slot: look again.
        }
        Plan::Wait
    }

    fn remember(&mut self, id: RefreshId, known: Known, now: u64, cfg: &RefreshConfig) -> Known {
        let until = match &known {
            Known::Failed { retry_at } => *retry_at,
            _ => now + cfg.grace_s,
        };
        if self.known.len() > 4096 {
            self.known.retain(|_, (_, u)| now < *u);
        }
        self.known.insert(id, (known.clone(), until));
        known
    }

    /// Dispatches every queued refresh (from the root context). Returns how many went out, and
    /// those that could not even be dispatched, already resolved as failures.
    pub fn dispatch_queued(&mut self, cfg: &RefreshConfig, now: u64) -> (usize, Vec<RefreshId>) {
        let queued: Vec<RefreshId> = self
            .local
            .iter()
            .filter(|(_, l)| matches!(l, Local::Queued { .. }))
            .map(|(id, _)| *id)
            .collect();
        let mut failed = Vec::new();
        let mut sent = 0;
        for id in queued {
            let Some(Local::Queued { rt, slot }) = self.local.remove(&id) else {
                continue;
            };
            let req = refresh::refresh_request(cfg, &rt);
            let headers: Vec<(&str, &str)> =
                req.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            match hostcalls::dispatch_http_call(
                &cfg.endpoint.cluster,
                headers,
                Some(req.body.as_bytes()),
                vec![],
                Duration::from_millis(cfg.timeout_ms),
            ) {
                Ok(token) => {
                    sent += 1;
                    log::debug!("refresh {id:?} dispatched");
                    self.by_token.insert(token, id);
                    self.local.insert(
                        id,
                        Local::Dispatched {
                            slot,
                            deadline: now + cfg.timeout_ms.div_ceil(1000) + 2,
                            started_ms: super::host::now_ms(),
                        },
                    );
                }
                Err(status) => {
                    log::warn!(
                        "refresh could not be dispatched to cluster {:?} ({status:?})",
                        cfg.endpoint.cluster
                    );
                    self.record(
                        id,
                        slot,
                        Err(RefreshError::Transient("dispatch_failed")),
                        now,
                        cfg,
                    );
                    failed.push(id);
                }
            }
        }
        (sent, failed)
    }

    /// The answer to one of this VM's refresh calls; `None` when `token` is not one.
    pub fn on_response(
        &mut self,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        now: u64,
        cfg: &RefreshConfig,
    ) -> Option<(RefreshId, Result<(), RefreshError>, u64)> {
        let id = self.by_token.remove(&token)?;
        let (slot, started_ms) = match self.local.remove(&id) {
            Some(Local::Dispatched {
                slot, started_ms, ..
            }) => (slot, started_ms),
            _ => (None, 0),
        };
        let result = parse_token_response(status, body);
        let summary = result.as_ref().map(|_| ()).map_err(Clone::clone);
        if let Err(e) = &result {
            log::warn!("refresh {id:?} failed: {e} (reason={})", e.code());
        }
        self.record(id, slot, result, now, cfg);
        Some((id, summary, started_ms))
    }

    /// Refreshes whose answer never came (the host lost the call): failed, transiently.
    pub fn expire(&mut self, now: u64, cfg: &RefreshConfig) -> Vec<RefreshId> {
        let late: Vec<(RefreshId, Option<u32>)> = self
            .local
            .iter()
            .filter_map(|(id, l)| match l {
                Local::Dispatched { slot, deadline, .. } if now >= *deadline => Some((*id, *slot)),
                _ => None,
            })
            .collect();
        for (id, slot) in &late {
            self.local.remove(id);
            self.by_token.retain(|_, v| v != id);
            self.record(
                *id,
                *slot,
                Err(RefreshError::Transient("timeout")),
                now,
                cfg,
            );
        }
        late.into_iter().map(|(id, _)| id).collect()
    }

    /// Stores an outcome here and in the shared slot (this VM holds the slot's lease).
    fn record(
        &mut self,
        id: RefreshId,
        slot: Option<u32>,
        result: Result<Tokens, RefreshError>,
        now: u64,
        cfg: &RefreshConfig,
    ) {
        let (known, state) = match result {
            Ok(tokens) => (
                Known::Done(tokens.clone()),
                RecordState::Done { at: now, tokens },
            ),
            Err(RefreshError::InvalidGrant) => (Known::Invalid, RecordState::Invalid { at: now }),
            Err(RefreshError::Transient(reason)) => {
                // The clock has whole seconds: +1 so the wait is never shorter than the backoff.
                let retry_at = now + cfg.backoff_s + 1;
                (
                    Known::Failed { retry_at },
                    RecordState::Failed {
                        retry_at,
                        reason: reason.to_string(),
                    },
                )
            }
        };
        if let Some(slot) = slot {
            let record = Record {
                id: id.hex(),
                state,
            };
            let _ = hostcalls::set_shared_data(&self.key(slot), Some(&record.encode()), None);
        }
        self.remember(id, known, now, cfg);
    }
}
