//! The routes the twin-broker proptests share (`publish_batch`,
//! `route_cache`): a topic exchange `t` with a fanout alternate exchange
//! `alt` (bound to `q_alt`), and a headers exchange `h` whose `q_red`
//! takes messages with `color: red`.

use interoffice::{Connection, ExchangeKind, ExchangeOptions, FieldTable, FieldValue};

/// Declares `alt`, `t` and `h`, and binds `q_alt` and `q_red`, which must
/// exist already.
pub fn topic_alternate_and_headers(conn: &Connection) {
    conn.declare_exchange("alt", ExchangeKind::Fanout, ExchangeOptions::default()).unwrap();
    let t = ExchangeOptions { alternate_exchange: Some("alt".into()), ..Default::default() };
    conn.declare_exchange("t", ExchangeKind::Topic, t).unwrap();
    conn.declare_exchange("h", ExchangeKind::Headers, ExchangeOptions::default()).unwrap();
    let red = FieldTable::from([("x-match", FieldValue::from("any")), ("color", FieldValue::from("red"))]);
    conn.bind_queue("q_red", "h", "", red).unwrap();
    conn.bind_queue("q_alt", "alt", "", None).unwrap();
}
