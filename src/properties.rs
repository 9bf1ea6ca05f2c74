//! The AMQP 0-9-1 basic properties of a message, packed.
//!
//! Every queued message owns (or shares) one `Properties`, so its size is
//! part of the memory a queued message costs. Thirteen optional fields laid
//! out plainly took 264 bytes, nine of them `Option<String>`s that are
//! nearly always `None`. Here the nine text properties share one boxed
//! string (no allocation when none is set) and the timestamp's presence is a
//! flag, which keeps the struct at 56 bytes and its `Arc` allocation in the
//! 80-byte size class instead of 288.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::field::FieldTable;

/// Whether a message should survive a broker restart (AMQP `delivery-mode`).
///
/// A persistent message published to a durable queue of a broker opened on
/// a data directory ([`Broker::open`](crate::Broker::open)) is written to
/// it; anywhere else the mode is carried, so that a bridge to a real
/// RabbitMQ can honour it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeliveryMode {
    /// Mode 1: may be lost on a broker restart.
    Transient,
    /// Mode 2: written to disk by a broker that has one.
    Persistent,
}

/// The nine text properties, in the order of AMQP's property list (and of
/// the serialised form): the index of each in [`Text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TextField {
    ContentType,
    ContentEncoding,
    CorrelationId,
    ReplyTo,
    Expiration,
    MessageId,
    Kind,
    UserId,
    AppId,
}

/// The text properties that are set, in one allocation: for each, in
/// [`TextField`] order, its index as one ASCII letter (`a` + index), its
/// length in decimal, `:`, then its text. Kept a `str` (the framing is
/// ASCII, so every value starts and ends on a character boundary) so that
/// reading a value is a slice, never a UTF-8 check. Canonical (one encoding
/// per set of values), so equality is byte equality.
#[derive(Clone, Default, PartialEq, Eq)]
struct Text(Box<str>);

impl Text {
    fn get(&self, field: TextField) -> Option<&str> {
        self.entries().find(|&(f, _)| f == field as u8).map(|(_, value)| value)
    }

    fn entries(&self) -> TextEntries<'_> {
        TextEntries { rest: &self.0 }
    }

    /// Sets (or with `None`, clears) one value: see [`update`](Self::update).
    fn set(&mut self, field: TextField, value: Option<&str>) {
        if value.is_none() && self.get(field).is_none() {
            return;
        }
        self.update(&[(field, value)]);
    }

    /// Sets (or with `None`, clears) each value of `updates`, which lists
    /// distinct fields in [`TextField`] order: the text is written anew
    /// once, the values kept copied in order around the new ones, into a
    /// buffer of exactly its size (so boxing it does not reallocate). (A
    /// request/reply call sets two values: written anew for each, they
    /// were a sixth of its caller's instructions, callgrind.)
    fn update(&mut self, updates: &[(TextField, Option<&str>)]) {
        debug_assert!(updates.windows(2).all(|w| w[0].0 < w[1].0), "distinct, in order");
        let replaced = |f: u8| updates.iter().any(|&(field, _)| field as u8 == f);
        let kept = self.entries().filter(|&(f, _)| !replaced(f));
        let added = updates.iter().filter_map(|&(field, value)| Some((field as u8, value?)));
        let size = kept.clone().chain(added.clone()).map(|(_, v)| entry_len(v)).sum::<usize>();
        let mut out = String::with_capacity(size);
        let mut added = added.peekable();
        for (f, existing) in kept {
            while let Some((index, value)) = added.next_if(|&(index, _)| index < f) {
                push_entry(&mut out, index, value);
            }
            push_entry(&mut out, f, existing);
        }
        for (index, value) in added {
            push_entry(&mut out, index, value);
        }
        debug_assert_eq!(out.len(), size);
        self.0 = out.into_boxed_str();
    }
}

/// The bytes one entry takes: its letter, its length's digits, `:`, its text.
fn entry_len(value: &str) -> usize {
    2 + decimal(value.len()).1 + value.len()
}

