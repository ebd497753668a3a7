//! Reading JSON text (RFC 8259): a whole document into a [`Value`], or piece by piece for
//! [`super::members`].

use std::borrow::Cow;
use std::fmt;

use super::scan::plain_len;
use super::value::{Map, Number, Value};

/// Containers may nest this deep minus one, as in serde_json: deeper input is refused before
/// it can exhaust the stack.
const MAX_DEPTH: usize = 128;

/// Why the text is not a JSON document, and where (serde_json's wording and positions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: Code,
    /// 1-based line.
    line: usize,
    /// Bytes from the start of the line, up to and including the one at fault.
    column: usize,
    /// For [`Code::DuplicateKey`]: the path of the repeated member (`a.b[2].c`) and its name.
    path: String,
    name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    EofWhileParsingList,
    EofWhileParsingObject,
    EofWhileParsingString,
    EofWhileParsingValue,
    ExpectedColon,
    ExpectedListCommaOrEnd,
    ExpectedObjectCommaOrEnd,
    ExpectedSomeIdent,
    ExpectedSomeValue,
    InvalidEscape,
    InvalidNumber,
    NumberOutOfRange,
    InvalidUnicodeCodePoint,
    ControlCharacterWhileParsingString,
    KeyMustBeAString,
    LoneLeadingSurrogateInHexEscape,
    TrailingComma,
    TrailingCharacters,
    UnexpectedEndOfHexEscape,
    RecursionLimitExceeded,
    DuplicateKey,
}

impl Code {
    fn message(self) -> &'static str {
        match self {
            Code::EofWhileParsingList => "EOF while parsing a list",
            Code::EofWhileParsingObject => "EOF while parsing an object",
            Code::EofWhileParsingString => "EOF while parsing a string",
            Code::EofWhileParsingValue => "EOF while parsing a value",
            Code::ExpectedColon => "expected `:`",
            Code::ExpectedListCommaOrEnd => "expected `,` or `]`",
            Code::ExpectedObjectCommaOrEnd => "expected `,` or `}`",
            Code::ExpectedSomeIdent => "expected ident",
            Code::ExpectedSomeValue => "expected value",
            Code::InvalidEscape => "invalid escape",
            Code::InvalidNumber => "invalid number",
            Code::NumberOutOfRange => "number out of range",
            Code::InvalidUnicodeCodePoint => "invalid unicode code point",
            Code::ControlCharacterWhileParsingString => {
                "control character (\\u0000-\\u001F) found while parsing a string"
            }
            Code::KeyMustBeAString => "key must be a string",
            Code::LoneLeadingSurrogateInHexEscape => "lone leading surrogate in hex escape",
            Code::TrailingComma => "trailing comma",
            Code::TrailingCharacters => "trailing characters",
            Code::UnexpectedEndOfHexEscape => "unexpected end of hex escape",
            Code::RecursionLimitExceeded => "recursion limit exceeded",
            Code::DuplicateKey => "duplicate field",
        }
    }
}

impl Error {
    /// The repeated member's path and name when [`from_slice_strict`] refused a duplicate.
    pub fn duplicate(&self) -> Option<(&str, &str)> {
        if self.code != Code::DuplicateKey {
            return None;
        }
        Some((&self.path, &self.name))
    }

    /// Adds the containing member's name in front of a duplicate's path.
    fn under_key(mut self, key: &str) -> Error {
        if self.code == Code::DuplicateKey {
            self.path = if self.path.starts_with('[') {
                format!("{key}{}", self.path)
            } else {
                format!("{key}.{}", self.path)
            };
        }
        self
    }

    /// Adds the containing array's index in front of a duplicate's path.
    fn under_index(mut self, index: usize) -> Error {
        if self.code == Code::DuplicateKey {
            self.path = if self.path.starts_with('[') {
                format!("[{index}]{}", self.path)
            } else {
                format!("[{index}].{}", self.path)
            };
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.code.message(),
            self.line,
            self.column
        )
    }
}

/// Parses one JSON document; whitespace may surround it, nothing else. A name repeated in an
/// object keeps its last value.
pub fn from_slice(json: &[u8]) -> Result<Value, Error> {
    document(json, false)
}

