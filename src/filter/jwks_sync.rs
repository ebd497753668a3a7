//! Keeps the JWKS fresh and shared by every worker VM.
//!
//! One VM fetches, all use it: the fetched document goes into Envoy's shared data, and every VM
//! picks up a new version on its next tick. A lease in shared data (compare-and-swap) decides
//! which VM makes a periodic fetch, and carries the failure backoff, so a failing IdP sees one
//! attempt per backoff interval from the whole Envoy, not one per worker. A token naming an
//! unknown `kid` triggers an early refetch, at most once per `KID_REFETCH_INTERVAL_S` per VM,
//! so random kids cannot cause a fetch storm. A failed fetch keeps the last good set.
//!
//! Fetches are dispatched only from the root context: its callbacks may then resume parked
//! streams without re-entering a stream context the SDK is already inside.

use std::time::Duration;

use super::host::Host;
use crate::config::Upstream;
use crate::jwt::jwks::KeySet;

pub(crate) const FETCH_TIMEOUT_S: u64 = 5;
pub(crate) const KID_REFETCH_INTERVAL_S: u64 = 5;
const MAX_BACKOFF_S: u64 = 30;
/// Before the first key set arrives every protected request fails closed: retry sooner.
const MAX_BACKOFF_NO_KEYS_S: u64 = 4;
const MAX_JWKS_BYTES: usize = 1 << 20;

pub(crate) struct JwksSync {
    upstream: Upstream,
    refresh_s: u64,
    data_key: String,
    version_key: String,
    lease_key: String,
    /// CAS of the version record this VM last installed.
    seen_version: Option<u32>,
    /// When the shared document was fetched (0: never).
    fetched_at: u64,
    in_flight: Option<(u32, u64)>,
    last_kid_refetch: u64,
    kid_refetch_wanted: bool,
}

/// What a stream with an unknown `kid` should do.
pub(crate) enum KidRefetch {
    /// Park: a refetch is in flight or will be dispatched on the next tick.
    Wait,
    /// Answer now: this VM refetched too recently.
    RateLimited,
}

/// The outcome of a fetch this VM dispatched.
pub(crate) enum Fetched {
    Keys(KeySet, u64),
    Failed,
}

impl JwksSync {
    pub(crate) fn new(upstream: Upstream, refresh_s: u64) -> JwksSync {
        // Several filter instances (different IdPs) may share an Envoy: name the records by source.
        let id = fnv1a(
            format!(
                "{}\0{}\0{}",
                upstream.cluster, upstream.authority, upstream.path
            )
            .as_bytes(),
        );
        JwksSync {
            data_key: format!("edge_token_relay.jwks.{id:016x}"),
            version_key: format!("edge_token_relay.jwks.{id:016x}.version"),
            lease_key: format!("edge_token_relay.jwks.{id:016x}.lease"),
            upstream,
            refresh_s,
            seen_version: None,
            fetched_at: 0,
            in_flight: None,
            last_kid_refetch: 0,
            kid_refetch_wanted: false,
        }
    }

    /// Picks up a key set another VM stored since this VM last looked.
    pub(crate) fn sync(&mut self, host: &impl Host) -> Option<(KeySet, u64)> {
        let (version, cas) = host.shared_get(&self.version_key)?;
        if cas.is_none() || cas == self.seen_version {
            return None;
        }
        let fetched_at = version.as_deref().and_then(read_u64).unwrap_or(0);
        let (doc, _) = host.shared_get(&self.data_key)?;
        let doc = doc?;
        self.seen_version = cas;
        self.fetched_at = fetched_at;
        match KeySet::parse_lenient(&doc) {
            Ok(keys) => Some((keys, fnv1a(&doc))),
            Err(e) => {
                log::warn!("stored JWKS no longer parses: {e}");
                None
            }
        }
    }

    /// Called on every tick: dispatches a fetch when one is due and this VM may make it.
    /// `Err`: the host's reason when a fetch could not even be dispatched (a failed fetch for
    /// the backoff and the counters; the caller logs it).
    pub(crate) fn tick(&mut self, host: &impl Host, now: u64) -> Result<(), String> {
        if let Some((_, deadline)) = self.in_flight {
            if now < deadline {
                return Ok(());
            }
            // The host never called back; forget the call.
            self.in_flight = None;
        }
        if self.kid_refetch_wanted {
            self.kid_refetch_wanted = false;
            self.last_kid_refetch = now;
            return self.dispatch(host, now);
        }
        let due = self.fetched_at == 0 || now >= self.fetched_at.saturating_add(self.refresh_s);
        if due && self.try_lease(host, now) {
            return self.dispatch(host, now);
        }
        Ok(())
    }

    pub(crate) fn cluster(&self) -> &str {
        &self.upstream.cluster
    }

    /// A stream met an unknown `kid`.
    pub(crate) fn want_kid_refetch(&mut self, now: u64) -> KidRefetch {
        if self.in_flight.is_some() || self.kid_refetch_wanted {
            return KidRefetch::Wait;
        }
        if now < self.last_kid_refetch.saturating_add(KID_REFETCH_INTERVAL_S) {
            return KidRefetch::RateLimited;
        }
        self.kid_refetch_wanted = true;
        KidRefetch::Wait
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.is_some() || self.kid_refetch_wanted
    }

