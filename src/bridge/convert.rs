//! Messages and field tables as AMQP 0-9-1 carries them (lapin's types),
//! both ways. Every property and header survives the trip; what one side
//! cannot carry is an error naming it, never a silent change.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable as AmqpTable, LongString, ShortString};

use crate::field::{FieldTable, FieldValue};
use crate::message::{DeliveryMode, Message, Properties};

/// A value or property that cannot cross to or from RabbitMQ as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A `U64` header above `i64::MAX`: AMQP has no unsigned 64-bit field
    /// (RabbitMQ reads `l` as signed).
    #[error("header or argument '{0}': a u64 above i64::MAX has no AMQP 0-9-1 field type")]
    U64TooLarge(String),
    /// A string property or table key longer than 255 bytes: AMQP's short string.
    #[error("'{0}' is longer than 255 bytes, AMQP's short string")]
    TooLong(String),
    /// A decimal field from RabbitMQ: interoffice's field values have no decimal.
    #[error("header '{0}': decimal values have no interoffice field type")]
    Decimal(String),
}

/// `table` as an AMQP field table.
///
/// # Errors
///
/// [`ConvertError`]: a key longer than 255 bytes, a `u64` above `i64::MAX`.
pub fn to_amqp_table(table: &FieldTable) -> Result<AmqpTable, ConvertError> {
    let mut out = AmqpTable::default();
    for (key, value) in table.iter() {
        if key.len() > crate::MAX_NAME_LEN {
            return Err(ConvertError::TooLong(key.chars().take(40).collect()));
        }
        out.insert(ShortString::from(key), to_amqp_value(key, value)?);
    }
    Ok(out)
}

fn to_amqp_value(key: &str, value: &FieldValue) -> Result<AMQPValue, ConvertError> {
    Ok(match value {
        FieldValue::Bool(b) => AMQPValue::Boolean(*b),
        FieldValue::I8(n) => AMQPValue::ShortShortInt(*n),
        FieldValue::U8(n) => AMQPValue::ShortShortUInt(*n),
        FieldValue::I16(n) => AMQPValue::ShortInt(*n),
        FieldValue::U16(n) => AMQPValue::ShortUInt(*n),
        FieldValue::I32(n) => AMQPValue::LongInt(*n),
        FieldValue::U32(n) => AMQPValue::LongUInt(*n),
        FieldValue::I64(n) => AMQPValue::LongLongInt(*n),
        FieldValue::U64(n) => {
            AMQPValue::LongLongInt(i64::try_from(*n).map_err(|_| ConvertError::U64TooLarge(key.into()))?)
        }
        FieldValue::F32(x) => AMQPValue::Float(*x),
        FieldValue::F64(x) => AMQPValue::Double(*x),
        FieldValue::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        FieldValue::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        FieldValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        FieldValue::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(|item| to_amqp_value(key, item)).collect::<Result<Vec<_>, _>>()?,
        )),
        FieldValue::Table(table) => AMQPValue::FieldTable(to_amqp_table(table)?),
        FieldValue::Void => AMQPValue::Void,
    })
}

/// An AMQP field table as interoffice's.
///
/// # Errors
///
/// [`ConvertError::Decimal`]: a decimal value.
pub fn from_amqp_table(table: &AmqpTable) -> Result<FieldTable, ConvertError> {
    let mut out = FieldTable::new();
    for (key, value) in table {
        out.insert(key.as_str(), from_amqp_value(key.as_str(), value)?);
    }
    Ok(out)
}

fn from_amqp_value(key: &str, value: &AMQPValue) -> Result<FieldValue, ConvertError> {
    Ok(match value {
        AMQPValue::Boolean(b) => FieldValue::Bool(*b),
        AMQPValue::ShortShortInt(n) => FieldValue::I8(*n),
        AMQPValue::ShortShortUInt(n) => FieldValue::U8(*n),
        AMQPValue::ShortInt(n) => FieldValue::I16(*n),
        AMQPValue::ShortUInt(n) => FieldValue::U16(*n),
        AMQPValue::LongInt(n) => FieldValue::I32(*n),
        AMQPValue::LongUInt(n) => FieldValue::U32(*n),
        AMQPValue::LongLongInt(n) => FieldValue::I64(*n),
        AMQPValue::Float(x) => FieldValue::F32(*x),
        AMQPValue::Double(x) => FieldValue::F64(*x),
        AMQPValue::DecimalValue(_) => return Err(ConvertError::Decimal(key.into())),
        AMQPValue::ShortString(s) => FieldValue::String(s.as_str().into()),
        // A long string is bytes on the wire; RabbitMQ's are text, which is
        // what interoffice's `String` headers are.
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => FieldValue::String(text.into()),
            Err(_) => FieldValue::Bytes(s.as_bytes().to_vec().into()),
        },
        AMQPValue::FieldArray(items) => FieldValue::Array(
            items.as_slice().iter().map(|item| from_amqp_value(key, item)).collect::<Result<Vec<_>, _>>()?,
        ),
        AMQPValue::Timestamp(t) => FieldValue::Timestamp(*t),
        AMQPValue::FieldTable(table) => FieldValue::Table(from_amqp_table(table)?),
        AMQPValue::ByteArray(bytes) => FieldValue::Bytes(bytes.as_slice().to_vec().into()),
        AMQPValue::Void => FieldValue::Void,
    })
}

