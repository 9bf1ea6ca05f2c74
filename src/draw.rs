//! A picture of the topology: [`Broker::to_mermaid`] and
//! [`Broker::to_dot`] draw exchanges, queues and bindings (labelled with
//! their keys or header rules), dead-letter edges dashed and
//! alternate-exchange edges dotted. The `amq.*` exchanges appear only when
//! something is bound to or from them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::broker::Broker;
use crate::exchange::ExchangeKind;

/// What the drawings show, sorted so a topology always draws the same.
struct Picture {
    /// Exchanges by name, with their kind.
    exchanges: BTreeMap<String, ExchangeKind>,
    queues: BTreeSet<String>,
    /// (from, to, to is an exchange, label).
    bindings: Vec<(String, String, bool, String)>,
    /// (queue, dead-letter exchange, its routing key if fixed).
    dead_letters: Vec<(String, String, Option<String>)>,
    /// (exchange, alternate exchange).
    alternates: Vec<(String, String)>,
}

impl Broker {
    fn picture(&self) -> Picture {
        let view = self.inner.default_vhost.topology_view();
        let mut bindings = Vec::new();
        let mut used = BTreeSet::new();
        for binding in view.bindings.values().flatten() {
            let kind = view.exchanges.get(&binding.source).map(|e| e.kind);
            let label = match kind {
                Some(ExchangeKind::Fanout) => String::new(),
                Some(ExchangeKind::Headers) => {
                    let rule: Vec<String> =
                        binding.arguments.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    rule.join(", ")
                }
                _ => binding.routing_key.clone(),
            };
            used.insert(binding.source.clone());
            if binding.destination_is_exchange {
                used.insert(binding.destination.clone());
            }
            bindings.push((
                binding.source.clone(),
                binding.destination.clone(),
                binding.destination_is_exchange,
                label,
            ));
        }
        bindings.sort();
        let mut dead_letters = Vec::new();
        let mut queues = BTreeSet::new();
        for queue in self.inner.default_vhost.queues_snapshot() {
            queues.insert(queue.name.to_string());
            if let Some(dlx) = &queue.policy.dead_letter_exchange {
                used.insert(dlx.clone());
                dead_letters.push((
                    queue.name.to_string(),
                    dlx.clone(),
                    queue.policy.dead_letter_routing_key.clone(),
                ));
            }
        }
        dead_letters.sort();
        let mut alternates = Vec::new();
        for (name, facts) in &view.exchanges {
            if let Some(alternate) = &facts.alternate {
                used.insert(name.clone());
                used.insert(alternate.clone());
                alternates.push((name.clone(), alternate.clone()));
            }
        }
        alternates.sort();
        let exchanges = view
            .exchanges
            .iter()
            .filter(|(name, _)| !(name.is_empty() || name.starts_with("amq.")) || used.contains(*name))
            .map(|(name, facts)| (name.clone(), facts.kind))
            .collect();
        Picture { exchanges, queues, bindings, dead_letters, alternates }
    }

    /// The default virtual host's topology as a Mermaid flowchart (see
    /// [`Broker::vhost`] for others' figures): exchanges as hexagons (with
    /// their kind), queues as boxes, bindings as arrows labelled with their
    /// key or header rule, dead-letter edges dashed, alternate-exchange
    /// edges dotted. Paste it into any Markdown that renders Mermaid.
    ///
    /// ```
    /// use interoffice::{Broker, ExchangeKind, QueueOptions};
    /// let broker = Broker::new();
    /// let conn = broker.connect();
    /// conn.declare_exchange("orders", ExchangeKind::Topic, Default::default())?;
    /// conn.declare_queue("billing", QueueOptions::default())?;
    /// conn.bind_queue("billing", "orders", "order.*.created", None)?;
    /// assert_eq!(
    ///     broker.to_mermaid(),
    ///     "flowchart LR\n  x0{{\"orders (topic)\"}}\n  q0[\"billing\"]\n  x0 -->|\"order.*.created\"| q0\n"
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_mermaid(&self) -> String {
        let picture = self.picture();
        let ids = Ids::new(&picture);
        let mut out = String::from("flowchart LR\n");
        for (name, kind) in &picture.exchanges {
            let _ = writeln!(
                out,
                "  {}{{{{\"{} ({})\"}}}}",
                ids.exchange(name),
                mermaid_text(shown(name)),
                kind.as_str()
            );
        }
        for name in &picture.queues {
            let _ = writeln!(out, "  {}[\"{}\"]", ids.queue(name), mermaid_text(name));
        }
        for (from, to, to_exchange, label) in &picture.bindings {
            let to = if *to_exchange { ids.exchange(to) } else { ids.queue(to) };
            if label.is_empty() {
                let _ = writeln!(out, "  {} --> {to}", ids.exchange(from));
            } else {
                let _ = writeln!(out, "  {} -->|\"{}\"| {to}", ids.exchange(from), mermaid_text(label));
            }
        }
        for (queue, dlx, key) in &picture.dead_letters {
            let label = dead_letter_label(key.as_deref());
            let _ = writeln!(
                out,
                "  {} -.->|\"{}\"| {}",
                ids.queue(queue),
                mermaid_text(&label),
                ids.exchange(dlx)
            );
        }
        for (exchange, alternate) in &picture.alternates {
            let _ = writeln!(
                out,
                "  {} -.->|\"unroutable\"| {}",
                ids.exchange(exchange),
                ids.exchange(alternate)
            );
        }
        out
    }

