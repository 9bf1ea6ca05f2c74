//! AMQP field tables: the typed key/value maps carried in message headers and
//! in binding and declaration arguments.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

mod string;
pub use string::FieldString;

/// One typed value of a [`FieldTable`], as in AMQP 0-9-1's field-value.
///
/// The kinds are kept apart: `FieldValue::from("1")` and `FieldValue::from(1)`
/// are different values, and a headers exchange does not match one against
/// the other (see [`ExchangeKind::Headers`](crate::ExchangeKind::Headers)).
///
/// ```
/// use interoffice::FieldValue;
/// assert_eq!(FieldValue::from("eu"), FieldValue::String("eu".into()));
/// assert_eq!(FieldValue::from(7_i64).as_i64(), Some(7));
/// ```
///
/// Equality (`==`) is total: floats compare by their bits, so a `NaN`
/// equals the same `NaN` and `0.0 != -0.0`. Arguments (of declarations and
/// bindings) are compared with it, so binding the same arguments twice is
/// one binding whatever they hold. Header *matching* uses AMQP's own rules
/// instead (see [`ExchangeKind::Headers`](crate::ExchangeKind::Headers)).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FieldValue {
    /// A boolean (`t`).
    Bool(bool),
    /// A signed 8-bit integer (`b`).
    I8(i8),
    /// An unsigned 8-bit integer (`B`).
    U8(u8),
    /// A signed 16-bit integer (`s`).
    I16(i16),
    /// An unsigned 16-bit integer (`u`).
    U16(u16),
    /// A signed 32-bit integer (`I`).
    I32(i32),
    /// An unsigned 32-bit integer (`i`).
    U32(u32),
    /// A signed 64-bit integer (`l`).
    I64(i64),
    /// An unsigned 64-bit integer. AMQP has no such type: a bridge to a real
    /// broker sends it as a signed 64-bit integer when it fits.
    U64(u64),
    /// A 32-bit float (`f`).
    F32(f32),
    /// A 64-bit float (`d`).
    F64(f64),
    /// A UTF-8 string (`S`), inline up to 24 bytes (see [`FieldString`]).
    String(FieldString),
    /// A byte array (`x`).
    Bytes(Bytes),
    /// A timestamp in seconds since the Unix epoch (`T`).
    Timestamp(u64),
    /// An array of values (`A`).
    Array(Vec<FieldValue>),
    /// A nested table (`F`).
    Table(FieldTable),
    /// No value (`V`). In a headers binding it tests presence only.
    Void,
}

impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        use FieldValue as V;
        match (self, other) {
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::I8(a), V::I8(b)) => a == b,
            (V::U8(a), V::U8(b)) => a == b,
            (V::I16(a), V::I16(b)) => a == b,
            (V::U16(a), V::U16(b)) => a == b,
            (V::I32(a), V::I32(b)) => a == b,
            (V::U32(a), V::U32(b)) => a == b,
            (V::I64(a), V::I64(b)) => a == b,
            (V::U64(a), V::U64(b)) => a == b,
            (V::F32(a), V::F32(b)) => a.to_bits() == b.to_bits(),
            (V::F64(a), V::F64(b)) => a.to_bits() == b.to_bits(),
            (V::String(a), V::String(b)) => a == b,
            (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::Timestamp(a), V::Timestamp(b)) => a == b,
            (V::Array(a), V::Array(b)) => a == b,
            (V::Table(a), V::Table(b)) => a == b,
            (V::Void, V::Void) => true,
            _ => false,
        }
    }
}

/// Total: see [`FieldValue`]'s equality.
impl Eq for FieldValue {}

