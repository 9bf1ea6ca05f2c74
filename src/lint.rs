//! Topology lint: [`Broker::lint`](crate::Broker::lint) reads the declared
//! topology and reports what is probably a mistake — things RabbitMQ
//! accepts without a word and that show up later as lost or piling-up
//! messages. Each finding is a value a test can assert on.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::exchange::ExchangeKind;
use crate::explain::TopologyView;
use crate::field::FieldTable;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Severity {
    /// Worth a look; often intended.
    Info,
    /// Messages will be lost, loop, or pile up.
    Warning,
}

/// One thing the lint found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub enum LintFinding {
    /// A declared exchange with no bindings (and not an alternate or
    /// dead-letter exchange of anything): what is published to it is lost.
    ExchangeWithoutBindings {
        /// The exchange.
        exchange: String,
    },
    /// No binding leads to the queue: only a publish to the default
    /// exchange with its name reaches it.
    QueueWithoutBindings {
        /// The queue.
        queue: String,
    },
    /// A queue names a dead-letter exchange that does not exist: its dead
    /// letters are dropped.
    MissingDeadLetterExchange {
        /// The queue.
        queue: String,
        /// The exchange it names.
        exchange: String,
    },
    /// An exchange names an alternate exchange that does not exist.
    MissingAlternateExchange {
        /// The exchange.
        exchange: String,
        /// The alternate exchange it names.
        alternate: String,
    },
    /// Queues that dead-letter into one another in a loop, each letting
    /// messages die on its own (TTL, length limit): with no rejection on
    /// the way, RabbitMQ (and interoffice) drop a message the moment it
    /// would go round again.
    DeadLetterCycle {
        /// The queues of the loop, in order.
        queues: Vec<String>,
    },
    /// Alternate exchanges that lead back to themselves: routing stops at
    /// the first repeat, so the loop only hides where unroutable messages go.
    AlternateExchangeLoop {
        /// The exchanges of the loop, in order.
        exchanges: Vec<String>,
    },
    /// A binding key that can never match what its author meant: a
    /// wildcard glued to a word (`order*`, matched only literally), a
    /// wildcard on a direct exchange (which compares keys whole), a
    /// repeated `#` that adds nothing.
    SuspiciousBindingKey {
        /// The exchange.
        exchange: String,
        /// The binding's destination.
        destination: String,
        /// The binding key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A binding that matches nothing another binding from the same
    /// exchange to the same destination does not already match: a message
    /// reaches a queue once, so it never makes a difference.
    ShadowedBinding {
        /// The exchange.
        exchange: String,
        /// The destination.
        destination: String,
        /// The redundant binding: its key, or its header rule.
        binding: String,
        /// The binding that covers it.
        shadowed_by: String,
    },
    /// A queue with no consumer, no TTL, no length limit and no expiry:
    /// what reaches it stays for ever.
    UnboundedQueueWithoutConsumers {
        /// The queue.
        queue: String,
    },
}

impl LintFinding {
    /// How much it matters.
    pub fn severity(&self) -> Severity {
        match self {
            LintFinding::QueueWithoutBindings { .. } | LintFinding::ShadowedBinding { .. } => Severity::Info,
            _ => Severity::Warning,
        }
    }
}

