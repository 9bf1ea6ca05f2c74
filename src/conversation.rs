//! Conversations: which messages were caused by which, carried in headers
//! from a delivery to what its handler publishes, and followed by tests
//! that wait for everything one publish caused ([`Conversation::settle`]).
//!
//! The anchor is MassTransit's: a *conversation id* shared by every message
//! caused, however indirectly, by the first one, and an *initiator id* (the
//! `message_id` of the message whose handler published this one). A handler
//! run by a worker or an RPC server publishes inside its delivery's scope: a
//! thread-local (set around each poll, for async handlers) that stamps the
//! headers on every publish from that thread which does not carry its own.
//! A plain consumer enters the scope with [`Delivery::enter_conversation`].
//!
//! Tracking is paid for only by conversations a test follows: a message
//! whose conversation id is tracked gets a token in its envelope, so the
//! conversation counts it for as long as the envelope lives — in queues, in
//! a consumer's hands, on a dead-letter hop, as a reply on its way.
//!
//! [`Delivery::enter_conversation`]: crate::Delivery::enter_conversation

use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::time::Duration;

use crate::field::FieldValue;
use crate::message::Message;
use crate::settle::{Pending, PendingQueue, SettleError, wait_until_settled};
use crate::sync::{Arc, AtomicU64, AtomicUsize, Mutex, Ordering, Weak};

/// The header carrying a message's conversation id.
pub const CONVERSATION_ID_HEADER: &str = "x-conversation-id";

/// The header carrying the `message_id` of the message whose handler
/// published this one (MassTransit's `InitiatorId`).
pub const INITIATOR_ID_HEADER: &str = "x-initiator-id";

/// The W3C trace context header: `version-traceid-parentid-flags`.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The W3C vendor trace state header.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// The scope a handler publishes in: its delivery's conversation and trace
/// context.
#[derive(Debug, Clone)]
struct Scope {
    conversation: Option<Arc<str>>,
    initiator: Option<Arc<str>>,
    traceparent: Option<Arc<str>>,
    tracestate: Option<Arc<str>>,
}

