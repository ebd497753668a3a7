//! Refresh through the IdP's token endpoint: the request, the answer, and the records that make
//! a refresh happen once per session rotation across every worker VM.
//!
//! Pure: the shell sends the request, reads shared data, and passes time in.
//!
//! Single flight. A refresh is identified by a hash of the refresh token it spends. Within one
//! VM, requests of a session whose refresh is in flight park behind it. Across VMs, a record in
//! Envoy's shared data (a fixed table of slots, compare-and-swap) holds either a lease (one VM
//! is refreshing; others wait), an outcome (the new tokens, kept for a grace window so that
//! parallel and late requests that still carry the old refresh token reuse it instead of
//! spending that token again, which an IdP with reuse detection answers by revoking the whole
//! session), a transient failure (back off), or a definitive `invalid_grant`.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2_11::Digest;

use crate::config::{ClientAuth, RefreshConfig};

/// Slots in the shared refresh table (each holds at most one live record).
pub const SLOTS: u32 = 4096;
/// Slots probed for one session before giving up on cross-VM coordination.
pub const PROBES: u32 = 8;
/// Largest token-endpoint answer read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

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

/// A POST to the token endpoint, ready for `dispatch_http_call`.
pub struct TokenRequest {
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenRequest([redacted])")
    }
}

/// Builds `grant_type=refresh_token` with client authentication as configured.
pub fn refresh_request(cfg: &RefreshConfig, refresh_token: &str) -> TokenRequest {
    token_request(
        cfg,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
}

/// Builds a token-endpoint POST with `params` and the client authentication.
pub fn token_request(cfg: &RefreshConfig, params: &[(&str, &str)]) -> TokenRequest {
    let mut body = String::new();
    for (k, v) in params {
        push_param(&mut body, k, v);
    }
    let mut headers = vec![
        (":method", "POST".to_string()),
        (":path", cfg.endpoint.path.clone()),
        (":authority", cfg.endpoint.authority.clone()),
        (
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept", "application/json".to_string()),
    ];
    match &cfg.client_auth {
        ClientAuth::Basic { secret } => {
            // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
            let pair = format!(
                "{}:{}",
                form_encode(&cfg.client_id),
                form_encode(secret.expose())
            );
            headers.push((
                "authorization",
                format!("Basic {}", STANDARD.encode(pair.as_bytes())),
            ));
        }
        ClientAuth::Post { secret } => {
            push_param(&mut body, "client_id", &cfg.client_id);
            push_param(&mut body, "client_secret", secret.expose());
        }
        ClientAuth::None => push_param(&mut body, "client_id", &cfg.client_id),
    }
    TokenRequest { headers, body }
}

fn push_param(body: &mut String, k: &str, v: &str) {
    if !body.is_empty() {
        body.push('&');
    }
    body.push_str(&form_encode(k));
    body.push('=');
    body.push_str(&form_encode(v));
}

/// application/x-www-form-urlencoded encoding of one name or value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What the token endpoint gave back.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    /// Present when the IdP rotated the refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"[redacted]")
            .field("rotated", &self.refresh_token.is_some())
            .finish()
    }
}

/// Why a refresh did not produce tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshError {
    /// The IdP refused the refresh token for good (RFC 6749 `invalid_grant`).
    InvalidGrant,
    /// Anything that may pass: 5xx, no answer, timeout, unparseable body, other OAuth errors.
    Transient(&'static str),
}

impl RefreshError {
    pub fn code(&self) -> &'static str {
        match self {
            RefreshError::InvalidGrant => "invalid_grant",
            RefreshError::Transient(reason) => reason,
        }
    }
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefreshError::InvalidGrant => f.write_str("the IdP rejected the refresh token"),
            RefreshError::Transient(reason) => write!(f, "token endpoint unavailable ({reason})"),
        }
    }
}

#[derive(Deserialize)]
struct RawTokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    id_token: Option<String>,
    token_type: Option<String>,
}

#[derive(Deserialize)]
struct RawErrorResponse {
    error: Option<String>,
}