/// `n` in decimal: the digits, right-aligned in the buffer, and how many.
/// (By hand: `write!` cost a request/reply round trip about 900
/// instructions, callgrind.)
fn decimal(mut n: usize) -> ([u8; 20], usize) {
    let mut digits = [0_u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    (digits, digits.len() - at)
}

fn push_entry(out: &mut String, index: u8, value: &str) {
    // The framing is ASCII, pushed as characters: no UTF-8 check.
    let (digits, count) = decimal(value.len());
    out.push(char::from(b'a' + index));
    for &digit in &digits[digits.len() - count..] {
        out.push(char::from(digit));
    }
    out.push(':');
    out.push_str(value);
}

/// The entries of a [`Text`]: (index, value).
#[derive(Clone)]
struct TextEntries<'a> {
    rest: &'a str,
}

impl<'a> Iterator for TextEntries<'a> {
    type Item = (u8, &'a str);

    fn next(&mut self) -> Option<(u8, &'a str)> {
        let bytes = self.rest.as_bytes();
        let index = bytes.first()?.wrapping_sub(b'a');
        let mut len = 0usize;
        let mut at = 1;
        while let Some(&digit) = bytes.get(at).filter(|b| b.is_ascii_digit()) {
            len = len * 10 + usize::from(digit - b'0');
            at += 1;
        }
        // `at` is the `:`; the framing is ASCII, so both ends are boundaries.
        let start = at + 1;
        let value = self.rest.get(start..start + len)?;
        self.rest = &self.rest[start + len..];
        Some((index, value))
    }
}

/// The AMQP 0-9-1 basic properties of a [`Message`](crate::Message).
///
/// Every property is optional, as on the wire. Read them through the
/// getters; set them through the `with_*` builders (here or on
/// [`Message`](crate::Message)) or the `set_*` and `clear_*` methods.
/// Packed: 56 bytes, whatever is set (the text properties share one
/// allocation, made only when one is set).
///
/// ```
/// use interoffice::{DeliveryMode, Properties};
/// let mut properties = Properties::default()
///     .with_content_type("application/json")
///     .with_correlation_id("req-7")
///     .with_delivery_mode(DeliveryMode::Persistent);
/// assert_eq!(properties.correlation_id(), Some("req-7"));
/// assert_eq!(properties.reply_to(), None);
/// properties.set_reply_to("amq.rabbitmq.reply-to");
/// properties.clear_correlation_id();
/// assert_eq!(properties.reply_to(), Some("amq.rabbitmq.reply-to"));
/// assert_eq!(properties.correlation_id(), None);
/// assert_eq!(properties.content_type(), Some("application/json"));
/// ```
#[derive(Clone, Default, PartialEq)]
pub struct Properties {
    headers: Option<FieldTable>,
    text: Text,
    /// Meaningful only while `has_timestamp`: a flag beside a bare `u64`
    /// saves the eight bytes an `Option<u64>` pads to.
    timestamp: u64,
    has_timestamp: bool,
    delivery_mode: Option<DeliveryMode>,
    priority: Option<u8>,
}

macro_rules! text_properties {
    ($($field:ident: $get:ident, $set:ident, $clear:ident, $with:ident, $what:literal;)*) => {
        $(
            #[doc = concat!("The ", $what, ", if set.")]
            pub fn $get(&self) -> Option<&str> {
                self.text.get(TextField::$field)
            }

            #[doc = concat!("Sets the ", $what, ".")]
            pub fn $set(&mut self, value: impl AsRef<str>) {
                self.text.set(TextField::$field, Some(value.as_ref()));
            }

            #[doc = concat!("Removes the ", $what, ".")]
            pub fn $clear(&mut self) {
                self.text.set(TextField::$field, None);
            }

            #[doc = concat!("Builder form of [`", stringify!($set), "`](Self::", stringify!($set), ").")]
            #[must_use]
            pub fn $with(mut self, value: impl AsRef<str>) -> Self {
                self.$set(value);
                self
            }
        )*
    };
}

macro_rules! plain_properties {
    ($($field:ident: $ty:ty, $set:ident, $clear:ident, $with:ident, $what:literal;)*) => {
        $(
            #[doc = concat!("The ", $what, ", if set.")]
            pub fn $field(&self) -> Option<$ty> {
                self.$field
            }

            #[doc = concat!("Sets the ", $what, ".")]
            pub fn $set(&mut self, value: $ty) {
                self.$field = Some(value);
            }

            #[doc = concat!("Removes the ", $what, ".")]
            pub fn $clear(&mut self) {
                self.$field = None;
            }

            #[doc = concat!("Builder form of [`", stringify!($set), "`](Self::", stringify!($set), ").")]
            #[must_use]
            pub fn $with(mut self, value: $ty) -> Self {
                self.$field = Some(value);
                self
            }
        )*
    };
}

impl Properties {
    /// Sets a request's correlation id and reply-to address at once (the
    /// text written anew once, not twice).
    pub(crate) fn set_call(&mut self, correlation_id: &str, reply_to: &str) {
        self.text.update(&[
            (TextField::CorrelationId, Some(correlation_id)),
            (TextField::ReplyTo, Some(reply_to)),
        ]);
    }

