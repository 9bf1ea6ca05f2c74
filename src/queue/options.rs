//! Queue options and the policies they resolve to.
//!
//! Policies can be given as typed fields or as RabbitMQ's `x-*` arguments;
//! both resolve to one [`QueuePolicy`], which is what the queue runs on and
//! what a re-declaration is compared against.

use std::borrow::Cow;
use std::time::Duration;

use crate::field::{FieldTable, FieldValue};

/// What a queue at its length limit does with a new message (`x-overflow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Drop (or dead-letter, reason `maxlen`) the oldest messages to make
    /// room: `drop-head`, the default.
    #[default]
    DropHead,
    /// Refuse the new message: the publish fails with
    /// [`PublishError::Rejected`](crate::PublishError::Rejected), which hands
    /// it back. `reject-publish`.
    RejectPublish,
    /// Refuse the new message, as `RejectPublish`, and dead-letter a copy
    /// (reason `maxlen`). `reject-publish-dlx`.
    RejectPublishDlx,
}

impl Overflow {
    /// RabbitMQ's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "drop-head" => Some(Overflow::DropHead),
            "reject-publish" => Some(Overflow::RejectPublish),
            "reject-publish-dlx" => Some(Overflow::RejectPublishDlx),
            _ => None,
        }
    }
}

/// The kind of queue (`x-queue-type`), as RabbitMQ has them.
///
/// Both kinds live in memory here; what differs is what a RabbitMQ user can
/// observe. `stream` queues are refused: their semantics (a replayable log
/// read by offset) are not implemented.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum QueueType {
    /// RabbitMQ's classic queue: a requeued message goes back to its
    /// original position.
    #[default]
    Classic,
    /// RabbitMQ's quorum queue, as a user observes it: a requeued message
    /// goes to the back of the queue; every redelivery carries
    /// `x-delivery-count` (returns so far), and
    /// [`delivery_limit`](QueueOptions::delivery_limit) applies as for any
    /// queue. As in RabbitMQ it must be `durable` and may not be
    /// `exclusive`, `auto_delete` or a priority queue. Not replicated: there
    /// is one process.
    Quorum,
}

impl QueueType {
    /// RabbitMQ's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// How long a queue remembers accepted `message_id`s to refuse duplicates
/// ([`QueueOptions::deduplication_window`]). With both bounds set, an id is
/// forgotten when either is passed.
///
/// ```
/// use std::time::Duration;
/// use interoffice::{DeduplicationWindow, QueueOptions};
/// let opts = QueueOptions {
///     deduplication_window: Some(DeduplicationWindow {
///         max_ids: Some(10_000),
///         duration: Some(Duration::from_secs(60)),
///     }),
///     ..Default::default()
/// };
/// # drop(opts);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DeduplicationWindow {
    /// Remember the last this many accepted ids.
    pub max_ids: Option<usize>,
    /// Remember ids accepted within this long (by the broker's clock). With
    /// no `max_ids`, at most [`DeduplicationWindow::DEFAULT_MAX_IDS`] are
    /// remembered all the same, so memory stays bounded whatever the rate.
    pub duration: Option<Duration>,
}

impl DeduplicationWindow {
    /// The bound on remembered ids of a window given only a `duration`:
    /// 100,000 ids (about 15 MB). Set `max_ids` to remember more.
    pub const DEFAULT_MAX_IDS: usize = 100_000;
}