impl FieldValue {
    /// The value as a signed integer, if it is an integer of any width that
    /// fits in an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            FieldValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of
    /// any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            FieldValue::U64(v) => Some(v),
            _ => self.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }

    /// The value as a string slice, if it is a [`FieldValue::String`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as bytes, if it is a string or a byte array.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            FieldValue::String(s) => Some(s.as_bytes()),
            FieldValue::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The value as a bool, if it is a [`FieldValue::Bool`].
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as a nested table, if it is a [`FieldValue::Table`].
    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The value as an array, if it is a [`FieldValue::Array`].
    pub fn as_array(&self) -> Option<&[FieldValue]> {
        match self {
            FieldValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// RabbitMQ's equality for header matching: the same kind and the same
    /// value, where integers of any width compare by value, floats of either
    /// width compare by value, and a string equals a byte array holding the
    /// same bytes. `"1"` is not `1`, and `true` is not `1`. A timestamp is an
    /// integer of seconds there, so it equals an integer of the same value.
    pub(crate) fn amqp_eq(&self, other: &FieldValue) -> bool {
        use FieldValue as V;
        if let (Some(a), Some(b)) = (self.as_integer(), other.as_integer()) {
            return a == b;
        }
        match (self, other) {
            (V::F32(_) | V::F64(_), V::F32(_) | V::F64(_)) => self.as_f64() == other.as_f64(),
            (V::String(_) | V::Bytes(_), V::String(_) | V::Bytes(_)) => self.as_bytes() == other.as_bytes(),
            (V::Array(a), V::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.amqp_eq(y)),
            (V::Table(a), V::Table(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| ka == kb && va.amqp_eq(vb))
            }
            _ => self == other,
        }
    }

    /// Feeds `state` a hash consistent with [`amqp_eq`](Self::amqp_eq):
    /// values it calls equal hash alike. False, writing nothing, for the
    /// kinds left out — floats (NaN, ±0), arrays, tables and void — which a
    /// caller must handle without a hash.
    pub(crate) fn hash_amqp<H: std::hash::Hasher>(&self, state: &mut H) -> bool {
        if let Some(v) = self.as_integer() {
            state.write_u8(1);
            state.write_i128(v);
            return true;
        }
        match self {
            FieldValue::String(_) | FieldValue::Bytes(_) => {
                state.write_u8(2);
                state.write(self.as_bytes().unwrap_or_default());
            }
            FieldValue::Bool(v) => {
                state.write_u8(3);
                state.write_u8(u8::from(*v));
            }
            _ => return false,
        }
        true
    }

    /// RabbitMQ's name for the value's AMQP type, as its error texts say it
    /// (`signedint`, `longstr`, ...).
    pub(crate) fn amqp_type(&self) -> &'static str {
        match self {
            FieldValue::Bool(_) => "bool",
            FieldValue::I8(_) => "byte",
            FieldValue::U8(_) => "unsignedbyte",
            FieldValue::I16(_) => "short",
            FieldValue::U16(_) => "unsignedshort",
            FieldValue::I32(_) => "signedint",
            FieldValue::U32(_) => "unsignedint",
            FieldValue::I64(_) | FieldValue::U64(_) => "long",
            FieldValue::F32(_) => "float",
            FieldValue::F64(_) => "double",
            FieldValue::String(_) => "longstr",
            FieldValue::Bytes(_) => "binary",
            FieldValue::Timestamp(_) => "timestamp",
            FieldValue::Array(_) => "array",
            FieldValue::Table(_) => "table",
            FieldValue::Void => "void",
        }
    }

    /// Any integer widened to `i128`, so `U64::MAX` and `I64::MIN` both fit;
    /// a timestamp is its seconds, as RabbitMQ matches it.
    fn as_integer(&self) -> Option<i128> {
        match *self {
            FieldValue::U64(v) | FieldValue::Timestamp(v) => Some(v.into()),
            _ => self.as_i64().map(i128::from),
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match *self {
            FieldValue::F32(v) => Some(v.into()),
            FieldValue::F64(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for FieldValue {
    /// Formats the value as RabbitMQ quotes it in error messages: strings bare,
    /// numbers and booleans as literals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Bool(v) => write!(f, "{v}"),
            FieldValue::I8(v) => write!(f, "{v}"),
            FieldValue::U8(v) => write!(f, "{v}"),
            FieldValue::I16(v) => write!(f, "{v}"),
            FieldValue::U16(v) => write!(f, "{v}"),
            FieldValue::I32(v) => write!(f, "{v}"),
            FieldValue::U32(v) => write!(f, "{v}"),
            FieldValue::I64(v) => write!(f, "{v}"),
            FieldValue::U64(v) => write!(f, "{v}"),
            FieldValue::F32(v) => write!(f, "{v}"),
            FieldValue::F64(v) => write!(f, "{v}"),
            FieldValue::String(v) => f.write_str(v),
            FieldValue::Bytes(v) => write!(f, "{}", String::from_utf8_lossy(v)),
            FieldValue::Timestamp(v) => write!(f, "{v}"),
            FieldValue::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            FieldValue::Table(t) => write!(f, "{t}"),
            FieldValue::Void => f.write_str("void"),
        }
    }
}

macro_rules! field_value_from {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(impl From<$ty> for FieldValue {
            fn from(v: $ty) -> Self {
                FieldValue::$variant(v.into())
            }
        })*
    };
}

field_value_from! {
    bool => Bool, i8 => I8, u8 => U8, i16 => I16, u16 => U16, i32 => I32, u32 => U32,
    i64 => I64, u64 => U64, f32 => F32, f64 => F64, String => String, &str => String,
    FieldString => String, Bytes => Bytes, Vec<FieldValue> => Array, FieldTable => Table,
}

impl From<&String> for FieldValue {
    fn from(v: &String) -> Self {
        FieldValue::String(v.into())
    }
}

impl From<()> for FieldValue {
    fn from((): ()) -> Self {
        FieldValue::Void
    }
}

/// A table of named, typed values: message headers and the arguments of
/// bindings and declarations.
///
/// Keys are kept sorted, as RabbitMQ sorts them, so two tables with the same
/// entries are equal whatever order they were built in.
///
/// Stored as a sorted vector, looked up by binary search: tables are small
/// (a few headers), and a B-tree's smallest node reserves room for eleven
/// entries — about 700 bytes for a two-header message, against 144 here.
/// Inserting into a table of n entries moves up to n of them. Keys of up
/// to 24 bytes (nearly every header name) are stored inline in their
/// entry, not in an allocation of their own.
///
/// ```
/// use interoffice::{FieldTable, FieldValue};
/// let headers = FieldTable::from([("region", FieldValue::from("eu")), ("tier", 2.into())]);
/// assert_eq!(headers.get("region").and_then(FieldValue::as_str), Some("eu"));
/// assert_eq!(headers.len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldTable(Vec<(Key, FieldValue)>);

/// A table's key: inline up to 24 bytes, the size of a `String`.
type Key = compact_str::CompactString;

/// `key` as a [`Key`]: see [`string::compact`].
fn to_key<K: AsRef<str> + Into<String>>(key: K) -> Key {
    string::compact(key)
}

impl FieldTable {
    /// An empty table.
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// Sets `key` to `value`, returning the value it replaces.
    pub fn insert(
        &mut self,
        key: impl AsRef<str> + Into<String>,
        value: impl Into<FieldValue>,
    ) -> Option<FieldValue> {
        let key = to_key(key);
        let value = value.into();
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                if self.0.len() == self.0.capacity() && self.0.len() < GROW_BY_ONE_UP_TO {
                    // A `Vec` grows to four entries at its first insert (256
                    // bytes here, where two headers take 128), and the table
                    // lives on in every queued copy of its message.
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// Builder form of [`insert`](Self::insert).
    #[must_use]
    pub fn with(mut self, key: impl AsRef<str> + Into<String>, value: impl Into<FieldValue>) -> Self {
        self.insert(key, value);
        self
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// A mutable reference to the value under `key`.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut FieldValue> {
        self.find(key).ok().map(|i| &mut self.0[i].1)
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    /// Whether the table holds `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Sorts by key and keeps the last value of each key, as repeated
    /// inserts would.
    fn normalise(&mut self) {
        // Stable: equal keys stay in insertion order, so the last is the newest.
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
        let entries = std::mem::take(&mut self.0);
        let mut kept: Vec<(Key, FieldValue)> = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            match kept.last_mut() {
                Some(last) if last.0 == key => last.1 = value,
                _ => kept.push((key, value)),
            }
        }
        self.0 = kept;
    }
}

impl fmt::Display for FieldTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        f.write_str("}")
    }
}

impl Serialize for FieldTable {
    /// As a map from key to value, in key order.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

impl<'de> Deserialize<'de> for FieldTable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, FieldValue>::deserialize(deserializer)?;
        Ok(FieldTable(map.into_iter().map(|(k, v)| (Key::from(k), v)).collect()))
    }
}

impl<K: AsRef<str> + Into<String>, V: Into<FieldValue>, const N: usize> From<[(K, V); N]> for FieldTable {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

/// Up to this many entries, [`FieldTable::insert`] grows a table by one
/// entry at a time: a message built header by header holds no unused room
/// (headers are few, so the copies while it grows are short).
const GROW_BY_ONE_UP_TO: usize = 8;

/// The most entries a table reserves room for on the word of an iterator's
/// size hint. `Vec`'s own `collect` and `extend` reserve the hint's lower
/// bound, so an iterator that overstates it (a bug, but the caller's) would
/// panic with "capacity overflow" or abort the process on a failed
/// allocation; past this, the table grows as entries actually arrive.
const RESERVE_AT_MOST: usize = 1024;

impl<K: AsRef<str> + Into<String>, V: Into<FieldValue>> FromIterator<(K, V)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut table = FieldTable::new();
        table.append(iter);
        table
    }
}

