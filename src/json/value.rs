//! A JSON document: [`Value`], its numbers and its objects.

use std::fmt;

/// One JSON value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Map),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_string(&self) -> bool {
        matches!(self, Value::String(_))
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// An integer that fits in an `i64`.
    pub fn is_i64(&self) -> bool {
        matches!(self, Value::Number(n) if n.as_i64().is_some())
    }

    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The member `name` of an object (`None` for any other value).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.as_object()?.get(name)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Number(Number(N::PosInt(n)))
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

/// A JSON number: an integer when it is one that fits in 64 bits, otherwise the text as written
/// (read as a float only where a caller asks for one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Number(N);

#[derive(Clone, Debug, PartialEq, Eq)]
enum N {
    PosInt(u64),
    /// Always below zero.
    NegInt(i64),
    /// Valid JSON number text with a fraction or an exponent, `-0`, or an integer too large for
    /// the two above; its magnitude fits in an `f64` (the reader refuses the rest).
    Other(Box<str>),
}

impl Number {
    /// From number text the reader has already checked against the JSON grammar.
    pub(super) fn from_checked_text(text: &str) -> Number {
        let integer = !text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'));
        if integer {
            if let Some(digits) = text.strip_prefix('-') {
                if let Some(n) = digits
                    .parse::<u64>()
                    .ok()
                    .and_then(|m| 0i64.checked_sub_unsigned(m))
                    .filter(|n| *n < 0)
                {
                    return Number(N::NegInt(n));
                }
            } else if let Ok(n) = text.parse::<u64>() {
                return Number(N::PosInt(n));
            }
        }
        Number(N::Other(text.into()))
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self.0 {
            N::PosInt(n) => Some(n),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self.0 {
            N::PosInt(n) => i64::try_from(n).ok(),
            N::NegInt(n) => Some(n),
            N::Other(_) => None,
        }
    }

    /// Neither an `i64` nor a `u64`: written with a fraction or an exponent, or too large.
    pub fn is_f64(&self) -> bool {
        matches!(self.0, N::Other(_))
    }

    /// The value as a float, to within a few units in the last place (as serde_json's default
    /// reading): enough to floor a timestamp or tell an overflow.
    #[allow(clippy::cast_precision_loss)]
    pub fn as_f64(&self) -> f64 {
        match &self.0 {
            N::PosInt(n) => *n as f64,
            N::NegInt(n) => *n as f64,
            N::Other(text) => text_to_f64(text),
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            N::PosInt(n) => fmt::Display::fmt(n, f),
            N::NegInt(n) => fmt::Display::fmt(n, f),
            N::Other(text) => f.write_str(text),
        }
    }
}

/// Checked JSON number text as a float: the first 19 significant digits times a power of ten.
#[allow(clippy::cast_precision_loss)]
fn text_to_f64(text: &str) -> f64 {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa_text, exponent_text) = match body.find(['e', 'E']) {
        Some(at) => body.split_at(at),
        None => (body, ""),
    };
    let mut significand: u64 = 0;
    let mut exponent: i64 = 0;
    let mut seen_point = false;
    for b in mantissa_text.bytes() {
        if b == b'.' {
            seen_point = true;
            continue;
        }
        let digit = u64::from(b.wrapping_sub(b'0'));
        match significand
            .checked_mul(10)
            .and_then(|s| s.checked_add(digit))
        {
            Some(s) if s < 10_000_000_000_000_000_000 => {
                significand = s;
                if seen_point {
                    exponent -= 1;
                }
            }
            // Further digits are below the float's precision; those before the point still
            // scale the value.
            _ => {
                if !seen_point {
                    exponent += 1;
                }
            }
        }
    }
    if let Some(e) = exponent_text.get(1..) {
        let e = e.strip_prefix('+').unwrap_or(e);
        let (sign, digits) = match e.strip_prefix('-') {
            Some(d) => (-1, d),
            None => (1, e),
        };
        // Saturating: anything past a few hundred is zero or infinity anyway.
        let value = digits.bytes().fold(0i64, |acc, b| {
            acc.saturating_mul(10)
                .saturating_add(i64::from(b.wrapping_sub(b'0')))
                .min(100_000)
        });
        exponent += sign * value;
    }
    let mut f = significand as f64;
    if significand != 0 {
        f = scale(f, exponent);
    }
    if negative {
        -f
    } else {
        f
    }
}

/// `f` × 10^`exponent`, dividing for negative exponents (10^-k is not exact in binary).
fn scale(f: f64, exponent: i64) -> f64 {
    let step = |f: f64, e: i64| {
        let e = i32::try_from(e.clamp(-300, 300)).unwrap_or(0);
        if e >= 0 {
            f * 10f64.powi(e)
        } else {
            f / 10f64.powi(-e)
        }
    };
    let mut f = f;
    let mut left = exponent;
    // At most a few steps: the exponent is capped at 100,000 and each step is up to 300.
    while left != 0 && f != 0.0 && f.is_finite() {
        let e = left.clamp(-300, 300);
        f = step(f, e);
        left -= e;
    }
    f
}

/// A JSON object: its members sorted by name, each name once (a repeated name keeps the last
/// value, as serde_json's map does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Map(Vec<(String, Value)>);

type Pair = (String, Value);

/// Borrowed members in name order.
pub type Iter<'a> = std::iter::Map<std::slice::Iter<'a, Pair>, fn(&Pair) -> (&String, &Value)>;

impl Map {
    pub fn new() -> Map {
        Map(Vec::new())
    }

    /// From members in document order, each name's last value kept; also the first repeated
    /// name in name order, if any. One stable sort (a repeated name's values stay in document
    /// order): inserting one by one would move the list's tail each time, quadratic for names
    /// that arrive in reverse order.
    pub(super) fn from_members(mut members: Vec<Pair>) -> (Map, Option<String>) {
        let mut repeated = None;
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<Pair> = Vec::with_capacity(members.len());
        for (k, v) in members {
            match out.last_mut() {
                Some(last) if last.0 == k => {
                    last.1 = v;
                    if repeated.is_none() {
                        repeated = Some(k);
                    }
                }
                _ => out.push((k, v)),
            }
        }
        (Map(out), repeated)
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        let at = self.find(name).ok()?;
        self.0.get(at).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name` to `value`, giving back the value it replaces.
    pub fn insert(&mut self, name: String, value: Value) -> Option<Value> {
        match self.find(&name) {
            Ok(at) => self
                .0
                .get_mut(at)
                .map(|(_, old)| std::mem::replace(old, value)),
            Err(at) => {
                self.0.insert(at, (name, value));
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> Iter<'_> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl<'a> IntoIterator for &'a Map {
    type Item = (&'a String, &'a Value);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for Map {
    type Item = Pair;
    type IntoIter = std::vec::IntoIter<Pair>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl FromIterator<Pair> for Map {
    fn from_iter<I: IntoIterator<Item = Pair>>(iter: I) -> Map {
        Map::from_members(iter.into_iter().collect()).0
    }
}

/// Tests build documents with serde_json's `json!` and turn them into this one.
#[cfg(test)]
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => {
                Value::Number(Number::from_checked_text(&n.to_string()))
            }
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(items) => {
                Value::Array(items.into_iter().map(Value::from).collect())
            }
            serde_json::Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (k, Value::from(v))).collect())
            }
        }
    }
}