/// Options of [`Connection::declare_queue`](crate::Connection::declare_queue).
///
/// Every policy field has an `x-*` argument equivalent (named in its doc),
/// accepted in [`arguments`](Self::arguments) as RabbitMQ users write them;
/// a field and an argument that disagree are refused.
///
/// ```
/// use std::time::Duration;
/// use interoffice::{Overflow, QueueOptions};
/// let opts = QueueOptions {
///     max_length: Some(10_000),
///     overflow: Overflow::RejectPublish,
///     message_ttl: Some(Duration::from_secs(30)),
///     dead_letter_exchange: Some("dead-letters".into()),
///     ..Default::default()
/// };
/// assert!(!opts.auto_delete);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueOptions {
    /// Only check that the queue exists (and may be used by this connection);
    /// every other option is ignored.
    pub passive: bool,
    /// Recorded and compared on re-declaration, for a bridge to a real broker;
    /// interoffice keeps every queue in memory either way.
    pub durable: bool,
    /// The queue belongs to the declaring connection: other connections cannot
    /// consume from, bind, purge or delete it (publishing to it still works),
    /// and it is deleted when that connection closes.
    pub exclusive: bool,
    /// Delete the queue when its last consumer goes (once it has had one).
    pub auto_delete: bool,
    /// Other arguments (`x-*`), compared on re-declaration. The policies
    /// below may be given here under their RabbitMQ names instead.
    pub arguments: FieldTable,
    /// Messages expire this long after entering the queue (`x-message-ttl`).
    /// A message's own `expiration` applies too: the lower wins.
    pub message_ttl: Option<Duration>,
    /// Delete the queue once it has gone this long without consumers, `get`s
    /// or re-declarations (`x-expires`). Its messages are not dead-lettered.
    pub expires: Option<Duration>,
    /// The most messages the queue holds, ready or delayed (`x-max-length`).
    pub max_length: Option<usize>,
    /// The most body bytes the queue holds, ready or delayed (`x-max-length-bytes`).
    pub max_length_bytes: Option<usize>,
    /// What happens to a message that would exceed a length limit (`x-overflow`).
    pub overflow: Overflow,
    /// Where messages rejected without requeue, expired, dropped by a length
    /// limit or past the delivery limit are republished
    /// (`x-dead-letter-exchange`; `""` is the default exchange).
    pub dead_letter_exchange: Option<String>,
    /// The routing key dead letters are republished with, instead of their
    /// own (`x-dead-letter-routing-key`). Needs a dead-letter exchange.
    pub dead_letter_routing_key: Option<String>,
    /// Makes this a priority queue with priorities `0..=max_priority`
    /// (`x-max-priority`, 1 to 255).
    pub max_priority: Option<u8>,
    /// A message returned more than this many times is dead-lettered (reason
    /// `delivery_limit`) or dropped (`x-delivery-limit`, as quorum queues).
    pub delivery_limit: Option<u32>,
    /// Refuse a publish whose `message_id` the queue accepted within this
    /// window (an interoffice extension; no `x-` argument).
    pub deduplication_window: Option<DeduplicationWindow>,
    /// Only one consumer receives at a time; the next in attach order takes
    /// over when it goes (`x-single-active-consumer`).
    pub single_active_consumer: bool,
    /// Classic or quorum (`x-queue-type`); see [`QueueType`].
    pub queue_type: QueueType,
}

/// A queue's resolved policies.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct QueuePolicy {
    pub(crate) message_ttl: Option<Duration>,
    pub(crate) expires: Option<Duration>,
    pub(crate) max_length: Option<usize>,
    pub(crate) max_length_bytes: Option<usize>,
    pub(crate) overflow: Overflow,
    pub(crate) dead_letter_exchange: Option<String>,
    pub(crate) dead_letter_routing_key: Option<String>,
    pub(crate) max_priority: Option<u8>,
    pub(crate) delivery_limit: Option<u32>,
    pub(crate) deduplication_window: Option<DeduplicationWindow>,
    pub(crate) single_active_consumer: bool,
    pub(crate) queue_type: QueueType,
    /// The arguments that are not policies, compared as they are.
    pub(crate) other_arguments: FieldTable,
}