    text_properties! {
        ContentType: content_type, set_content_type, clear_content_type, with_content_type,
            "MIME type of the body (e.g. `application/json`)";
        ContentEncoding: content_encoding, set_content_encoding, clear_content_encoding, with_content_encoding,
            "encoding of the body (e.g. `gzip`)";
        CorrelationId: correlation_id, set_correlation_id, clear_correlation_id, with_correlation_id,
            "correlation id, which ties a reply to its request";
        ReplyTo: reply_to, set_reply_to, clear_reply_to, with_reply_to,
            "address a reply should be sent to (a queue name, or direct reply-to)";
        Expiration: expiration, set_expiration, clear_expiration, with_expiration,
            "per-message time to live, in milliseconds as a decimal string (AMQP's form)";
        MessageId: message_id, set_message_id, clear_message_id, with_message_id,
            "application-assigned message id";
        Kind: kind, set_kind, clear_kind, with_kind,
            "message type name (AMQP `type`)";
        UserId: user_id, set_user_id, clear_user_id, with_user_id,
            "publishing user's id";
        AppId: app_id, set_app_id, clear_app_id, with_app_id,
            "publishing application's id";
    }

    /// The application headers (also what a headers exchange matches on),
    /// if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.headers.as_ref()
    }

    /// The headers, to change, set or take.
    ///
    /// ```
    /// use interoffice::{FieldTable, Properties};
    /// let mut properties = Properties::default();
    /// properties.headers_mut().get_or_insert_with(FieldTable::new).insert("tier", 2);
    /// assert_eq!(properties.headers().map(FieldTable::len), Some(1));
    /// ```
    pub fn headers_mut(&mut self) -> &mut Option<FieldTable> {
        &mut self.headers
    }

    /// Builder form: replaces the headers.
    #[must_use]
    pub fn with_headers(mut self, headers: FieldTable) -> Self {
        self.headers = Some(headers);
        self
    }

    plain_properties! {
        delivery_mode: DeliveryMode, set_delivery_mode, clear_delivery_mode, with_delivery_mode,
            "delivery mode (transient or persistent)";
        priority: u8, set_priority, clear_priority, with_priority,
            "priority (0..=255, used by priority queues)";
    }

    /// The timestamp, in seconds since the Unix epoch, if set.
    pub fn timestamp(&self) -> Option<u64> {
        self.has_timestamp.then_some(self.timestamp)
    }

    /// Sets the timestamp, in seconds since the Unix epoch.
    pub fn set_timestamp(&mut self, seconds: u64) {
        self.timestamp = seconds;
        self.has_timestamp = true;
    }

    /// Removes the timestamp.
    pub fn clear_timestamp(&mut self) {
        self.timestamp = 0;
        self.has_timestamp = false;
    }

    /// Builder form of [`set_timestamp`](Self::set_timestamp).
    #[must_use]
    pub fn with_timestamp(mut self, seconds: u64) -> Self {
        self.set_timestamp(seconds);
        self
    }

    /// The properties laid out one field each, borrowed: what is
    /// serialised and shown.
    fn unpacked(&self) -> Unpacked<'_> {
        Unpacked {
            content_type: self.content_type(),
            content_encoding: self.content_encoding(),
            headers: self.headers.as_ref(),
            delivery_mode: self.delivery_mode,
            priority: self.priority,
            correlation_id: self.correlation_id(),
            reply_to: self.reply_to(),
            expiration: self.expiration(),
            message_id: self.message_id(),
            timestamp: self.timestamp(),
            kind: self.kind(),
            user_id: self.user_id(),
            app_id: self.app_id(),
        }
    }
}