impl<K: AsRef<str> + Into<String>, V: Into<FieldValue>> Extend<(K, V)> for FieldTable {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.append(iter);
    }
}

impl FieldTable {
    /// Appends the entries, reserving room for at most [`RESERVE_AT_MOST`]
    /// up front, then sorts them in.
    fn append<K: AsRef<str> + Into<String>, V: Into<FieldValue>>(
        &mut self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) {
        let entries = entries.into_iter();
        self.0.reserve(entries.size_hint().0.min(RESERVE_AT_MOST));
        for (key, value) in entries {
            self.0.push((to_key(key), value.into()));
        }
        self.normalise();
    }
}

/// Gives an entry away with its key as a `String`.
type EntryOwned = fn((Key, FieldValue)) -> (String, FieldValue);

impl IntoIterator for FieldTable {
    type Item = (String, FieldValue);
    type IntoIter = std::iter::Map<std::vec::IntoIter<(Key, FieldValue)>, EntryOwned>;
    /// The entries, in key order.
    fn into_iter(self) -> Self::IntoIter {
        let entry: EntryOwned = |(k, v)| (k.into_string(), v);
        self.0.into_iter().map(entry)
    }
}

/// Borrows an entry as a key and a value.
type EntryRef<'a> = fn(&'a (Key, FieldValue)) -> (&'a str, &'a FieldValue);

