//! HTTP vocabulary with no knowledge of tokens or configuration: the request view, hosts, cookies,
//! URL codecs, content negotiation, path matching, the header budget, cache policy and the
//! relay's own replies. Imports only `bytes` and `json` from the crate.

pub mod authority;
pub mod cache_policy;
pub mod cookie;
pub mod header_budget;
pub(crate) mod negotiate;
pub mod path;
pub(crate) mod reply;
pub(crate) mod request;
pub mod url;

pub use reply::Reply;
pub use request::{encode_wire, HeaderIter, NameSet, RequestView, WireIter};