/// The serialised form: thirteen optional fields in AMQP's order, as the
/// struct was before it was packed, so a data directory written then reads
/// back now (and the other way round).
#[derive(Serialize)]
#[serde(rename = "Properties")]
struct Unpacked<'a> {
    content_type: Option<&'a str>,
    content_encoding: Option<&'a str>,
    headers: Option<&'a FieldTable>,
    delivery_mode: Option<DeliveryMode>,
    priority: Option<u8>,
    correlation_id: Option<&'a str>,
    reply_to: Option<&'a str>,
    expiration: Option<&'a str>,
    message_id: Option<&'a str>,
    timestamp: Option<u64>,
    kind: Option<&'a str>,
    user_id: Option<&'a str>,
    app_id: Option<&'a str>,
}

/// [`Unpacked`], owned, to deserialise into.
#[derive(Deserialize)]
#[serde(rename = "Properties")]
struct UnpackedOwned {
    content_type: Option<String>,
    content_encoding: Option<String>,
    headers: Option<FieldTable>,
    delivery_mode: Option<DeliveryMode>,
    priority: Option<u8>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    expiration: Option<String>,
    message_id: Option<String>,
    timestamp: Option<u64>,
    kind: Option<String>,
    user_id: Option<String>,
    app_id: Option<String>,
}

impl Serialize for Properties {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.unpacked().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let u = UnpackedOwned::deserialize(deserializer)?;
        let mut p = Properties {
            headers: u.headers,
            delivery_mode: u.delivery_mode,
            priority: u.priority,
            ..Properties::default()
        };
        if let Some(seconds) = u.timestamp {
            p.set_timestamp(seconds);
        }
        let texts = [
            (TextField::ContentType, u.content_type),
            (TextField::ContentEncoding, u.content_encoding),
            (TextField::CorrelationId, u.correlation_id),
            (TextField::ReplyTo, u.reply_to),
            (TextField::Expiration, u.expiration),
            (TextField::MessageId, u.message_id),
            (TextField::Kind, u.kind),
            (TextField::UserId, u.user_id),
            (TextField::AppId, u.app_id),
        ];
        // In field order, so each is appended: one pass, no rewrites.
        let size = texts.iter().filter_map(|(_, v)| v.as_deref()).map(entry_len).sum();
        let mut text = String::with_capacity(size);
        for (field, value) in texts {
            if let Some(value) = value {
                push_entry(&mut text, field as u8, &value);
            }
        }
        p.text = Text(text.into_boxed_str());
        Ok(p)
    }
}

impl fmt::Debug for Properties {
    /// Every field, set or not, as a plain struct's derived `Debug` shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = self.unpacked();
        f.debug_struct("Properties")
            .field("content_type", &u.content_type)
            .field("content_encoding", &u.content_encoding)
            .field("headers", &u.headers)
            .field("delivery_mode", &u.delivery_mode)
            .field("priority", &u.priority)
            .field("correlation_id", &u.correlation_id)
            .field("reply_to", &u.reply_to)
            .field("expiration", &u.expiration)
            .field("message_id", &u.message_id)
            .field("timestamp", &u.timestamp)
            .field("kind", &u.kind)
            .field("user_id", &u.user_id)
            .field("app_id", &u.app_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::FieldValue;

    /// The struct as it was before it was packed: its serialised form is
    /// what data directories hold.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Plain {
        content_type: Option<String>,
        content_encoding: Option<String>,
        headers: Option<FieldTable>,
        delivery_mode: Option<DeliveryMode>,
        priority: Option<u8>,
        correlation_id: Option<String>,
        reply_to: Option<String>,
        expiration: Option<String>,
        message_id: Option<String>,
        timestamp: Option<u64>,
        kind: Option<String>,
        user_id: Option<String>,
        app_id: Option<String>,
    }

