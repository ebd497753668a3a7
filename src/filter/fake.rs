//! An in-memory host for the shell's unit tests: one shared-data store with Envoy's CAS rules,
//! a settable clock, recorded callouts, header writes, replies, resumes and metrics. Clones
//! share state, so two `Vm`s holding clones behave like two worker VMs of one Envoy.
#![allow(clippy::disallowed_methods)] // RefCell borrows in test code only.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::types::MetricType;

use super::host::{Host, SetError};
use crate::http::{encode_wire, Reply};
use crate::random::Random;

/// A callout the shell dispatched.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) token: u32,
    pub(crate) cluster: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

#[derive(Default)]
pub(crate) struct State {
    now_ms: Cell<u64>,
    /// key -> (value, cas)
    shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    /// Runs just before the next CAS-protected write, as another worker writing in between.
    interleave: RefCell<Option<Box<dyn FnOnce()>>>,
    pub(crate) calls: RefCell<Vec<Call>>,
    next_token: Cell<u32>,
    pub(crate) refuse_dispatch: Cell<bool>,
    /// Clusters Envoy does not know: a dispatch to one fails as Envoy's does (BadArgument).
    pub(crate) unknown_clusters: RefCell<BTreeSet<String>>,
    effective: Cell<u32>,
    pub(crate) gone: RefCell<BTreeSet<u32>>,
    /// (context, header, value) writes to request headers.
    pub(crate) request_headers: RefCell<Vec<(u32, String, Option<String>)>>,
    pub(crate) replies: RefCell<Vec<(u32, Reply)>>,
    pub(crate) resumed: RefCell<Vec<u32>>,
    metric_names: RefCell<Vec<(String, MetricType)>>,
    pub(crate) metrics: RefCell<BTreeMap<String, i64>>,
    pub(crate) tick: Cell<Option<Duration>>,
    /// (context, reason) filter-state writes.
    pub(crate) reasons: RefCell<Vec<(u32, String)>>,
    /// The current response's headers, as the upstream sent them and the filter changed them.
    response: RefCell<Vec<(String, String)>>,
}

#[derive(Clone, Default)]
pub(crate) struct Fake(pub(crate) Rc<State>);

impl Fake {
    pub(crate) fn at(now_s: u64) -> Fake {
        let f = Fake::default();
        f.set_now(now_s);
        f
    }

    pub(crate) fn set_now(&self, now_s: u64) {
        self.0.now_ms.set(now_s * 1000);
    }

    pub(crate) fn interleave(&self, f: impl FnOnce() + 'static) {
        *self.0.interleave.borrow_mut() = Some(Box::new(f));
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.0.calls.borrow().clone()
    }

    pub(crate) fn metric(&self, name: &str) -> i64 {
        self.0.metrics.borrow().get(name).copied().unwrap_or(0)
    }

    /// The replies sent to stream `ctx`: (status, reason).
    pub(crate) fn replies_to(&self, ctx: u32) -> Vec<(u32, &'static str)> {
        self.0
            .replies
            .borrow()
            .iter()
            .filter(|(c, _)| *c == ctx)
            .map(|(_, r)| (r.status, r.reason))
            .collect()
    }

    /// The reasons recorded for stream `ctx`, in order.
    pub(crate) fn reasons_of(&self, ctx: u32) -> Vec<String> {
        self.0
            .reasons
            .borrow()
            .iter()
            .filter(|(c, _)| *c == ctx)
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub(crate) fn resumed(&self) -> Vec<u32> {
        self.0.resumed.borrow().clone()
    }

    /// The last value written to request header `name` of stream `ctx`.
    pub(crate) fn request_header(&self, ctx: u32, name: &str) -> Option<String> {
        self.0
            .request_headers
            .borrow()
            .iter()
            .rev()
            .find(|(c, n, _)| *c == ctx && n == name)
            .and_then(|(_, _, v)| v.clone())
    }

    /// The bytes stored under `key` (empty when absent).
    pub(crate) fn shared_value(&self, key: &str) -> Vec<u8> {
        self.0
            .shared
            .borrow()
            .get(key)
            .map(|(v, _)| v.clone())
            .unwrap_or_default()
    }

    pub(crate) fn shared_keys(&self, prefix: &str) -> usize {
        self.0
            .shared
            .borrow()
            .iter()
            .filter(|(k, (v, _))| k.starts_with(prefix) && !v.is_empty())
            .count()
    }
}

impl Host for Fake {
    fn now_ms(&self) -> u64 {
        self.0.now_ms.get()
    }