impl fmt::Display for LintFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LintFinding::ExchangeWithoutBindings { exchange } => {
                write!(f, "exchange '{exchange}' has no bindings: what is published to it is lost")
            }
            LintFinding::QueueWithoutBindings { queue } => {
                write!(f, "queue '{queue}' has no bindings: only the default exchange reaches it")
            }
            LintFinding::MissingDeadLetterExchange { queue, exchange } => {
                write!(f, "queue '{queue}' dead-letters to exchange '{exchange}', which does not exist")
            }
            LintFinding::MissingAlternateExchange { exchange, alternate } => {
                write!(f, "exchange '{exchange}' has alternate exchange '{alternate}', which does not exist")
            }
            LintFinding::DeadLetterCycle { queues } => write!(
                f,
                "dead-letter cycle without a rejection: {} → {} (messages are dropped going round)",
                queues.join(" → "),
                queues.first().map_or("", String::as_str)
            ),
            LintFinding::AlternateExchangeLoop { exchanges } => write!(
                f,
                "alternate exchanges loop: {} → {}",
                exchanges.join(" → "),
                exchanges.first().map_or("", String::as_str)
            ),
            LintFinding::SuspiciousBindingKey { exchange, destination, key, problem } => {
                write!(f, "binding '{exchange}' → '{destination}' with key '{key}': {problem}")
            }
            LintFinding::ShadowedBinding { exchange, destination, binding, shadowed_by } => write!(
                f,
                "binding '{exchange}' → '{destination}' [{binding}] is shadowed by [{shadowed_by}]: it never adds a message"
            ),
            LintFinding::UnboundedQueueWithoutConsumers { queue } => write!(
                f,
                "queue '{queue}' has no consumer, TTL, length limit or expiry: messages pile up for ever"
            ),
        }
    }
}

/// What the lint needs of one queue beyond the routing view.
pub(crate) struct QueueFacts {
    pub(crate) consumers: usize,
    pub(crate) dead_letter_exchange: Option<String>,
    pub(crate) dead_letter_routing_key: Option<String>,
    /// Messages die here on their own: TTL, length limit or delivery limit.
    pub(crate) dies_on_its_own: bool,
    /// Bounded: TTL, length limit or expiry.
    pub(crate) bounded: bool,
}

/// Runs every check over the topology; findings sorted by severity (most
/// serious first), then as found.
pub(crate) fn lint(view: &TopologyView, queues: &HashMap<String, QueueFacts>) -> Vec<LintFinding> {
    let mut findings = Vec::new();
    let user_exchange = |name: &str| !name.is_empty() && !name.starts_with("amq.");
    let mut names: Vec<&String> = view.exchanges.keys().collect();
    names.sort();
    let mut queue_names: Vec<&String> = queues.keys().collect();
    queue_names.sort();

    // Exchanges used as alternate or dead-letter exchanges are reached
    // without a publish naming them; still, with no binding they drop.
    for name in names.iter().filter(|n| user_exchange(n)) {
        if view.bindings.get(*name).is_none_or(Vec::is_empty) {
            findings.push(LintFinding::ExchangeWithoutBindings { exchange: (*name).clone() });
        }
    }
    let bound: HashSet<&str> = view
        .bindings
        .values()
        .flatten()
        .filter(|b| !b.destination_is_exchange)
        .map(|b| b.destination.as_str())
        .collect();
    for queue in &queue_names {
        if !bound.contains(queue.as_str()) {
            findings.push(LintFinding::QueueWithoutBindings { queue: (*queue).clone() });
        }
        let facts = &queues[*queue];
        if let Some(dlx) = &facts.dead_letter_exchange
            && !view.exchanges.contains_key(dlx)
        {
            findings.push(LintFinding::MissingDeadLetterExchange {
                queue: (*queue).clone(),
                exchange: dlx.clone(),
            });
        }
        if facts.consumers == 0 && !facts.bounded {
            findings.push(LintFinding::UnboundedQueueWithoutConsumers { queue: (*queue).clone() });
        }
    }
    for name in &names {
        if let Some(alternate) = &view.exchanges[*name].alternate
            && !view.exchanges.contains_key(alternate)
        {
            findings.push(LintFinding::MissingAlternateExchange {
                exchange: (*name).clone(),
                alternate: alternate.clone(),
            });
        }
    }
    findings.extend(alternate_loops(view, &names));
    findings.extend(dead_letter_cycles(view, queues, &queue_names));
    for name in &names {
        let kind = view.exchanges[*name].kind;
        let bindings = view.bindings.get(*name).map(Vec::as_slice).unwrap_or_default();
        for binding in bindings {
            if let Some(problem) = key_problem(kind, &binding.routing_key) {
                findings.push(LintFinding::SuspiciousBindingKey {
                    exchange: (*name).clone(),
                    destination: binding.destination.clone(),
                    key: binding.routing_key.clone(),
                    problem,
                });
            }
        }
        findings.extend(shadowed(name, kind, bindings));
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity()));
    findings
}