/// Reads a token-endpoint answer (`status` None: no answer at all).
pub fn parse_token_response(status: Option<u32>, body: &[u8]) -> Result<Tokens, RefreshError> {
    let status = status.ok_or(RefreshError::Transient("no_response"))?;
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(RefreshError::Transient("response_too_large"));
    }
    if status == 200 {
        let raw: RawTokenResponse = serde_json::from_slice(body)
            .map_err(|_| RefreshError::Transient("unparseable_response"))?;
        if let Some(tt) = &raw.token_type {
            if !tt.eq_ignore_ascii_case("bearer") && !tt.eq_ignore_ascii_case("dpop") {
                return Err(RefreshError::Transient("unexpected_token_type"));
            }
        }
        let access_token = raw
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or(RefreshError::Transient("no_access_token"))?;
        return Ok(Tokens {
            access_token,
            refresh_token: raw.refresh_token.filter(|t| !t.is_empty()),
            id_token: raw.id_token.filter(|t| !t.is_empty()),
        });
    }
    if (400..500).contains(&status) {
        let error = serde_json::from_slice::<RawErrorResponse>(body)
            .ok()
            .and_then(|e| e.error);
        if error.as_deref() == Some("invalid_grant") {
            return Err(RefreshError::InvalidGrant);
        }
        // invalid_client and friends are configuration faults: never log users out for them.
        return Err(RefreshError::Transient("token_endpoint_4xx"));
    }
    if status >= 500 {
        return Err(RefreshError::Transient("token_endpoint_5xx"));
    }
    Err(RefreshError::Transient("unexpected_status"))
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
    /// A VM is refreshing; dead after `until` (the call's timeout plus slack).
    Lease { until: u64 },
    /// The refresh succeeded at `at`; reused until `at + grace`.
    Done { at: u64, tokens: Tokens },
    /// A transient failure; no new attempt before `retry_at`.
    Failed { retry_at: u64, reason: String },
    /// `invalid_grant` at `at`.
    Invalid { at: u64 },
}

/// What a record means for a session at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// No live record: this VM may refresh.
    Free,
    /// Another VM is refreshing.
    InFlight,
    Done(Tokens),
    BackingOff {
        retry_at: u64,
    },
    Invalid,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        serde_json::from_slice(bytes).ok()
    }

    /// Whether the record still matters at `now` (a dead one may be overwritten).
    pub fn live(&self, now: u64, grace_s: u64) -> bool {
        match &self.state {
            RecordState::Lease { until } => now < *until,
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
            RecordState::Done { tokens, .. } => Seen::Done(tokens.clone()),
            RecordState::Failed { retry_at, .. } => Seen::BackingOff {
                retry_at: *retry_at,
            },
            RecordState::Invalid { .. } => Seen::Invalid,
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
    }
}