/// Why a declaration's arguments are invalid: `(argument, reason)`.
pub(crate) type InvalidArg = (Cow<'static, str>, String);

const POLICY_ARGUMENTS: [&str; 11] = [
    "x-queue-type",
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-delivery-limit",
    "x-single-active-consumer",
];

/// A typed option's value as one side of an inequivalent declaration, typed
/// as a RabbitMQ client would send it.
pub(crate) trait ToSide {
    fn to_side(&self) -> Side;
}

macro_rules! integer_side {
    ($($ty:ty),*) => {$(
        impl ToSide for $ty {
            fn to_side(&self) -> Side {
                let kind = if i32::try_from(*self).is_ok() { "signedint" } else { "long" };
                Some((self.to_string(), kind))
            }
        }
    )*};
}
integer_side!(u8, u32, usize, u128);

impl ToSide for bool {
    fn to_side(&self) -> Side {
        Some((self.to_string(), "bool"))
    }
}

impl ToSide for &str {
    fn to_side(&self) -> Side {
        Some(((*self).to_owned(), "longstr"))
    }
}

impl ToSide for String {
    fn to_side(&self) -> Side {
        self.as_str().to_side()
    }
}

impl ToSide for DeduplicationWindow {
    fn to_side(&self) -> Side {
        Some((format!("{self:?}"), "interoffice option"))
    }
}

/// `x-` arguments accepted that have no effect here, as in RabbitMQ 3.12+
/// (every classic queue is "lazy" enough: it holds what it is given).
const NO_OP_ARGUMENTS: [&str; 1] = ["x-queue-mode"];

/// How a value is named in an error: its kind, then the value, so that the
/// string `"1000"` does not read as the number 1000.
pub(crate) fn describe(value: &FieldValue) -> String {
    let kind = match value {
        FieldValue::Bool(_) => "boolean",
        FieldValue::I8(_)
        | FieldValue::U8(_)
        | FieldValue::I16(_)
        | FieldValue::U16(_)
        | FieldValue::I32(_)
        | FieldValue::U32(_)
        | FieldValue::I64(_)
        | FieldValue::U64(_) => "integer",
        FieldValue::F32(_) | FieldValue::F64(_) => "float",
        FieldValue::String(_) => return format!("the string {:?}", value.as_str().unwrap_or_default()),
        FieldValue::Bytes(_) => "byte array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Array(_) => "array",
        FieldValue::Table(_) => "table",
        FieldValue::Void => return "void".to_owned(),
    };
    format!("the {kind} {value}")
}

/// A duration within [`MAX_DURATION`](crate::MAX_DURATION), RabbitMQ's limit.
fn check_duration(arg: &'static str, d: Duration) -> Result<Duration, InvalidArg> {
    if d > crate::MAX_DURATION {
        return Err((
            Cow::Borrowed(arg),
            format!("{{value_too_large,{}}}: the maximum is 315360000000 ms (ten years)", d.as_millis()),
        ));
    }
    Ok(d)
}

/// RabbitMQ's words for a wrong type (`expected integer, got longstr`),
/// then ours, which say what was given (`the string "1000"`).
pub(crate) fn wrong_type(expected: &str, value: &FieldValue) -> String {
    format!("expected {expected}, got {} ({})", value.amqp_type(), describe(value))
}

/// A non-negative integer argument, refused as RabbitMQ refuses it.
fn count(arg: &'static str, value: &FieldValue) -> Result<u64, InvalidArg> {
    match (value.as_u64(), value.as_i64()) {
        (Some(n), _) => Ok(n),
        (None, Some(negative)) => Err((Cow::Borrowed(arg), format!("{{value_negative,{negative}}}"))),
        (None, None) => Err((Cow::Borrowed(arg), wrong_type("integer", value))),
    }
}

fn millis(arg: &'static str, value: &FieldValue) -> Result<Duration, InvalidArg> {
    let ms = count(arg, value)?;
    check_duration(arg, Duration::from_millis(ms))
}

fn string(arg: &'static str, value: &FieldValue) -> Result<String, InvalidArg> {
    value.as_str().map(str::to_owned).ok_or_else(|| (Cow::Borrowed(arg), wrong_type("longstr", value)))
}

/// Merges a typed field with its argument form: either may be set; both
/// must then agree.
fn merge<T: PartialEq + std::fmt::Debug>(
    arg: &'static str,
    field: Option<T>,
    from_args: Option<T>,
) -> Result<Option<T>, InvalidArg> {
    match (field, from_args) {
        (Some(a), Some(b)) if a != b => {
            Err((Cow::Borrowed(arg), format!("the option says {a:?} but the argument says {b:?}")))
        }
        (Some(a), _) => Ok(Some(a)),
        (None, b) => Ok(b),
    }
}

/// An `x-` argument the bus does not implement: refused, never ignored.
pub(crate) fn unknown_argument(name: &str) -> InvalidArg {
    (
        Cow::Owned(name.to_owned()),
        "not implemented by interoffice (an argument the bus does not implement is refused, not ignored)"
            .to_owned(),
    )
}

impl QueueOptions {
    /// Validates the options and resolves their policies.
    /// The dead-letter exchange, from the field or the argument (if the
    /// options are valid), for access control: declaring with one needs
    /// write on it. The default exchange is `amq.default`'s `""`.
    pub(crate) fn dead_letter_exchange_name(&self) -> Option<String> {
        self.policy().ok().and_then(|p| p.dead_letter_exchange)
    }

    pub(crate) fn policy(&self) -> Result<QueuePolicy, InvalidArg> {
        let args = &self.arguments;
        let arg = |name: &'static str| args.get(name);
        let ttl = arg("x-message-ttl").map(|v| millis("x-message-ttl", v)).transpose()?;
        let expires = arg("x-expires").map(|v| millis("x-expires", v)).transpose()?;
        let max_length = arg("x-max-length").map(|v| count("x-max-length", v)).transpose()?;
        let max_bytes = arg("x-max-length-bytes").map(|v| count("x-max-length-bytes", v)).transpose()?;
        let overflow = arg("x-overflow")
            .map(|v| {
                v.as_str().and_then(Overflow::parse).ok_or_else(|| {
                    (
                        Cow::Borrowed("x-overflow"),
                        format!(
                            "invalid_overflow: expected drop-head, reject-publish or reject-publish-dlx, got {}",
                            describe(v)
                        ),
                    )
                })
            })
            .transpose()?;
        let dlx = arg("x-dead-letter-exchange").map(|v| string("x-dead-letter-exchange", v)).transpose()?;
        let dlrk =
            arg("x-dead-letter-routing-key").map(|v| string("x-dead-letter-routing-key", v)).transpose()?;
        let max_priority = arg("x-max-priority").map(|v| count("x-max-priority", v)).transpose()?;
        let delivery_limit = arg("x-delivery-limit").map(|v| count("x-delivery-limit", v)).transpose()?;
        if let Some((name, _)) = args.iter().find(|(k, _)| {
            k.starts_with("x-") && !POLICY_ARGUMENTS.contains(k) && !NO_OP_ARGUMENTS.contains(k)
        }) {
            return Err(unknown_argument(name));
        }
        let queue_type = arg("x-queue-type")
            .map(|v| match v.as_str() {
                Some("classic") => Ok(QueueType::Classic),
                Some("quorum") => Ok(QueueType::Quorum),
                Some("stream") => Err((
                    Cow::Borrowed("x-queue-type"),
                    "stream queues are not supported by interoffice (declare a classic or quorum queue)"
                        .to_owned(),
                )),
                Some(other) => {
                    Err((Cow::Borrowed("x-queue-type"), format!("unsupported queue type '{other}'")))
                }
                None => Err((Cow::Borrowed("x-queue-type"), wrong_type("longstr", v))),
            })
            .transpose()?;
        let sac = arg("x-single-active-consumer")
            .map(|v| {
                v.as_bool().ok_or_else(|| {
                    (
                        Cow::Borrowed("x-single-active-consumer"),
                        format!("{{unacceptable_type,{}}} ({})", v.amqp_type(), describe(v)),
                    )
                })
            })
            .transpose()?;

        let to_usize = |arg: &'static str, n: Option<u64>| {
            n.map(|n| usize::try_from(n).map_err(|_| (Cow::Borrowed(arg), format!("{n} is too large"))))
                .transpose()
        };
        let max_priority = match max_priority {
            None => None,
            // 0 is accepted, as RabbitMQ does: a queue without priorities.
            Some(n @ 0..=255) => Some(u8::try_from(n).unwrap_or(u8::MAX)),
            Some(n) => {
                return Err((
                    Cow::Borrowed("x-max-priority"),
                    format!("{{max_value_exceeded,{n}}}: at most 255"),
                ));
            }
        };
        let delivery_limit = delivery_limit
            .map(|n| {
                u32::try_from(n).map_err(|_| (Cow::Borrowed("x-delivery-limit"), format!("{n} is too large")))
            })
            .transpose()?;
        let policy = QueuePolicy {
            message_ttl: merge("x-message-ttl", self.message_ttl, ttl)?,
            expires: merge("x-expires", self.expires, expires)?,
            max_length: merge("x-max-length", self.max_length, to_usize("x-max-length", max_length)?)?,
            max_length_bytes: merge(
                "x-max-length-bytes",
                self.max_length_bytes,
                to_usize("x-max-length-bytes", max_bytes)?,
            )?,
            overflow: merge(
                "x-overflow",
                Some(self.overflow).filter(|o| *o != Overflow::DropHead),
                overflow,
            )?
            .unwrap_or_default(),
            dead_letter_exchange: merge("x-dead-letter-exchange", self.dead_letter_exchange.clone(), dlx)?,
            dead_letter_routing_key: merge(
                "x-dead-letter-routing-key",
                self.dead_letter_routing_key.clone(),
                dlrk,
            )?,
            max_priority: merge("x-max-priority", self.max_priority, max_priority)?,
            delivery_limit: merge("x-delivery-limit", self.delivery_limit, delivery_limit)?,
            deduplication_window: self.deduplication_window,
            single_active_consumer: merge(
                "x-single-active-consumer",
                Some(self.single_active_consumer).filter(|s| *s),
                sac,
            )?
            .unwrap_or(false),
            queue_type: merge(
                "x-queue-type",
                Some(self.queue_type).filter(|t| *t != QueueType::Classic),
                queue_type,
            )?
            .unwrap_or_default(),
            other_arguments: args
                .iter()
                .filter(|(k, _)| !POLICY_ARGUMENTS.contains(k))
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
        };
        for (arg, duration) in [
            ("x-message-ttl", policy.message_ttl),
            ("x-expires", policy.expires),
            ("deduplication_window", policy.deduplication_window.and_then(|w| w.duration)),
        ] {
            if let Some(d) = duration {
                check_duration(arg, d)?;
            }
        }
        if policy.queue_type == QueueType::Quorum {
            let refuse =
                |what: &str| Err((Cow::Borrowed("x-queue-type"), format!("a quorum queue cannot be {what}")));
            if !self.durable {
                return refuse("non-durable (as in RabbitMQ: declare it durable)");
            }
            if self.exclusive {
                return refuse("exclusive");
            }
            if self.auto_delete {
                return refuse("auto-delete");
            }
            if policy.max_priority.is_some() {
                return Err((Cow::Borrowed("x-max-priority"), "a quorum queue has no priorities".into()));
            }
        }
        if policy.expires == Some(Duration::ZERO) {
            return Err((
                Cow::Borrowed("x-expires"),
                "{value_zero,0}: must be at least 1 millisecond".into(),
            ));
        }
        if policy.dead_letter_routing_key.is_some() && policy.dead_letter_exchange.is_none() {
            return Err((
                Cow::Borrowed("x-dead-letter-routing-key"),
                "routing_key_but_no_dlx_defined".into(),
            ));
        }
        for (arg, name) in [
            ("x-dead-letter-exchange", &policy.dead_letter_exchange),
            ("x-dead-letter-routing-key", &policy.dead_letter_routing_key),
        ] {
            if name.as_ref().is_some_and(|n| n.len() > crate::MAX_NAME_LEN) {
                return Err((Cow::Borrowed(arg), "longer than 255 bytes".into()));
            }
        }
        if let Some(window) = policy.deduplication_window
            && window.max_ids.is_none()
            && window.duration.is_none()
        {
            return Err((Cow::Borrowed("deduplication_window"), "needs max_ids, duration or both".into()));
        }
        Ok(policy)
    }

    /// The first option that differs, as RabbitMQ's "inequivalent arg" names
    /// it: `(name, received, current)`. Policies are compared resolved, so a
    /// field and its `x-*` argument form are equivalent.
    pub(crate) fn difference(
        &self,
        policy: &QueuePolicy,
        current: &QueueOptions,
        current_policy: &QueuePolicy,
    ) -> Option<Difference> {
        let flag = |name: &str, new: bool, old: bool| {
            (new != old).then(|| (name.to_owned(), new.to_side(), old.to_side()))
        };
        flag("durable", self.durable, current.durable)
            .or_else(|| flag("exclusive", self.exclusive, current.exclusive))
            .or_else(|| flag("auto_delete", self.auto_delete, current.auto_delete))
            .or_else(|| policy.difference(current_policy))
    }
}

