//! The filter's JSON: one reader, one document type and one writer for every JSON value it
//! reads or writes (configuration, key sets, token claims, IdP answers, sealed payloads).
//!
//! Its own rather than serde_json's: serde's generic machinery, serde_json's number
//! formatting and the float tables behind them were about a tenth of the module, for documents
//! that need none of it. What it accepts is what serde_json accepts (RFC 8259, nesting up to
//! 127 levels), and a test holds the two together. Two things differ on purpose: a number that
//! is not an integer is kept as written rather than rounded to a float and printed back, and
//! an object keeps its members in a sorted list rather than a B-tree (the same order, the same
//! last-one-wins for a repeated name).

pub(crate) mod members;
mod read;
mod scan;
mod value;
mod write;

pub use read::{from_slice, from_slice_strict, Error};
pub use value::{Map, Number, Value};
pub use write::{object, ObjectWriter, ToJson};
