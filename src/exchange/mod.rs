//! Exchanges: kinds, options, and the routing tables publishers read.
//!
//! Each exchange publishes its routing table through an `ArcSwap`: a
//! publisher loads the current table without a lock, and a topology change
//! builds the next table and swaps it in. Tables are cheap to copy where they
//! can be large (the topic trie shares unchanged nodes).

pub(crate) mod headers;
pub(crate) mod topic;

use std::fmt;

use arc_swap::ArcSwap;

use crate::field::FieldTable;
use crate::hash::FastImblMap;
use crate::queue::Queue;
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering};

use headers::{HeadersMatcher, HeadersTable};
use topic::TopicTrie;

/// How an exchange picks the queues (and exchanges) a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// To bindings whose key equals the routing key.
    Direct,
    /// To every binding; the routing key is ignored.
    Fanout,
    /// To bindings whose pattern matches the routing key: words split on `.`,
    /// `*` matches exactly one word (possibly empty), `#` zero or more.
    Topic,
    /// To bindings whose arguments match the message headers, by `x-match`:
    /// `all` (the default), `any`, `all-with-x` or `any-with-x`. The routing
    /// key is ignored.
    Headers,
}

impl ExchangeKind {
    /// The AMQP name of the kind (`direct`, `fanout`, `topic`, `headers`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options of [`Connection::declare_exchange`](crate::Connection::declare_exchange).
///
/// ```
/// use interoffice::ExchangeOptions;
/// let opts = ExchangeOptions { alternate_exchange: Some("unrouted".into()), ..Default::default() };
/// assert!(!opts.internal);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExchangeOptions {
    /// Only check that the exchange exists; every other option is ignored.
    pub passive: bool,
    /// Recorded and compared on re-declaration, for a bridge to a real broker.
    pub durable: bool,
    /// Delete the exchange when its last binding (as a source) is removed,
    /// once it has had one.
    pub auto_delete: bool,
    /// Refuse direct publishing: only other exchanges route into it.
    pub internal: bool,
    /// Where messages this exchange routes nowhere go instead. Resolved when a
    /// message is routed, so it may name an exchange that does not exist yet.
    pub alternate_exchange: Option<String>,
    /// Other arguments (`x-*`), compared on re-declaration.
    pub arguments: FieldTable,
    /// A delayed exchange, like RabbitMQ's delayed-message plugin: a message
    /// published to it with an integer `x-delay` header (milliseconds) stays
    /// invisible in the queues it reaches for that long, as with
    /// [`Message::with_delay`](crate::Message::with_delay).
    pub delayed: bool,
}

impl ExchangeOptions {
    /// Resolves the argument forms into the typed fields, as a queue's
    /// policies are: `alternate-exchange` (RabbitMQ's usual form, and what a
    /// definitions file carries) becomes [`alternate_exchange`](Self::alternate_exchange);
    /// a conflict between the two is refused, and so is any `x-` argument
    /// the bus does not implement. `(argument, reason)` on error.
    /// The alternate exchange, from the field or the argument (if either
    /// is readable), for access control: declaring with one needs write on it.
    pub(crate) fn alternate_exchange_name(&self) -> Option<String> {
        self.clone().resolved().ok().and_then(|o| o.alternate_exchange)
    }

    pub(crate) fn resolved(mut self) -> Result<ExchangeOptions, crate::queue::InvalidArg> {
        if let Some(value) = self.arguments.remove("alternate-exchange") {
            let Some(name) = value.as_str() else {
                return Err(("alternate-exchange".into(), crate::queue::wrong_type("longstr", &value)));
            };
            match &self.alternate_exchange {
                Some(field) if field != name => {
                    return Err((
                        "alternate-exchange".into(),
                        format!("the option says {field:?} but the argument says {name:?}"),
                    ));
                }
                _ => self.alternate_exchange = Some(name.to_owned()),
            }
        }
        if self.alternate_exchange.as_ref().is_some_and(|n| n.len() > crate::MAX_NAME_LEN) {
            return Err(("alternate-exchange".into(), "longer than 255 bytes".into()));
        }
        if let Some((name, _)) = self.arguments.iter().find(|(k, _)| k.starts_with("x-")) {
            return Err(crate::queue::unknown_argument(name));
        }
        Ok(self)
    }