/// Loops in the alternate-exchange chains, each reported once.
fn alternate_loops(view: &TopologyView, names: &[&String]) -> Vec<LintFinding> {
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    for start in names {
        let mut chain: Vec<String> = vec![(*start).clone()];
        let mut at = (*start).clone();
        while let Some(next) = view.exchanges.get(&at).and_then(|e| e.alternate.clone()) {
            if let Some(i) = chain.iter().position(|e| *e == next) {
                let mut cycle = chain[i..].to_vec();
                let rotate = cycle.iter().enumerate().min_by_key(|(_, n)| (*n).clone()).map_or(0, |(i, _)| i);
                cycle.rotate_left(rotate);
                reported.insert(cycle);
                break;
            }
            chain.push(next.clone());
            at = next;
        }
    }
    reported.into_iter().map(|exchanges| LintFinding::AlternateExchangeLoop { exchanges }).collect()
}

/// The queues a dead letter of `queue` can reach: through its dead-letter
/// exchange, with its dead-letter routing key if it has one, else any key
/// (the message's own, unknown here), so every binding of the exchange.
fn dead_letter_targets(view: &TopologyView, facts: &QueueFacts) -> Vec<String> {
    let Some(dlx) = &facts.dead_letter_exchange else { return Vec::new() };
    match &facts.dead_letter_routing_key {
        Some(key) => view.explain(dlx, key, None).routes.into_iter().map(|r| r.queue).collect(),
        None => {
            let mut seen = HashSet::from([dlx.clone()]);
            let mut pending = vec![dlx.clone()];
            let mut out = Vec::new();
            while let Some(exchange) = pending.pop() {
                for binding in view.bindings.get(&exchange).into_iter().flatten() {
                    if !binding.destination_is_exchange {
                        out.push(binding.destination.clone());
                    } else if seen.insert(binding.destination.clone()) {
                        pending.push(binding.destination.clone());
                    }
                }
                if exchange.is_empty() {
                    out.extend(view.queues.iter().cloned());
                }
            }
            out
        }
    }
}