fn short(name: &str, value: Option<&str>) -> Result<Option<ShortString>, ConvertError> {
    match value {
        Some(s) if s.len() > crate::MAX_NAME_LEN => Err(ConvertError::TooLong(name.into())),
        Some(s) => Ok(Some(ShortString::from(s))),
        None => Ok(None),
    }
}

/// A message's properties as AMQP basic properties.
///
/// # Errors
///
/// [`ConvertError`]: a string property or header key over 255 bytes, a
/// `u64` header above `i64::MAX`.
pub fn to_amqp_properties(properties: &Properties) -> Result<BasicProperties, ConvertError> {
    let mut out = BasicProperties::default();
    macro_rules! set {
        ($($field:ident => $with:ident),*) => {$(
            if let Some(value) = short(stringify!($field), properties.$field())? {
                out = out.$with(value);
            }
        )*};
    }
    set!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        expiration => with_expiration,
        message_id => with_message_id,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id
    );
    if let Some(headers) = properties.headers() {
        out = out.with_headers(to_amqp_table(headers)?);
    }
    if let Some(mode) = properties.delivery_mode() {
        out = out.with_delivery_mode(match mode {
            DeliveryMode::Transient => 1,
            DeliveryMode::Persistent => 2,
        });
    }
    if let Some(priority) = properties.priority() {
        out = out.with_priority(priority);
    }
    if let Some(timestamp) = properties.timestamp() {
        out = out.with_timestamp(timestamp);
    }
    Ok(out)
}

/// A message received from RabbitMQ, as interoffice's.
///
/// # Errors
///
/// [`ConvertError::Decimal`]: a decimal header.
pub fn from_amqp_message(body: &[u8], properties: &BasicProperties) -> Result<Message, ConvertError> {
    let mut converted = Properties::default();
    *converted.headers_mut() = properties.headers().as_ref().map(from_amqp_table).transpose()?;
    macro_rules! text {
        ($($from:ident => $set:ident),*) => {$(
            if let Some(value) = properties.$from() {
                converted.$set(value.as_str());
            }
        )*};
    }
    text!(
        content_type => set_content_type,
        content_encoding => set_content_encoding,
        correlation_id => set_correlation_id,
        reply_to => set_reply_to,
        expiration => set_expiration,
        message_id => set_message_id,
        kind => set_kind,
        user_id => set_user_id,
        app_id => set_app_id
    );
    if let Some(mode) = properties.delivery_mode() {
        converted.set_delivery_mode(if *mode == 2 {
            DeliveryMode::Persistent
        } else {
            DeliveryMode::Transient
        });
    }
    if let Some(priority) = properties.priority() {
        converted.set_priority(*priority);
    }
    if let Some(timestamp) = properties.timestamp() {
        converted.set_timestamp(*timestamp);
    }
    Ok(Message::with_properties(body.to_vec(), converted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_value_survives_the_round_trip() {
        let table = FieldTable::new()
            .with("b", true)
            .with("i8", FieldValue::I8(-8))
            .with("u8", FieldValue::U8(8))
            .with("i16", FieldValue::I16(-16))
            .with("u16", FieldValue::U16(16))
            .with("i32", FieldValue::I32(-32))
            .with("u32", FieldValue::U32(32))
            .with("i64", FieldValue::I64(-64))
            .with("f32", FieldValue::F32(1.5))
            .with("f64", FieldValue::F64(2.5))
            .with("s", "text")
            .with("bytes", FieldValue::Bytes(vec![0_u8, 255].into()))
            .with("ts", FieldValue::Timestamp(1_700_000_000))
            .with("array", vec![FieldValue::from("a"), FieldValue::I64(1)])
            .with("table", FieldValue::Table(FieldTable::new().with("inner", "x")))
            .with("void", FieldValue::Void);
        let back = from_amqp_table(&to_amqp_table(&table).unwrap()).unwrap();
        assert_eq!(back, table);
    }

    #[test]
    fn what_amqp_cannot_carry_is_an_error() {
        let huge = FieldTable::new().with("n", FieldValue::U64(u64::MAX));
        assert_eq!(to_amqp_table(&huge), Err(ConvertError::U64TooLarge("n".into())));
        let fits = FieldTable::new().with("n", FieldValue::U64(7));
        assert_eq!(
            from_amqp_table(&to_amqp_table(&fits).unwrap()).unwrap().get("n"),
            Some(&FieldValue::I64(7))
        );
        let long = Properties::default().with_message_id("x".repeat(300));
        assert!(matches!(to_amqp_properties(&long), Err(ConvertError::TooLong(_))));
    }

    #[test]
    fn every_property_survives_the_round_trip() {
        let properties = Properties::default()
            .with_content_type("application/json")
            .with_content_encoding("gzip")
            .with_headers(
                FieldTable::new()
                    .with("x-death", vec![FieldValue::Table(FieldTable::new().with("count", 1_i64))]),
            )
            .with_delivery_mode(DeliveryMode::Persistent)
            .with_priority(7)
            .with_correlation_id("c-1")
            .with_reply_to("amq.rabbitmq.reply-to.abc")
            .with_expiration("60000")
            .with_message_id("m-1")
            .with_timestamp(1_700_000_000)
            .with_kind("order.placed")
            .with_user_id("guest")
            .with_app_id("shop");
        let amqp = to_amqp_properties(&properties).unwrap();
        let back = from_amqp_message(b"body", &amqp).unwrap();
        assert_eq!(back.properties(), &properties);
        assert_eq!(back.body().as_ref(), b"body");
    }
}
