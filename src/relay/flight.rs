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

//!
//! Exhaustion. A session's record lives in one of [`PROBES`] slots chosen by the hash of its
//! refresh token, so one session always lands on the same small set and cannot be pointed at
//! another's. Only the records that guard against a second spend of a refresh token hold their
//! slot while live: a lease (for the call's timeout) and new tokens (for the grace window).
//! A live failure or `invalid_grant` gives way to another session (losing it costs at most one
//! early retry, which the IdP answers the same way). When every slot of a session is held, the
//! session does not refresh at all: its request is answered 503 `refresh_unavailable` with
//! Retry-After until the first of those slots frees ([`Probe::slot`] `None`, [`Probe::free_at`]).
//! A 503 that is retried costs a second; an uncoordinated refresh can cost the session.
//!
//! Confidentiality. Other Wasm plugins in the same Envoy can read shared data by key, so the
//! new tokens in a record are sealed with the session key (the same AES-256-GCM JWE as the
//! session cookie, bound to the record's id) and the record is cleared after the grace window.

use std::fmt;

use sha2_11::Digest;

use crate::idp::Tokens;
use crate::json::members::{self as json_members, Member};
use crate::json::{ObjectWriter, ToJson};
use crate::session::{seal_json, unseal_json, SessionKeys};

/// Slots in the shared refresh table (each holds at most one live record).
pub const SLOTS: u32 = 4096;
/// Slots probed for one session: the only slots its record may occupy.
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

/// One record in the shared refresh table, stored as one JSON object: `id`, the kind `k`
/// (`lease`, `done`, `failed`, `invalid`) and the kind's members.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// Hex of the `RefreshId` the record is about.
    pub id: String,
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

#[derive(Clone, PartialEq, Eq)]
pub enum RecordState {
    /// A VM is refreshing; dead after `until` (the call's timeout plus slack). `failures`
    /// carries the session's consecutive failures so far into the attempt.
    Lease { until: u64, failures: u32 },
    /// The refresh succeeded at `at`; reused until `at + grace`. `sealed`: the new tokens,
    /// sealed with the session key (see [`Record::done`]).
    Done { at: u64, sealed: String },
    /// A transient failure, the `failures`-th in a row; no new attempt before `retry_at`.
    Failed {
        retry_at: u64,
        reason: String,
        failures: u32,
    },
    /// `invalid_grant` at `at`.
    Invalid { at: u64 },
}

/// The plaintext of a sealed outcome. `rid` binds it to its record, so a sealed value moved
/// to another session's record does not open there. It has no `rt` member, so it never opens
/// as a session cookie, and a session never opens as this.
struct SealedTokens {
    rid: String,
    tokens: Tokens,
}

impl ToJson for SealedTokens {
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = ObjectWriter::new(out);
        o.str("rid", &self.rid);
        self.tokens.write_json(o.name("tokens"));
        o.end();
    }
}

impl SealedTokens {
    fn read(json: &[u8]) -> Option<SealedTokens> {
        let [rid, tokens] = json_members::read(json, ["rid", "tokens"])?;
        let Some(Member::Object(tokens)) = tokens else {
            return None;
        };
        Some(SealedTokens {
            rid: rid?.into_string()?,
            tokens: Tokens::from_object(&tokens)?,
        })
    }
}

