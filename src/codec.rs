//! Typed messages: encoding values into message bodies and decoding them back.
//!
//! A [`Codec`] turns any `serde` value into a body and back, and names the
//! content type it writes. Encoding sets that content type on the message, so
//! a consumer can decode without knowing how the publisher encoded:
//! [`Delivery::decode`] picks the codec by the message's `content_type`.
//!
//! | codec | content type | cargo feature |
//! |---|---|---|
//! | [`Bincode`] (the default) | `application/x-bincode` | always on |
//! | `MsgPack` (`rmp-serde`, named fields) | `application/msgpack` (also reads `application/x-msgpack`) | `msgpack` |
//! | `Json` (`serde_json`) | `application/json` (also reads `…+json`) | `json` |
//!
//! Decoding never settles a delivery: when a body does not decode, the
//! caller still holds the delivery and decides what becomes of it (typically
//! `reject(false)`, so that it is dead-lettered where someone can look at it).
//! A body that does not decode is an error, never a panic.

use std::any::type_name;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::error::PublishError;
use crate::message::Message;

/// A way to turn `serde` values into message bodies and back.
///
/// The built-in codecs are [`Bincode`] (always available), `MsgPack`
/// (feature `msgpack`) and `Json` (feature `json`). Implement it for another
/// format to use it with [`Message::encode_with`] and [`Message::decode_with`];
/// [`Message::decode`], which chooses by content type, knows only the
/// built-in ones.
///
/// ```
/// use interoffice::{Bincode, Codec};
///
/// let body = Bincode::encode(&(7u32, "seven"))?;
/// let back: (u32, String) = Bincode::decode(&body)?;
/// assert_eq!(back, (7, "seven".to_string()));
/// assert_eq!(Bincode::CONTENT_TYPE, "application/x-bincode");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Codec {
    /// The content type this codec writes, e.g. `application/json`.
    const CONTENT_TYPE: &'static str;

    /// Encodes `value` into a body.
    ///
    /// # Errors
    ///
    /// [`EncodeError`] if the value cannot be encoded.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, EncodeError>;

    /// Decodes a whole body into a `T`. Bytes left over after the value are
    /// an error: a body that holds more than a `T` is not a `T`.
    ///
    /// # Errors
    ///
    /// [`DecodeError`]: the body is not a whole value of the type, or its content type names no codec of this build.
    fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError>;

    /// Whether this codec reads bodies of `media_type`: a content type
    /// without its parameters (`application/json`, not
    /// `application/json; charset=utf-8`), in any letter case. By default,
    /// exactly [`CONTENT_TYPE`](Self::CONTENT_TYPE).
    fn accepts(media_type: &str) -> bool {
        media_type.eq_ignore_ascii_case(Self::CONTENT_TYPE)
    }
}

/// The default codec: [bincode 2](https://docs.rs/bincode/2) through `serde`,
/// with its standard configuration (little-endian, variable-length integers).
/// Compact and fast, but not self-describing: both sides must agree on the
/// type. Content type `application/x-bincode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Bincode;

impl Codec for Bincode {
    const CONTENT_TYPE: &'static str = "application/x-bincode";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, EncodeError> {
        bincode::serde::encode_to_vec(value, bincode::config::standard())
            .map(Bytes::from)
            .map_err(|e| EncodeError::new::<T>(Self::CONTENT_TYPE, e))
    }

    fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
        let malformed = |reason: String| DecodeError::malformed::<T>(Self::CONTENT_TYPE, reason);
        let (value, used) = bincode_decode_bounded::<T>(body).map_err(|e| match e {
            bincode::error::DecodeError::LimitExceeded => {
                malformed("a length in the body is larger than the body can hold".to_owned())
            }
            other => malformed(other.to_string()),
        })?;
        if used != body.len() {
            return Err(malformed(format!("{} trailing byte(s) after the value", body.len() - used)));
        }
        Ok(value)
    }
}

