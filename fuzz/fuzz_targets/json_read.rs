//! The filter's JSON reader and writer (`edge_token_relay::json`) against serde_json.
//!
//! Invariants: a document is accepted exactly when serde_json accepts it (numbers at the very
//! edge of the float range aside: both round there); an accepted document holds the same
//! values (integers exactly, other numbers as floats to within rounding); what the writer
//! prints reads back as the same document; the strict reading accepts the same documents
//! except those repeating a name in one object, and then names the repeat.
#![no_main]

use edge_token_relay::json::{self, Value};
use libfuzzer_sys::fuzz_target;

fn same(ours: &Value, theirs: &serde_json::Value) -> bool {
    match (ours, theirs) {
        (Value::Null, serde_json::Value::Null) => true,
        (Value::Bool(a), serde_json::Value::Bool(b)) => a == b,
        (Value::String(a), serde_json::Value::String(b)) => a == b,
        (Value::Number(a), serde_json::Value::Number(b)) => {
            if b.is_f64() || a.is_f64() {
                let (x, y) = (a.as_f64(), b.as_f64().unwrap_or(f64::NAN));
                x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs())
            } else {
                a.as_u64() == b.as_u64() && a.as_i64() == b.as_i64()
            }
        }
        (Value::Array(a), serde_json::Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), serde_json::Value::Object(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let ours = json::from_slice(data);
    let theirs = serde_json::from_slice::<serde_json::Value>(data);
    let at_float_edge = |e: String| e.starts_with("number out of range");
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert!(same(a, b), "{a} / {b}"),
        (Err(e), Ok(_)) => assert!(at_float_edge(e.to_string()), "refused: {e}"),
        (Ok(_), Err(e)) => assert!(at_float_edge(e.to_string()), "accepted: {e}"),
        (Err(_), Err(_)) => {}
    }
    if let Ok(v) = &ours {
        let text = v.to_string();
        assert_eq!(json::from_slice(text.as_bytes()).as_ref(), Ok(v), "{text}");
        match json::from_slice_strict(data) {
            Ok(strict) => assert_eq!(&strict, v),
            Err(e) => assert!(e.duplicate().is_some(), "strict: {e}"),
        }
    }
});
