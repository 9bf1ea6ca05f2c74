//! Drawing the topology: Mermaid and DOT for the README's shop (the
//! topology of `examples/testing.rs`), checked against the files committed
//! in `docs/` (the README shows `docs/topology.svg`, rendered from
//! `docs/topology.dot` with `dot -Tsvg`). `INTEROFFICE_BLESS=1` rewrites
//! them after a deliberate change.

use std::time::Duration;

use interoffice::{Broker, ExchangeKind, ExchangeOptions, FieldTable, QueueOptions};

/// The shop of `examples/testing.rs`, with an alternate exchange and a
/// headers binding so every kind of edge shows.
fn shop() -> Broker {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("shop.unrouted", ExchangeKind::Fanout, Default::default()).unwrap();
    let ae = ExchangeOptions { alternate_exchange: Some("shop.unrouted".into()), ..Default::default() };
    conn.declare_exchange("shop", ExchangeKind::Topic, ae).unwrap();
    conn.declare_exchange("shop.dead", ExchangeKind::Fanout, Default::default()).unwrap();
    conn.declare_exchange("shop.by-region", ExchangeKind::Headers, Default::default()).unwrap();
    let dead = QueueOptions { dead_letter_exchange: Some("shop.dead".into()), ..Default::default() };
    conn.declare_queue("billing", dead.clone()).unwrap();
    conn.declare_queue("shipping", dead).unwrap();
    conn.declare_queue("shipping.eu", QueueOptions::default()).unwrap();
    conn.declare_queue(
        "shop.parked",
        QueueOptions { message_ttl: Some(Duration::from_secs(86_400)), ..Default::default() },
    )
    .unwrap();
    conn.declare_queue("shop.lost", QueueOptions::default()).unwrap();
    conn.bind_queue("billing", "shop", "order.placed", None).unwrap();
    conn.bind_queue("shipping", "shop", "order.billed", None).unwrap();
    conn.bind_exchange("shop.by-region", "shop", "order.billed", None).unwrap();
    conn.bind_queue(
        "shipping.eu",
        "shop.by-region",
        "",
        FieldTable::new().with("x-match", "all").with("region", "eu"),
    )
    .unwrap();
    conn.bind_queue("shop.parked", "shop.dead", "", None).unwrap();
    conn.bind_queue("shop.lost", "shop.unrouted", "", None).unwrap();
    broker
}

fn check(path: &str, drawn: &str) {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("INTEROFFICE_BLESS").is_some() {
        std::fs::write(&full, drawn).unwrap();
    }
    let committed = std::fs::read_to_string(&full).unwrap_or_default();
    assert_eq!(
        committed, drawn,
        "{path} is out of date: rerun with INTEROFFICE_BLESS=1 (and re-render the SVG)"
    );
}

#[test]
fn the_readmes_shop_draws_as_committed() {
    let broker = shop();
    check("docs/topology.dot", &broker.to_dot());
    check("docs/topology.mmd", &broker.to_mermaid());
    let readme = std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(readme.contains(&broker.to_mermaid()), "the README's Mermaid block is out of date");
}

#[test]
fn every_kind_of_edge_is_drawn() {
    let dot = shop().to_dot();
    assert!(dot.contains("style=dashed") && dot.contains("dead letters"), "{dot}");
    assert!(dot.contains("style=dotted") && dot.contains("unroutable"), "{dot}");
    assert!(dot.contains("label=\"region=eu, x-match=all\""), "{dot}");
    assert!(dot.contains("label=\"order.placed\""), "{dot}");
    let mermaid = shop().to_mermaid();
    assert!(
        mermaid.contains("-.->|\"dead letters\"|") && mermaid.contains("-.->|\"unroutable\"|"),
        "{mermaid}"
    );
    // Names that would break the syntax are quoted.
    let broker = Broker::new();
    broker.connect().declare_queue("a\"b", QueueOptions::default()).unwrap();
    assert!(broker.to_mermaid().contains("[\"a#quot;b\"]"));
    assert!(broker.to_dot().contains("label=\"a\\\"b\""));
}
