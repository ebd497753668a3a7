//! Writing JSON: strings escaped as serde_json escapes them, documents compact with members in
//! name order.

use std::fmt;

use super::scan::plain_len;
use super::value::Value;

/// Appends `s` as a JSON string: `"` and `\` escaped, and the C0 controls (`\n`-style where
/// JSON has a short form, `\u00XX` otherwise); everything else as it is.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut rest = s.as_bytes();
    // Runs that need no escape are copied whole.
    loop {
        let n = plain_len(rest);
        let Some((run, tail)) = rest.split_at_checked(n) else {
            break;
        };
        out.extend_from_slice(run);
        let Some((&b, tail)) = tail.split_first() else {
            rest = tail;
            break;
        };
        rest = tail;
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'));
                out.push(HEX.get(usize::from(b & 0xf)).copied().unwrap_or(b'0'));
                continue;
            }
        };
        out.push(b'\\');
        out.push(short);
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// One JSON object as text, its members written by `members`.
pub fn object(members: impl FnOnce(&mut ObjectWriter<'_>)) -> String {
    let mut out = Vec::new();
    let mut o = ObjectWriter::new(&mut out);
    members(&mut o);
    o.end();
    // The writer writes only UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// A value the filter writes as JSON (the sealed payloads).
pub trait ToJson {
    fn write_json(&self, out: &mut Vec<u8>);
}

/// Writes one JSON object member by member: `{"a":"x","b":1}`.
pub struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> ObjectWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> ObjectWriter<'a> {
        out.push(b'{');
        ObjectWriter { out, empty: true }
    }

    /// The member's name and colon; the caller writes the value.
    pub fn name(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        write_str(self.out, name);
        self.out.push(b':');
        self.out
    }

    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        let out = self.name(name);
        write_str(out, value);
        self
    }

    pub fn u64(&mut self, name: &str, value: u64) -> &mut Self {
        let out = self.name(name);
        out.extend_from_slice(value.to_string().as_bytes());
        self
    }

    /// A string member, left out when `None`.
    pub fn opt_str(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.str(name, v);
        }
        self
    }

    pub fn end(&mut self) {
        self.out.push(b'}');
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut o = ObjectWriter::new(out);
            for (k, v) in map {
                write_value(o.name(k), v);
            }
            o.end();
        }
    }
}

/// Compact JSON text, members in name order.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        write_value(&mut out, self);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let all: String = (0u8..=0x7f).map(char::from).chain("é€😀".chars()).collect();
        for s in [all.as_str(), "", "plain", "a\"b\\c", "\u{2028}"] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn documents_print_as_serde_json_prints_them() {
        let v =
            serde_json::json!({"b": [1, -2, "x\n", null, true, {}], "a": {"z": false, "y": []}});
        assert_eq!(Value::from(v.clone()).to_string(), v.to_string());
    }

    #[test]
    fn objects_member_by_member() {
        let mut out = Vec::new();
        ObjectWriter::new(&mut out)
            .str("a", "x\"")
            .u64("n", 7)
            .opt_str("skip", None)
            .opt_str("c", Some("y"))
            .end();
        assert_eq!(out, br#"{"a":"x\"","n":7,"c":"y"}"#);
        let text = object(|o| {
            o.str("a", "x\"").u64("n", 7);
        });
        assert_eq!(text, r#"{"a":"x\"","n":7}"#);
        assert_eq!(object(|_| {}), "{}");
    }
}
