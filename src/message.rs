//! Messages: a binary body and the AMQP 0-9-1 basic properties.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::field::{FieldTable, FieldValue};
pub use crate::properties::{DeliveryMode, Properties};

/// A message: [`Properties`] and a body of bytes.
///
/// Cheap to clone: the body is a [`Bytes`] and the properties sit behind an
/// `Arc`, so a clone costs two reference-count increments and no allocation,
/// whatever the headers hold. A message routed to many queues shares one
/// body and one set of properties: neither is copied per queue. Changing a
/// clone's properties (the `with_*` methods, [`properties_mut`](Self::properties_mut))
/// copies them first if they are shared (copy-on-write), so clones never see
/// each other's changes.
///
/// ```
/// use interoffice::{FieldTable, FieldValue, Message};
/// let msg = Message::new("payload")
///     .with_content_type("text/plain")
///     .with_headers(FieldTable::from([("region", FieldValue::from("eu"))]));
/// assert_eq!(msg.body().as_ref(), b"payload");
/// assert_eq!(msg.header("region").and_then(FieldValue::as_str), Some("eu"));
/// ```
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    properties: Arc<Properties>,
    body: Bytes,
    /// How long the message stays invisible in the queues it reaches, in
    /// nanoseconds, 0 for none: an instruction to the broker, consumed at
    /// publish (never delivered). A `u64` rather than an `Option<Duration>`
    /// keeps `Message` at 48 bytes, and every queued message's envelope in
    /// a smaller allocation class.
    #[serde(default, skip_serializing_if = "is_zero", rename = "delay_nanos")]
    delay: u64,
}

fn is_zero(nanos: &u64) -> bool {
    *nanos == 0
}

macro_rules! string_property {
    ($(#[$doc:meta] $with:ident => $field:ident),* $(,)?) => {
        $(#[$doc]
        #[must_use]
        pub fn $with(mut self, value: impl AsRef<str>) -> Self {
            self.properties_mut().$field(value);
            self
        })*
    };
}

impl Message {
    /// A message with `body` and no properties.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message { properties: Arc::default(), body: body.into(), delay: 0 }
    }

    /// A message with `body` and `properties`.
    pub fn with_properties(body: impl Into<Bytes>, properties: Properties) -> Self {
        Message { properties: Arc::new(properties), body: body.into(), delay: 0 }
    }

    /// The same message (properties shared) with another body: a durable
    /// queue's message paged out (empty) or back in.
    pub(crate) fn with_body(&self, body: Bytes) -> Self {
        Message { properties: Arc::clone(&self.properties), body, delay: self.delay }
    }

    /// A message sharing `properties` with others (read back from a store).
    pub(crate) fn from_shared(properties: Arc<Properties>, body: Bytes) -> Self {
        Message { properties, body, delay: 0 }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The properties.
    pub fn properties(&self) -> &Properties {
        &self.properties
    }

    /// The properties, to change them. Copies them first if another clone
    /// of this message shares them.
    pub fn properties_mut(&mut self) -> &mut Properties {
        Arc::make_mut(&mut self.properties)
    }

    /// Splits the message into its properties and body (copying the
    /// properties only if another clone shares them).
    pub fn into_parts(self) -> (Properties, Bytes) {
        (Arc::unwrap_or_clone(self.properties), self.body)
    }

    /// The headers table, if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.properties.headers()
    }

    /// One header's value.
    pub fn header(&self, key: &str) -> Option<&FieldValue> {
        self.headers().and_then(|h| h.get(key))
    }

    /// Replaces the headers.
    #[must_use]
    pub fn with_headers(mut self, headers: FieldTable) -> Self {
        *self.properties_mut().headers_mut() = Some(headers);
        self
    }

    /// Sets one header, creating the table if needed.
    #[must_use]
    pub fn with_header(mut self, key: impl AsRef<str> + Into<String>, value: impl Into<FieldValue>) -> Self {
        self.properties_mut().headers_mut().get_or_insert_with(FieldTable::new).insert(key, value);
        self
    }

    /// Sets the delivery mode.
    #[must_use]
    pub fn with_delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.properties_mut().set_delivery_mode(mode);
        self
    }

    /// Sets the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.properties_mut().set_priority(priority);
        self
    }

    /// Sets the per-message time to live (stored as AMQP's millisecond
    /// string). A TTL over [`MAX_DURATION`](crate::MAX_DURATION) (ten years,
    /// RabbitMQ's limit) is clamped to it, so the message stays publishable.
    #[must_use]
    pub fn with_expiration(mut self, ttl: Duration) -> Self {
        let ttl = ttl.min(crate::MAX_DURATION);
        self.properties_mut().set_expiration(ttl.as_millis().to_string());
        self
    }

    /// Delays the message: it is routed when published, but stays invisible
    /// (counted as delayed, not ready) in each queue it reaches until the
    /// broker's clock has moved `delay` past the publish, then joins the
    /// queue's tail. A zero delay is no delay.
    ///
    /// ```
    /// use std::time::Duration;
    /// use interoffice::{Broker, BrokerOptions, ManualClock, Message, QueueOptions};
    ///
    /// let clock = ManualClock::new();
    /// let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    /// let conn = broker.connect();
    /// conn.declare_queue("reminders", QueueOptions::default())?;
    /// conn.publish("", "reminders", Message::new("call back").with_delay(Duration::from_secs(60)))?;
    /// assert!(conn.get("reminders", true)?.is_none());
    /// clock.advance(Duration::from_secs(60));
    /// assert!(conn.get("reminders", true)?.is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        // Ten years at most (`MAX_DURATION`): fits a u64 of nanoseconds.
        let delay = delay.min(crate::MAX_DURATION);
        self.delay = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self
    }

    /// The delay set by [`with_delay`](Self::with_delay), if any (a zero
    /// delay is none).
    pub fn delay(&self) -> Option<Duration> {
        (self.delay > 0).then(|| Duration::from_nanos(self.delay))
    }

    /// Takes the delay out: the broker consumes it at publish.
    pub(crate) fn take_delay(&mut self) -> Option<Duration> {
        let delay = self.delay();
        self.delay = 0;
        delay
    }

    /// Drops the delay.
    pub(crate) fn clear_delay(&mut self) {
        self.delay = 0;
    }

    /// Sets the timestamp, in seconds since the Unix epoch.
    #[must_use]
    pub fn with_timestamp(mut self, seconds: u64) -> Self {
        self.properties_mut().set_timestamp(seconds);
        self
    }

    string_property! {
        /// Sets the content type.
        with_content_type => set_content_type,
        /// Sets the content encoding.
        with_content_encoding => set_content_encoding,
        /// Sets the correlation id.
        with_correlation_id => set_correlation_id,
        /// Sets the reply-to queue name.
        with_reply_to => set_reply_to,
        /// Sets the message id.
        with_message_id => set_message_id,
        /// Sets the message type name (AMQP `type`).
        with_kind => set_kind,
        /// Sets the user id.
        with_user_id => set_user_id,
        /// Sets the application id.
        with_app_id => set_app_id,
    }
}

