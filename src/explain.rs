//! "Why did it go there?": [`Broker::explain_route`](crate::Broker::explain_route)
//! walks the topology as routing would — the same exchanges, bindings,
//! alternate exchanges and sender-selected keys — without publishing, and
//! says by which path each queue is reached, or, for a message that would
//! reach none, which bindings came closest and why they did not match.
//!
//! It reads the bindings as declared (the registry), not the routing
//! tables compiled from them, so a test comparing it with real routing
//! (`tests/explain_route.rs`) checks one against the other.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::exchange::topic::pattern_matches;
use crate::exchange::{BindingInfo, ExchangeKind, compile_arguments};
use crate::field::{FieldTable, FieldValue};
use crate::routing::read_sender_selected_keys;

/// How one step of a route was taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub enum Via {
    /// A binding whose key matched (direct: equal; topic: the pattern).
    Binding {
        /// The binding key.
        key: String,
    },
    /// A fanout binding (its key is not read).
    Fanout,
    /// A headers binding whose rule matched.
    Headers {
        /// The binding's arguments (`x-match` and the headers it tests).
        arguments: FieldTable,
    },
    /// The default exchange's implicit binding: the key names the queue.
    DefaultExchange,
    /// The exchange's own bindings matched nothing: its alternate exchange.
    AlternateExchange,
}

/// One step: from an exchange, by `via`, to a queue or exchange.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hop {
    /// The exchange the step leaves.
    pub from: String,
    /// How.
    pub via: Via,
    /// Where it goes (a queue for the last step, else an exchange).
    pub to: String,
}

/// How a message reaches one queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    /// The queue.
    pub queue: String,
    /// The routing key that took it there: the publish's own, or a `CC` /
    /// `BCC` key (sender-selected distribution).
    pub routing_key: String,
    /// The steps, from the exchange published to.
    pub path: Vec<Hop>,
}

/// A binding that did not match, and why: for a message that would reach
/// no queue, the nearest ones first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NearMiss {
    /// The binding's exchange.
    pub exchange: String,
    /// Where it leads.
    pub destination: String,
    /// Its key.
    pub binding_key: String,
    /// Its arguments (headers bindings).
    pub arguments: FieldTable,
    /// Why it did not match.
    pub why: String,
}

/// What [`Broker::explain_route`](crate::Broker::explain_route) found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RouteExplanation {
    /// The exchange published to.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The queues reached, each once, with the first path found to it.
    pub routes: Vec<Route>,
    /// For a message that would reach no queue: the nearest bindings that
    /// did not match, and why (at most 5).
    pub near_misses: Vec<NearMiss>,
    /// Why the publish would be refused before routing (no such exchange,
    /// an internal exchange), if it would.
    pub refused: Option<String>,
}

impl RouteExplanation {
    /// The queues reached, in the order found.
    pub fn queues(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.queue.as_str()).collect()
    }

    /// Whether the message would reach at least one queue.
    pub fn is_routable(&self) -> bool {
        !self.routes.is_empty()
    }
}

impl fmt::Display for RouteExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' with key '{}'", self.exchange, self.routing_key)?;
        if let Some(why) = &self.refused {
            return write!(f, ": refused: {why}");
        }
        if self.routes.is_empty() {
            f.write_str(": unroutable")?;
            for miss in &self.near_misses {
                write!(
                    f,
                    "\n  - '{}' → '{}' [{}]: {}",
                    miss.exchange, miss.destination, miss.binding_key, miss.why
                )?;
            }
            return Ok(());
        }
        for route in &self.routes {
            write!(f, "\n  → {}: ", route.queue)?;
            for (i, hop) in route.path.iter().enumerate() {
                if i == 0 {
                    write!(f, "'{}'", hop.from)?;
                }
                let via = match &hop.via {
                    Via::Binding { key } => format!("[{key}]"),
                    Via::Fanout => "[fanout]".into(),
                    Via::Headers { arguments } => format!("[headers {arguments}]"),
                    Via::DefaultExchange => "[default]".into(),
                    Via::AlternateExchange => "[alternate exchange]".into(),
                };
                write!(f, " {via} → '{}'", hop.to)?;
            }
            if route.routing_key != self.routing_key {
                write!(f, " (CC key '{}')", route.routing_key)?;
            }
        }
        Ok(())
    }
}