/// Decodes with a bincode byte limit scaled to the body's length.
///
/// Why: bincode allocates a string's buffer from its length prefix before
/// reading it, so without a limit a few malformed bytes claiming a length of
/// 2^60 abort the process (allocation failure) or panic (capacity overflow).
/// With a limit, bincode checks each claim first and fails with
/// `LimitExceeded`. Bincode counts a claim in memory size, at most 16 times
/// the encoded size (a `u128` in one varint byte), so a limit of 16 × the body
/// length never refuses a valid body. The limit is a const generic, hence a
/// few size classes rather than the exact length.
fn bincode_decode_bounded<T: DeserializeOwned>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    // 2^32 where `usize` has room for it; `usize::MAX` on 32-bit targets.
    const LARGE: usize = (u32::MAX as usize).saturating_add(1);
    // Past 256 MiB (twice the broker's default maximum message size) there
    // is no tighter class: `isize::MAX` still turns a length that could
    // never be allocated into an error rather than a capacity-overflow panic.
    const HUGE: usize = isize::MAX as usize;
    fn with_limit<T: DeserializeOwned, const LIMIT: usize>(
        body: &[u8],
    ) -> Result<(T, usize), bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(body, bincode::config::standard().with_limit::<LIMIT>())
    }
    let len = body.len();
    if len <= 0x1000 {
        with_limit::<T, 0x1_0000>(body)
    } else if len <= 0x10_0000 {
        with_limit::<T, 0x100_0000>(body)
    } else if len <= 0x1000_0000 {
        with_limit::<T, LARGE>(body)
    } else {
        with_limit::<T, HUGE>(body)
    }
}

/// [MessagePack](https://msgpack.org) through `rmp-serde`, structs as maps
/// with field names (so fields may be added or reordered between versions).
/// Content type `application/msgpack`; decoding also accepts the older
/// `application/x-msgpack`. Needs the `msgpack` feature.
#[cfg(feature = "msgpack")]
#[cfg_attr(docsrs, doc(cfg(feature = "msgpack")))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MsgPack;

#[cfg(feature = "msgpack")]
#[cfg_attr(docsrs, doc(cfg(feature = "msgpack")))]
impl Codec for MsgPack {
    const CONTENT_TYPE: &'static str = "application/msgpack";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, EncodeError> {
        rmp_serde::to_vec_named(value)
            .map(Bytes::from)
            .map_err(|e| EncodeError::new::<T>(Self::CONTENT_TYPE, e))
    }

    fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
        // Why a reader rather than `rmp_serde::from_slice`: `from_slice` does
        // not tell how much it read, and trailing bytes must be an error here.
        // The reader grows string buffers as bytes arrive, so a malformed
        // length cannot make it allocate more than the body.
        let mut rest = body;
        let value = T::deserialize(&mut rmp_serde::Deserializer::new(&mut rest))
            .map_err(|e| DecodeError::malformed::<T>(Self::CONTENT_TYPE, e.to_string()))?;
        if !rest.is_empty() {
            let reason = format!("{} trailing byte(s) after the value", rest.len());
            return Err(DecodeError::malformed::<T>(Self::CONTENT_TYPE, reason));
        }
        Ok(value)
    }

    fn accepts(media_type: &str) -> bool {
        media_type.eq_ignore_ascii_case(Self::CONTENT_TYPE)
            || media_type.eq_ignore_ascii_case("application/x-msgpack")
    }
}

/// JSON through `serde_json`: readable and self-describing, larger and
/// slower than the binary codecs. Content type `application/json`; decoding
/// also accepts structured-syntax types ending in `+json` (RFC 6839), e.g.
/// `application/vnd.acme.order+json`. Needs the `json` feature.
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Json;

#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
impl Codec for Json {
    const CONTENT_TYPE: &'static str = "application/json";

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, EncodeError> {
        serde_json::to_vec(value).map(Bytes::from).map_err(|e| EncodeError::new::<T>(Self::CONTENT_TYPE, e))
    }

    fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
        // `from_slice` already refuses anything but whitespace after the value.
        serde_json::from_slice(body)
            .map_err(|e| DecodeError::malformed::<T>(Self::CONTENT_TYPE, e.to_string()))
    }

    fn accepts(media_type: &str) -> bool {
        media_type.eq_ignore_ascii_case(Self::CONTENT_TYPE) || is_json_suffixed(media_type)
    }
}

/// Whether `media_type` ends in `+json`, in any letter case.
fn is_json_suffixed(media_type: &str) -> bool {
    let bytes = media_type.as_bytes();
    bytes.len() > 5 && bytes[bytes.len() - 5..].eq_ignore_ascii_case(b"+json")
}

