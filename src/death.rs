//! Deaths: why and where a message died — the `x-death` reasons and the
//! records a dead letter carries in its headers, read back for the
//! application. Plain data, below the queues that write it and the
//! observers that report it; routing the dead letter is
//! [`crate::dead_letter`]'s.

use crate::field::FieldValue;
use crate::message::Message;

/// Why a message was dead-lettered: the `reason` of its `x-death` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeathReason {
    /// Rejected or nacked without requeue.
    Rejected = 0,
    /// Its TTL passed while it waited in the queue.
    Expired = 1,
    /// Dropped by the queue's length limit, or refused by `RejectPublishDlx`.
    MaxLen = 2,
    /// Returned more times than the queue's delivery limit.
    DeliveryLimit = 3,
}

impl DeathReason {
    /// The name RabbitMQ uses in `x-death`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

impl std::fmt::Display for DeathReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts by [`DeathReason`], in [`QueueStats`](crate::QueueStats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ReasonCounts {
    /// Rejected or nacked without requeue.
    pub rejected: u64,
    /// Expired.
    pub expired: u64,
    /// Dropped or refused by a length limit.
    pub maxlen: u64,
    /// Past the delivery limit.
    pub delivery_limit: u64,
}

impl ReasonCounts {
    /// The count for one reason.
    pub fn get(&self, reason: DeathReason) -> u64 {
        match reason {
            DeathReason::Rejected => self.rejected,
            DeathReason::Expired => self.expired,
            DeathReason::MaxLen => self.maxlen,
            DeathReason::DeliveryLimit => self.delivery_limit,
        }
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.rejected + self.expired + self.maxlen + self.delivery_limit
    }
}

/// One entry of a dead letter's `x-death` history: a queue it died in, why,
/// and how often. Read with [`Delivery::deaths`](crate::Delivery::deaths).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Death {
    /// The queue it left.
    pub queue: String,
    /// Why, if the reason is one interoffice knows (a publisher may have
    /// written anything): see also [`reason_text`](Self::reason_text).
    pub reason: Option<DeathReason>,
    /// The reason as written in the header.
    pub reason_text: String,
    /// How many times it died in this queue for this reason.
    pub count: u64,
    /// The exchange it had been published to.
    pub exchange: String,
    /// The routing keys it had been published with (its own, then `CC`).
    pub routing_keys: Vec<String>,
    /// When it first died here (seconds since the Unix epoch).
    pub time: Option<u64>,
    /// Its `expiration` before it died, if it had one.
    pub original_expiration: Option<String>,
}

/// Where a dead letter died first: its `x-first-death-*` headers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct FirstDeath {
    /// The first queue it died in.
    pub queue: String,
    /// Why (if known; the header's text is in `reason_text`).
    pub reason: Option<DeathReason>,
    /// The reason as written.
    pub reason_text: String,
    /// The exchange it had been published to.
    pub exchange: String,
}

impl DeathReason {
    /// The reason named `text` in `x-death`, if it is one of RabbitMQ's.
    pub fn parse(text: &str) -> Option<DeathReason> {
        [DeathReason::Rejected, DeathReason::Expired, DeathReason::MaxLen, DeathReason::DeliveryLimit]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// The `x-death` entries of `message`, most recent first; entries that are
/// not tables are skipped, missing fields read as empty.
pub(crate) fn deaths(message: &Message) -> Vec<Death> {
    let Some(entries) = message.header("x-death").and_then(FieldValue::as_array) else { return Vec::new() };
    entries
        .iter()
        .filter_map(FieldValue::as_table)
        .map(|entry| {
            let text = |k: &str| entry.get(k).and_then(FieldValue::as_str).unwrap_or_default().to_owned();
            let reason_text = text("reason");
            Death {
                queue: text("queue"),
                reason: DeathReason::parse(&reason_text),
                reason_text,
                count: entry.get("count").and_then(FieldValue::as_i64).map_or(0, |c| c.max(0) as u64),
                exchange: text("exchange"),
                routing_keys: entry
                    .get("routing-keys")
                    .and_then(FieldValue::as_array)
                    .map(|keys| keys.iter().filter_map(FieldValue::as_str).map(str::to_owned).collect())
                    .unwrap_or_default(),
                time: match entry.get("time") {
                    Some(FieldValue::Timestamp(t)) => Some(*t),
                    Some(other) => other.as_i64().and_then(|t| u64::try_from(t).ok()),
                    None => None,
                },
                original_expiration: entry
                    .get("original-expiration")
                    .and_then(FieldValue::as_str)
                    .map(str::to_owned),
            }
        })
        .collect()
}

/// The `x-first-death-*` headers of `message`, if it has them.
pub(crate) fn first_death(message: &Message) -> Option<FirstDeath> {
    let text = |k: &str| message.header(k).and_then(FieldValue::as_str).map(str::to_owned);
    let reason_text = text("x-first-death-reason")?;
    Some(FirstDeath {
        queue: text("x-first-death-queue").unwrap_or_default(),
        reason: DeathReason::parse(&reason_text),
        reason_text,
        exchange: text("x-first-death-exchange").unwrap_or_default(),
    })
}