    fn dispatch(&mut self, host: &impl Host, now: u64) -> Result<(), String> {
        let headers = [
            (":method", "GET"),
            (":path", self.upstream.path.as_str()),
            (":authority", self.upstream.authority.as_str()),
            ("accept", "application/json"),
        ];
        match host.dispatch(
            &self.upstream.cluster,
            &headers,
            None,
            Duration::from_secs(FETCH_TIMEOUT_S),
        ) {
            Ok(token) => {
                log::debug!("JWKS fetch dispatched to cluster {}", self.upstream.cluster);
                self.in_flight = Some((token, now + FETCH_TIMEOUT_S + 2));
                Ok(())
            }
            Err(why) => {
                // Backs off like any failed fetch, so the whole Envoy tries about once per
                // backoff interval (the failure counter moves at that pace).
                self.release_lease(host, now, false);
                Err(why)
            }
        }
    }

    /// Whether `token` is this VM's JWKS fetch.
    pub(crate) fn owns(&self, token: u32) -> bool {
        matches!(self.in_flight, Some((t, _)) if t == token)
    }

    /// Handles the answer to this VM's fetch (status and body already read by the shell).
    pub(crate) fn on_response(
        &mut self,
        host: &impl Host,
        status: Option<u32>,
        body: Option<Vec<u8>>,
        now: u64,
    ) -> Fetched {
        self.in_flight = None;
        let result = match (status, body) {
            (Some(200), Some(body)) if body.len() <= MAX_JWKS_BYTES => KeySet::parse_lenient(&body)
                .map(|keys| (keys, body))
                .map_err(|e| e.to_string()),
            (Some(200), _) => Err("empty or oversized body".to_string()),
            (Some(s), _) => Err(format!("HTTP status {s}")),
            (None, _) => Err("no response (connection failure or timeout)".to_string()),
        };
        match result {
            Ok((keys, body)) => {
                let digest = fnv1a(&body);
                self.store(host, &body, now);
                self.release_lease(host, now, true);
                log::info!(
                    "JWKS fetched from cluster {}: {} usable keys",
                    self.upstream.cluster,
                    keys.len()
                );
                // Logged by the worker that fetched, once per fetch; tokens naming these kids
                // are refused (rejected_key).
                for (kid, problem) in keys.rejected() {
                    let kid: String = kid.chars().take(64).filter(|c| !c.is_control()).collect();
                    log::warn!("JWKS key {kid:?} skipped: {problem}");
                }
                Fetched::Keys(keys, digest)
            }
            Err(why) => {
                log::warn!(
                    "JWKS fetch from cluster {} failed: {why}; keeping the last good key set",
                    self.upstream.cluster
                );
                self.release_lease(host, now, false);
                Fetched::Failed
            }
        }
    }

    fn store(&mut self, host: &impl Host, body: &[u8], now: u64) {
        self.fetched_at = now;
        if host.shared_set(&self.data_key, body, None).is_err() {
            return;
        }
        let _ = host.shared_set(&self.version_key, &now.to_le_bytes(), None);
        // This VM already has these keys: remember the version so sync() skips it.
        if let Some((_, cas)) = host.shared_get(&self.version_key) {
            self.seen_version = cas;
        }
    }

    /// Lease record: next allowed attempt (u64) and consecutive failures (u64).
    fn try_lease(&mut self, host: &impl Host, now: u64) -> bool {
        let Some((value, cas)) = host.shared_get(&self.lease_key) else {
            return false;
        };
        let (next_at, failures) = value.as_deref().map(read_lease).unwrap_or((0, 0));
        if now < next_at {
            return false;
        }
        let lease = lease_bytes(now + FETCH_TIMEOUT_S + 2, failures);
        // A CAS mismatch means another VM took the lease first.
        host.shared_set(&self.lease_key, &lease, cas).is_ok()
    }

    fn release_lease(&mut self, host: &impl Host, now: u64, ok: bool) {
        let failures = match host.shared_get(&self.lease_key) {
            Some((Some(v), _)) => read_lease(&v).1,
            _ => 0,
        };
        let (next_at, failures) = if ok {
            (now, 0)
        } else {
            let failures = failures.saturating_add(1);
            let backoff = 1u64
                .checked_shl(u32::try_from(failures.min(6)).unwrap_or(6))
                .unwrap_or(MAX_BACKOFF_S)
                .min(if self.fetched_at == 0 {
                    MAX_BACKOFF_NO_KEYS_S
                } else {
                    MAX_BACKOFF_S
                });
            (now + backoff, failures)
        };
        let _ = host.shared_set(&self.lease_key, &lease_bytes(next_at, failures), None);
    }
}

fn read_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

fn read_lease(b: &[u8]) -> (u64, u64) {
    (
        read_u64(b).unwrap_or(0),
        b.get(8..).and_then(read_u64).unwrap_or(0),
    )
}

fn lease_bytes(next_at: u64, failures: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    let (a, b) = out.split_at_mut(8);
    a.copy_from_slice(&next_at.to_le_bytes());
    b.copy_from_slice(&failures.to_le_bytes());
    out
}

/// FNV-1a: a fingerprint for change detection and record names, not a security boundary.
pub(crate) fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
