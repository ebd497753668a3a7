//! The host-call floor of the relay's cache hit: configuration `p` of the benchmark.
//!
//! Makes exactly the host calls the relay (`src/filter/http.rs`, `src/filter/vm.rs`) makes for
//! a cache hit on the benchmark's request, in the same order and with values of the same sizes,
//! and no logic: the values to write come from the plugin configuration, prepared once by the
//! runner (two lines: the `authorization` value, then the forwarded `x-user-sub` value).
//!
//! Request headers:  1 read of the whole header map, 2 the clock, 3 set `authorization`,
//! 4 remove `cookie` (the request carries only relay cookies), 5 set `x-user-sub`,
//! 6 the reason in filter state (`cache_hit`).
//! Response headers: 7 read of the whole header map, 8 set `cache-control: private`,
//! 9 set `vary: Cookie`.
//!
//! Both header maps are read as the relay reads them: one `proxy_get_header_map_pairs` call,
//! the host's buffer kept as it is (the SDK's `get_map_bytes` would also copy every header into
//! new strings, work the relay does not do).
//!
//! For the per-step table in bench/README.md, a build can repeat one step: the build-time
//! variable `BENCH_PROBE_REPEAT=<step>=<n>` (step names as in [`Step`]) makes that step run
//! `n` times per request; the cost of the step is the difference over (n - 1).
//!
//! `BENCH_PROBE_WHOLE_MAP=1` (build time) measures the ABI's other way to write request headers:
//! steps 3 to 5 become one `proxy_set_header_map_pairs` call that replaces the whole map with
//! the one read in step 1, without `cookie`, plus `authorization` and `x-user-sub`.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(ProbeRoot { plan: Rc::new(Plan::default()) }));
}}

/// The steps, in the order the relay makes them.
#[derive(Clone, Copy)]
enum Step {
    ReadHeaders,
    Clock,
    SetAuthorization,
    RemoveCookie,
    SetClaim,
    SetReason,
    ReadResponseHeaders,
    SetCacheControl,
    SetVary,
}

/// `read_cache_control` and `add_vary` are the names of steps 7 and 9 before they matched the
/// relay's calls (a single-value read, an add); they still select those steps.
const STEP_NAMES: [(&str, Step); 11] = [
    ("read_headers", Step::ReadHeaders),
    ("clock", Step::Clock),
    ("set_authorization", Step::SetAuthorization),
    ("remove_cookie", Step::RemoveCookie),
    ("set_claim", Step::SetClaim),
    ("set_reason", Step::SetReason),
    ("read_response_headers", Step::ReadResponseHeaders),
    ("set_cache_control", Step::SetCacheControl),
    ("set_vary", Step::SetVary),
    ("read_cache_control", Step::ReadResponseHeaders),
    ("add_vary", Step::SetVary),
];

/// What every stream does, fixed at configuration time.
#[derive(Default)]
struct Plan {
    authorization: String,
    claim: String,
    /// How often each step runs per request (index: `Step as usize`).
    repeat: [u32; 9],
}

impl Plan {
    fn times(&self, step: Step) -> u32 {
        self.repeat.get(step as usize).copied().unwrap_or(1)
    }
}

// The relay's own in-place reader (one copy of its `unsafe` call), so both make the same call.
#[path = "../../../src/filter/header_map.rs"]
mod header_map;

fn repeat_from_build() -> [u32; 9] {
    let mut repeat = [1; 9];
    if let Some(spec) = option_env!("BENCH_PROBE_REPEAT") {
        if let Some((name, n)) = spec.split_once('=') {
            let step = STEP_NAMES.iter().find(|(s, _)| *s == name).map(|(_, s)| *s);
            if let (Some(step), Ok(n)) = (step, n.parse::<u32>()) {
                if let Some(slot) = repeat.get_mut(step as usize) {
                    *slot = n;
                }
            }
        }
    }
    repeat
}

struct ProbeRoot {
    plan: Rc<Plan>,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let text = String::from_utf8(config).unwrap_or_default();
        let mut lines = text.lines();
        self.plan = Rc::new(Plan {
            authorization: lines.next().unwrap_or("").to_string(),
            claim: lines.next().unwrap_or("").to_string(),
            repeat: repeat_from_build(),
        });
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeHttp {
            plan: Rc::clone(&self.plan),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ProbeHttp {
    plan: Rc<Plan>,
}

impl Context for ProbeHttp {}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let p = &*self.plan;
        let mut map = None;
        for _ in 0..p.times(Step::ReadHeaders) {
            map = std::hint::black_box(header_map::read(MapType::HttpRequestHeaders));
        }
        for _ in 0..p.times(Step::Clock) {
            let _ = hostcalls::get_current_time();
        }
        if option_env!("BENCH_PROBE_WHOLE_MAP").is_some() {
            let map = map.unwrap_or_default();
            let mut pairs: Vec<(&str, &[u8])> =
                pairs(&map).filter(|(name, _)| *name != "cookie").collect();
            pairs.push(("authorization", p.authorization.as_bytes()));
            pairs.push(("x-user-sub", p.claim.as_bytes()));
            let _ = hostcalls::set_map_bytes(MapType::HttpRequestHeaders, pairs);
            for _ in 0..p.times(Step::SetReason) {
                let _ =
                    hostcalls::set_property(vec!["edge_token_relay.reason"], Some(b"cache_hit"));
            }
            return Action::Continue;
        }
        for _ in 0..p.times(Step::SetAuthorization) {
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                "authorization",
                Some(&p.authorization),
            );
        }
        for _ in 0..p.times(Step::RemoveCookie) {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "cookie", None);
        }
        for _ in 0..p.times(Step::SetClaim) {
            let _ =
                hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-user-sub", Some(&p.claim));
        }
        for _ in 0..p.times(Step::SetReason) {
            let _ = hostcalls::set_property(vec!["edge_token_relay.reason"], Some(b"cache_hit"));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let p = &*self.plan;
        for _ in 0..p.times(Step::ReadResponseHeaders) {
            std::hint::black_box(header_map::read(MapType::HttpResponseHeaders));
        }
        for _ in 0..p.times(Step::SetCacheControl) {
            let _ = hostcalls::set_map_value(
                MapType::HttpResponseHeaders,
                "cache-control",
                Some("private"),
            );
        }
        for _ in 0..p.times(Step::SetVary) {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, "vary", Some("Cookie"));
        }
        Action::Continue
    }
}

/// The (name, value) pairs of a header map in the proxy-wasm wire format: a count, a (name
/// length, value length) pair per header, then each name and value followed by a NUL byte.
fn pairs(map: &[u8]) -> impl Iterator<Item = (&str, &[u8])> {
    let word = |at: usize| {
        map.get(at..at.saturating_add(4))
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, |b| u32::from_le_bytes(b) as usize)
    };
    let count = word(0);
    let mut at = 4 + 8 * count;
    (0..count).map(move |i| {
        let (name_len, value_len) = (word(4 + 8 * i), word(8 + 8 * i));
        let name = map.get(at..at + name_len).unwrap_or_default();
        at += name_len + 1;
        let value = map.get(at..at + value_len).unwrap_or_default();
        at += value_len + 1;
        (std::str::from_utf8(name).unwrap_or_default(), value)
    })
}