impl std::fmt::Debug for Message {
    /// The body (as text if it reads as text, else its size) and the
    /// properties that are set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.properties();
        let mut out = f.debug_struct("Message");
        out.field("body", &format_args!("{}", crate::observe::show_body(self)));
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(value) = p.$field() {
                    out.field(stringify!($field), &value);
                }
            )*};
        }
        set!(
            content_type,
            content_encoding,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            kind,
            user_id,
            app_id
        );
        if let Some(headers) = p.headers().filter(|h| !h.is_empty()) {
            out.field("headers", headers);
        }
        if self.delay > 0 {
            out.field("delay", &std::time::Duration::from_nanos(self.delay));
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_properties_until_one_changes_them() {
        let original = Message::new("body").with_header("region", "eu").with_message_id("m-1");
        let mut copy = original.clone();
        assert!(Arc::ptr_eq(&original.properties, &copy.properties));
        assert_eq!(copy.body().as_ptr(), original.body().as_ptr());

        copy.properties_mut().set_message_id("m-2");
        let copy = copy.with_header("region", "us");
        assert!(!Arc::ptr_eq(&original.properties, &copy.properties));
        assert_eq!(original.properties().message_id(), Some("m-1"));
        assert_eq!(original.header("region").and_then(FieldValue::as_str), Some("eu"));
        assert_eq!(copy.properties().message_id(), Some("m-2"));
        assert_eq!(copy.header("region").and_then(FieldValue::as_str), Some("us"));
    }

    #[test]
    fn into_parts_gives_back_the_properties_whether_shared_or_not() {
        let message = Message::new("b").with_correlation_id("c");
        let shared = message.clone();
        let (properties, body) = message.into_parts();
        assert_eq!(properties.correlation_id(), Some("c"));
        assert_eq!(body.as_ref(), b"b");
        let (properties, _) = shared.into_parts();
        assert_eq!(properties.correlation_id(), Some("c"));
    }
}