/// What the walk needs of one exchange.
pub(crate) struct ExchangeFacts {
    pub(crate) kind: ExchangeKind,
    pub(crate) internal: bool,
    pub(crate) alternate: Option<String>,
}

/// The topology as the walk reads it.
pub(crate) struct TopologyView {
    pub(crate) exchanges: HashMap<String, ExchangeFacts>,
    pub(crate) queues: HashSet<String>,
    /// Bindings by source exchange, in the registry's order.
    pub(crate) bindings: HashMap<String, Vec<BindingInfo>>,
}

/// Whether `binding` of an exchange of `kind` matches `key` and `headers`;
/// if not, why.
fn check(
    kind: ExchangeKind,
    binding: &BindingInfo,
    key: &str,
    headers: Option<&FieldTable>,
) -> Result<Via, String> {
    match kind {
        ExchangeKind::Fanout => Ok(Via::Fanout),
        ExchangeKind::Direct if binding.routing_key == key => Ok(Via::Binding { key: key.into() }),
        ExchangeKind::Direct => Err(format!("direct: key '{key}' is not '{}'", binding.routing_key)),
        ExchangeKind::Topic if pattern_matches(&binding.routing_key, key) => {
            Ok(Via::Binding { key: binding.routing_key.clone() })
        }
        ExchangeKind::Topic => Err(topic_mismatch(&binding.routing_key, key)),
        ExchangeKind::Headers => {
            let matcher = match compile_arguments(kind, &binding.arguments) {
                Ok(Some(matcher)) => matcher,
                Ok(None) => return Err("no headers rule".into()),
                Err(why) => return Err(why),
            };
            if matcher.matches(headers) {
                Ok(Via::Headers { arguments: binding.arguments.clone() })
            } else {
                Err(headers_mismatch(&binding.arguments, headers))
            }
        }
    }
}

/// Why a topic pattern does not match a key: the first word that differs.
fn topic_mismatch(pattern: &str, key: &str) -> String {
    let words: Vec<&str> = if pattern.is_empty() { Vec::new() } else { pattern.split('.').collect() };
    let keys: Vec<&str> = if key.is_empty() { Vec::new() } else { key.split('.').collect() };
    if !words.contains(&"#") {
        if words.len() != keys.len() {
            return format!(
                "topic: pattern '{pattern}' has {} word(s), key '{key}' has {}",
                words.len(),
                keys.len()
            );
        }
        if let Some((i, (w, k))) =
            words.iter().zip(&keys).enumerate().find(|(_, (w, k))| **w != "*" && w != k)
        {
            return format!("topic: word {} of key '{key}' is '{k}', pattern '{pattern}' wants '{w}'", i + 1);
        }
    }
    format!("topic: pattern '{pattern}' does not match key '{key}'")
}

/// Why a headers rule does not match: the headers missing or different.
fn headers_mismatch(arguments: &FieldTable, headers: Option<&FieldTable>) -> String {
    let mode = arguments.get("x-match").and_then(FieldValue::as_str).unwrap_or("all");
    let mut missing = Vec::new();
    let mut different = Vec::new();
    for (name, want) in arguments
        .iter()
        .filter(|(k, _)| *k != "x-match" && (mode.ends_with("-with-x") || !k.starts_with("x-")))
    {
        match headers.and_then(|h| h.get(name)) {
            None => missing.push(name.to_owned()),
            Some(have) if !matches!(want, FieldValue::Void) && !have.amqp_eq(want) => {
                different.push(format!("'{name}' is {}, wants {}", shown(have), shown(want)))
            }
            Some(_) => {}
        }
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "missing {}",
            missing.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(", ")
        ));
    }
    parts.extend(different);
    if parts.is_empty() {
        parts.push("no header to match".into());
    }
    format!("headers (x-match {mode}): {}", parts.join("; "))
}

/// A header value as a reader wants it: strings quoted.
fn shown(value: &FieldValue) -> String {
    match value.as_str() {
        Some(text) => format!("{text:?}"),
        None => value.to_string(),
    }
}