/// [`from_slice`], refusing a name repeated in one object (see [`Error::duplicate`]).
pub fn from_slice_strict(json: &[u8]) -> Result<Value, Error> {
    document(json, true)
}

fn document(json: &[u8], strict: bool) -> Result<Value, Error> {
    let mut r = Reader::new(json, strict);
    let v = r.value(0)?;
    r.end()?;
    Ok(v)
}

/// A position in JSON text.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Refuse a repeated name in an object.
    strict: bool,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], strict: bool) -> Reader<'a> {
        Reader {
            bytes,
            at: 0,
            strict,
        }
    }

    /// An error at byte index `index` (serde_json counts the column up to it).
    fn error_at(&self, code: Code, index: usize) -> Error {
        let before = self
            .bytes
            .get(..index.min(self.bytes.len()))
            .unwrap_or_default();
        let start_of_line = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1);
        Error {
            code,
            line: 1 + before.iter().filter(|b| **b == b'\n').count(),
            column: before.len() - start_of_line,
            path: String::new(),
            name: String::new(),
        }
    }

    /// An error about the byte at the current position (or the end).
    fn peek_error(&self, code: Code) -> Error {
        self.error_at(code, self.at + 1)
    }

    /// An error after what has been read.
    fn error(&self, code: Code) -> Error {
        self.error_at(code, self.at)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// The next byte that is not whitespace, not consumed.
    pub(crate) fn peek_token(&mut self) -> Option<u8> {
        while let Some(b) = self.peek() {
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes the byte [`Reader::peek_token`] returned.
    pub(crate) fn skip_byte(&mut self) {
        self.at += 1;
    }

    /// Only whitespace is left.
    pub(crate) fn end(&mut self) -> Result<(), Error> {
        match self.peek_token() {
            None => Ok(()),
            Some(_) => Err(self.peek_error(Code::TrailingCharacters)),
        }
    }

    /// One value. `depth`: containers already open around it.
    pub(crate) fn value(&mut self, depth: usize) -> Result<Value, Error> {
        let Some(b) = self.peek_token() else {
            return Err(self.peek_error(Code::EofWhileParsingValue));
        };
        match b {
            b'n' => self.ident(b"null").map(|()| Value::Null),
            b't' => self.ident(b"true").map(|()| Value::Bool(true)),
            b'f' => self.ident(b"false").map(|()| Value::Bool(false)),
            b'-' | b'0'..=b'9' => self.number().map(Value::Number),
            b'"' => {
                self.at += 1;
                self.string().map(|s| Value::String(s.into_owned()))
            }
            b'[' => {
                self.enter(depth)?;
                self.array(depth + 1).map(Value::Array)
            }
            b'{' => {
                self.enter(depth)?;
                self.object(depth + 1).map(Value::Object)
            }
            _ => Err(self.peek_error(Code::ExpectedSomeValue)),
        }
    }

    /// Consumes the container's opening byte, unless that would nest too deep.
    fn enter(&mut self, depth: usize) -> Result<(), Error> {
        self.at += 1;
        if depth + 1 >= MAX_DEPTH {
            return Err(self.error(Code::RecursionLimitExceeded));
        }
        Ok(())
    }

    fn ident(&mut self, word: &[u8]) -> Result<(), Error> {
        for expected in word {
            match self.peek() {
                Some(b) if b == *expected => self.at += 1,
                Some(_) => return Err(self.peek_error(Code::ExpectedSomeIdent)),
                None => return Err(self.peek_error(Code::EofWhileParsingValue)),
            }
        }
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    pub(crate) fn number(&mut self) -> Result<Number, Error> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(self.peek_error(Code::InvalidNumber));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            None => return Err(self.peek_error(Code::EofWhileParsingValue)),
            Some(_) => return Err(self.peek_error(Code::InvalidNumber)),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.number_end_error());
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.number_end_error());
            }
        }
        let text = self
            .bytes
            .get(start..self.at)
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or_default();
        let number = Number::from_checked_text(text);
        if number.is_f64() && !number.as_f64().is_finite() {
            return Err(self.error(Code::NumberOutOfRange));
        }
        Ok(number)
    }

    fn number_end_error(&self) -> Error {
        match self.peek() {
            None => self.peek_error(Code::EofWhileParsingValue),
            Some(_) => self.peek_error(Code::InvalidNumber),
        }
    }

    /// The rest of a string whose opening quote is consumed; borrowed when it has no escapes.
    pub(crate) fn string(&mut self) -> Result<Cow<'a, str>, Error> {
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let rest = self.bytes.get(self.at..).unwrap_or_default();
            let n = plain_len(rest);
            if n == rest.len() {
                self.at = self.bytes.len();
                return Err(self.error(Code::EofWhileParsingString));
            }
            let chunk = rest.get(..n).unwrap_or_default();
            self.at += n + 1;
            match rest.get(n) {
                Some(b'"') => {
                    let text = match owned {
                        None => Cow::Borrowed(chunk),
                        Some(mut buf) => {
                            buf.extend_from_slice(chunk);
                            Cow::Owned(buf)
                        }
                    };
                    return self.utf8(text);
                }
                Some(b'\\') => {
                    let buf = owned.get_or_insert_with(Vec::new);
                    buf.extend_from_slice(chunk);
                    self.escape(buf)?;
                }
                _ => return Err(self.error(Code::ControlCharacterWhileParsingString)),
            }
        }
    }

    fn utf8(&self, text: Cow<'a, [u8]>) -> Result<Cow<'a, str>, Error> {
        match text {
            Cow::Borrowed(bytes) => std::str::from_utf8(bytes).map(Cow::Borrowed).ok(),
            Cow::Owned(bytes) => String::from_utf8(bytes).map(Cow::Owned).ok(),
        }
        .ok_or_else(|| self.error(Code::InvalidUnicodeCodePoint))
    }

    /// One escape after its backslash, appended to `buf` as UTF-8.
    fn escape(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
        let Some(b) = self.peek() else {
            return Err(self.error(Code::EofWhileParsingString));
        };
        self.at += 1;
        let byte = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => return self.unicode_escape(buf),
            _ => return Err(self.error(Code::InvalidEscape)),
        };
        buf.push(byte);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16, Error> {
        let mut n: u16 = 0;
        for _ in 0..4 {
            let Some(b) = self.peek() else {
                return Err(self.error(Code::EofWhileParsingString));
            };
            self.at += 1;
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(self.error(Code::InvalidEscape)),
            };
            n = (n << 4) | u16::from(digit);
        }
        Ok(n)
    }

    /// `\uXXXX` (its `\u` consumed), a surrogate pair written as two.
    fn unicode_escape(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
        let first = self.hex4()?;
        let code = match first {
            0xdc00..=0xdfff => return Err(self.error(Code::LoneLeadingSurrogateInHexEscape)),
            0xd800..=0xdbff => {
                if self.peek() != Some(b'\\') {
                    return Err(self.error(Code::UnexpectedEndOfHexEscape));
                }
                self.at += 1;
                if self.peek() != Some(b'u') {
                    return Err(self.error(Code::UnexpectedEndOfHexEscape));
                }
                self.at += 1;
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return Err(self.error(Code::LoneLeadingSurrogateInHexEscape));
                }
                0x10000 + ((u32::from(first) - 0xd800) << 10) + (u32::from(second) - 0xdc00)
            }
            _ => u32::from(first),
        };
        let c = char::from_u32(code).ok_or_else(|| self.error(Code::InvalidUnicodeCodePoint))?;
        let mut utf8 = [0u8; 4];
        buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        Ok(())
    }

    fn array(&mut self, depth: usize) -> Result<Vec<Value>, Error> {
        let mut items = Vec::new();
        self.items(|r, index| {
            items.push(r.value(depth).map_err(|e| e.under_index(index))?);
            Ok(())
        })?;
        Ok(items)
    }

    /// The items of an array whose `[` is consumed, each read by `item` (given its index).
    fn items(
        &mut self,
        mut item: impl FnMut(&mut Self, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.peek_token() == Some(b']') {
            self.at += 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            item(self, index)?;
            index += 1;
            if self.closed_after_item(
                b']',
                Code::ExpectedListCommaOrEnd,
                Code::EofWhileParsingList,
            )? {
                return Ok(());
            }
        }
    }

    /// The members of an object whose `{` is consumed, each read by `member` (given its name;
    /// the `:` is consumed).
    pub(crate) fn members(
        &mut self,
        mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match self.peek_token() {
            Some(b'}') => {
                self.at += 1;
                return Ok(());
            }
            None => return Err(self.peek_error(Code::EofWhileParsingObject)),
            Some(_) => {}
        }
        loop {
            let name = self.member_name()?;
            member(self, name)?;
            if self.closed_after_item(
                b'}',
                Code::ExpectedObjectCommaOrEnd,
                Code::EofWhileParsingObject,
            )? {
                return Ok(());
            }
        }
    }

    /// After an array item or an object member: `true` at the container's `close` (consumed),
    /// `false` after a `,` that another item follows.
    fn closed_after_item(&mut self, close: u8, other: Code, eof: Code) -> Result<bool, Error> {
        match self.peek_token() {
            Some(b',') => {
                self.at += 1;
                if self.peek_token() == Some(close) {
                    return Err(self.peek_error(Code::TrailingComma));
                }
                Ok(false)
            }
            Some(b) if b == close => {
                self.at += 1;
                Ok(true)
            }
            Some(_) => Err(self.peek_error(other)),
            None => Err(self.peek_error(eof)),
        }
    }

    /// A member's name and its `:`.
    fn member_name(&mut self) -> Result<Cow<'a, str>, Error> {
        match self.peek_token() {
            Some(b'"') => self.at += 1,
            Some(_) => return Err(self.peek_error(Code::KeyMustBeAString)),
            None => return Err(self.peek_error(Code::EofWhileParsingValue)),
        }
        let name = self.string()?;
        match self.peek_token() {
            Some(b':') => self.at += 1,
            Some(_) => return Err(self.peek_error(Code::ExpectedColon)),
            None => return Err(self.peek_error(Code::EofWhileParsingObject)),
        }
        Ok(name)
    }

    /// A name written twice in one object, refused here.
    pub(crate) fn repeated_name(&self, name: String) -> Error {
        let mut e = self.error(Code::DuplicateKey);
        e.path.clone_from(&name);
        e.name = name;
        e
    }

    /// The `{` of an object, consumed (`false`: the next token is something else).
    pub(crate) fn object_start(&mut self) -> bool {
        if self.peek_token() == Some(b'{') {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn object(&mut self, depth: usize) -> Result<Map, Error> {
        let mut members = Vec::new();
        self.members(|r, name| {
            let value = r.value(depth).map_err(|e| e.under_key(&name))?;
            members.push((name.into_owned(), value));
            Ok(())
        })?;
        match Map::from_members(members) {
            (_, Some(name)) if self.strict => Err(self.repeated_name(name)),
            (map, _) => Ok(map),
        }
    }

    /// Reads past one value without keeping it (the same checks as [`Reader::value`]).
    pub(crate) fn skip_value(&mut self, depth: usize) -> Result<(), Error> {
        match self.peek_token() {
            Some(b'[') => {
                self.enter(depth)?;
                self.items(|r, _| r.skip_value(depth + 1))
            }
            Some(b'{') => {
                self.enter(depth)?;
                self.members(|r, _| r.skip_value(depth + 1))
            }
            // Scalars are small to build and drop.
            _ => self.value(depth).map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's reading, as this module's [`Value`].
    fn serde(json: &[u8]) -> Result<Value, String> {
        serde_json::from_slice::<serde_json::Value>(json)
            .map(Value::from)
            .map_err(|e| e.to_string())
    }

    fn ours(json: &[u8]) -> Result<Value, String> {
        from_slice(json).map_err(|e| e.to_string())
    }

    /// Equal, numbers that are not integers compared as floats (serde_json keeps those as a
    /// float, this module as written).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
                x.is_f64() && y.is_f64() && x.as_f64().to_bits() == y.as_f64().to_bits()
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((kx, x), (ky, y))| kx == ky && same(x, y))
            }
            _ => a == b,
        }
    }

    #[test]
    fn accepts_and_refuses_what_serde_json_does() {
        let cases: &[&[u8]] = &[
            b"null",
            b" true ",
            b"false",
            b"0",
            b"-0",
            b"-1",
            b"18446744073709551615",
            b"18446744073709551616",
            b"-9223372036854775808",
            b"-9223372036854775809",
            b"1.5",
            b"1e3",
            b"1E+3",
            b"1e-3",
            b"-0.0e0",
            b"1e309",
            b"1e308",
            b"-1e400",
            b"1e-400",
            b"01",
            b"1.",
            b".5",
            b"1e",
            b"1e+",
            b"-",
            b"--1",
            b"+1",
            b"0x10",
            br#""""#,
            br#""a\"b\\c\/d\b\f\n\r\t""#,
            br#""\u0041\u00e9\u20ac\ud83d\ude00""#,
            br#""\ud83d""#,
            br#""\ud83dx""#,
            br#""\ude00""#,
            br#""\ud83d\u0041""#,
            br#""\u12""#,
            br#""\u12G4""#,
            br#""\x""#,
            b"\"a\x01b\"",
            b"\"a\x7fb\"",
            b"\"\xff\"",
            b"\"\xc3\xa9\"",
            "\"é\"".as_bytes(),
            br#""abc"#,
            b"[]",
            b"[1, 2 ,3]",
            b"[1,]",
            b"[1 2]",
            b"[",
            b"[1",
            b"{}",
            br#"{"a":1,"b":[true,null],"c":{"d":"e"}}"#,
            br#"{"a":1,"a":2}"#,
            br#"{"b":1,"a":2}"#,
            br#"{"a":1,}"#,
            br#"{"a" 1}"#,
            br#"{1:2}"#,
            br#"{"a":1"#,
            br#"{"a":"#,
            br#"{"a""#,
            b"{",
            b"",
            b"   ",
            b"nul",
            b"nulll",
            b"truex",
            b"[] []",
            b"{}\n x",
            b"\n\n  [1,\n  2,\n  x]",
            b"\xef\xbb\xbf{}",
        ];
        for json in cases {
            let (theirs, mine) = (serde(json), ours(json));
            assert_eq!(
                theirs.is_ok(),
                mine.is_ok(),
                "{:?}: serde_json {theirs:?}, ours {mine:?}",
                String::from_utf8_lossy(json)
            );
            if let (Ok(a), Ok(b)) = (&theirs, &mine) {
                assert!(same(a, b), "{:?}: {a} {b}", String::from_utf8_lossy(json));
            }
        }
    }

    #[test]
    fn error_messages_name_the_place_as_serde_json_does() {
        for json in [
            &b"{} x"[..],
            b"{\n  \"a\": 1,\n  \"b\" 2\n}",
            b"[1, 2",
            br#"{"a": tru}"#,
            br#"{"a": "b\q"}"#,
            b"[1,]",
            b"{\"a\":01}",
            b"",
        ] {
            assert_eq!(
                ours(json).unwrap_err(),
                serde(json).unwrap_err(),
                "{:?}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn nesting_stops_where_serde_json_stops() {
        for depth in [1, 126, 127, 128, 129, 5000] {
            for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
                let json = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                let (theirs, mine) = (serde(json.as_bytes()), ours(json.as_bytes()));
                assert_eq!(theirs.is_ok(), mine.is_ok(), "{open} x {depth}");
            }
        }
    }

    #[test]
    fn numbers_keep_their_kind() {
        let n = |t: &str| match from_slice(t.as_bytes()).unwrap() {
            Value::Number(n) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(n("7").as_u64(), Some(7));
        assert_eq!(n("-7").as_i64(), Some(-7));
        assert!(n("-7").as_u64().is_none());
        assert!(n("1.0").is_f64());
        assert!(n("-0").is_f64());
        assert!(n("18446744073709551616").is_f64());
        assert_eq!(n("1.5").to_string(), "1.5");
        assert_eq!(n("1700000000.75").as_f64(), 1_700_000_000.75);
        assert_eq!(n("1.7e9").as_f64(), 1_700_000_000.0);
        assert_eq!(n("17e-1").as_f64(), 1.7);
        assert_eq!(n("0.000001e6").as_f64(), 1.0);
        assert_eq!(
            n("123456789012345678901234567890").as_f64(),
            1.2345678901234568e29
        );
        assert_eq!(n("1e-400").as_f64(), 0.0);
    }

    #[test]
    fn objects_are_sorted_once_and_keep_the_last_value() {
        // Names in reverse order, one repeated: built in one sort, not by insertion.
        let members: Vec<String> = (0..2000)
            .rev()
            .map(|i| format!(r#""k{i:04}":{i}"#))
            .collect();
        let json = format!("{{{},\"k0001\":\"last\"}}", members.join(","));
        let Value::Object(map) = from_slice(json.as_bytes()).unwrap() else {
            panic!("object")
        };
        assert_eq!(map.len(), 2000);
        assert!(map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b));
        assert_eq!(map.get("k0001"), Some(&Value::from("last")));
        assert_eq!(map.get("k1999").and_then(Value::as_u64), Some(1999));
        let e = from_slice_strict(json.as_bytes()).unwrap_err();
        assert_eq!(e.duplicate(), Some(("k0001", "k0001")));
    }

    #[test]
    fn skipping_checks_what_reading_checks() {
        let deep = format!("{}1{}", "[".repeat(127), "]".repeat(127));
        let cases: &[&[u8]] = &[
            br#"{"a": [1, {"b": "c\n"}, null, true, -1.5e3]}"#,
            br#"[1,]"#,
            br#"{"a" 1}"#,
            br#"[tru]"#,
            br#""\x""#,
            br#"{"a":1"#,
            deep.as_bytes(),
        ];
        for json in cases {
            let mut r = Reader::new(json, false);
            let skipped = r.skip_value(0).and_then(|()| r.end());
            assert_eq!(
                skipped.is_ok(),
                from_slice(json).is_ok(),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn strict_reading_names_the_repeated_member() {
        let dup = |json: &str| {
            let e = from_slice_strict(json.as_bytes()).unwrap_err();
            e.duplicate().map(|(p, n)| (p.to_owned(), n.to_owned()))
        };
        assert_eq!(dup(r#"{"a":1,"a":2}"#), Some(("a".into(), "a".into())));
        assert_eq!(
            dup(r#"{"c":{"https://x.test/roles":1,"https://x.test/roles":2}}"#),
            Some((
                "c.https://x.test/roles".into(),
                "https://x.test/roles".into()
            ))
        );
        assert_eq!(
            dup(r#"{"x":{"y":[{"z":1},{"z":1,"z":2}]}}"#),
            Some(("x.y[1].z".into(), "z".into()))
        );
        assert_eq!(
            dup(r#"[[{"q":1,"q":1}]]"#),
            Some(("[0][0].q".into(), "q".into()))
        );
        assert_eq!(dup(r#"{"a":1,"a""#), None);
        assert!(from_slice(br#"{"a":1,"a":2}"#).is_ok());
        assert_eq!(
            from_slice(br#"{"a":1,"a":2}"#).unwrap().get("a"),
            Some(&Value::from(2u64))
        );
    }

    /// Documents serde_json writes, compact and pretty, read back by this reader: the same
    /// values, and this writer prints them exactly as serde_json did.
    #[cfg(not(target_arch = "wasm32"))]
    mod round_trip {
        use super::*;
        use proptest::prelude::*;

        fn document() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<u64>().prop_map(serde_json::Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(serde_json::Value::from),
                any::<String>().prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                    prop::collection::btree_map(any::<String>(), inner, 0..8)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn serde_json_documents_read_back(v in document()) {
                let expected = Value::from(v.clone());
                let compact = serde_json::to_string(&v).unwrap();
                for text in [compact.clone(), serde_json::to_string_pretty(&v).unwrap()] {
                    let ours = from_slice(text.as_bytes()).unwrap();
                    prop_assert!(same(&ours, &expected), "{text}");
                    prop_assert_eq!(from_slice_strict(text.as_bytes()).unwrap(), ours.clone());
                    prop_assert_eq!(ours.to_string(), compact.clone());
                }
            }
        }
    }
}
