//! What a worker does on a tick and when a callout it made is answered: JWKS sync, refresh
//! dispatch and expiry, metric flushes, and waking the requests those settle. Generic over the
//! host so the unit tests drive it with the in-memory fake; `root.rs` only adapts Envoy's calls.

use super::host::Host;
use super::jwks_sync::{Fetched, FETCH_TIMEOUT_S};
use super::loud::Callout;
use super::vm::{finish_waiters, SharedVm, WaitOn, FAST_TICK, TICK};
use crate::idp::{RefreshError, MAX_RESPONSE_BYTES};

/// The largest JWKS document read from a callout answer.
const MAX_JWKS_RESPONSE_BYTES: usize = 1 << 20;

/// A callout answer: `token` from the dispatch, the `:status`, and a reader for the body
/// (called with the most bytes the caller will take; `None` when the body is larger).
pub(crate) fn on_call_response<H: Host>(
    vm: &SharedVm<H>,
    token: u32,
    status: Option<u32>,
    read_body: impl Fn(usize) -> Option<Vec<u8>>,
) {
    let (now, settled): (u64, Option<WaitOn>) = {
        // Busy means re-entered from a context that holds the VM: the answer cannot be lost
        // that way in practice (the host calls back only from its event loop), but never panic.
        let Ok(mut guard) = vm.try_borrow_mut() else {
            log::warn!("callout answer {token} arrived while the VM was busy; dropped");
            return;
        };
        let st = &mut *guard;
        let now = st.host.now_s();
        let settled = if let Some(jwks) = st.jwks.as_mut().filter(|j| j.owns(token)) {
            let body = read_body(MAX_JWKS_RESPONSE_BYTES);
            let fetched = jwks.on_response(&st.host, status, body, now);
            st.metrics
                .jwks_fetch(&st.host, matches!(fetched, Fetched::Keys(..)));
            if let Fetched::Keys(keys, digest) = fetched {
                st.install_keys(keys, digest);
            }
            Some(WaitOn::Keys)
        } else if let (Some(flights), Some(cfg)) = (st.flights.as_mut(), st.config.refresh.as_ref())
        {
            let body = read_body(MAX_RESPONSE_BYTES).unwrap_or_default();
            match flights.on_response(&st.host, token, status, &body, now, cfg) {
                Some((id, result, started_ms)) => {
                    st.metrics
                        .refresh_latency(&st.host, st.host.now_ms().saturating_sub(started_ms));
                    st.metrics.refresh_result(
                        &st.host,
                        result.is_ok(),
                        result == Err(RefreshError::InvalidGrant),
                    );
                    Some(WaitOn::Refresh(id))
                }
                None => None,
            }
        } else {
            None
        };
        (now, settled)
    };
    match settled {
        // Keys changed or the fetch failed: everyone parked on keys is decided again.
        Some(WaitOn::Keys) => {
            finish_waiters(vm, now, FETCH_TIMEOUT_S + 2, |w| w.on == WaitOn::Keys)
        }
        Some(on) => finish_waiters(vm, now, u64::MAX, |w| w.on == on),
        None => {}
    }
}

/// One tick: flush counters, sync and fetch keys, dispatch queued refreshes, expire lost ones,
/// pick the next tick period, and decide parked requests again.
pub(crate) fn on_tick<H: Host>(vm: &SharedVm<H>) {
    let (now, keys_settled) = {
        let Ok(mut guard) = vm.try_borrow_mut() else {
            return;
        };
        let st = &mut *guard;
        st.metrics.flush(&st.host, st.cache.take_counts());
        let now = st.host.now_s();
        let mut keys_settled = false;
        if let Some(jwks) = st.jwks.as_mut() {
            let fresh = jwks.sync(&st.host);
            if let Err(why) = jwks.tick(&st.host, now) {
                // A fetch that cannot leave is a failed fetch, and loud (an unknown cluster).
                st.metrics.jwks_fetch(&st.host, false);
                st.alarms.failed(Callout::Jwks, jwks.cluster(), &why, now);
            }
            keys_settled = fresh.is_some() || !jwks.in_flight();
            if let Some((keys, digest)) = fresh {
                st.install_keys(keys, digest);
            }
        }
        st.metrics
            .jwks_keys(&st.host, st.keys.as_ref().map_or(0, |k| k.len()));
        if let (Some(flights), Some(cfg)) = (st.flights.as_mut(), st.config.refresh.as_ref()) {
            // Failed dispatches and expired calls are settled in the flights' records; their
            // waiters learn it below like everyone else's.
            let (sent, undispatched) = flights.dispatch_queued(&st.host, cfg, now);
            let expired = flights.expire(&st.host, now, cfg);
            flights.sweep(&st.host, now, cfg.grace_s);
            for _ in 0..sent {
                st.metrics.refresh_dispatched(&st.host);
            }
            // A call the host never answered is a failed refresh like a timed-out one.
            for _ in &expired {
                st.metrics.refresh_result(&st.host, false, false);
            }
            for u in undispatched {
                st.metrics.refresh_result(&st.host, false, false);
                st.alarms.failed(Callout::Refresh, &u.cluster, &u.why, now);
            }
        }
        // Requests parked on another VM's refresh are polled on every tick.
        let fast = st
            .waiters
            .values()
            .any(|w| matches!(w.on, WaitOn::Refresh(_)))
            || st.flights.as_ref().is_some_and(|f| f.has_queued());
        st.host.set_tick_period(if fast { FAST_TICK } else { TICK });
        (now, keys_settled)
    };
    // Refresh waiters are decided again on every tick: that is how a request learns the
    // outcome of another VM's refresh (or takes over when that VM's lease died).
    finish_waiters(vm, now, FETCH_TIMEOUT_S + 2, |w| match w.on {
        WaitOn::Keys => keys_settled,
        WaitOn::Refresh(_) => true,
    });
}