    fn shared_get(&self, key: &str) -> Option<(Option<Vec<u8>>, Option<u32>)> {
        Some(match self.0.shared.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        if cas.is_some() {
            let other = self.0.interleave.borrow_mut().take();
            if let Some(other) = other {
                other();
            }
        }
        let mut shared = self.0.shared.borrow_mut();
        // Envoy: a CAS is checked only against a key that exists.
        if let (Some(want), Some((_, have))) = (cas, shared.get(key)) {
            if want != *have {
                return Err(SetError::CasMismatch);
            }
        }
        let next = self.0.next_cas.get() + 1;
        self.0.next_cas.set(next);
        shared.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        _timeout: Duration,
    ) -> Result<u32, String> {
        if self.0.refuse_dispatch.get() || self.0.unknown_clusters.borrow().contains(cluster) {
            return Err("BadArgument".to_string());
        }
        let token = self.0.next_token.get() + 1;
        self.0.next_token.set(token);
        self.0.calls.borrow_mut().push(Call {
            token,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.unwrap_or_default().to_vec(),
        });
        Ok(token)
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        self.0.request_headers.borrow_mut().push((
            self.0.effective.get(),
            name.to_string(),
            value.map(str::to_string),
        ));
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Option<u32> {
        let mut names = self.0.metric_names.borrow_mut();
        names.push((name.to_string(), kind));
        u32::try_from(names.len() - 1).ok()
    }

    fn increment_metric(&self, id: u32, by: i64) {
        let name = self.0.metric_names.borrow()[id as usize].0.clone();
        *self.0.metrics.borrow_mut().entry(name).or_default() += by;
    }

    /// A gauge takes the value (as Envoy's does); a histogram counts its samples.
    fn record_metric(&self, id: u32, value: u64) {
        let (name, kind) = self.0.metric_names.borrow()[id as usize].clone();
        if kind == MetricType::Gauge {
            self.0
                .metrics
                .borrow_mut()
                .insert(name, i64::try_from(value).unwrap_or(i64::MAX));
        } else {
            self.increment_metric(id, 1);
        }
    }

    fn set_tick_period(&self, period: Duration) {
        self.0.tick.set(Some(period));
    }

    fn set_effective_context(&self, id: u32) -> bool {
        self.0.effective.set(id);
        !self.0.gone.borrow().contains(&id)
    }

    fn resume_request(&self) {
        self.0.resumed.borrow_mut().push(self.0.effective.get());
    }

    fn send_reply(&self, reply: &Reply) {
        self.0
            .replies
            .borrow_mut()
            .push((self.0.effective.get(), reply.clone()));
    }

    fn random(&self) -> Option<Random> {
        Some(Random::fixed(3))
    }

    fn set_reason(&self, reason: &str) {
        self.0
            .reasons
            .borrow_mut()
            .push((self.0.effective.get(), reason.to_string()));
    }

    fn response_headers(&self) -> Vec<u8> {
        let response = self.0.response.borrow();
        encode_wire(response.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.response_lines(name)
            .into_iter()
            .next()
            .map(String::into_bytes)
    }

    /// Envoy's replace: every line of `name` goes; the new one (if any) comes last.
    fn set_response_header(&self, name: &str, value: Option<&str>) {
        let mut response = self.0.response.borrow_mut();
        response.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            response.push((name.to_string(), v.to_string()));
        }
    }

    fn add_response_header(&self, name: &str, value: &str) {
        self.0
            .response
            .borrow_mut()
            .push((name.to_string(), value.to_string()));
    }
}

impl Fake {
    pub(crate) fn tick_period(&self) -> Option<Duration> {
        self.0.tick.get()
    }

    /// Makes `headers` the current response (what the upstream sent).
    pub(crate) fn upstream_responds(&self, headers: &[(&str, &str)]) {
        *self.0.response.borrow_mut() = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
    }

    /// The values of response header `name`, in order, as the filter left them.
    pub(crate) fn response_lines(&self, name: &str) -> Vec<String> {
        self.0
            .response
            .borrow()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}