impl TopologyView {
    /// Walks the topology from `exchange` as a publish with `routing_key`
    /// and `headers` would be routed.
    pub(crate) fn explain(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> RouteExplanation {
        let mut explanation = RouteExplanation {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            routes: Vec::new(),
            near_misses: Vec::new(),
            refused: None,
        };
        let Some(start) = self.exchanges.get(exchange) else {
            explanation.refused = Some(format!("no exchange '{exchange}' in vhost '/'"));
            return explanation;
        };
        if start.internal {
            explanation.refused =
                Some(format!("cannot publish to internal exchange '{exchange}' in vhost '/'"));
            return explanation;
        }
        // The keys publishing routes, refusing a `CC` or `BCC` it refuses.
        let extra_keys = match headers.map(read_sender_selected_keys).transpose() {
            Ok(keys) => keys.unwrap_or_default(),
            Err((header, why)) => {
                explanation.refused = Some(format!("invalid header '{header}': {why}"));
                return explanation;
            }
        };
        let mut seen_queues = HashSet::new();
        let mut misses = Vec::new();
        // All the keys at once at every exchange, as routing walks them.
        let keys: Vec<String> = std::iter::once(routing_key.to_owned()).chain(extra_keys).collect();
        let mut seen_exchanges = HashSet::from([exchange.to_owned()]);
        let mut pending: Vec<(String, Vec<Hop>)> = vec![(exchange.to_owned(), Vec::new())];
        while let Some((name, path)) = pending.pop() {
            let Some(facts) = self.exchanges.get(&name) else { continue };
            let mut matched = false;
            if name.is_empty() {
                for key in &keys {
                    if self.queues.contains(key) {
                        matched = true;
                        let hop = Hop { from: name.clone(), via: Via::DefaultExchange, to: key.clone() };
                        if seen_queues.insert(key.clone()) {
                            let path = [path.clone(), vec![hop]].concat();
                            explanation.routes.push(Route {
                                queue: key.clone(),
                                routing_key: key.clone(),
                                path,
                            });
                        }
                    }
                }
            } else {
                // Fanout and headers exchanges do not read the key: once.
                let keys_read = if matches!(facts.kind, ExchangeKind::Direct | ExchangeKind::Topic) {
                    &keys[..]
                } else {
                    &keys[..1]
                };
                for binding in self.bindings.get(&name).into_iter().flatten() {
                    let mut first_miss = None;
                    for key in keys_read {
                        match check(facts.kind, binding, key, headers) {
                            Ok(via) => {
                                matched = true;
                                let hop = Hop { from: name.clone(), via, to: binding.destination.clone() };
                                let path = [path.clone(), vec![hop]].concat();
                                if binding.destination_is_exchange {
                                    if seen_exchanges.insert(binding.destination.clone()) {
                                        pending.push((binding.destination.clone(), path));
                                    }
                                } else if seen_queues.insert(binding.destination.clone()) {
                                    let queue = binding.destination.clone();
                                    explanation.routes.push(Route { queue, routing_key: key.clone(), path });
                                }
                                first_miss = None;
                                break;
                            }
                            Err(why) => {
                                first_miss.get_or_insert(why);
                            }
                        }
                    }
                    if let Some(why) = first_miss {
                        misses.push(NearMiss {
                            exchange: name.clone(),
                            destination: binding.destination.clone(),
                            binding_key: binding.routing_key.clone(),
                            arguments: binding.arguments.clone(),
                            why,
                        });
                    }
                }
            }
            if !matched
                && let Some(alternate) = &facts.alternate
                && self.exchanges.contains_key(alternate)
                && seen_exchanges.insert(alternate.clone())
            {
                let hop = Hop { from: name.clone(), via: Via::AlternateExchange, to: alternate.clone() };
                pending.push((alternate.clone(), [path, vec![hop]].concat()));
            }
        }
        if explanation.routes.is_empty() {
            misses.sort_by_key(|m| crate::similar::distance(&m.binding_key, routing_key));
            misses.truncate(5);
            explanation.near_misses = misses;
        }
        explanation
    }
}
