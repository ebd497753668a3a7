//! Reading the named members of one JSON object: the one reader behind the small JSON values
//! the filter reads (JOSE headers, sealed session and flow payloads, sealed refresh outcomes,
//! token-endpoint answers).
//!
//! One pass over the bytes, no document built, strings borrowed when they have no escapes.
//! What serde's derive did for each of these types, it does once: unknown members are skipped
//! whatever they hold, a named member written twice is refused, and the input must be exactly
//! one object (the derive also took an array of the members in order). The callers decide
//! what is required and what each member's type must be.

use std::borrow::Cow;

use super::read::{Error, Reader};
use super::value::{Map, Value};

/// A member's value as read.
#[derive(Debug, PartialEq)]
pub(crate) enum Member<'a> {
    Str(Cow<'a, str>),
    /// A non-negative integer that fits in 64 bits.
    U64(u64),
    Null,
    /// An object, as a document (only the refresh outcome nests one, a few members long).
    Object(Map),
    /// Anything else: another number, a boolean, an array.
    Other,
}

impl<'a> Member<'a> {
    /// The string, or `None` for any other type.
    pub(crate) fn into_string(self) -> Option<String> {
        match self {
            Member::Str(s) => Some(s.into_owned()),
            _ => None,
        }
    }
}

/// An optional member's value: absent and `null` are `Ok(None)`; a string is `Ok(Some)`; any
/// other type is `Err(())`.
pub(crate) fn optional_str(member: Option<Member<'_>>) -> Result<Option<Cow<'_, str>>, ()> {
    match member {
        None | Some(Member::Null) => Ok(None),
        Some(Member::Str(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

/// The members of the object in `json` named in `names`, in that order (`None`: absent).
/// `None` when `json` is not one JSON object or names a member twice.
pub(crate) fn read<'a, const N: usize>(
    json: &'a [u8],
    names: [&str; N],
) -> Option<[Option<Member<'a>>; N]> {
    let mut out = [const { None }; N];
    read_into(json, &names, &mut out)?;
    Some(out)
}

/// [`read`] without the array size in its type, so that one copy serves every caller.
fn read_into<'a>(json: &'a [u8], names: &[&str], out: &mut [Option<Member<'a>>]) -> Option<()> {
    let mut r = Reader::new(json, false);
    if !r.object_start() {
        return None;
    }
    r.members(|r, name| {
        let slot = names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| out.get_mut(i));
        match slot {
            Some(slot) if slot.is_some() => Err(r.repeated_name(name.into_owned())),
            Some(slot) => {
                *slot = Some(member(r)?);
                Ok(())
            }
            // Unknown members are read past (they must be valid JSON), nothing kept.
            None => r.skip_value(1),
        }
    })
    .ok()?;
    r.end().ok()
}

fn member<'a>(r: &mut Reader<'a>) -> Result<Member<'a>, Error> {
    Ok(match r.peek_token() {
        Some(b'"') => {
            r.skip_byte();
            Member::Str(r.string()?)
        }
        Some(b'0'..=b'9' | b'-') => r.number()?.as_u64().map_or(Member::Other, Member::U64),
        Some(b'n' | b'{') | None => match r.value(1)? {
            Value::Null => Member::Null,
            Value::Object(map) => Member::Object(map),
            _ => Member::Other,
        },
        Some(_) => {
            r.skip_value(1)?;
            Member::Other
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_named_members_and_skips_the_rest() {
        let json = br#" {"a": "x", "skip": {"deep": [1, {"b": 2}]}, "b": 7, "c": null,
            "d": -1, "e": 1.5, "f": true, "g": [1], "h": {"k": "v"}, "i": "\u0041"} "#;
        let [a, b, c, d, e, f, g, h, i, z] =
            read(json, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "z"]).unwrap();
        assert_eq!(a, Some(Member::Str(Cow::Borrowed("x"))));
        assert!(matches!(a, Some(Member::Str(Cow::Borrowed(_)))));
        assert_eq!(b, Some(Member::U64(7)));
        assert_eq!(c, Some(Member::Null));
        for other in [d, e, f, g] {
            assert_eq!(other, Some(Member::Other));
        }
        let Some(Member::Object(h)) = h else {
            panic!("object")
        };
        assert_eq!(h.get("k"), Some(&Value::from("v")));
        // An escaped string is decoded, so it is owned.
        assert!(matches!(i, Some(Member::Str(Cow::Owned(ref s))) if s == "A"));
        assert_eq!(z, None);
    }

    #[test]
    fn only_one_object_with_each_named_member_once() {
        for bad in [
            &br#"{"a": 1, "a": 2}"#[..],
            br#"{"a": 1, "\u0061": 2}"#,
            br#"["x", 1]"#,
            br#""a""#,
            b"null",
            b"",
            br#"{"a": 1} {}"#,
            br#"{"a": 1"#,
            br#"{"a": 1,}"#,
            br#"{"a": 1} x"#,
        ] {
            assert!(
                read(bad, ["a"]).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Unknown members are skipped but must still be JSON, nested no deeper than a document.
        let deep = format!(r#"{{"x":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        for bad in [
            &br#"{"x": [1,], "a": 1}"#[..],
            br#"{"x": {"k" 1}, "a": 1}"#,
            br#"{"x": {"k": tru}, "a": 1}"#,
            br#"{"x": "\q", "a": 1}"#,
            deep.as_bytes(),
        ] {
            assert!(
                read(bad, ["a"]).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Repeated unknown members are skipped, as serde's derive did.
        assert_eq!(
            read(br#"{"x": 1, "x": 2, "a": 3}"#, ["a"]).unwrap(),
            [Some(Member::U64(3))]
        );
        assert_eq!(read(b"{}", ["a"]).unwrap(), [None]);
    }

    #[test]
    fn optional_strings() {
        assert_eq!(optional_str(None), Ok(None));
        assert_eq!(optional_str(Some(Member::Null)), Ok(None));
        assert_eq!(
            optional_str(Some(Member::Str(Cow::Borrowed("v")))),
            Ok(Some(Cow::Borrowed("v")))
        );
        assert_eq!(optional_str(Some(Member::U64(1))), Err(()));
        assert_eq!(optional_str(Some(Member::Other)), Err(()));
    }
}
