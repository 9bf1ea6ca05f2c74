//! The envelope: what a publish leaves in every queue it reaches (the
//! message with its exchange and routing key, one allocation shared by all
//! those queues), and a message's place in one queue ([`QueuedMessage`]).

use std::time::Instant;

use super::{Now, store};
use crate::clock::Deadline;
use crate::conversation::ConversationToken;
use crate::durable::Persisted;
use crate::field::{FieldTable, FieldValue};
use crate::message::Message;
use crate::sync::Arc;

/// What a publish leaves in every queue it reaches: the message with its
/// routing, shared by all those queues.
///
/// The exchange name and routing key are copied into the envelope rather
/// than sharing the exchange's `Arc<str>`: a refcount shared by every
/// publisher and consumer of an exchange would bounce its cache line between
/// cores on every message. They are stored inline when short, so a publish
/// makes one allocation (the envelope), not two.
#[derive(Debug)]
pub(crate) struct Envelope {
    /// Where it was published.
    address: Address,
    /// `None` only while the envelope waits to be reused (see
    /// [`recycle`](super::recycle)), never where a message is read.
    message: Option<Message>,
    /// What few envelopes carry (a followed conversation, a place in the
    /// store), boxed: it keeps the envelope at 88 bytes, its `Arc`
    /// allocation in the 112-byte glibc size class instead of 128. (When
    /// `Properties` took 264 bytes, this boxing made draining a million
    /// messages that own their properties 15–35% slower at an equal
    /// instruction count — `malloc_consolidate` and `unlink_chunk`, the
    /// heap's layout — so it was inline; with properties packed, fill-drain
    /// measured the same drain rate either way, three paired runs.)
    extras: Option<Box<Extras>>,
}

/// The rare parts of an [`Envelope`].
#[derive(Debug, Clone, Default)]
struct Extras {
    /// The conversation a test is waiting on, if the message belongs to
    /// one: the message counts as pending in it while this envelope lives.
    conversation: Option<ConversationToken>,
    /// A persistent message in a durable queue: its place in the store,
    /// removed from it when the last envelope sharing it is dropped. (A
    /// durable queue's envelope is its own, never shared with other queues.)
    durable: Option<Arc<Persisted>>,
}

/// Bytes of names stored inside the envelope; longer ones go to the heap.
/// 29 keeps [`Address`] at 32 bytes (tag, lengths and buffer) and the whole
/// `Arc<Envelope>` allocation at 104 bytes (a 112-byte glibc chunk): part of
/// the memory budget of a queued message (see ARCHITECTURE.md).
const INLINE_NAMES: usize = 29;

/// Where a message was published: its exchange and routing key, as one
/// string stored inline up to [`INLINE_NAMES`] bytes, else on the heap,
/// with where the exchange name ends (names are at most 255 bytes, checked
/// at declare and publish).
///
/// Built once where a publisher repeats it (a cached route, a batch's
/// distinct key) and copied into each envelope: building it from two
/// `str`s for every publish was about 13% of a loop that publishes and
/// consumes, most of it in `memmove` calls for a few bytes each.
#[derive(Debug, Clone)]
pub(crate) enum Address {
    Inline {
        len: u8,
        exchange_len: u8,
        bytes: [u8; INLINE_NAMES],
    },
    /// Built for one publish (a routing walk's): its envelope owns it.
    Heap {
        names: Box<str>,
        exchange_len: u8,
    },
    /// Built once for many publishes ([`shared`](Address::shared)): each
    /// envelope's copy counts a reference rather than allocating and
    /// copying the names, and a queued message holds no copy of its own.
    Shared {
        names: std::sync::Arc<str>,
        exchange_len: u8,
    },
}

impl Address {
    /// `exchange` and `routing_key`, copied.
    pub(crate) fn new(exchange: &str, routing_key: &str) -> Self {
        let len = exchange.len() + routing_key.len();
        let exchange_len = exchange.len() as u8;
        if Self::fits_inline(exchange, routing_key) {
            let mut bytes = [0; INLINE_NAMES];
            bytes[..exchange.len()].copy_from_slice(exchange.as_bytes());
            bytes[exchange.len()..len].copy_from_slice(routing_key.as_bytes());
            Address::Inline { len: len as u8, exchange_len, bytes }
        } else {
            Address::Heap { names: [exchange, routing_key].concat().into_boxed_str(), exchange_len }
        }
    }