    fn full() -> (Properties, Plain) {
        let headers = FieldTable::from([("x-tier", FieldValue::from(2)), ("region", "eu".into())]);
        let packed = Properties::default()
            .with_app_id("billing")
            .with_content_type("application/json")
            .with_content_encoding("gzip")
            .with_headers(headers.clone())
            .with_delivery_mode(DeliveryMode::Persistent)
            .with_priority(7)
            .with_correlation_id("c:1:2")
            .with_reply_to("amq.rabbitmq.reply-to")
            .with_expiration("60000")
            .with_message_id("ünïcödé-ids-are-fine, 9:9")
            .with_timestamp(1_700_000_000)
            .with_kind("order.placed")
            .with_user_id("guest");
        let plain = Plain {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(headers),
            delivery_mode: Some(DeliveryMode::Persistent),
            priority: Some(7),
            correlation_id: Some("c:1:2".into()),
            reply_to: Some("amq.rabbitmq.reply-to".into()),
            expiration: Some("60000".into()),
            message_id: Some("ünïcödé-ids-are-fine, 9:9".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("order.placed".into()),
            user_id: Some("guest".into()),
            app_id: Some("billing".into()),
        };
        (packed, plain)
    }

    #[test]
    fn packed_properties_fit_the_80_byte_allocation_class() {
        assert!(std::mem::size_of::<Properties>() <= 56, "{}", std::mem::size_of::<Properties>());
    }

    #[test]
    fn every_property_reads_back_as_set_in_any_order() {
        let (p, plain) = full();
        assert_eq!(p.content_type(), plain.content_type.as_deref());
        assert_eq!(p.content_encoding(), plain.content_encoding.as_deref());
        assert_eq!(p.headers(), plain.headers.as_ref());
        assert_eq!(p.delivery_mode(), plain.delivery_mode);
        assert_eq!(p.priority(), plain.priority);
        assert_eq!(p.correlation_id(), plain.correlation_id.as_deref());
        assert_eq!(p.reply_to(), plain.reply_to.as_deref());
        assert_eq!(p.expiration(), plain.expiration.as_deref());
        assert_eq!(p.message_id(), plain.message_id.as_deref());
        assert_eq!(p.timestamp(), plain.timestamp);
        assert_eq!(p.kind(), plain.kind.as_deref());
        assert_eq!(p.user_id(), plain.user_id.as_deref());
        assert_eq!(p.app_id(), plain.app_id.as_deref());
    }

    #[test]
    fn equal_values_are_equal_whatever_order_they_were_set_in() {
        let a = Properties::default().with_reply_to("r").with_message_id("m").with_kind("k");
        let mut b = Properties::default().with_kind("k").with_correlation_id("x");
        b.set_message_id("m");
        b.set_reply_to("r");
        assert_ne!(a, b);
        b.clear_correlation_id();
        assert_eq!(a, b);
    }

    #[test]
    fn clearing_and_replacing_values_keeps_the_others() {
        let (mut p, _) = full();
        p.set_message_id("");
        assert_eq!(p.message_id(), Some(""));
        p.set_correlation_id("x".repeat(1000));
        p.clear_reply_to();
        p.clear_app_id();
        p.clear_content_type();
        assert_eq!(p.correlation_id().map(str::len), Some(1000));
        assert_eq!(p.reply_to(), None);
        assert_eq!(p.app_id(), None);
        assert_eq!(p.content_type(), None);
        assert_eq!(p.content_encoding(), Some("gzip"));
        assert_eq!(p.user_id(), Some("guest"));
        assert_eq!(p.message_id(), Some(""));
        for clear in [
            Properties::clear_content_encoding,
            Properties::clear_correlation_id,
            Properties::clear_expiration,
            Properties::clear_message_id,
            Properties::clear_kind,
            Properties::clear_user_id,
        ] {
            clear(&mut p);
        }
        assert!(p.text.0.is_empty(), "every text cleared frees the text");
        p.clear_timestamp();
        p.clear_priority();
        p.clear_delivery_mode();
        *p.headers_mut() = None;
        assert_eq!(p, Properties::default());
    }

    proptest::proptest! {
        /// Any sequence of sets and clears leaves each text property at
        /// its last value, as nine separate `Option<String>`s would.
        #[test]
        fn text_properties_behave_as_separate_fields(
            ops in proptest::collection::vec((0_u8..9, proptest::option::of("[a-c0-9:é]{0,12}")), 0..40)
        ) {
            let mut packed = Properties::default();
            let mut plain: [Option<String>; 9] = Default::default();
            let fields = [
                TextField::ContentType, TextField::ContentEncoding, TextField::CorrelationId,
                TextField::ReplyTo, TextField::Expiration, TextField::MessageId,
                TextField::Kind, TextField::UserId, TextField::AppId,
            ];
            for (i, value) in ops {
                packed.text.set(fields[usize::from(i)], value.as_deref());
                plain[usize::from(i)] = value;
                for (field, want) in fields.iter().zip(&plain) {
                    proptest::prop_assert_eq!(packed.text.get(*field), want.as_deref());
                }
            }
        }

        /// Two values updated at once leave the same text, byte for byte,
        /// as the two set one after the other, whatever surrounds them.
        #[test]
        fn two_values_updated_at_once_are_the_two_set_in_turn(
            start in proptest::collection::vec((0_u8..9, "[a-c0-9:é]{0,12}"), 0..12),
            (i, j) in proptest::strategy::Strategy::prop_filter((0_u8..9, 0_u8..9), "distinct", |(i, j)| i != j),
            a in proptest::option::of("[a-c0-9:é]{0,40}"),
            b in proptest::option::of("[a-c0-9:é]{0,40}"),
        ) {
            let fields = [
                TextField::ContentType, TextField::ContentEncoding, TextField::CorrelationId,
                TextField::ReplyTo, TextField::Expiration, TextField::MessageId,
                TextField::Kind, TextField::UserId, TextField::AppId,
            ];
            let mut in_turn = Properties::default();
            for (f, value) in &start {
                in_turn.text.set(fields[usize::from(*f)], Some(value));
            }
            let mut at_once = in_turn.clone();
            in_turn.text.set(fields[usize::from(i)], a.as_deref());
            in_turn.text.set(fields[usize::from(j)], b.as_deref());
            let (first, second) = if i < j { ((i, &a), (j, &b)) } else { ((j, &b), (i, &a)) };
            at_once.text.update(&[
                (fields[usize::from(first.0)], first.1.as_deref()),
                (fields[usize::from(second.0)], second.1.as_deref()),
            ]);
            proptest::prop_assert_eq!(&*at_once.text.0, &*in_turn.text.0);
        }
    }

    #[test]
    fn a_calls_two_values_set_at_once_read_back_beside_the_others() {
        let mut p = Properties::default().with_content_type("text/plain").with_app_id("billing");
        p.set_call("amq.rabbitmq.reply-to.x.7", "amq.rabbitmq.reply-to.x");
        assert_eq!(p.correlation_id(), Some("amq.rabbitmq.reply-to.x.7"));
        assert_eq!(p.reply_to(), Some("amq.rabbitmq.reply-to.x"));
        assert_eq!((p.content_type(), p.app_id()), (Some("text/plain"), Some("billing")));
        let by_setters = Properties::default()
            .with_content_type("text/plain")
            .with_reply_to("amq.rabbitmq.reply-to.x")
            .with_app_id("billing")
            .with_correlation_id("amq.rabbitmq.reply-to.x.7");
        assert_eq!(p, by_setters, "one encoding whichever way it was set");
    }

    #[test]
    fn the_serialised_form_is_the_unpacked_structs() {
        let (packed, plain) = full();
        for (packed, plain) in [(packed, plain), (Properties::default(), Plain::default())] {
            let config = bincode::config::standard();
            let ours = bincode::serde::encode_to_vec(&packed, config).unwrap();
            assert_eq!(ours, bincode::serde::encode_to_vec(&plain, config).unwrap());
            let (back, _): (Properties, usize) = bincode::serde::decode_from_slice(&ours, config).unwrap();
            assert_eq!(back, packed);
            let json = serde_json::to_string(&packed).unwrap();
            assert_eq!(json, serde_json::to_string(&plain).unwrap());
            assert_eq!(serde_json::from_str::<Properties>(&json).unwrap(), packed);
            assert_eq!(format!("{packed:?}"), format!("{plain:?}").replacen("Plain", "Properties", 1));
        }
    }
}