/// A content type without its parameters and surrounding blanks:
/// `application/json` for `" application/json; charset=utf-8"`.
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// Why a value could not be encoded: its `Serialize` implementation failed,
/// or the format cannot represent it (e.g. a map with non-string keys in
/// JSON, a sequence of unknown length in bincode).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The codec refused the value.
    #[error("cannot encode {type_name} as {content_type}: {reason}")]
    Unencodable {
        /// The codec's content type.
        content_type: &'static str,
        /// The type of the value.
        type_name: &'static str,
        /// What the codec said.
        reason: String,
    },
}

impl EncodeError {
    /// The error for a `T` that the codec of `content_type` refused, for
    /// implementations of [`Codec`].
    pub fn new<T: ?Sized>(content_type: &'static str, reason: impl std::fmt::Display) -> Self {
        EncodeError::Unencodable { content_type, type_name: type_name::<T>(), reason: reason.to_string() }
    }
}

/// Why a message body could not be decoded. The message is untouched: a
/// delivery that does not decode is still unsettled, to be nacked, rejected
/// (dead-lettered) or acknowledged by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message has no `content_type`, so there is no telling how it was
    /// encoded. Decode with a chosen codec instead: [`Message::decode_with`].
    #[error("the message has no content type: cannot choose a codec (decode with a chosen one instead)")]
    MissingContentType,
    /// No codec in this build reads the message's content type.
    #[error(
        "unsupported content type '{content_type}'{}",
        .hint.map(|hint| format!(": {hint}")).unwrap_or_default()
    )]
    UnsupportedContentType {
        /// The message's content type.
        content_type: String,
        /// What would make it decodable, when something would: e.g. enabling
        /// the `json` feature for `application/json`.
        hint: Option<&'static str>,
    },
    /// The body is not an encoded `type_name`: truncated, corrupt, with
    /// bytes left over, or an encoding of another type.
    #[error("malformed {content_type} body for {type_name}: {reason}")]
    Malformed {
        /// The content type of the codec that tried.
        content_type: &'static str,
        /// The type it was decoded into.
        type_name: &'static str,
        /// What the codec said.
        reason: String,
    },
}

impl DecodeError {
    /// The error for a body that the codec of `content_type` could not
    /// decode into a `T`, for implementations of [`Codec`].
    pub fn malformed<T: ?Sized>(content_type: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::Malformed { content_type, type_name: type_name::<T>(), reason: reason.into() }
    }
}

/// Why [`Connection::publish_typed`](crate::Connection::publish_typed) failed.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum TypedPublishError {
    /// The value could not be encoded; nothing was published.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The publish failed; the error hands the encoded message back.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Decodes `message` with the built-in codec its content type names.
fn decode_by_content_type<T: DeserializeOwned>(message: &Message) -> Result<T, DecodeError> {
    let content_type = message.properties().content_type().ok_or(DecodeError::MissingContentType)?;
    let media_type = media_type(content_type);
    let body = message.body();
    if Bincode::accepts(media_type) {
        return Bincode::decode(body);
    }
    #[cfg(feature = "msgpack")]
    if MsgPack::accepts(media_type) {
        return MsgPack::decode(body);
    }
    #[cfg(feature = "json")]
    if Json::accepts(media_type) {
        return Json::decode(body);
    }
    Err(DecodeError::UnsupportedContentType {
        content_type: content_type.to_owned(),
        hint: missing_feature_hint(media_type),
    })
}

/// The feature to enable when `media_type` is a built-in codec's that this
/// build leaves out.
fn missing_feature_hint(media_type: &str) -> Option<&'static str> {
    let is_msgpack = media_type.eq_ignore_ascii_case("application/msgpack")
        || media_type.eq_ignore_ascii_case("application/x-msgpack");
    let is_json = media_type.eq_ignore_ascii_case("application/json") || is_json_suffixed(media_type);
    // With the feature on, the codec took the type before this is asked.
    if is_msgpack && cfg!(not(feature = "msgpack")) {
        Some("enable the `msgpack` feature of interoffice to decode MessagePack")
    } else if is_json && cfg!(not(feature = "json")) {
        Some("enable the `json` feature of interoffice to decode JSON")
    } else {
        None
    }
}