thread_local! {
    /// Scopes entered on this thread, innermost last.
    static SCOPES: RefCell<Vec<Scope>> = const { RefCell::new(Vec::new()) };
    /// How many: the publish path reads only this when it is 0.
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Pushes a scope on this thread's stack.
fn push(scope: Scope) -> bool {
    SCOPES
        .try_with(|scopes| {
            scopes.borrow_mut().push(scope);
            DEPTH.with(|d| d.set(d.get() + 1));
        })
        .is_ok()
}

/// The scope of a delivery, if it carries a conversation id or a trace
/// context to pass on.
///
/// One pass over the headers, comparing each name with the three (most
/// differ in length at once): a lookup of each by name was about 300
/// instructions a delivery handed to a worker (callgrind, two headers).
fn scope_of(message: &Message) -> Option<Scope> {
    let headers = message.headers()?;
    let (mut conversation, mut traceparent, mut tracestate) = (None, None, None);
    for (name, value) in headers.iter() {
        let found = match name {
            CONVERSATION_ID_HEADER => &mut conversation,
            TRACEPARENT_HEADER => &mut traceparent,
            TRACESTATE_HEADER => &mut tracestate,
            _ => continue,
        };
        *found = value.as_str();
    }
    if conversation.is_none() && traceparent.is_none() {
        return None;
    }
    Some(Scope {
        initiator: conversation.and(message.properties().message_id().map(Into::into)),
        conversation: conversation.map(Into::into),
        tracestate: traceparent.and(tracestate).map(Into::into),
        traceparent: traceparent.map(Into::into),
    })
}

/// While it lives, what this thread publishes carries the conversation of
/// the delivery it was made from: see [`Delivery::enter_conversation`].
/// Scopes nest; dropping one restores the one before. Not `Send`: a scope
/// belongs to the thread that entered it.
///
/// [`Delivery::enter_conversation`]: crate::Delivery::enter_conversation
#[derive(Debug)]
#[must_use = "the scope ends when this guard is dropped"]
pub struct ConversationScope {
    entered: bool,
    _thread_bound: PhantomData<*const ()>,
}

impl Drop for ConversationScope {
    fn drop(&mut self) {
        if self.entered {
            let _ = SCOPES.try_with(|scopes| {
                scopes.borrow_mut().pop();
                DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
            });
        }
    }
}

/// Enters the scope of `message` on this thread (a no-op guard if it
/// carries no conversation id).
pub(crate) fn enter(message: &Message) -> ConversationScope {
    let entered = match scope_of(message) {
        Some(scope) => push(scope),
        None => false,
    };
    ConversationScope { entered, _thread_bound: PhantomData }
}

/// Runs `f` inside the scope of `message`: for async handlers, around each
/// poll, so the scope never leaks to other tasks of the executor's thread.
pub(crate) fn within<R>(scope: Option<&ScopeOf>, f: impl FnOnce() -> R) -> R {
    let _guard = scope.map(|s| {
        let entered = push(s.0.clone());
        ConversationScope { entered, _thread_bound: PhantomData }
    });
    f()
}

/// A delivery's scope, kept by an async worker across the polls of its
/// handler's future.
#[derive(Debug, Clone)]
pub(crate) struct ScopeOf(Scope);

impl ScopeOf {
    pub(crate) fn of(message: &Message) -> Option<ScopeOf> {
        scope_of(message).map(ScopeOf)
    }
}

/// Stamps the current scope's headers on a message being published, unless
/// it names a conversation of its own. One thread-local read when no scope
/// is entered.
#[inline]
pub(crate) fn stamp(message: &mut Message) {
    if DEPTH.try_with(std::cell::Cell::get).unwrap_or(0) == 0 {
        return;
    }
    let scope = SCOPES.try_with(|scopes| scopes.borrow().last().cloned()).ok().flatten();
    if let Some(scope) = scope {
        stamp_with(message, &scope);
    }
}

#[cold]
fn stamp_with(message: &mut Message, scope: &Scope) {
    let has = |name: &str| message.header(name).is_some();
    let conversation = scope.conversation.as_ref().filter(|_| !has(CONVERSATION_ID_HEADER));
    let trace = scope.traceparent.as_ref().filter(|_| !has(TRACEPARENT_HEADER));
    if conversation.is_none() && trace.is_none() {
        return;
    }
    let headers = message.properties_mut().headers_mut().get_or_insert_with(Default::default);
    if let Some(conversation) = conversation {
        headers.insert(CONVERSATION_ID_HEADER, FieldValue::from(&**conversation));
        if let Some(initiator) = &scope.initiator
            && !headers.contains_key(INITIATOR_ID_HEADER)
        {
            headers.insert(INITIATOR_ID_HEADER, FieldValue::from(&**initiator));
        }
    }
    if let Some(traceparent) = trace {
        headers.insert(TRACEPARENT_HEADER, FieldValue::from(&**traceparent));
        if let Some(tracestate) = &scope.tracestate {
            headers.insert(TRACESTATE_HEADER, FieldValue::from(&**tracestate));
        }
    }
}

/// The count of one tracked conversation's live messages.
#[derive(Debug)]
pub(crate) struct Tracker {
    live: AtomicU64,
    /// [`Conversation`] handles following it.
    handles: AtomicUsize,
}

/// One message's place in a tracked conversation: counted while it lives.
#[derive(Debug)]
pub(crate) struct ConversationToken(Arc<Tracker>);

impl ConversationToken {
    fn new(tracker: &Arc<Tracker>) -> Self {
        // SeqCst: a settle's reading must see the count rise before the
        // publish that caused it ends (see `crate::settle`).
        tracker.live.fetch_add(1, Ordering::SeqCst);
        ConversationToken(Arc::clone(tracker))
    }
}

impl Clone for ConversationToken {
    fn clone(&self) -> Self {
        ConversationToken::new(&self.0)
    }
}

impl Drop for ConversationToken {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The conversations tests follow, by id.
#[derive(Debug, Default)]
pub(crate) struct Conversations {
    /// How many are followed: the publish path reads only this when 0.
    followed: AtomicUsize,
    by_id: Mutex<HashMap<Arc<str>, Weak<Tracker>>>,
}

impl Conversations {
    /// The token for a message being enqueued, if its conversation is followed.
    #[inline]
    pub(crate) fn token_for(&self, message: &Message) -> Option<ConversationToken> {
        if self.followed.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.token_slow(message)
    }

    #[cold]
    fn token_slow(&self, message: &Message) -> Option<ConversationToken> {
        let id = message.header(CONVERSATION_ID_HEADER)?.as_str()?;
        let tracker = self.by_id.lock().get(id)?.upgrade()?;
        Some(ConversationToken::new(&tracker))
    }

    pub(crate) fn follow(&self, id: &str) -> Arc<Tracker> {
        let mut by_id = self.by_id.lock();
        by_id.retain(|_, tracker| tracker.strong_count() > 0);
        if let Some(tracker) = by_id.get(id).and_then(Weak::upgrade) {
            tracker.handles.fetch_add(1, Ordering::SeqCst);
            return tracker;
        }
        let tracker = Arc::new(Tracker { live: AtomicU64::new(0), handles: AtomicUsize::new(1) });
        by_id.insert(id.into(), Arc::downgrade(&tracker));
        self.followed.fetch_add(1, Ordering::SeqCst);
        tracker
    }

    pub(crate) fn unfollow(&self, id: &str, tracker: &Arc<Tracker>) {
        let mut by_id = self.by_id.lock();
        // Only the last handle unfollows; tokens still alive keep counting
        // into the tracker they hold, which nobody reads any more.
        if tracker.handles.fetch_sub(1, Ordering::SeqCst) == 1
            && by_id.get(id).is_some_and(|t| std::ptr::eq(t.as_ptr(), Arc::as_ptr(tracker)))
        {
            by_id.remove(id);
            self.followed.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A conversation a test follows: every message stamped with its id, and
/// every message their handlers publish in turn (workers and RPC servers
/// carry the id on; see [`CONVERSATION_ID_HEADER`]), is counted until it is
/// done with, so [`settle`](Self::settle) can wait for exactly what one
/// publish caused, however many hops deep, across RPC, ignoring unrelated
/// traffic.
///
/// ```
/// use std::time::Duration;
/// use interoffice::{Broker, Message, QueueOptions, WorkerOptions};
///
/// let broker = Broker::new();
/// let conn = broker.connect();
/// conn.declare_queue("orders", QueueOptions::default())?;
/// conn.declare_queue("billing", QueueOptions::default())?;
/// let publisher = broker.connect();
/// let _orders = conn.worker("orders", WorkerOptions::default(), move |order| {
///     // Carries the order's conversation id without being told to.
///     publisher.publish("", "billing", Message::new(order.body().clone())).map(|_| ())
/// })?;
/// let _billing = conn.worker("billing", WorkerOptions::default(), |_| Ok::<(), String>(()))?;
///
/// let conversation = broker.conversation();
/// conn.publish("", "orders", conversation.stamp(Message::new("order 42")))?;
/// conversation.settle(Duration::from_secs(10))?; // the order, and the bill it caused
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Conversation {
    id: Arc<str>,
    tracker: Arc<Tracker>,
    host: Arc<dyn ConversationHost>,
}

/// What a followed conversation needs of the broker that follows it, and
/// no more (so this module does not reach up into the broker).
pub(crate) trait ConversationHost: Send + Sync + std::fmt::Debug {
    /// Runs a deterministic broker's workers on this thread, if it has any.
    fn run_inline_workers(&self);
    /// `read`, with the count of messages in flight, read consistently (see
    /// [`crate::settle`]).
    fn consistent(&self, read: &dyn Fn() -> u64) -> (u64, u64);
    /// Every queue holding work, for an error's reader.
    fn pending_queues(&self) -> Vec<PendingQueue>;
    /// Stops following `id`.
    fn unfollow(&self, id: &str, tracker: &Arc<Tracker>);
}

impl Conversation {
    pub(crate) fn new(id: &str, tracker: Arc<Tracker>, host: Arc<dyn ConversationHost>) -> Self {
        Conversation { id: id.into(), tracker, host }
    }

    /// The conversation id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `message`, stamped as the start of this conversation (its
    /// [`CONVERSATION_ID_HEADER`]).
    pub fn stamp(&self, message: Message) -> Message {
        message.with_header(CONVERSATION_ID_HEADER, &*self.id)
    }

    /// How many messages of the conversation are held now: in queues,
    /// delivered and unsettled, on their way.
    pub fn messages_held(&self) -> u64 {
        self.tracker.live.load(Ordering::SeqCst)
    }

    /// Waits until every message of the conversation is done with —
    /// acknowledged, dead-lettered nowhere, expired, dropped — and nothing
    /// is between exchanges and queues; or fails after `timeout` with what
    /// is pending. A message counts from the moment it is enqueued until
    /// the last thing holding it lets go: a delivery until settled (an
    /// auto-ack one until dropped), an RPC reply until its caller drops it.
    /// A delayed message of the conversation counts too, under any clock:
    /// with a [`ManualClock`](crate::ManualClock), advance it first.
    ///
    /// # Errors
    ///
    /// [`SettleError::Timeout`], with the count of the conversation's
    /// messages still held and the queues holding work.
    pub fn settle(&self, timeout: Duration) -> Result<(), SettleError> {
        let result = wait_until_settled(timeout, || {
            // A deterministic broker's workers run here, on the waiting thread.
            self.host.run_inline_workers();
            let (held, in_flight) = self.host.consistent(&|| self.messages_held());
            Pending { in_flight, conversation_messages: held, ..Default::default() }
        });
        result.map_err(|SettleError::Timeout { waited, pending }| {
            // For the reader: which queues hold work at all.
            let queues = self.host.pending_queues();
            SettleError::Timeout { waited, pending: Pending { queues, ..pending } }
        })
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        self.host.unfollow(&self.id, &self.tracker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(headers: &[(&str, &str)], message_id: Option<&str>) -> Option<Scope> {
        let mut message = Message::new("m").with_header("tenant", FieldValue::from("acme"));
        for (name, value) in headers {
            message = message.with_header(*name, FieldValue::from(*value));
        }
        if let Some(id) = message_id {
            message.properties_mut().set_message_id(id);
        }
        scope_of(&message)
    }

    fn texts(scope: &Scope) -> [Option<&str>; 4] {
        [&scope.conversation, &scope.initiator, &scope.traceparent, &scope.tracestate].map(|t| t.as_deref())
    }

    #[test]
    fn a_delivery_scope_takes_each_header_it_passes_on_and_nothing_else() {
        assert!(scope(&[("x-other", "1")], Some("m-1")).is_none(), "no conversation, no trace");
        assert!(scope(&[(TRACESTATE_HEADER, "v=1")], None).is_none(), "a trace state alone is not passed on");
        let s = scope(&[(CONVERSATION_ID_HEADER, "c-1"), ("x-other", "1")], Some("m-1")).unwrap();
        assert_eq!(texts(&s), [Some("c-1"), Some("m-1"), None, None]);
        let s =
            scope(&[(TRACEPARENT_HEADER, "00-ab-cd-01"), (TRACESTATE_HEADER, "v=1")], Some("m-1")).unwrap();
        assert_eq!(
            texts(&s),
            [None, None, Some("00-ab-cd-01"), Some("v=1")],
            "an initiator only with a conversation"
        );
        let all = [
            (TRACESTATE_HEADER, "v=1"),
            (CONVERSATION_ID_HEADER, "c-1"),
            (TRACEPARENT_HEADER, "00-ab-cd-01"),
        ];
        assert_eq!(texts(&scope(&all, None).unwrap()), [Some("c-1"), None, Some("00-ab-cd-01"), Some("v=1")]);
    }
}