impl QueuePolicy {
    fn difference(&self, current: &QueuePolicy) -> Option<Difference> {
        fn show<T: ToSide>(v: &Option<T>) -> Side {
            v.as_ref().and_then(ToSide::to_side)
        }
        fn ms(v: Option<Duration>) -> Option<u128> {
            v.map(|d| d.as_millis())
        }
        macro_rules! compare {
            ($($name:literal => $new:expr, $old:expr);* $(;)?) => {
                $(if $new != $old {
                    return Some(($name.to_owned(), show(&$new), show(&$old)));
                })*
            };
        }
        compare! {
            "x-message-ttl" => ms(self.message_ttl), ms(current.message_ttl);
            "x-expires" => ms(self.expires), ms(current.expires);
            "x-max-length" => self.max_length, current.max_length;
            "x-max-length-bytes" => self.max_length_bytes, current.max_length_bytes;
            "x-overflow" => Some(self.overflow.as_str()), Some(current.overflow.as_str());
            "x-dead-letter-exchange" => self.dead_letter_exchange, current.dead_letter_exchange;
            "x-dead-letter-routing-key" => self.dead_letter_routing_key, current.dead_letter_routing_key;
            "x-max-priority" => self.max_priority, current.max_priority;
            "x-delivery-limit" => self.delivery_limit, current.delivery_limit;
            "deduplication_window" => self.deduplication_window, current.deduplication_window;
            "x-single-active-consumer" => Some(self.single_active_consumer), Some(current.single_active_consumer);
            "x-queue-type" => Some(self.queue_type.as_str()), Some(current.queue_type.as_str());
        }
        super::table_difference(&self.other_arguments, &current.other_arguments)
    }
}

