//! The text of a [`FieldValue::String`](super::FieldValue::String): stored
//! inline up to 24 bytes, so that a short header value (a region, a tenant,
//! a content kind — nearly every one) takes no allocation of its own.
//!
//! Why a type of its own rather than `String`: a queued message owns its
//! properties, and each string header's value was a heap allocation of at
//! least 32 bytes beside them (fill-drain: 32 of the 482 bytes a queued
//! 64-byte message with two headers took). The inline storage is
//! `compact_str`'s, the same the table's keys use; it stays behind this
//! type so that the crate's public API does not name another crate's
//! version.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTF-8 string held by a [`FieldValue::String`](super::FieldValue::String),
/// stored inline up to 24 bytes and on the heap beyond.
///
/// It reads as a `&str` (it dereferences to one) and converts from `&str`
/// and `String` and back into `String`:
///
/// ```
/// use interoffice::{FieldString, FieldValue};
/// let region = FieldString::from("eu-west");
/// assert_eq!(region, "eu-west");
/// assert_eq!(region.len(), 7);
/// let value = FieldValue::String(region);
/// if let FieldValue::String(text) = &value {
///     assert!(text.starts_with("eu"));
///     let owned: String = text.clone().into();
///     assert_eq!(owned, "eu-west");
/// }
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldString(compact_str::CompactString);

impl FieldString {
    /// A copy of `text`.
    pub fn new(text: impl AsRef<str>) -> Self {
        FieldString(compact_str::CompactString::new(text.as_ref()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The text as a `String` (moved when it was on the heap, copied when
    /// it was inline).
    pub fn into_string(self) -> String {
        self.0.into_string()
    }
}

impl Deref for FieldString {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for FieldString {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<[u8]> for FieldString {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Borrow<str> for FieldString {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl From<&str> for FieldString {
    fn from(text: &str) -> Self {
        FieldString::new(text)
    }
}

impl From<&String> for FieldString {
    fn from(text: &String) -> Self {
        FieldString::new(text)
    }
}

/// `text` in inline storage when it fits (no allocation, even for a
/// `String`, whose buffer is then freed), else in the `String` it converts
/// into (a `String`'s own buffer, kept): a table's keys and its string
/// values alike.
pub(super) fn compact<T: AsRef<str> + Into<String>>(text: T) -> compact_str::CompactString {
    if text.as_ref().len() <= std::mem::size_of::<String>() {
        compact_str::CompactString::new(text.as_ref())
    } else {
        compact_str::CompactString::from(text.into())
    }
}

impl From<String> for FieldString {
    /// Copied inline when it fits (its buffer is then freed), else its
    /// buffer is kept.
    fn from(text: String) -> Self {
        FieldString(compact(text))
    }
}

impl From<Box<str>> for FieldString {
    fn from(text: Box<str>) -> Self {
        String::from(text).into()
    }
}

impl From<FieldString> for String {
    fn from(text: FieldString) -> Self {
        text.into_string()
    }
}

impl PartialEq<str> for FieldString {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for FieldString {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for FieldString {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<FieldString> for str {
    fn eq(&self, other: &FieldString) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<FieldString> for &str {
    fn eq(&self, other: &FieldString) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<FieldString> for String {
    fn eq(&self, other: &FieldString) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for FieldString {
    /// As the `str` it holds: `"eu"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for FieldString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FieldString {
    /// As a string, exactly as a `String` serializes: what codecs and the
    /// durable store wrote before this type existed reads back unchanged.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FieldString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;

        impl serde::de::Visitor<'_> for Text {
            type Value = FieldString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<FieldString, E> {
                Ok(FieldString::new(text))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<FieldString, E> {
                Ok(text.into())
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<FieldString, E> {
                std::str::from_utf8(bytes)
                    .map(FieldString::new)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Bytes(bytes), &self))
            }
        }

        deserializer.deserialize_string(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::FieldString;

    #[test]
    fn short_text_is_inline_and_long_text_reads_back_whole() {
        let short = FieldString::from("region-7");
        assert!(!short.0.is_heap_allocated(), "24 bytes or fewer take no allocation");
        let edge = FieldString::from("x".repeat(24));
        assert!(!edge.0.is_heap_allocated());
        let long = FieldString::from("y".repeat(25));
        assert!(long.0.is_heap_allocated());
        assert_eq!(long.len(), 25);
        assert_eq!(String::from(long), "y".repeat(25));
        assert_eq!(String::from(short), "region-7");
    }

    #[test]
    fn it_compares_with_every_kind_of_string_both_ways() {
        let text = FieldString::new("eu");
        assert_eq!(text, "eu");
        assert_eq!(text, *"eu");
        assert_eq!(text, String::from("eu"));
        assert_eq!("eu", text);
        assert_eq!(String::from("eu"), text);
        assert_ne!(text, "us");
        assert_eq!(format!("{text} {text:?}"), "eu \"eu\"");
    }

    #[test]
    fn it_serializes_exactly_as_a_string_does() {
        let config = bincode::config::standard();
        for text in ["", "eu", &"z".repeat(300)] {
            let ours = bincode::serde::encode_to_vec(FieldString::new(text), config).unwrap();
            let theirs = bincode::serde::encode_to_vec(text.to_owned(), config).unwrap();
            assert_eq!(ours, theirs);
            let (back, _): (FieldString, usize) = bincode::serde::decode_from_slice(&theirs, config).unwrap();
            assert_eq!(back, text);
        }
    }
}
