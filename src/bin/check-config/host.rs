//! Finding the relay's plugin configurations in a file and checking each with `Config::parse`.

use std::io::{Read, Write};
use std::process::ExitCode;

use edge_token_relay::config::Config;
use serde::Deserialize;
use serde_json::Value;

/// The `root_id` / `vm_id` the shipped examples give the relay (Istio: `pluginName`).
const RELAY_ID: &str = "edge_token_relay";
const WASM_FILTER_NAME: &str = "envoy.filters.http.wasm";
const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// Top-level keys of an Envoy bootstrap or a Kubernetes object: such a document is searched
/// for the relay, never read as a plugin configuration itself.
const DEPLOYMENT_KEYS: &[&str] = &[
    "static_resources",
    "dynamic_resources",
    "admin",
    "node",
    "apiVersion",
    "kind",
];

const USAGE: &str = "usage: check-config [--root-id ID] FILE   (FILE: plugin configuration JSON, \
Envoy YAML/JSON or Istio WasmPlugin YAML; - reads stdin)\n       check-config --schema\n\
Secrets written as {\"env\": \"VAR\"} are read from this process's environment.";

/// One plugin configuration found in the input.
struct Found {
    /// Where it is, e.g. `static_resources.listeners[0]...http_filters[0]`.
    place: String,
    /// The bytes the filter would receive, or why Envoy could not hand it any.
    bytes: Result<Vec<u8>, String>,
}

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut root_id = RELAY_ID.to_owned();
    let mut file = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--schema" => return print_schema(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--root-id" => match it.next() {
                Some(id) => root_id = id,
                None => return usage(),
            },
            _ if file.is_none() && (arg == "-" || !arg.starts_with('-')) => file = Some(arg),
            _ => return usage(),
        }
    }
    let Some(file) = file else {
        return usage();
    };
    let (name, input) = match read(&file) {
        Ok(input) => input,
        Err(e) => {
            eprintln!("check-config: {e}");
            return ExitCode::from(2);
        }
    };
    let found = match find(&input, &root_id) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(1);
        }
    };
    let mut failed = false;
    for f in &found {
        let result = match &f.bytes {
            // `{"env": ...}` secrets are read from this process's environment.
            Ok(bytes) => Config::parse_with_env(bytes, &|name| std::env::var(name).ok())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        if let Err(line) = result {
            // The filter's own log line, after where it was found.
            eprintln!("{name}: {}: edge-token-relay: {line}", f.place);
            failed = true;
        }
    }
    if failed {
        return ExitCode::from(1);
    }
    let places: Vec<&str> = found.iter().map(|f| f.place.as_str()).collect();
    println!(
        "ok: {name}: {} edge-token-relay configuration{} valid: {}",
        found.len(),
        if found.len() == 1 { "" } else { "s" },
        places.join("; ")
    );
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn print_schema() -> ExitCode {
    match serde_json::to_string_pretty(&Config::json_schema()) {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{text}").is_ok() {
                return ExitCode::SUCCESS;
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("check-config: {e}");
            ExitCode::from(2)
        }
    }
}

/// The input's display name and bytes.
fn read(file: &str) -> Result<(String, Vec<u8>), String> {
    let mut input = Vec::new();
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut input)
            .map_err(|e| format!("<stdin>: {e}"))?;
        return Ok(("<stdin>".to_owned(), input));
    }
    input = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    Ok((file.to_owned(), input))
}

