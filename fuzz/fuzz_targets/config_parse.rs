//! `config::Config::parse`: on the raw input when it looks like JSON (starts with `{`, `[`,
//! `"` or whitespace), otherwise on a valid configuration (silent refresh, inline JWKS)
//! mutated by operations decoded from the input: remove a member, replace it with another
//! JSON value, or add an unknown one, at any depth.
#![no_main]

use edge_token_relay::config::Config;
use edge_token_relay_fuzz::{arbitrary::Unstructured, config_json, flag, pick, text};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    if matches!(
        data.first(),
        Some(b'{' | b'[' | b'"' | b' ' | b'\t' | b'\r' | b'\n')
    ) {
        parse(data);
        return;
    }
    let mut u = Unstructured::new(data);
    let u = &mut u;
    let mut config = config_json();
    for _ in 0..=pick(u, 4) {
        let mut pointers = Vec::new();
        collect(&config, String::new(), &mut pointers);
        let Some(pointer) = pointers.get(pick(u, pointers.len())).cloned() else {
            break;
        };
        let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", ""));
        let key = key.replace("~1", "/").replace("~0", "~");
        let new = value(u);
        match config.pointer_mut(parent) {
            Some(Value::Object(obj)) => match pick(u, 3) {
                0 => {
                    obj.remove(&key);
                }
                1 => {
                    obj.insert(key, new);
                }
                _ => {
                    obj.insert(text(u), new);
                }
            },
            Some(Value::Array(items)) => {
                let i: usize = key.parse().unwrap_or(0);
                match pick(u, 3) {
                    0 if i < items.len() => {
                        items.remove(i);
                    }
                    1 if i < items.len() => items[i] = new,
                    _ => items.push(new),
                }
            }
            _ => {}
        }
    }
    let text = if flag(u) {
        serde_json::to_vec_pretty(&config)
    } else {
        serde_json::to_vec(&config)
    };
    if let Ok(bytes) = text {
        parse(&bytes);
    }
});

fn parse(bytes: &[u8]) {
    match Config::parse(bytes) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Every JSON pointer in `v` (members and array elements, at any depth).
fn collect(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(obj) => {
            for (k, child) in obj {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                collect(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                collect(child, p, out);
            }
        }
        _ => {}
    }
}

fn value(u: &mut Unstructured<'_>) -> Value {
    match pick(u, 12) {
        0 => json!(text(u)),
        1 => json!(u.arbitrary::<u64>().unwrap_or(0)),
        2 => json!(u.arbitrary::<i64>().unwrap_or(0)),
        3 => json!(u.arbitrary::<f64>().unwrap_or(0.0)),
        4 => Value::Null,
        5 => json!(flag(u)),
        6 => json!([text(u), text(u)]),
        7 => json!({}),
        8 => json!([]),
        9 => json!({ text(u): text(u) }),
        10 => json!(["RS256", "ES256", "EdDSA", "none"][pick(u, 4)]),
        _ => json!(["/", "/api/", "__Host-x", "Strict", "basic", "post", "none", ""][pick(u, 8)]),
    }
}