/// What became of a refresh: the one name for it, wherever it was learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// New tokens.
    Tokens(Tokens),
    /// `invalid_grant`: the session is over.
    Invalid,
    /// The token endpoint failed (or no slot could be had); no new attempt before `retry_at`
    /// (unix seconds).
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
    /// A success record: `tokens` sealed under the current session key with the caller's fresh
    /// random `iv`.
    pub fn done(
        id: &RefreshId,
        at: u64,
        tokens: &Tokens,
        keys: &SessionKeys,
        iv: [u8; 12],
    ) -> Record {
        let rid = id.hex();
        let sealed = seal_json(
            keys,
            &SealedTokens {
                rid: rid.clone(),
                tokens: tokens.clone(),
            },
            iv,
        );
        Record {
            id: rid,
            state: RecordState::Done { at, sealed },
        }
    }

    /// Written and read by hand: serde's derive for a flattened, internally tagged enum
    /// buffers every value in serde's `Content` and linked about 29 KB for this one type.
    pub fn encode(&self) -> Vec<u8> {
        let text = match &self.state {
            RecordState::Done { sealed, .. } => sealed.len(),
            RecordState::Failed { reason, .. } => reason.len(),
            RecordState::Lease { .. } | RecordState::Invalid { .. } => 0,
        };
        let mut out = Vec::with_capacity(96 + self.id.len() + text);
        self.write(&mut out);
        out
    }

    /// The stored form, byte for byte what serde's derive wrote: `id`, `k`, then the kind's
    /// members in declaration order; strings with serde_json's escaping.
    fn write(&self, out: &mut Vec<u8>) {
        let mut o = ObjectWriter::new(out);
        o.str("id", &self.id);
        match &self.state {
            RecordState::Lease { until, failures } => o
                .str("k", "lease")
                .u64("until", *until)
                .u64("failures", u64::from(*failures)),
            RecordState::Done { at, sealed } => {
                o.str("k", "done").u64("at", *at).str("sealed", sealed)
            }
            RecordState::Failed {
                retry_at,
                reason,
                failures,
            } => o
                .str("k", "failed")
                .u64("retry_at", *retry_at)
                .str("reason", reason)
                .u64("failures", u64::from(*failures)),
            RecordState::Invalid { at } => o.str("k", "invalid").u64("at", *at),
        }
        .end();
    }

    /// `None` for anything that is not a record. Read in one pass without building a
    /// document: a member the kind does not have is ignored whatever its type, a missing
    /// `failures` is 0 (records written before it existed), and a named member written twice
    /// refuses the record (the filter never writes one twice).
    pub fn decode(json: &[u8]) -> Option<Record> {
        let [id, kind, until, at, retry_at, sealed, reason, failures] = json_members::read(
            json,
            [
                "id", "k", "until", "at", "retry_at", "sealed", "reason", "failures",
            ],
        )?;
        let text = |m: Option<Member<'_>>| m?.into_string();
        let number = |m: Option<Member<'_>>| match m? {
            Member::U64(n) => Some(n),
            _ => None,
        };
        // Absent in records written before it existed.
        let failures = || match failures {
            None => Some(0),
            some => u32::try_from(number(some)?).ok(),
        };
        let state = match kind?.into_string()?.as_str() {
            "lease" => RecordState::Lease {
                until: number(until)?,
                failures: failures()?,
            },
            "done" => RecordState::Done {
                at: number(at)?,
                sealed: text(sealed)?,
            },
            "failed" => RecordState::Failed {
                retry_at: number(retry_at)?,
                reason: text(reason)?,
                failures: failures()?,
            },
            "invalid" => RecordState::Invalid { at: number(at)? },
            _ => return None,
        };
        Some(Record {
            id: text(id)?,
            state,
        })
    }

    /// The session's consecutive transient failures this record knows of (0 after a success).
    pub fn failures(&self) -> u32 {
        match &self.state {
            RecordState::Lease { failures, .. } | RecordState::Failed { failures, .. } => *failures,
            RecordState::Done { .. } | RecordState::Invalid { .. } => 0,
        }
    }

    /// When the record stops mattering (from then on it may be overwritten).
    pub fn dies_at(&self, grace_s: u64) -> u64 {
        match &self.state {
            RecordState::Lease { until, .. } => *until,
            RecordState::Done { at, .. } | RecordState::Invalid { at } => {
                at.saturating_add(grace_s)
            }
            RecordState::Failed { retry_at, .. } => *retry_at,
        }
    }

    /// Whether the record still matters at `now`.
    pub fn live(&self, now: u64, grace_s: u64) -> bool {
        now < self.dies_at(grace_s)
    }

    /// Whether the record keeps its slot against another session at `now`: a live lease or
    /// live new tokens (losing either could let a refresh token be spent twice).
    pub fn holds(&self, now: u64, grace_s: u64) -> bool {
        matches!(
            self.state,
            RecordState::Lease { .. } | RecordState::Done { .. }
        ) && self.live(now, grace_s)
    }

    pub fn seen(&self, now: u64, grace_s: u64, keys: &SessionKeys) -> Seen {
        if !self.live(now, grace_s) {
            return Seen::Free;
        }
        match &self.state {
            RecordState::Lease { .. } => Seen::InFlight,
            RecordState::Done { at, sealed } => {
                match unseal_json(keys, sealed, SealedTokens::read) {
                    Ok((s, _)) if s.rid == self.id => {
                        Seen::Settled(RefreshOutcome::Tokens(s.tokens))
                    }
                    // Not ours or tampered with: the tokens were issued but cannot be had, and
                    // refreshing again would spend the old token twice. Wait the record out.
                    _ => Seen::Settled(RefreshOutcome::Failed {
                        retry_at: at.saturating_add(grace_s),
                    }),
                }
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
    /// The slot holding this session's record; else the first empty or dead one; else the
    /// first holding a record that gives way (see [`Record::holds`]). `None` when every probed
    /// slot is held by another session.
    pub slot: Option<(u32, Option<u32>)>,
    /// The session's consecutive failures so far, from its own record (live or not).
    pub failures: u32,
    /// When `slot` is `None`: the earliest time one of the probed slots frees.
    pub free_at: u64,
}

/// Scans the probe sequence. `read(slot)` returns the slot's bytes and CAS.
pub fn probe(
    id: &RefreshId,
    now: u64,
    grace_s: u64,
    keys: &SessionKeys,
    mut read: impl FnMut(u32) -> (Option<Vec<u8>>, Option<u32>),
) -> Probe {
    let hex = id.hex();
    let mut free: Option<(u32, Option<u32>)> = None;
    let mut yields: Option<(u32, Option<u32>)> = None;
    let mut free_at = u64::MAX;
    for slot in id.slots() {
        let (bytes, cas) = read(slot);
        let record = bytes.as_deref().and_then(Record::decode);
        match record {
            Some(r) if r.id == hex => {
                return Probe {
                    seen: r.seen(now, grace_s, keys),
                    slot: Some((slot, cas)),
                    failures: r.failures(),
                    free_at: now,
                }
            }
            Some(r) if r.holds(now, grace_s) => free_at = free_at.min(r.dies_at(grace_s)),
            Some(r) if r.live(now, grace_s) => {
                yields = yields.or(Some((slot, cas)));
            }
            _ => free = free.or(Some((slot, cas))),
        }
    }
    let slot = free.or(yields);
    Probe {
        seen: Seen::Free,
        slot,
        failures: 0,
        free_at: if slot.is_some() { now } else { free_at },
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
    use crate::testkit::refresh_config;

    fn tokens() -> Tokens {
        Tokens {
            access_token: "at-secret-text".into(),
            refresh_token: Some("rt2-secret-text".into()),
            id_token: None,
        }
    }

    fn keys() -> SessionKeys {
        refresh_config(serde_json::json!({}))
            .refresh
            .map(|r| r.session_keys)
            .unwrap()
    }

    fn done(id: &RefreshId, at: u64) -> Record {
        Record::done(id, at, &tokens(), &keys(), [7; 12])
    }

    #[test]
    fn records_round_trip_and_expire() {
        let id = RefreshId::of("rt");
        let k = keys();
        let cases = [
            (
                Record {
                    id: id.hex(),
                    state: RecordState::Lease {
                        until: 100,
                        failures: 0,
                    },
                },
                99,
                Seen::InFlight,
                100,
            ),
            (
                done(&id, 50),
                109,
                Seen::Settled(RefreshOutcome::Tokens(tokens())),
                110,
            ),
            (
                Record {
                    id: id.hex(),
                    state: RecordState::Failed {
                        retry_at: 70,
                        reason: "x".into(),
                        failures: 1,
                    },
                },
                69,
                Seen::Settled(RefreshOutcome::Failed { retry_at: 70 }),
                70,
            ),
            (
                Record {
                    id: id.hex(),
                    state: RecordState::Invalid { at: 50 },
                },
                109,
                Seen::Settled(RefreshOutcome::Invalid),
                110,
            ),
        ];
        for (r, live_at, seen, dead_at) in cases {
            let back = Record::decode(&r.encode()).unwrap();
            assert_eq!(back, r);
            assert_eq!(r.seen(live_at, 60, &k), seen);
            assert_eq!(r.seen(dead_at, 60, &k), Seen::Free);
        }
        assert!(!format!("{:?}", done(&id, 1)).contains("rt2"));
        assert_eq!(Record::decode(b"garbage"), None);
    }

    /// The stored form is the one earlier releases wrote and read (serde's derive): VMs of two
    /// releases share the table while Envoy swaps a module.
    #[test]
    fn records_keep_their_stored_form() {
        let id = "00ff".to_owned();
        let cases = [
            (
                RecordState::Lease {
                    until: 5,
                    failures: 2,
                },
                r#"{"id":"00ff","k":"lease","until":5,"failures":2}"#,
            ),
            (
                RecordState::Done {
                    at: 7,
                    sealed: "a\"b".into(),
                },
                r#"{"id":"00ff","k":"done","at":7,"sealed":"a\"b"}"#,
            ),
            (
                RecordState::Failed {
                    retry_at: 9,
                    reason: "timeout".into(),
                    failures: 3,
                },
                r#"{"id":"00ff","k":"failed","retry_at":9,"reason":"timeout","failures":3}"#,
            ),
            (
                RecordState::Invalid { at: 11 },
                r#"{"id":"00ff","k":"invalid","at":11}"#,
            ),
        ];
        for (state, stored) in cases {
            let r = Record {
                id: id.clone(),
                state,
            };
            assert_eq!(String::from_utf8(r.encode()).unwrap(), stored);
            assert_eq!(Record::decode(stored.as_bytes()), Some(r));
        }
        let other_kinds_members =
            br#"{"id":"ab","k":"invalid","at":1,"until":"x","failures":null}"#;
        assert_eq!(
            Record::decode(other_kinds_members),
            Some(Record {
                id: "ab".into(),
                state: RecordState::Invalid { at: 1 }
            }),
            "members of other kinds are ignored, whatever their type"
        );
        assert_eq!(
            Record::decode(br#"{"id":"a","k":"invalid","at":1,"id":"b"}"#),
            None,
            "a named member written twice refuses the record"
        );
        let lenient = br#"{"k":"failed","retry_at":9,"reason":"x","id":"ab","extra":1}"#;
        assert_eq!(
            Record::decode(lenient).map(|r| r.failures()),
            Some(0),
            "a missing `failures` is 0, unknown members are ignored"
        );
        for broken in [
            r#"{"id":"ab","k":"lease"}"#,
            r#"{"id":"ab","k":"lease","until":-1}"#,
            r#"{"id":"ab","k":"lease","until":1,"failures":4294967296}"#,
            r#"{"id":"ab","k":"lease","until":1,"failures":null}"#,
            r#"{"id":"ab","k":"other","at":1}"#,
            r#"{"k":"invalid","at":1}"#,
            r#"{"id":1,"k":"invalid","at":1}"#,
            r#"["id","k"]"#,
        ] {
            assert_eq!(Record::decode(broken.as_bytes()), None, "{broken}");
        }
    }

    #[test]
    fn stored_outcomes_are_sealed_and_bound_to_their_record() {
        let id = RefreshId::of("rt");
        let bytes = done(&id, 50).encode();
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["at-secret-text", "rt2-secret-text", "access_token"] {
            assert!(!text.contains(secret), "{secret} readable in {text}");
        }
        // Sealed for one session, moved into another's record: not opened there, and the
        // other session waits the record out instead of refreshing again.
        let Record { state, .. } = done(&id, 50);
        let moved = Record {
            id: RefreshId::of("other").hex(),
            state,
        };
        assert_eq!(
            moved.seen(60, 60, &keys()),
            Seen::Settled(RefreshOutcome::Failed { retry_at: 110 })
        );
        // Another key (another configuration) cannot open it either.
        let other_keys = refresh_config(serde_json::json!({
            "session_keys": [{"kid": "z", "key": crate::testkit::b64(&crate::testkit::RETIRED_SESSION_KEY)}]
        }))
        .refresh
        .map(|r| r.session_keys)
        .unwrap();
        assert_eq!(
            done(&id, 50).seen(60, 60, &other_keys),
            Seen::Settled(RefreshOutcome::Failed { retry_at: 110 })
        );
    }

    #[test]
    fn probe_finds_own_record_and_skips_live_foreign_ones() {
        let id = RefreshId::of("rt");
        let k = keys();
        let slots: Vec<u32> = id.slots().collect();
        assert_eq!(slots.len(), PROBES as usize);
        let other = Record {
            id: RefreshId::of("other").hex(),
            state: RecordState::Lease {
                until: 1000,
                failures: 2,
            },
        };
        let mine = done(&id, 10);
        let table = |s: u32| -> (Option<Vec<u8>>, Option<u32>) {
            if s == slots[0] {
                (Some(other.encode()), Some(1))
            } else if s == slots[2] {
                (Some(mine.encode()), Some(7))
            } else {
                (Some(Vec::new()), Some(3))
            }
        };
        let p = probe(&id, 20, 60, &k, table);
        assert_eq!(p.seen, Seen::Settled(RefreshOutcome::Tokens(tokens())));
        assert_eq!(p.slot, Some((slots[2], Some(7))));
        // Without its record, the first slot not held by a live foreign record is offered.
        let p = probe(&RefreshId::of("rt"), 20, 60, &k, |s| {
            if s == slots[0] {
                (Some(other.encode()), Some(1))
            } else {
                (None, None)
            }
        });
        assert_eq!(p.seen, Seen::Free);
        assert_eq!(p.slot, Some((slots[1], None)));
        // All slots held by other sessions: no slot, and the time the first one frees.
        let p = probe(&id, 20, 60, &k, |_| (Some(other.encode()), Some(1)));
        assert_eq!((p.slot, p.free_at), (None, 1000));
    }

    #[test]
    fn failures_and_invalid_grants_give_way_leases_and_tokens_do_not() {
        let id = RefreshId::of("rt");
        let k = keys();
        let slots: Vec<u32> = id.slots().collect();
        let foreign = |state: RecordState| Record {
            id: RefreshId::of("other").hex(),
            state,
        };
        let lease = foreign(RecordState::Lease {
            until: 30,
            failures: 0,
        });
        let tokens_rec = Record {
            id: RefreshId::of("other").hex(),
            ..done(&RefreshId::of("other"), 15)
        };
        let failed = foreign(RecordState::Failed {
            retry_at: 300,
            reason: "timeout".into(),
            failures: 3,
        });
        let invalid = foreign(RecordState::Invalid { at: 19 });
        // Every slot held by a lease or new tokens except one live failure: that one is taken.
        let p = probe(&id, 20, 60, &k, |s| {
            if s == slots[5] {
                (Some(failed.encode()), Some(55))
            } else if s % 2 == 0 {
                (Some(lease.encode()), Some(1))
            } else {
                (Some(tokens_rec.encode()), Some(2))
            }
        });
        assert_eq!((p.seen, p.slot), (Seen::Free, Some((slots[5], Some(55)))));
        // An empty or dead slot is preferred to one that gives way.
        let p = probe(&id, 20, 60, &k, |s| {
            if s == slots[1] {
                (Some(invalid.encode()), Some(9))
            } else if s == slots[6] {
                (Some(lease.encode()), Some(1)) // dead at 30
            } else {
                (Some(tokens_rec.encode()), Some(2))
            }
        });
        assert_eq!(p.slot, Some((slots[1], Some(9))));
        let p = probe(&id, 30, 60, &k, |s| {
            if s == slots[1] {
                (Some(invalid.encode()), Some(9))
            } else if s == slots[6] {
                (Some(lease.encode()), Some(1))
            } else {
                (Some(tokens_rec.encode()), Some(2))
            }
        });
        assert_eq!(p.slot, Some((slots[6], Some(1))));
        // Only leases and tokens: none, until the first of them dies.
        let p = probe(&id, 20, 60, &k, |s| {
            if s % 2 == 0 {
                (Some(lease.encode()), Some(1))
            } else {
                (Some(tokens_rec.encode()), Some(2))
            }
        });
        assert_eq!((p.slot, p.free_at), (None, 30));
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