    /// The first option that differs: `(name, received, current)`.
    pub(crate) fn difference(&self, current: &ExchangeOptions) -> Option<crate::queue::Difference> {
        use crate::queue::ToSide;
        let flag = |name: &str, new: bool, old: bool| {
            (new != old).then(|| (name.to_owned(), new.to_side(), old.to_side()))
        };
        let show = |v: &Option<String>| v.as_ref().and_then(ToSide::to_side);
        flag("durable", self.durable, current.durable)
            .or_else(|| flag("auto_delete", self.auto_delete, current.auto_delete))
            .or_else(|| flag("internal", self.internal, current.internal))
            .or_else(|| flag("x-delayed-message", self.delayed, current.delayed))
            .or_else(|| {
                (self.alternate_exchange != current.alternate_exchange).then(|| {
                    (
                        "alternate-exchange".to_owned(),
                        show(&self.alternate_exchange),
                        show(&current.alternate_exchange),
                    )
                })
            })
            .or_else(|| crate::queue::table_difference(&self.arguments, &current.arguments))
    }
}

/// Where a binding leads.
#[derive(Debug, Clone)]
pub(crate) enum Dest {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl PartialEq for Dest {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Dest::Queue(a), Dest::Queue(b)) => Arc::ptr_eq(a, b),
            (Dest::Exchange(a), Dest::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// An exchange's routing table, one shape per kind.
#[derive(Debug, Clone)]
pub(crate) enum Routes {
    /// The default exchange: the routing key names the queue.
    Default,
    /// Persistent collections throughout: a binding change copies a path,
    /// not the table, so building n bindings costs O(n log n), not O(n²).
    Direct(FastImblMap<Box<str>, Vec<Dest>>),
    Fanout(imbl::Vector<Dest>),
    Topic(TopicTrie<Dest>),
    Headers(HeadersTable<Dest>),
}

impl Routes {
    pub(crate) fn empty(kind: ExchangeKind) -> Self {
        match kind {
            ExchangeKind::Direct => Routes::Direct(FastImblMap::default()),
            ExchangeKind::Fanout => Routes::Fanout(imbl::Vector::new()),
            ExchangeKind::Topic => Routes::Topic(TopicTrie::new()),
            ExchangeKind::Headers => Routes::Headers(HeadersTable::new()),
        }
    }

    /// Adds one binding. Binding identity (key and arguments) is the
    /// registry's job; here the same destination may appear twice under
    /// different arguments, and routing deduplicates.
    pub(crate) fn add(&mut self, key: &str, matcher: Option<HeadersMatcher>, dest: Dest) {
        match self {
            Routes::Default => {}
            Routes::Direct(map) => {
                let mut dests = map.get(key).cloned().unwrap_or_default();
                dests.push(dest);
                map.insert(key.into(), dests);
            }
            Routes::Fanout(dests) => dests.push_back(dest),
            Routes::Topic(trie) => {
                trie.insert(key, dest);
            }
            Routes::Headers(table) => {
                table.add(matcher.expect("headers bindings are compiled"), dest);
            }
        }
    }

    /// Removes one binding added with the same key, matcher and destination.
    pub(crate) fn remove(&mut self, key: &str, matcher: Option<&HeadersMatcher>, dest: &Dest) {
        match self {
            Routes::Default => {}
            Routes::Direct(map) => {
                if let Some(mut dests) = map.get(key).cloned()
                    && let Some(i) = dests.iter().position(|d| d == dest)
                {
                    dests.remove(i);
                    if dests.is_empty() {
                        map.remove(key);
                    } else {
                        map.insert(key.into(), dests);
                    }
                }
            }
            Routes::Fanout(dests) => {
                if let Some(i) = dests.iter().position(|d| d == dest) {
                    dests.remove(i);
                }
            }
            Routes::Topic(trie) => {
                trie.remove(key, dest);
            }
            Routes::Headers(table) => {
                if let Some(matcher) = matcher {
                    table.remove(matcher, dest);
                }
            }
        }
    }

    /// Calls `f` for each destination the message matches (possibly twice:
    /// the caller deduplicates). The default exchange is resolved by the caller.
    pub(crate) fn for_each_match(&self, key: &str, headers: Option<&FieldTable>, f: impl FnMut(&Dest)) {
        match self {
            Routes::Default => {}
            Routes::Direct(map) => map.get(key).into_iter().flatten().for_each(f),
            Routes::Fanout(dests) => dests.iter().for_each(f),
            Routes::Topic(trie) => trie.for_each_match(key, f),
            Routes::Headers(table) => table.for_each_match(headers, f),
        }
    }
}

/// An exchange, shared by the broker's map and the bindings that lead to it.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) name: Arc<str>,
    pub(crate) id: u64,
    pub(crate) kind: ExchangeKind,
    pub(crate) options: ExchangeOptions,
    pub(crate) routes: ArcSwap<Routes>,
    /// Set when the exchange is deleted, for publishers holding it.
    deleted: AtomicBool,
    /// Publishes to it, routed or not (with statistics on).
    pub(crate) counters: PublishCounters,
}

impl Exchange {
    pub(crate) fn new(name: Arc<str>, id: u64, kind: ExchangeKind, options: ExchangeOptions) -> Self {
        let routes = if name.is_empty() { Routes::Default } else { Routes::empty(kind) };
        Exchange {
            name,
            id,
            kind,
            options,
            routes: ArcSwap::from_pointee(routes),
            deleted: AtomicBool::new(false),
            counters: Default::default(),
        }
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The default exchange `""`.
    pub(crate) fn is_default(&self) -> bool {
        self.name.is_empty()
    }
}

/// A binding, as [`Broker::bindings`](crate::Broker::bindings) lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct BindingInfo {
    /// The source exchange.
    pub source: String,
    /// The destination queue or exchange.
    pub destination: String,
    /// Whether the destination is an exchange.
    pub destination_is_exchange: bool,
    /// The binding key.
    pub routing_key: String,
    /// The binding arguments.
    pub arguments: FieldTable,
}

/// `x-match` and the other arguments of a headers binding, compiled; `None`
/// for other kinds. An invalid `x-match` is refused here, at bind time.
pub(crate) fn compile_arguments(
    kind: ExchangeKind,
    args: &FieldTable,
) -> Result<Option<HeadersMatcher>, String> {
    match kind {
        ExchangeKind::Headers => HeadersMatcher::parse(args).map(Some),
        _ => Ok(None),
    }
}

/// Stripes of an exchange's publish counters (read by [`crate::overview`]; see [`crate::settle`] for why
/// counters written on the publish path are striped).
const STRIPES: usize = 16;

#[repr(align(64))]
#[derive(Debug, Default)]
struct Stripe {
    routed: AtomicU64,
    unroutable: AtomicU64,
}

/// An exchange's publish counters, striped by publishing thread: a publish
/// bumps one counter of its own thread's stripe, never a line another
/// publisher writes.
#[derive(Debug, Default)]
pub(crate) struct PublishCounters {
    stripes: [Stripe; STRIPES],
}

impl PublishCounters {
    /// Counts `n` publishes to this exchange, routed or not, on stripe
    /// `index` (the publishing thread's, already looked up for the settle
    /// counters). A batch counts all of its routed messages in one step.
    #[inline]
    pub(crate) fn count(&self, index: usize, routed: bool, n: u64) {
        let stripe = &self.stripes[index % STRIPES];
        let counter = if routed { &stripe.routed } else { &stripe.unroutable };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// `(routed, unroutable)` so far.
    pub(crate) fn read(&self) -> (u64, u64) {
        self.stripes.iter().fold((0, 0), |(r, u), s| {
            (r + s.routed.load(Ordering::Relaxed), u + s.unroutable.load(Ordering::Relaxed))
        })
    }
}