    /// The default virtual host's topology as Graphviz DOT (`dot -Tsvg`): exchanges as hexagons,
    /// queues as boxes, bindings labelled with their key or header rule,
    /// dead-letter edges dashed (red), alternate-exchange edges dotted.
    pub fn to_dot(&self) -> String {
        let picture = self.picture();
        let ids = Ids::new(&picture);
        let mut out = String::from(
            "digraph topology {\n  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=11];\n  edge [fontname=\"Helvetica\", fontsize=10];\n",
        );
        for (name, kind) in &picture.exchanges {
            let _ = writeln!(
                out,
                "  {} [shape=hexagon, style=filled, fillcolor=\"#e8f0fe\", label=\"{}\\n({})\"];",
                ids.exchange(name),
                dot_text(shown(name)),
                kind.as_str()
            );
        }
        for name in &picture.queues {
            let _ = writeln!(
                out,
                "  {} [shape=box, style=\"rounded,filled\", fillcolor=\"#fef7e0\", label=\"{}\"];",
                ids.queue(name),
                dot_text(name)
            );
        }
        for (from, to, to_exchange, label) in &picture.bindings {
            let to = if *to_exchange { ids.exchange(to) } else { ids.queue(to) };
            let _ = writeln!(out, "  {} -> {to} [label=\"{}\"];", ids.exchange(from), dot_text(label));
        }
        for (queue, dlx, key) in &picture.dead_letters {
            let label = dead_letter_label(key.as_deref());
            let _ = writeln!(
                out,
                "  {} -> {} [style=dashed, color=\"#c5221f\", fontcolor=\"#c5221f\", label=\"{}\"];",
                ids.queue(queue),
                ids.exchange(dlx),
                dot_text(&label)
            );
        }
        for (exchange, alternate) in &picture.alternates {
            let _ = writeln!(
                out,
                "  {} -> {} [style=dotted, label=\"unroutable\"];",
                ids.exchange(exchange),
                ids.exchange(alternate)
            );
        }
        out.push_str("}\n");
        out
    }
}

/// Node ids: `x<n>` for exchanges, `q<n>` for queues, by sorted name, so
/// names with any characters draw.
struct Ids {
    exchanges: BTreeMap<String, usize>,
    queues: BTreeMap<String, usize>,
}

impl Ids {
    fn new(picture: &Picture) -> Self {
        let mut exchanges: BTreeMap<String, usize> =
            picture.exchanges.keys().cloned().enumerate().map(|(i, n)| (n, i)).collect();
        // Dead-letter and alternate exchanges that do not exist still get a node id.
        for name in picture.dead_letters.iter().map(|d| &d.1).chain(picture.alternates.iter().map(|a| &a.1)) {
            let next = exchanges.len();
            exchanges.entry(name.clone()).or_insert(next);
        }
        let queues = picture.queues.iter().cloned().enumerate().map(|(i, n)| (n, i)).collect();
        Ids { exchanges, queues }
    }

    fn exchange(&self, name: &str) -> String {
        format!("x{}", self.exchanges.get(name).copied().unwrap_or(usize::MAX))
    }

    fn queue(&self, name: &str) -> String {
        format!("q{}", self.queues.get(name).copied().unwrap_or(usize::MAX))
    }
}

/// The label of a dead-letter edge: its fixed routing key, if any.
fn dead_letter_label(key: Option<&str>) -> String {
    match key {
        Some(key) => format!("dead letters: {key}"),
        None => "dead letters".into(),
    }
}

/// The default exchange's name, as a reader wants it.
fn shown(name: &str) -> &str {
    if name.is_empty() { "(default)" } else { name }
}

/// Text inside Mermaid's quotes: quotes become `#quot;`.
fn mermaid_text(text: &str) -> String {
    text.replace('"', "#quot;")
}

/// Text inside DOT's quotes.
fn dot_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}