/// Backoff after `failures` consecutive transient failures of one session.
pub fn backoff_s(base_s: u64, failures: u32) -> u64 {
    base_s
        .saturating_mul(1u64 << failures.min(4))
        .min(base_s.saturating_mul(16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use serde_json::json;

    fn cfg(auth: serde_json::Value) -> RefreshConfig {
        let mut extra = json!({
            "session_keys": [{"kid": "k1", "key": testkit::b64(&[7u8; 32])}],
            "token_endpoint": {"cluster": "idp", "authority": "idp.example.com", "path": "/oauth2/token"},
            "client_id": "my app",
        });
        for (k, v) in auth.as_object().unwrap() {
            extra[k] = v.clone();
        }
        testkit::config(extra).refresh.unwrap()
    }

    fn header<'a>(r: &'a TokenRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn basic_auth_form_encodes_then_base64() {
        let c = cfg(json!({"client_secret": "s3cr3t/+&", "client_auth": "basic"}));
        let r = refresh_request(&c, "rt+/=");
        assert_eq!(r.body, "grant_type=refresh_token&refresh_token=rt%2B%2F%3D");
        let expected = STANDARD.encode("my+app:s3cr3t%2F%2B%26");
        assert_eq!(
            header(&r, "authorization"),
            Some(format!("Basic {expected}").as_str())
        );
        assert_eq!(header(&r, ":method"), Some("POST"));
        assert_eq!(header(&r, ":path"), Some("/oauth2/token"));
        assert_eq!(header(&r, ":authority"), Some("idp.example.com"));
        assert_eq!(
            header(&r, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert!(!format!("{r:?}").contains("s3cr3t"));
    }

    #[test]
    fn post_and_none_auth_put_the_client_in_the_body() {
        let c = cfg(json!({"client_secret": "sec", "client_auth": "post"}));
        let r = refresh_request(&c, "rt");
        assert_eq!(
            r.body,
            "grant_type=refresh_token&refresh_token=rt&client_id=my+app&client_secret=sec"
        );
        assert_eq!(header(&r, "authorization"), None);
        let c = cfg(json!({"client_auth": "none"}));
        let r = refresh_request(&c, "rt");
        assert_eq!(
            r.body,
            "grant_type=refresh_token&refresh_token=rt&client_id=my+app"
        );
    }

    #[test]
    fn token_responses() {
        let ok = br#"{"access_token":"a.b.c","token_type":"Bearer","expires_in":300,"refresh_token":"new"}"#;
        let t = parse_token_response(Some(200), ok).unwrap();
        assert_eq!(t.access_token, "a.b.c");
        assert_eq!(t.refresh_token.as_deref(), Some("new"));
        let no_rotation = br#"{"access_token":"a.b.c","token_type":"bearer"}"#;
        assert_eq!(
            parse_token_response(Some(200), no_rotation)
                .unwrap()
                .refresh_token,
            None
        );

        let cases: &[(Option<u32>, &[u8], RefreshError)] = &[
            (None, b"", RefreshError::Transient("no_response")),
            (
                Some(500),
                b"oops",
                RefreshError::Transient("token_endpoint_5xx"),
            ),
            (
                Some(503),
                b"",
                RefreshError::Transient("token_endpoint_5xx"),
            ),
            (
                Some(200),
                b"<html>",
                RefreshError::Transient("unparseable_response"),
            ),
            (Some(200), b"{}", RefreshError::Transient("no_access_token")),
            (
                Some(200),
                br#"{"access_token":""}"#,
                RefreshError::Transient("no_access_token"),
            ),
            (
                Some(200),
                br#"{"access_token":"x","token_type":"mac"}"#,
                RefreshError::Transient("unexpected_token_type"),
            ),
            (
                Some(200),
                br#"{"access_token":5}"#,
                RefreshError::Transient("unparseable_response"),
            ),
            (
                Some(400),
                br#"{"error":"invalid_grant"}"#,
                RefreshError::InvalidGrant,
            ),
            (
                Some(400),
                br#"{"error":"invalid_client"}"#,
                RefreshError::Transient("token_endpoint_4xx"),
            ),
            (
                Some(401),
                b"",
                RefreshError::Transient("token_endpoint_4xx"),
            ),
            (Some(302), b"", RefreshError::Transient("unexpected_status")),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                parse_token_response(*status, body).unwrap_err(),
                *want,
                "{status:?} {body:?}"
            );
        }
        let huge = vec![b' '; MAX_RESPONSE_BYTES + 1];
        assert_eq!(
            parse_token_response(Some(200), &huge).unwrap_err(),
            RefreshError::Transient("response_too_large")
        );
    }

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
            (RecordState::Lease { until: 100 }, 99, Seen::InFlight, 100),
            (
                RecordState::Done {
                    at: 50,
                    tokens: tokens(),
                },
                109,
                Seen::Done(tokens()),
                110,
            ),
            (
                RecordState::Failed {
                    retry_at: 70,
                    reason: "x".into(),
                },
                69,
                Seen::BackingOff { retry_at: 70 },
                70,
            ),
            (RecordState::Invalid { at: 50 }, 109, Seen::Invalid, 110),
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
            state: RecordState::Lease { until: 1000 },
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
        assert_eq!(p.seen, Seen::Done(tokens()));
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
        assert_eq!(backoff_s(5, 10), 80);
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