impl Message {
    /// A message whose body is `value` encoded with [`Bincode`], the default
    /// codec, and whose content type says so. Add other properties with the
    /// `with_*` methods as usual.
    ///
    /// ```
    /// use interoffice::{Message, Properties};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// struct OrderPlaced { order: u64, lines: Vec<String> }
    ///
    /// let placed = OrderPlaced { order: 42, lines: vec!["tea".into()] };
    /// let msg = Message::encode(&placed)?.with_message_id("order-42");
    /// assert_eq!(msg.properties().content_type(), Some("application/x-bincode"));
    /// assert_eq!(msg.decode::<OrderPlaced>()?, placed);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`EncodeError`] if the value cannot be encoded.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Message, EncodeError> {
        Message::encode_with::<Bincode, T>(value)
    }

    /// A message whose body is `value` encoded with codec `C`, and whose
    /// content type is `C`'s.
    ///
    /// ```
    /// use interoffice::{Bincode, Message};
    /// let msg = Message::encode_with::<Bincode, _>("hello")?;
    /// assert_eq!(msg.decode::<String>()?, "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`EncodeError`] if the value cannot be encoded.
    pub fn encode_with<C: Codec, T: Serialize + ?Sized>(value: &T) -> Result<Message, EncodeError> {
        Ok(Message::new(C::encode(value)?).with_content_type(C::CONTENT_TYPE))
    }

    /// Decodes the body with the built-in codec its content type names (its
    /// parameters and letter case aside): [`Bincode`], or `MsgPack` and
    /// `Json` when their features are on.
    ///
    /// Fails with [`DecodeError::MissingContentType`] if the message has no
    /// content type, [`DecodeError::UnsupportedContentType`] if no codec in
    /// this build reads it, and [`DecodeError::Malformed`] if the body is not
    /// a `T`.
    ///
    /// # Errors
    ///
    /// [`DecodeError`]: the body is not a whole value of the type, or its content type names no codec of this build.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        decode_by_content_type(self)
    }

    /// Decodes the body with codec `C`, whatever the content type says: for
    /// messages from publishers that do not set it.
    ///
    /// # Errors
    ///
    /// [`DecodeError`]: the body is not a whole value of the type, or its content type names no codec of this build.
    pub fn decode_with<C: Codec, T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        C::decode(self.body())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Status {
        Pending,
        Paid { amount_cents: u64 },
        Refunded(String),
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u128,
        customer: String,
        lines: Vec<(String, u32)>,
        note: Option<String>,
        status: Status,
        tags: BTreeMap<String, i64>,
    }

    fn order() -> Order {
        Order {
            id: u128::MAX - 1,
            customer: "Ada Lovelace — Ltd".into(),
            lines: vec![("tea".into(), 2), ("scones".into(), 12)],
            note: None,
            status: Status::Paid { amount_cents: 1250 },
            tags: BTreeMap::from([("priority".into(), -3)]),
        }
    }

    /// Every codec of this build must pass these.
    fn check_codec<C: Codec>() {
        let body = C::encode(&order()).unwrap();
        assert_eq!(C::decode::<Order>(&body).unwrap(), order());
        for status in [Status::Pending, Status::Refunded("damaged".into())] {
            assert_eq!(C::decode::<Status>(&C::encode(&status).unwrap()).unwrap(), status);
        }

        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(matches!(C::decode::<Order>(&trailing), Err(DecodeError::Malformed { .. })));
        for cut in [0, 1, body.len() / 2, body.len() - 1] {
            let err = C::decode::<Order>(&body[..cut]).unwrap_err();
            assert!(
                matches!(&err, DecodeError::Malformed { content_type, type_name, .. }
                    if *content_type == C::CONTENT_TYPE && type_name.ends_with("Order")),
                "{err:?}"
            );
        }
        assert!(C::decode::<Vec<bool>>(&C::encode("hello").unwrap()).is_err());
        assert!(C::accepts(C::CONTENT_TYPE));
        assert!(C::accepts(&C::CONTENT_TYPE.to_ascii_uppercase()));
    }

    #[test]
    fn bincode_round_trips_and_refuses_what_is_not_a_whole_value() {
        check_codec::<Bincode>();
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_round_trips_and_refuses_what_is_not_a_whole_value() {
        check_codec::<MsgPack>();
        assert!(MsgPack::accepts("application/x-msgpack"));
        // Named fields: the field names are in the body.
        let body = MsgPack::encode(&order()).unwrap();
        assert!(body.windows(8).any(|w| w == b"customer"));
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_round_trips_and_refuses_what_is_not_a_whole_value() {
        check_codec::<Json>();
        assert!(Json::accepts("application/vnd.acme.order+JSON"));
        assert!(!Json::accepts("+json"));
        // Whitespace after the value is still one value.
        assert_eq!(Json::decode::<u32>(b" 7 \n").unwrap(), 7);
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_refuses_what_it_cannot_represent() {
        let err = Json::encode(&BTreeMap::from([((1, 2), "pair key")])).unwrap_err();
        let EncodeError::Unencodable { content_type, type_name, .. } = &err;
        assert_eq!(*content_type, "application/json");
        assert!(type_name.contains("BTreeMap"), "{type_name}");
    }

    #[test]
    fn a_huge_length_prefix_in_a_bincode_body_is_an_error_not_an_allocation() {
        // A string whose varint length prefix (0xfd: a u64 follows) claims
        // 2^60 bytes, then 3 bytes of it: without a limit bincode would try
        // to allocate the lot before reading.
        let mut body = vec![0xfd];
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        body.extend_from_slice(b"abc");
        let err = Bincode::decode::<String>(&body).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
        // Beyond what `isize` can hold: an error too, not a capacity overflow.
        body[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Bincode::decode::<Vec<u8>>(&body).is_err());
        assert!(Bincode::decode::<serde_bytes_like::Buf>(&body).is_err());
    }

    /// A type deserialised through `deserialize_byte_buf`, which takes
    /// bincode's other allocating path.
    mod serde_bytes_like {
        use serde::de::{Deserialize, Deserializer, Visitor};

        pub(super) struct Buf;

        impl<'de> Deserialize<'de> for Buf {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = Buf;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_byte_buf<E>(self, _: Vec<u8>) -> Result<Buf, E> {
                        Ok(Buf)
                    }
                    fn visit_bytes<E>(self, _: &[u8]) -> Result<Buf, E> {
                        Ok(Buf)
                    }
                }
                d.deserialize_byte_buf(V)
            }
        }
    }

    #[test]
    fn the_bincode_limit_never_refuses_a_valid_body_however_dense() {
        // u128s of value 0 take one byte each but count 16 against the limit:
        // the densest claim a valid body can make, right at the size classes.
        // A vector of n < 2^16 elements has a 3-byte length prefix, of n < 2^32 a 5-byte one.
        for n in [0x1000 - 3, 0x1000 - 2, 0x10_0000 - 5, 0x10_0000 - 4] {
            let values = vec![0u128; n];
            let body = Bincode::encode(&values).unwrap();
            assert_eq!(Bincode::decode::<Vec<u128>>(&body).unwrap().len(), n);
        }
        let text = "x".repeat(0x1000 - 3);
        assert_eq!(Bincode::decode::<String>(&Bincode::encode(&text).unwrap()).unwrap(), text);
    }

    #[test]
    fn decoding_picks_the_codec_by_media_type_whatever_the_parameters_and_case() {
        let msg = Message::encode(&order()).unwrap();
        let (mut properties, body) = msg.into_parts();
        properties.set_content_type(" Application/X-Bincode ; charset=binary");
        assert_eq!(Message::with_properties(body, properties).decode::<Order>().unwrap(), order());
    }

    #[test]
    fn an_unsupported_content_type_says_which_feature_would_read_it() {
        let decode = |content_type: &str| {
            Message::new("{}").with_content_type(content_type).decode::<BTreeMap<String, u8>>()
        };
        let hint = |content_type: &str| match decode(content_type) {
            Err(DecodeError::UnsupportedContentType { hint, .. }) => hint,
            other => panic!("{content_type}: {other:?}"),
        };
        assert_eq!(hint("text/plain"), None);
        if cfg!(feature = "json") {
            assert!(decode("application/json").is_ok());
        } else {
            assert!(hint("application/json").is_some_and(|h| h.contains("`json`")));
            assert!(hint("application/problem+json").is_some_and(|h| h.contains("`json`")));
        }
        if cfg!(not(feature = "msgpack")) {
            assert!(hint("application/x-msgpack").is_some_and(|h| h.contains("`msgpack`")));
        }
        let shown = decode("text/csv").unwrap_err().to_string();
        assert_eq!(shown, "unsupported content type 'text/csv'");
    }

    #[test]
    fn decode_with_ignores_the_content_type() {
        let msg = Message::new(Bincode::encode(&5u8).unwrap());
        assert_eq!(msg.decode::<u8>(), Err(DecodeError::MissingContentType));
        assert_eq!(msg.decode_with::<Bincode, u8>(), Ok(5));
    }
}
