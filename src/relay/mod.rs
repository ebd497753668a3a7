//! The relay proper: what happens to a protected request. `decide` says forward, answer, wait
//! for keys, or refresh; `complete` turns a refresh outcome into the request's fate; `flight`
//! holds the single-flight records that make a refresh happen once; `navigation` turns a
//! refused page load into a login.

pub mod complete;
pub mod decide;
pub mod flight;
pub(crate) mod navigation;

pub use complete::{complete_refresh, upstream_rotation, Completed};
pub use decide::{
    decide, forged_claim_headers, passed_cookie, unknown_kid_reply, Forward, RefreshNeed, Step,
};
pub use flight::{RefreshId, RefreshOutcome};
pub(crate) use navigation::navigation_redirect;