/// Cycles of dead-lettering among queues where messages die on their own.
fn dead_letter_cycles(
    view: &TopologyView,
    queues: &HashMap<String, QueueFacts>,
    names: &[&String],
) -> Vec<LintFinding> {
    // Only queues where messages die without a consumer rejecting them.
    let edges: HashMap<&str, Vec<String>> = names
        .iter()
        .filter(|q| queues[**q].dies_on_its_own)
        .map(|q| {
            let mut targets = dead_letter_targets(view, &queues[*q]);
            targets.retain(|t| queues.get(t).is_some_and(|f| f.dies_on_its_own));
            targets.sort();
            targets.dedup();
            (q.as_str(), targets)
        })
        .collect();
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    for start in names {
        // Depth-first, paths from `start`: small topologies, bounded by the queue count.
        let mut stack: Vec<(String, Vec<String>)> = vec![((*start).clone(), vec![(*start).clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(at.as_str()).into_iter().flatten() {
                if *next == **start {
                    let mut cycle = path.clone();
                    let rotate =
                        cycle.iter().enumerate().min_by_key(|(_, n)| (*n).clone()).map_or(0, |(i, _)| i);
                    cycle.rotate_left(rotate);
                    reported.insert(cycle);
                } else if !path.contains(next) && path.len() < names.len() {
                    stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
                }
            }
        }
    }
    reported.into_iter().map(|queues| LintFinding::DeadLetterCycle { queues }).collect()
}

/// What is wrong with a binding key on an exchange of `kind`, if anything.
fn key_problem(kind: ExchangeKind, key: &str) -> Option<String> {
    let has_wildcard = key.split('.').any(|w| w == "*" || w == "#");
    match kind {
        ExchangeKind::Direct if has_wildcard || key.contains('*') || key.contains('#') => {
            Some("a direct exchange compares keys whole: '*' and '#' are plain characters here".into())
        }
        ExchangeKind::Topic => {
            if let Some(word) = key.split('.').find(|w| w.len() > 1 && (w.contains('*') || w.contains('#'))) {
                return Some(format!(
                    "'{word}' is matched literally: a wildcard must be a whole word ('*' or '#' between dots)"
                ));
            }
            if key.split('.').collect::<Vec<_>>().windows(2).any(|w| w[0] == "#" && w[1] == "#") {
                return Some("'#.#' matches what '#' matches: the second '#' adds nothing".into());
            }
            None
        }
        _ => None,
    }
}

/// Bindings from one exchange to one destination that another binding
/// there already covers.
fn shadowed(
    exchange: &str,
    kind: ExchangeKind,
    bindings: &[crate::exchange::BindingInfo],
) -> Vec<LintFinding> {
    let mut findings = Vec::new();
    let show = |b: &crate::exchange::BindingInfo| match kind {
        ExchangeKind::Headers => format!("headers {}", b.arguments),
        _ => b.routing_key.clone(),
    };
    for (i, a) in bindings.iter().enumerate() {
        for (j, b) in bindings.iter().enumerate() {
            if i == j
                || a.destination != b.destination
                || a.destination_is_exchange != b.destination_is_exchange
            {
                continue;
            }
            // `a` is shadowed by `b` if every message `a` matches, `b` matches;
            // of two equivalent bindings, the later one is reported.
            let covers = covers(kind, b, a);
            let equivalent = covers && self::covers(kind, a, b);
            if covers && (!equivalent || j < i) {
                findings.push(LintFinding::ShadowedBinding {
                    exchange: exchange.to_owned(),
                    destination: a.destination.clone(),
                    binding: show(a),
                    shadowed_by: show(b),
                });
                break;
            }
        }
    }
    findings
}

/// Whether binding `wide` matches every message binding `narrow` matches.
fn covers(
    kind: ExchangeKind,
    wide: &crate::exchange::BindingInfo,
    narrow: &crate::exchange::BindingInfo,
) -> bool {
    match kind {
        ExchangeKind::Fanout => true,
        ExchangeKind::Direct => wide.routing_key == narrow.routing_key,
        ExchangeKind::Topic => topic_covers(&wide.routing_key, &narrow.routing_key),
        ExchangeKind::Headers => headers_covers(&wide.arguments, &narrow.arguments),
    }
}

/// Whether topic pattern `wide` matches every key `narrow` matches. Sound,
/// not complete: `#` covers everything; otherwise, for a `narrow` without
/// `#`, `wide` must match `narrow` read as a key — where `narrow` has `*`,
/// that literal word can only be matched by a `*` or `#` of `wide`, which
/// match any word there.
fn topic_covers(wide: &str, narrow: &str) -> bool {
    if wide == narrow || wide == "#" {
        return true;
    }
    !narrow.split('.').any(|w| w == "#") && crate::exchange::topic::pattern_matches(wide, narrow)
}

/// Whether headers rule `wide` matches every message `narrow` matches
/// (plain `all`/`any` rules; `-with-x` rules are left alone).
fn headers_covers(wide: &FieldTable, narrow: &FieldTable) -> bool {
    let mode =
        |t: &FieldTable| t.get("x-match").and_then(crate::FieldValue::as_str).unwrap_or("all").to_owned();
    let pairs = |t: &FieldTable| -> Vec<(String, crate::FieldValue)> {
        t.iter().filter(|(k, _)| !k.starts_with("x-")).map(|(k, v)| (k.to_owned(), v.clone())).collect()
    };
    let (wide_mode, narrow_mode) = (mode(wide), mode(narrow));
    let (w, n) = (pairs(wide), pairs(narrow));
    if w.is_empty() || n.is_empty() {
        return false;
    }
    match (wide_mode.as_str(), narrow_mode.as_str()) {
        // Every test of `wide` is one `narrow` makes too.
        ("all", "all") => w.iter().all(|p| n.contains(p)),
        // Any one of `narrow`'s tests passing passes one of `wide`'s.
        ("any", "any") => n.iter().all(|p| w.contains(p)),
        // `narrow` passes all its tests, one of which `wide` accepts.
        ("any", "all") => n.iter().any(|p| w.contains(p)),
        _ => false,
    }
}
