//! edge-token-relay: an Envoy HTTP filter (proxy-wasm) that keeps browser tokens in HttpOnly
//! cookies and relays them to the upstream as `Authorization: Bearer`.
//!
//! Everything but `filter/` is pure logic with no proxy-wasm dependency: time, randomness and
//! host calls are parameters. `filter/` is the thin shell that talks to Envoy.

// The README's code map lists the modules lowest first: each imports only from those above it.
mod bytes;
pub mod config;
pub mod csrf;
pub mod http;
pub mod idp;
pub mod jar;
pub mod json;
pub mod jwt;
pub mod oidc;
pub mod random;
pub mod relay;
pub mod session;

#[cfg(test)]
mod testkit;

// Compiled on every target so host clippy and tests check the shell too; only the wasm build
// exports the proxy-wasm entry point.
mod filter;