impl<'a> IntoIterator for &'a FieldTable {
    type Item = (&'a str, &'a FieldValue);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (Key, FieldValue)>, EntryRef<'a>>;
    /// The entries, in key order.
    fn into_iter(self) -> Self::IntoIter {
        let entry: EntryRef<'a> = |(k, v)| (k.as_str(), v);
        self.0.iter().map(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_stays_40_bytes_with_its_string_inline() {
        // The size a `String` gave it (a `Bytes` is 32 bytes and the tag
        // takes a word): a table entry is its key (24) and its value, 64
        // bytes, two headers in one 144-byte allocation.
        assert_eq!(std::mem::size_of::<FieldValue>(), 40);
        assert_eq!(std::mem::size_of::<FieldString>(), std::mem::size_of::<String>());
    }

    /// An iterator that claims far more entries than it yields.
    struct Overstated(std::vec::IntoIter<(&'static str, i64)>);

    impl Iterator for Overstated {
        type Item = (&'static str, i64);
        fn next(&mut self) -> Option<Self::Item> {
            self.0.next()
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (usize::MAX, None)
        }
    }

    fn overstated() -> Overstated {
        Overstated(vec![("b", 2), ("a", 1), ("b", 3)].into_iter())
    }

    #[test]
    fn a_table_from_an_iterator_that_overstates_its_length_holds_what_it_yielded() {
        let table: FieldTable = overstated().collect();
        assert_eq!(table, FieldTable::from([("a", 1_i64), ("b", 3)]));
        let mut extended = FieldTable::from([("c", 4_i64)]);
        extended.extend(overstated());
        assert_eq!(extended, FieldTable::from([("a", 1_i64), ("b", 3), ("c", 4)]));
        assert!(extended.0.capacity() <= RESERVE_AT_MOST + 4);
    }

    #[test]
    fn a_table_built_entry_by_entry_holds_no_unused_room_while_small() {
        let mut t = FieldTable::new();
        for (n, key) in ["b", "a", "d", "c"].into_iter().enumerate() {
            t.insert(key, n as i32);
            assert_eq!(t.0.capacity(), n + 1, "room for exactly the {} entries", n + 1);
        }
        let from_array = FieldTable::from([("x", 1), ("y", 2)]);
        assert_eq!(from_array.0.capacity(), 2);
        for n in 4..GROW_BY_ONE_UP_TO {
            t.insert(format!("k{n}"), 0);
        }
        assert_eq!(t.0.capacity(), GROW_BY_ONE_UP_TO);
        t.insert("past", 0);
        assert!(t.0.capacity() > GROW_BY_ONE_UP_TO + 1, "past that, it grows as a Vec does");
        assert_eq!(t.iter().next().map(|(k, _)| k), Some("a"), "still sorted");
    }

    #[test]
    fn integers_of_any_width_are_amqp_equal() {
        assert!(FieldValue::I32(1).amqp_eq(&FieldValue::I64(1)));
        assert!(FieldValue::U8(1).amqp_eq(&FieldValue::U64(1)));
        assert!(!FieldValue::I64(-1).amqp_eq(&FieldValue::U64(u64::MAX)));
    }

    #[test]
    fn kinds_stay_apart() {
        assert!(!FieldValue::from("1").amqp_eq(&FieldValue::from(1)));
        assert!(!FieldValue::Bool(true).amqp_eq(&FieldValue::I32(1)));
    }

    /// RabbitMQ matches a timestamp header against an integer binding value
    /// of the same seconds, and the reverse.
    #[test]
    fn a_timestamp_is_an_integer_of_seconds_for_matching() {
        assert!(FieldValue::Timestamp(1).amqp_eq(&FieldValue::I64(1)));
        assert!(FieldValue::I32(7).amqp_eq(&FieldValue::Timestamp(7)));
        assert!(!FieldValue::Timestamp(1).amqp_eq(&FieldValue::I64(2)));
        assert!(!FieldValue::Timestamp(1).amqp_eq(&FieldValue::from("1")));
    }

    #[test]
    fn equality_is_total_for_floats() {
        assert_eq!(FieldValue::F64(f64::NAN), FieldValue::F64(f64::NAN));
        assert_eq!(FieldValue::F32(f32::NAN), FieldValue::F32(f32::NAN));
        assert_ne!(FieldValue::F64(0.0), FieldValue::F64(-0.0));
        assert_ne!(FieldValue::F64(1.0), FieldValue::F32(1.0));
        let nan = FieldTable::from([("x", f64::NAN)]);
        assert_eq!(nan, nan.clone());
    }

    #[test]
    fn string_equals_bytes_with_same_content() {
        assert!(FieldValue::from("ab").amqp_eq(&FieldValue::Bytes(Bytes::from_static(b"ab"))));
        assert!(!FieldValue::from("ab").amqp_eq(&FieldValue::Bytes(Bytes::from_static(b"ba"))));
    }

    #[test]
    fn tables_stay_sorted_and_keep_the_last_value_of_a_key() {
        let mut t = FieldTable::from([("b", 1), ("a", 2), ("b", 3)]);
        assert_eq!(t.to_string(), "{a=2,b=3}");
        assert_eq!(t.insert("c", 4), None);
        assert_eq!(t.insert("a", 5), Some(FieldValue::from(2)));
        t.extend([("0", 6), ("c", 7)]);
        assert_eq!(t.to_string(), "{0=6,a=5,b=3,c=7}");
        assert_eq!(t.remove("b"), Some(FieldValue::from(3)));
        assert!(!t.contains_key("b") && t.contains_key("c"));
        *t.get_mut("c").unwrap() = FieldValue::from(8);
        let keys: Vec<&str> = (&t).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["0", "a", "c"]);
        let owned: Vec<(String, FieldValue)> = t.into_iter().collect();
        assert_eq!(owned.last(), Some(&("c".to_string(), FieldValue::from(8))));
    }

    #[test]
    fn keys_of_any_length_inline_or_not_behave_alike() {
        let long = "k".repeat(300);
        let keys = ["", "x-sent-at", "twenty-four-bytes-long-k", "twenty-five-bytes-long-ke", long.as_str()];
        let mut by_str = FieldTable::new();
        let mut by_string = FieldTable::new();
        for (i, key) in keys.iter().enumerate() {
            by_str.insert(*key, i as i64);
            by_string.insert(key.to_string(), i as i64);
        }
        assert_eq!(by_str, by_string);
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(by_str.get(key), Some(&FieldValue::I64(i as i64)), "{key}");
        }
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        assert_eq!(by_str.iter().map(|(k, _)| k).collect::<Vec<_>>(), sorted);
        let bytes = bincode::serde::encode_to_vec(&by_str, bincode::config::standard()).unwrap();
        let (back, _): (FieldTable, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, by_str);
        let owned: Vec<(String, FieldValue)> = by_string.into_iter().collect();
        assert_eq!(owned.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), sorted);
    }

    #[test]
    fn a_table_serialises_as_a_map() {
        let t = FieldTable::from([("b", 1), ("a", 2)]);
        let bytes = bincode::serde::encode_to_vec(&t, bincode::config::standard()).unwrap();
        let (back, _): (FieldTable, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn values_amqp_equal_hash_alike() {
        use std::hash::{BuildHasher, Hasher};
        let state = std::hash::RandomState::new();
        let hash = |v: &FieldValue| {
            let mut h = state.build_hasher();
            v.hash_amqp(&mut h).then(|| h.finish())
        };
        let values = [
            FieldValue::I8(1),
            FieldValue::U8(1),
            FieldValue::I16(1),
            FieldValue::U32(1),
            FieldValue::I64(1),
            FieldValue::U64(1),
            FieldValue::I64(-1),
            FieldValue::U64(u64::MAX),
            FieldValue::from("1"),
            FieldValue::Bytes(Bytes::from_static(b"1")),
            FieldValue::from("ab"),
            FieldValue::Bytes(Bytes::from_static(b"ab")),
            FieldValue::Bool(true),
            FieldValue::Bool(false),
            FieldValue::Timestamp(1),
            FieldValue::F64(1.0),
            FieldValue::Void,
        ];
        for a in &values {
            for b in &values {
                if let (Some(ha), Some(hb)) = (hash(a), hash(b)) {
                    assert_eq!(a.amqp_eq(b), ha == hb, "{a:?} vs {b:?}");
                } else if a.amqp_eq(b) {
                    // Equal values are either both hashable or both not.
                    assert_eq!(hash(a).is_some(), hash(b).is_some(), "{a:?} vs {b:?}");
                }
            }
        }
        assert!(hash(&FieldValue::F64(1.0)).is_none() && hash(&FieldValue::Void).is_none());
    }

    #[test]
    fn table_order_does_not_matter() {
        let a = FieldTable::from([("x", 1), ("y", 2)]);
        let b = FieldTable::from([("y", 2), ("x", 1)]);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "{x=1,y=2}");
    }
}
