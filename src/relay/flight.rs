//! The single-flight records of a refresh, as pure data: the id of a refresh, the records in
//! Envoy's shared data, and what a record means at a given time. The shell (`filter::flight`)
//! reads and writes the table; everything it decides from is here.
//!
//! Single flight. A refresh is identified by a hash of the refresh token it spends. Within one
//! VM, requests of a session whose refresh is in flight park behind it. Across VMs, a record in
//! Envoy's shared data (a fixed table of slots, compare-and-swap) holds either a lease (one VM
//! is refreshing; others wait), an outcome (the new tokens, kept for a grace window so that
//! parallel and late requests that still carry the old refresh token reuse it instead of
//! spending that token again, which an IdP with reuse detection answers by revoking the whole
//! session), a transient failure (back off), or a definitive `invalid_grant`.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2_11::Digest;

use crate::idp::Tokens;

/// Slots in the shared refresh table (each holds at most one live record).
pub const SLOTS: u32 = 4096;
/// Slots probed for one session before giving up on cross-VM coordination.
pub const PROBES: u32 = 8;

/// Identifies one refresh token without holding it: the first 16 bytes of its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefreshId(pub [u8; 16]);

impl RefreshId {
    pub fn of(refresh_token: &str) -> RefreshId {
        let digest = sha2_11::Sha256::digest(refresh_token.as_bytes());
        let mut id = [0u8; 16];
        for (dst, src) in id.iter_mut().zip(digest.iter()) {
            *dst = *src;
        }
        RefreshId(id)
    }

    /// The slots this id may live in, in probe order.
    pub fn slots(&self) -> impl Iterator<Item = u32> {
        let [a, b, ..] = self.0;
        let start = u32::from(u16::from_le_bytes([a, b])) % SLOTS;
        (0..PROBES).map(move |i| (start + i) % SLOTS)
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for RefreshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The id is a hash prefix: safe to log, and enough to correlate lines.
        write!(f, "RefreshId({})", self.hex().get(..8).unwrap_or(""))
    }
}

/// One record in the shared refresh table.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Hex of the `RefreshId` the record is about.
    pub id: String,
    #[serde(flatten)]
    pub state: RecordState,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.state {
            RecordState::Lease { .. } => "lease",
            RecordState::Done { .. } => "done",
            RecordState::Failed { .. } => "failed",
            RecordState::Invalid { .. } => "invalid",
        };
        write!(f, "Record({kind})")
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum RecordState {
    /// A VM is refreshing; dead after `until` (the call's timeout plus slack). `failures`
    /// carries the session's consecutive failures so far into the attempt.
    Lease {
        until: u64,
        #[serde(default)]
        failures: u32,
    },
    /// The refresh succeeded at `at`; reused until `at + grace`.
    Done { at: u64, tokens: Tokens },
    /// A transient failure, the `failures`-th in a row; no new attempt before `retry_at`.
    Failed {
        retry_at: u64,
        reason: String,
        #[serde(default)]
        failures: u32,
    },
    /// `invalid_grant` at `at`.
    Invalid { at: u64 },
}

/// What became of a refresh: the one name for it, wherever it was learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// New tokens.
    Tokens(Tokens),
    /// `invalid_grant`: the session is over.
    Invalid,
    /// The token endpoint failed; no new attempt before `retry_at` (unix seconds).
    Failed { retry_at: u64 },
}

/// What a record means for a session at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// No live record: this VM may refresh.
    Free,
    /// Another VM is refreshing.
    InFlight,
    /// The outcome is known.
    Settled(RefreshOutcome),
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        serde_json::from_slice(bytes).ok()
    }

    /// The session's consecutive transient failures this record knows of (0 after a success).
    pub fn failures(&self) -> u32 {
        match &self.state {
            RecordState::Lease { failures, .. } | RecordState::Failed { failures, .. } => *failures,
            RecordState::Done { .. } | RecordState::Invalid { .. } => 0,
        }
    }

    /// Whether the record still matters at `now` (a dead one may be overwritten).
    pub fn live(&self, now: u64, grace_s: u64) -> bool {
        match &self.state {
            RecordState::Lease { until, .. } => now < *until,
            RecordState::Done { at, .. } => now < at.saturating_add(grace_s),
            RecordState::Failed { retry_at, .. } => now < *retry_at,
            RecordState::Invalid { at } => now < at.saturating_add(grace_s),
        }
    }

    pub fn seen(&self, now: u64, grace_s: u64) -> Seen {
        if !self.live(now, grace_s) {
            return Seen::Free;
        }
        match &self.state {
            RecordState::Lease { .. } => Seen::InFlight,
            RecordState::Done { tokens, .. } => {
                Seen::Settled(RefreshOutcome::Tokens(tokens.clone()))
            }
            RecordState::Failed { retry_at, .. } => Seen::Settled(RefreshOutcome::Failed {
                retry_at: *retry_at,
            }),
            RecordState::Invalid { .. } => Seen::Settled(RefreshOutcome::Invalid),
        }
    }
}

/// Where a session stands in the table: what was seen, and which slot to write (with its CAS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub seen: Seen,
    /// The slot holding this session's record, or the first free one; `None` when all probed
    /// slots hold live records of other sessions.
    pub slot: Option<(u32, Option<u32>)>,
    /// The session's consecutive failures so far, from its own record (live or not).
    pub failures: u32,
}

