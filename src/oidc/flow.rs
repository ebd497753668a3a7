//! The login flow cookie: one per login, sealed with the session keys, carrying the PKCE
//! verifier, `state`, `nonce`, the page to return to and the creation time.

use crate::config::{LoginConfig, RefreshConfig};
use crate::http::cookie::{self, CookieAttrs, SameSite};
use crate::json::members::{self as json_members, Member};
use crate::json::{ObjectWriter, ToJson};
use crate::session;

/// Lifetime of a flow cookie (and of a login flow), seconds.
pub const FLOW_MAX_AGE_S: u64 = 600;
/// At login start, more flow cookies than this present are cleaned up ...
const FLOW_COOKIES_TOLERATED: usize = 3;
/// ... down to the newest this many (the new flow makes it one more).
const FLOW_COOKIES_KEPT: usize = 2;
/// Most flow cookies unsealed at one login start; further ones are cleared unread.
const MAX_FLOW_COOKIES_READ: usize = 16;
/// Most flow cookies cleared by one answer.
pub const MAX_FLOW_COOKIES_CLEARED: usize = 64;

/// The sealed content of a flow cookie. Member names differ from the session's (`rt`), so a
/// flow never opens as a session nor a session as a flow.
pub struct Flow {
    /// PKCE code verifier.
    pub v: String,
    /// `state`.
    pub s: String,
    /// `nonce`.
    pub n: String,
    /// The same-origin path to return to (already sanitized).
    pub r: String,
    /// Creation time, unix seconds.
    pub t: u64,
}

/// Members in declaration order.
impl ToJson for Flow {
    fn write_json(&self, out: &mut Vec<u8>) {
        ObjectWriter::new(out)
            .str("v", &self.v)
            .str("s", &self.s)
            .str("n", &self.n)
            .str("r", &self.r)
            .u64("t", self.t)
            .end();
    }
}

impl Flow {
    /// The plaintext of a flow cookie: one object with each member once, `t` an integer.
    pub fn read(json: &[u8]) -> Option<Flow> {
        let [v, s, n, r, t] = json_members::read(json, ["v", "s", "n", "r", "t"])?;
        let Some(Member::U64(t)) = t else {
            return None;
        };
        Some(Flow {
            v: v?.into_string()?,
            s: s?.into_string()?,
            n: n?.into_string()?,
            r: r?.into_string()?,
            t,
        })
    }
}

/// Why a flow cookie could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowProblem {
    Invalid,
    Expired,
}

pub fn open_flow(refresh: &RefreshConfig, value: &str, now: u64) -> Result<Flow, FlowProblem> {
    let (flow, _) = session::unseal_json(&refresh.session_keys, value, Flow::read)
        .map_err(|_| FlowProblem::Invalid)?;
    if now >= flow.t.saturating_add(FLOW_MAX_AGE_S) {
        return Err(FlowProblem::Expired);
    }
    Ok(flow)
}

/// Attributes of flow cookies: `Path=/`, `SameSite=Lax`, `Secure` as configured.
pub fn flow_attrs(attrs: &CookieAttrs) -> CookieAttrs {
    CookieAttrs {
        path: "/".to_owned(),
        same_site: SameSite::Lax,
        secure: attrs.secure,
    }
}

pub fn clear_flow_cookie(name: &str, attrs: &CookieAttrs) -> String {
    let attrs = flow_attrs(attrs);
    cookie::set_cookie(name, "", Some(0), &attrs, SameSite::Lax, true)
}

/// The flow cookies present, first occurrence of each name, in order.
pub fn flow_cookies<'h>(login: &LoginConfig, cookie_header: &'h str) -> Vec<(&'h str, &'h str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (name, value) in cookie::pairs(cookie_header) {
        if login.is_flow_cookie(name) && !out.iter().any(|(n, _)| *n == name) {
            out.push((name, value));
        }
    }
    out
}

/// Names of flow cookies to clear at a login start: unreadable and expired ones always; when
/// more than [`FLOW_COOKIES_TOLERATED`] are present, all but the newest [`FLOW_COOKIES_KEPT`].
pub fn stale_flow_cookies(
    login: &LoginConfig,
    refresh: &RefreshConfig,
    cookie_header: &str,
    now: u64,
) -> Vec<String> {
    let present = flow_cookies(login, cookie_header);
    // (name, creation second, position in the header): browsers list older cookies first, so
    // the position breaks ties between flows started in the same second.
    let mut readable: Vec<(&str, u64, usize)> = Vec::new();
    let mut stale: Vec<&str> = Vec::new();
    for (i, (name, value)) in present.iter().enumerate() {
        let flow = if i < MAX_FLOW_COOKIES_READ {
            open_flow(refresh, value, now).ok()
        } else {
            None
        };
        match flow {
            // Kept newest first as it grows (at most MAX_FLOW_COOKIES_READ entries).
            Some(f) => {
                let at = readable.partition_point(|&(_, t, j)| (t, j) > (f.t, i));
                readable.insert(at, (name, f.t, i));
            }
            None => stale.push(name),
        }
    }
    if present.len() > FLOW_COOKIES_TOLERATED {
        // The first FLOW_COOKIES_KEPT stay.
        stale.extend(readable.iter().skip(FLOW_COOKIES_KEPT).map(|(n, _, _)| *n));
    }
    stale
        .into_iter()
        .take(MAX_FLOW_COOKIES_CLEARED)
        .map(str::to_owned)
        .collect()
}