    /// Whether `exchange` and `routing_key` are stored inline: an address
    /// built from them allocates nothing.
    pub(crate) fn fits_inline(exchange: &str, routing_key: &str) -> bool {
        exchange.len() + routing_key.len() <= INLINE_NAMES
    }

    /// [`new`](Self::new), for an address that many envelopes will copy
    /// (a cached route's, a batch's key's): names too long to be inline are
    /// shared by every copy.
    pub(crate) fn shared(exchange: &str, routing_key: &str) -> Self {
        match Self::new(exchange, routing_key) {
            Address::Heap { names, exchange_len } => Address::Shared { names: names.into(), exchange_len },
            address => address,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied whole from two `str`s, so always UTF-8; the empty
            // fallback is unreachable and only avoids a panic path.
            Address::Inline { len, bytes, .. } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Address::Heap { names, .. } => names,
            Address::Shared { names, .. } => names,
        }
    }

    /// The exchange's name.
    pub(crate) fn exchange(&self) -> &str {
        self.as_str().get(..self.exchange_len()).unwrap_or_default()
    }

    /// The routing key.
    pub(crate) fn routing_key(&self) -> &str {
        self.as_str().get(self.exchange_len()..).unwrap_or_default()
    }

    /// Whether the routing key is `key`: compared as bytes, without the
    /// UTF-8 check that reading it as a `str` makes.
    #[inline]
    pub(crate) fn has_routing_key(&self, key: &str) -> bool {
        let bytes = match self {
            Address::Inline { len, bytes, .. } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Address::Heap { names, .. } => names.as_bytes(),
            Address::Shared { names, .. } => names.as_bytes(),
        };
        bytes.get(self.exchange_len()..) == Some(key.as_bytes())
    }

    fn exchange_len(&self) -> usize {
        match self {
            Address::Inline { exchange_len, .. }
            | Address::Heap { exchange_len, .. }
            | Address::Shared { exchange_len, .. } => usize::from(*exchange_len),
        }
    }
}

impl Envelope {
    pub(crate) fn new(exchange: &str, routing_key: &str, message: Message) -> Self {
        Self::published(exchange, routing_key, message, None)
    }

    /// A published message's envelope, counted in a tracked conversation
    /// while it lives. Built in one expression, so that it is written
    /// once, in place: setting a field of a built envelope made the
    /// compiler build it on the stack and copy it, reading back bytes it
    /// had just written in smaller pieces (a store-forwarding stall on
    /// every publish).
    #[inline]
    pub(crate) fn published(
        exchange: &str,
        routing_key: &str,
        message: Message,
        token: Option<ConversationToken>,
    ) -> Self {
        debug_assert!(exchange.len() <= usize::from(u8::MAX), "exchange names are checked at declare");
        Self::addressed(Address::new(exchange, routing_key), message, token)
    }

    /// [`published`](Self::published) to an address built before.
    #[inline]
    pub(crate) fn addressed(address: Address, message: Message, token: Option<ConversationToken>) -> Self {
        let extras = token.map(|token| Box::new(Extras { conversation: Some(token), durable: None }));
        Envelope { address, message: Some(message), extras }
    }

    /// Fills an emptied envelope (see [`clear`](Self::clear)) for reuse, in
    /// place.
    #[inline(always)]
    pub(super) fn refill(&mut self, address: Address, message: Message, token: Option<ConversationToken>) {
        self.address = address;
        self.message = Some(message);
        if let Some(token) = token {
            self.extras = Some(Box::new(Extras { conversation: Some(token), durable: None }));
        }
    }

    /// The message.
    #[inline]
    pub(crate) fn message(&self) -> &Message {
        match &self.message {
            Some(message) => message,
            None => super::recycle::no_message(),
        }
    }

    /// The message, moved out.
    pub(crate) fn into_message(self) -> Message {
        self.message.unwrap_or_default()
    }

    /// Empties the envelope for reuse: the message and what it carries
    /// (a conversation's count, a place in the store) are let go now.
    pub(super) fn clear(&mut self) {
        self.message = None;
        self.extras = None;
    }

    pub(crate) fn exchange(&self) -> &str {
        self.address.exchange()
    }