/// Scans the probe sequence. `read(slot)` returns the slot's bytes and CAS.
pub fn probe(
    id: &RefreshId,
    now: u64,
    grace_s: u64,
    mut read: impl FnMut(u32) -> (Option<Vec<u8>>, Option<u32>),
) -> Probe {
    let hex = id.hex();
    let mut free: Option<(u32, Option<u32>)> = None;
    for slot in id.slots() {
        let (bytes, cas) = read(slot);
        let record = bytes.as_deref().and_then(Record::decode);
        match record {
            Some(r) if r.id == hex => {
                return Probe {
                    seen: r.seen(now, grace_s),
                    slot: Some((slot, cas)),
                    failures: r.failures(),
                }
            }
            Some(r) if r.live(now, grace_s) => {}
            _ => {
                if free.is_none() {
                    free = Some((slot, cas));
                }
            }
        }
    }
    Probe {
        seen: Seen::Free,
        slot: free,
        failures: 0,
    }
}

/// The wait after a transient failure that followed `previous` consecutive failures of one
/// session: `base_s`, doubling with each failure in a row, at most 16 × `base_s` and at most
/// [`MAX_BACKOFF_S`] (never below `base_s`).
pub fn backoff_s(base_s: u64, previous: u32) -> u64 {
    base_s
        .saturating_mul(1u64 << previous.min(4))
        .min(MAX_BACKOFF_S.max(base_s))
}

/// The longest wait the doubling reaches.
pub const MAX_BACKOFF_S: u64 = 300;

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            access_token: "at".into(),
            refresh_token: Some("rt2".into()),
            id_token: None,
        }
    }

    #[test]
    fn records_round_trip_and_expire() {
        let id = RefreshId::of("rt");
        let cases = [
            (
                RecordState::Lease {
                    until: 100,
                    failures: 0,
                },
                99,
                Seen::InFlight,
                100,
            ),
            (
                RecordState::Done {
                    at: 50,
                    tokens: tokens(),
                },
                109,
                Seen::Settled(RefreshOutcome::Tokens(tokens())),
                110,
            ),
            (
                RecordState::Failed {
                    retry_at: 70,
                    reason: "x".into(),
                    failures: 1,
                },
                69,
                Seen::Settled(RefreshOutcome::Failed { retry_at: 70 }),
                70,
            ),
            (
                RecordState::Invalid { at: 50 },
                109,
                Seen::Settled(RefreshOutcome::Invalid),
                110,
            ),
        ];
        for (state, live_at, seen, dead_at) in cases {
            let r = Record {
                id: id.hex(),
                state,
            };
            let back = Record::decode(&r.encode()).unwrap();
            assert_eq!(back, r);
            assert_eq!(r.seen(live_at, 60), seen);
            assert_eq!(r.seen(dead_at, 60), Seen::Free);
        }
        assert!(!format!(
            "{:?}",
            Record {
                id: id.hex(),
                state: RecordState::Done {
                    at: 1,
                    tokens: tokens()
                }
            }
        )
        .contains("rt2"));
        assert_eq!(Record::decode(b"garbage"), None);
    }

    #[test]
    fn probe_finds_own_record_and_skips_live_foreign_ones() {
        let id = RefreshId::of("rt");
        let slots: Vec<u32> = id.slots().collect();
        assert_eq!(slots.len(), PROBES as usize);
        let other = Record {
            id: RefreshId::of("other").hex(),
            state: RecordState::Lease {
                until: 1000,
                failures: 2,
            },
        };
        let mine = Record {
            id: id.hex(),
            state: RecordState::Done {
                at: 10,
                tokens: tokens(),
            },
        };
        let table = |s: u32| -> (Option<Vec<u8>>, Option<u32>) {
            if s == slots[0] {
                (Some(other.encode()), Some(1))
            } else if s == slots[2] {
                (Some(mine.encode()), Some(7))
            } else {
                (Some(Vec::new()), Some(3))
            }
        };
        let p = probe(&id, 20, 60, table);
        assert_eq!(p.seen, Seen::Settled(RefreshOutcome::Tokens(tokens())));
        assert_eq!(p.slot, Some((slots[2], Some(7))));
        // Without its record, the first slot not held by a live foreign record is offered.
        let p = probe(&RefreshId::of("rt"), 20, 60, |s| {
            if s == slots[0] {
                (Some(other.encode()), Some(1))
            } else {
                (None, None)
            }
        });
        assert_eq!(p.seen, Seen::Free);
        assert_eq!(p.slot, Some((slots[1], None)));
        // All slots busy with other sessions: no slot.
        let p = probe(&id, 20, 60, |_| (Some(other.encode()), Some(1)));
        assert_eq!(p.slot, None);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_s(5, 0), 5);
        assert_eq!(backoff_s(5, 1), 10);
        assert_eq!(backoff_s(5, 3), 40);
        assert_eq!(backoff_s(5, 10), 80);
        assert_eq!(backoff_s(60, 10), 300);
        assert_eq!(backoff_s(300, 10), 300);
        assert_eq!(backoff_s(300, 0), 300);
        // Records written before the failure count existed still decode (as 0 failures).
        let old = br#"{"id":"ab","k":"failed","retry_at":9,"reason":"timeout"}"#;
        assert_eq!(Record::decode(old).map(|r| r.failures()), Some(0));
    }

    #[test]
    fn refresh_id_is_stable_and_short_in_debug() {
        assert_eq!(RefreshId::of("a"), RefreshId::of("a"));
        assert_ne!(RefreshId::of("a"), RefreshId::of("b"));
        assert_eq!(
            format!("{:?}", RefreshId::of("a")).len(),
            "RefreshId(12345678)".len()
        );
    }
}
