//! `check-config`: validates an edge-token-relay plugin configuration before it is deployed,
//! with the filter's own parser (`Config::parse`), so it accepts and refuses exactly what the
//! filter does and prints the same one-line errors.
//!
//! ```text
//! check-config [--root-id ID] FILE   FILE: plugin JSON, Envoy YAML/JSON, Istio WasmPlugin; - is stdin
//! check-config --schema              print the JSON Schema (schema/config.schema.json)
//! ```
//!
//! Secrets written as `{"env": "VAR"}` are read from this process's environment, as the filter
//! reads them from its VM's: a variable that is not set is refused with the filter's line.
//!
//! Exit status: 0 valid, 1 invalid (or no relay configuration found), 2 unreadable input or
//! bad usage.

// A host tool: the wasm build has neither the YAML parser nor the schema generator.
#[cfg(not(target_arch = "wasm32"))]
mod host;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    host::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}