/// One side of an inequivalent declaration: the value as shown and
/// RabbitMQ's name for its type, or `None` when that side does not set it.
pub(crate) type Side = Option<(String, &'static str)>;

/// The first option that differs: `(argument, received, current)`.
pub(crate) type Difference = (String, Side, Side);

/// A field value as one side of a difference.
pub(crate) fn side(value: &FieldValue) -> Side {
    Some((value.to_string(), value.amqp_type()))
}

/// The end of RabbitMQ's `inequivalent arg` text: `received '20' but
/// current is '10'`, or, when one side does not set it, `received none but
/// current is the value '5' of type 'signedint'` (and the reverse).
pub(crate) fn inequivalent_phrase(received: &Side, current: &Side) -> String {
    match (received, current) {
        (Some((r, _)), Some((c, _))) => format!("received '{r}' but current is '{c}'"),
        (None, Some((c, t))) => format!("received none but current is the value '{c}' of type '{t}'"),
        (Some((r, t)), None) => format!("received the value '{r}' of type '{t}' but current is none"),
        (None, None) => "received none but current is none".to_owned(),
    }
}

/// The first key whose value differs between two argument tables.
pub(crate) fn table_difference(new: &FieldTable, old: &FieldTable) -> Option<Difference> {
    new.iter()
        .map(|(k, _)| k)
        .chain(old.iter().map(|(k, _)| k))
        .find(|k| new.get(k) != old.get(k))
        .map(|k| (k.to_owned(), new.get(k).and_then(side), old.get(k).and_then(side)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_fields_resolve_to_the_same_policy() {
        let by_field = QueueOptions { max_length: Some(10), ..Default::default() };
        let by_arg =
            QueueOptions { arguments: FieldTable::from([("x-max-length", 10)]), ..Default::default() };
        assert_eq!(by_field.policy().unwrap(), by_arg.policy().unwrap());
    }

    #[test]
    fn a_field_and_an_argument_that_disagree_are_refused() {
        let opts = QueueOptions {
            max_length: Some(10),
            arguments: FieldTable::from([("x-max-length", 20)]),
            ..Default::default()
        };
        assert_eq!(opts.policy().unwrap_err().0, "x-max-length");
    }

    #[test]
    fn inequivalent_policies_name_the_argument() {
        let current =
            QueueOptions { arguments: FieldTable::from([("x-max-length", 10)]), ..Default::default() };
        let new = QueueOptions { max_length: Some(20), ..Default::default() };
        let diff = new.difference(&new.policy().unwrap(), &current, &current.policy().unwrap());
        let int = |n: &str| Some((n.to_owned(), "signedint"));
        assert_eq!(diff, Some(("x-max-length".into(), int("20"), int("10"))));
    }

    #[test]
    fn invalid_values_are_refused() {
        let bad = [
            QueueOptions { arguments: FieldTable::from([("x-max-priority", -1)]), ..Default::default() },
            QueueOptions { arguments: FieldTable::from([("x-max-priority", 256)]), ..Default::default() },
            QueueOptions { expires: Some(Duration::ZERO), ..Default::default() },
            QueueOptions { dead_letter_routing_key: Some("k".into()), ..Default::default() },
            QueueOptions { arguments: FieldTable::from([("x-overflow", "drop-tail")]), ..Default::default() },
            QueueOptions { arguments: FieldTable::from([("x-message-ttl", -1)]), ..Default::default() },
            QueueOptions { deduplication_window: Some(DeduplicationWindow::default()), ..Default::default() },
        ];
        for opts in bad {
            assert!(opts.policy().is_err(), "{opts:?}");
        }
    }
}