/// The plugin configurations in `input`: the input itself when it is a plugin configuration,
/// else every relay filter of an Envoy configuration or every relay WasmPlugin.
fn find(input: &[u8], root_id: &str) -> Result<Vec<Found>, String> {
    let starts_like_json = input
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if starts_like_json {
        match serde_json::from_slice::<Value>(input) {
            Ok(doc) if is_deployment(&doc) => return search(vec![doc], root_id),
            // A plugin configuration, broken JSON included: the filter reads these very bytes,
            // so its parser gives the same error it would log.
            _ => {
                return Ok(vec![Found {
                    place: "plugin configuration".to_owned(),
                    bytes: Ok(input.to_vec()),
                }])
            }
        }
    }
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_slice(input) {
        let not_yaml = |e: serde_norway::Error| {
            format!(
                "neither a JSON plugin configuration nor YAML: {}",
                one_line(&e.to_string())
            )
        };
        let mut value = serde_norway::Value::deserialize(doc).map_err(not_yaml)?;
        // Blocks shared with `<<: *anchor` are read merged, as YAML tools that support them do.
        value.apply_merge().map_err(not_yaml)?;
        let value = serde_json::to_value(value)
            .map_err(|e| format!("YAML that has no JSON form: {}", one_line(&e.to_string())))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    search(docs, root_id)
}

fn is_deployment(doc: &Value) -> bool {
    doc.as_object()
        .is_some_and(|o| DEPLOYMENT_KEYS.iter().any(|k| o.contains_key(*k)))
}

/// Every relay configuration in the documents; a lone document that is neither an Envoy nor
/// a Kubernetes one is a plugin configuration written as YAML.
fn search(docs: Vec<Value>, root_id: &str) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    let several = docs.len() > 1;
    for (i, doc) in docs.iter().enumerate() {
        let prefix = if several {
            format!("document {}: ", i + 1)
        } else {
            String::new()
        };
        walk(doc, &mut String::new(), root_id, &prefix, &mut found);
    }
    if found.is_empty() {
        if let [doc] = docs.as_slice() {
            if doc.is_object() && !is_deployment(doc) {
                return Ok(vec![Found {
                    place: "plugin configuration".to_owned(),
                    bytes: serde_json::to_vec(doc).map_err(|e| e.to_string()),
                }]);
            }
        }
        return Err(format!(
            "no edge-token-relay configuration found: expected a plugin configuration (JSON), an \
             Envoy configuration with an {WASM_FILTER_NAME} filter whose root_id or vm_id is \
             {root_id:?}, or an Istio WasmPlugin whose pluginName is {root_id:?}"
        ));
    }
    Ok(found)
}

/// An Istio WasmPlugin: Istio hands `spec.pluginConfig` to the filter as JSON.
fn wasm_plugin(doc: &Value, root_id: &str, prefix: &str) -> Option<Found> {
    let spec = doc.get("spec")?;
    if spec.get("pluginName").and_then(Value::as_str) != Some(root_id) {
        return None;
    }
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    let bytes = match spec.get("pluginConfig") {
        // Without pluginConfig the filter gets an empty configuration.
        None => Ok(Vec::new()),
        Some(config) => serde_json::to_vec(config).map_err(|e| e.to_string()),
    };
    Some(Found {
        place: format!("{prefix}WasmPlugin {name:?} spec.pluginConfig"),
        bytes,
    })
}

/// Walks an Envoy configuration for Wasm HTTP filters running the relay, and Kubernetes
/// documents (a `List` too) for the relay's WasmPlugins.
fn walk(v: &Value, path: &mut String, root_id: &str, prefix: &str, found: &mut Vec<Found>) {
    match v {
        Value::Object(o) => {
            if o.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
                found.extend(wasm_plugin(v, root_id, prefix));
                return;
            }
            let typed = o.get("typed_config");
            let is_wasm = o.get("name").and_then(Value::as_str) == Some(WASM_FILTER_NAME)
                || typed.and_then(|t| t.get("@type")).and_then(Value::as_str)
                    == Some(WASM_FILTER_TYPE);
            if is_wasm {
                if let Some(plugin) = typed.and_then(|t| t.get("config")) {
                    if runs_relay(plugin, root_id) {
                        found.push(Found {
                            place: format!("{prefix}{path}"),
                            bytes: configuration(plugin),
                        });
                    }
                }
                return;
            }
            for (k, child) in o {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk(child, path, root_id, prefix, found);
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(child, path, root_id, prefix, found);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn runs_relay(plugin: &Value, root_id: &str) -> bool {
    plugin.get("root_id").and_then(Value::as_str) == Some(root_id)
        || plugin.pointer("/vm_config/vm_id").and_then(Value::as_str) == Some(root_id)
}

/// What Envoy hands the filter: the string of a `google.protobuf.StringValue`, or nothing.
fn configuration(plugin: &Value) -> Result<Vec<u8>, String> {
    let Some(conf) = plugin.get("configuration") else {
        return Ok(Vec::new());
    };
    let kind = conf.get("@type").and_then(Value::as_str).unwrap_or("");
    if kind != STRING_VALUE_TYPE {
        return Err(format!(
            "configuration: expected a google.protobuf.StringValue holding the JSON plugin \
             configuration, found {kind:?}"
        ));
    }
    match conf.get("value") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(_) => {
            Err("configuration.value: must be a string (the JSON plugin configuration)".to_owned())
        }
    }
}

/// YAML errors can quote the input: keep them on one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