    pub(crate) fn routing_key(&self) -> &str {
        self.address.routing_key()
    }

    /// A copy for one queue whose message carries `x-delivery-count`.
    pub(super) fn with_delivery_count(&self, count: u32) -> Arc<Envelope> {
        let mut message = self.message().clone();
        message
            .properties_mut()
            .headers_mut()
            .get_or_insert_with(FieldTable::new)
            .insert("x-delivery-count", FieldValue::I64(i64::from(count)));
        Arc::new(Envelope {
            address: self.address.clone(),
            message: Some(message),
            extras: self.extras.clone(),
        })
    }

    /// The same envelope with another body: a paged-out message's (empty),
    /// or its body read back.
    pub(super) fn with_body(&self, body: bytes::Bytes) -> Arc<Envelope> {
        Arc::new(Envelope {
            address: self.address.clone(),
            message: Some(self.message().with_body(body)),
            extras: self.extras.clone(),
        })
    }

    /// This queue's own copy, tied to its place in the store.
    pub(super) fn persisted(&self, durable: Persisted) -> Arc<Envelope> {
        Arc::new(Envelope {
            address: self.address.clone(),
            message: Some(self.message().clone()),
            extras: Some(Box::new(Extras {
                conversation: self.extras.as_ref().and_then(|e| e.conversation.clone()),
                durable: Some(Arc::new(durable)),
            })),
        })
    }

    /// Ties a recovered envelope to its place in the store.
    pub(super) fn set_durable(&mut self, durable: Arc<Persisted>) {
        self.extras.get_or_insert_default().durable = Some(durable);
    }

    /// Its place in the store, if it is a persistent message in a durable queue.
    pub(crate) fn durable(&self) -> Option<&Persisted> {
        self.extras.as_ref()?.durable.as_deref()
    }
}

/// One message in one queue. `seq` is its position: requeueing puts it back
/// there, ahead of everything published after it.
#[derive(Debug, Clone)]
pub(crate) struct QueuedMessage {
    pub(crate) seq: u64,
    pub(crate) envelope: Arc<Envelope>,
    /// Times it was delivered and came back.
    pub(crate) deliveries: u32,
    /// When it expires, if it has a TTL. Kept across requeues.
    /// (A `Deadline`, not an `Instant`: 8 bytes less per queued message.)
    pub(super) expires: Option<Deadline>,
    /// Priority rank: 0 is served first.
    pub(super) rank: u8,
    flags: Flags,
}

/// A queued message's yes-or-no facts, in a byte every value of which is
/// valid. As `bool` fields they gave `Option<QueuedMessage>` its tag in
/// their spare values, and the compiler then copied the other 31 bytes of
/// an `Option` in two overlapping 16-byte moves, the second of which read
/// what the first had just written, stalling on store forwarding (`perf
/// annotate` of the enqueue path). Without the spare values the tag is the
/// envelope's pointer, and those overlapping copies are gone.
#[derive(Debug, Clone, Copy, Default)]
struct Flags(u8);

impl Flags {
    /// Delivered before and returned to the queue.
    const REDELIVERED: u8 = 1;
    /// Its body is not in memory (a durable queue past its memory budget):
    /// read back from the store before it leaves the queue.
    const PAGED: u8 = 2;
    /// Its publish is known to have reached other queues too
    /// (`PublishTiming::fanout`): its delivery does not try to keep the
    /// envelope for reuse.
    const FANOUT: u8 = 4;

    fn get(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        self.0 = if on { self.0 | flag } else { self.0 & !flag };
    }
}

impl QueuedMessage {
    /// A message of rank `rank` not yet placed (sequence 0, no expiry),
    /// never delivered.
    pub(crate) fn new(envelope: Arc<Envelope>, rank: u8) -> Self {
        Self::placed(envelope, rank, 0, None, false)
    }

    /// A message placed at `seq`, expiring at `expires` if set, from a
    /// publish that reached other queues too if `fanout`; never delivered.
    #[inline(always)]
    pub(crate) fn placed(
        envelope: Arc<Envelope>,
        rank: u8,
        seq: u64,
        expires: Option<Instant>,
        fanout: bool,
    ) -> Self {
        QueuedMessage {
            seq,
            envelope,
            deliveries: 0,
            expires: expires.map(Deadline::at),
            rank,
            flags: Flags(if fanout { Flags::FANOUT } else { 0 }),
        }
    }

