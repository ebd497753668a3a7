//! edge-token-relay: an Envoy HTTP filter (proxy-wasm) that keeps browser tokens in HttpOnly
//! cookies and relays them to the upstream as `Authorization: Bearer`.
//!
//! Everything but `filter/` is pure logic with no proxy-wasm dependency: time, randomness and
//! host calls are parameters. `filter/` is the thin shell that talks to Envoy.

pub mod cache_policy;
pub mod config;
pub mod cookie;
pub mod csrf;
pub mod decision;
pub mod header_budget;
pub mod jwks;
pub mod login;
pub mod path;
pub mod refresh;
pub mod reply;
pub mod session;
pub mod token;
pub mod token_cache;

#[cfg(test)]
mod testkit;

// Compiled on every target so host clippy and tests check the shell too; only the wasm build
// exports the proxy-wasm entry point.
mod filter;