    /// Whether it was delivered before and came back.
    #[inline]
    pub(crate) fn redelivered(&self) -> bool {
        self.flags.get(Flags::REDELIVERED)
    }

    pub(crate) fn set_redelivered(&mut self, on: bool) {
        self.flags.set(Flags::REDELIVERED, on);
    }

    /// Whether its body is paged out to the store (read back before it
    /// leaves the queue).
    #[inline]
    pub(crate) fn paged(&self) -> bool {
        self.flags.get(Flags::PAGED)
    }

    pub(crate) fn set_paged(&mut self, on: bool) {
        self.flags.set(Flags::PAGED, on);
    }

    /// Whether its publish reached other queues too: its delivery leaves
    /// the envelope alone rather than keep it for reuse.
    #[inline]
    pub(crate) fn fanout(&self) -> bool {
        self.flags.get(Flags::FANOUT)
    }

    pub(super) fn key(&self) -> store::ReadyKey {
        (self.rank, self.seq)
    }

    /// When it expires, if it has a TTL.
    pub(crate) fn expires_at(&self) -> Option<Instant> {
        self.expires.map(Deadline::instant)
    }

    pub(crate) fn set_expires_at(&mut self, at: Option<Instant>) {
        self.expires = at.map(Deadline::at);
    }

    /// The body's length, in memory or paged out.
    pub(super) fn body_len(&self) -> usize {
        if self.paged() {
            return self.envelope.durable().map_or(0, |d| d.body_len as usize);
        }
        self.envelope.message().body().len()
    }

    pub(super) fn expired(&self, now: &mut Now<'_>) -> bool {
        self.expires_at().is_some_and(|at| at <= now.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-message memory budget (≤ 56 bytes beyond a raw channel
    /// holding the same messages) rests on these sizes: an envelope
    /// allocation and a store entry. (An envelope of 81 to 88 bytes is a
    /// 112-byte glibc chunk with its `Arc` counts; one of 89 to 104 is 128.)
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_queued_message_stays_small() {
        assert!(std::mem::size_of::<Envelope>() <= 88, "{}", std::mem::size_of::<Envelope>());
        assert!(std::mem::size_of::<QueuedMessage>() <= 32, "{}", std::mem::size_of::<QueuedMessage>());
    }

    #[test]
    fn envelope_names_split_back_whether_inline_boxed_or_shared() {
        for (exchange, key) in [
            ("", ""),
            ("orders", "order.created"),
            ("x".repeat(20).as_str(), "k".repeat(10).as_str()),
            ("x".repeat(20).as_str(), "k".repeat(11).as_str()),
            ("é".repeat(100).as_str(), "ключ.ü".repeat(20).as_str()),
        ] {
            let envelope = Envelope::new(exchange, key, Message::new("m"));
            assert_eq!((envelope.exchange(), envelope.routing_key()), (exchange, key));
            assert!(envelope.address.has_routing_key(key));
            assert!(!envelope.address.has_routing_key(&format!("{key}.")));
            assert_eq!(envelope.address.has_routing_key(""), key.is_empty());
            let inline = matches!(envelope.address, Address::Inline { .. });
            assert_eq!(inline, exchange.len() + key.len() <= INLINE_NAMES, "{exchange}/{key}");
            let copy = envelope.with_delivery_count(1);
            assert_eq!((copy.exchange(), copy.routing_key()), (exchange, key));
            // Built once for many envelopes: long names are shared, not copied.
            let shared = Address::shared(exchange, key);
            let copy = shared.clone();
            assert_eq!((copy.exchange(), copy.routing_key()), (exchange, key));
            assert!(copy.has_routing_key(key));
            match (&shared, &copy) {
                (Address::Shared { names: a, .. }, Address::Shared { names: b, .. }) => {
                    assert!(!inline && std::sync::Arc::ptr_eq(a, b), "{exchange}/{key}");
                }
                (Address::Inline { .. }, Address::Inline { .. }) => assert!(inline, "{exchange}/{key}"),
                _ => panic!("{exchange}/{key}: a shared address copied as another kind"),
            }
        }
    }
}
