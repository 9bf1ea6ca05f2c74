//! Virtual hosts: every exchange, queue and binding lives in exactly one;
//! the same names in two never collide and nothing routes between them;
//! deleting one takes its topology, its permissions and its connections;
//! the bus-wide views (settle, overview, definitions) cover them all.

use std::error::Error;
use std::time::Duration;

use interoffice::{
    Broker, ConnectOptions, Connection, ConsumeOptions, Credentials, ExchangeKind, ExchangeOptions, Message,
    Permissions, PublishError, QueueOptions, RecvError, TopicPermissions, WorkerOptions,
};

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

/// `guest` with every right in `vhost`, connected there.
fn connect_to(broker: &Broker, vhost: &str) -> Connection {
    if broker.vhost(vhost).is_none() {
        broker.add_vhost(vhost).unwrap();
    }
    broker.set_permissions("guest", vhost, &Permissions::full()).unwrap();
    broker.connect_with(ConnectOptions { vhost: vhost.into(), ..Default::default() }).unwrap()
}

fn shop(conn: &Connection) -> Result {
    conn.declare_exchange("orders", ExchangeKind::Topic, ExchangeOptions::default())?;
    conn.declare_queue("billing", QueueOptions::default())?;
    conn.bind_queue("billing", "orders", "order.#", None)?;
    Ok(())
}

#[test]
fn the_same_names_in_two_vhosts_never_meet() -> Result {
    let broker = Broker::new();
    let a = connect_to(&broker, "tenant-a");
    let b = connect_to(&broker, "tenant-b");
    shop(&a)?;
    shop(&b)?; // the same names: no collision, no inequivalence
    b.declare_queue("only-in-b", QueueOptions::default())?;

    assert_eq!(a.publish("orders", "order.1", Message::new("for a"))?.queues(), 1);
    assert_eq!(a.publish("", "billing", Message::new("for a, directly"))?.queues(), 1);
    assert_eq!(a.publish("", "only-in-b", Message::new("lost"))?.queues(), 0, "no route across vhosts");
    assert!(matches!(
        a.publisher("nowhere"),
        Err(interoffice::DeclareError::NotFound(message)) if message == "no exchange 'nowhere' in vhost 'tenant-a'"
    ));

    let in_b = b.consume("billing", ConsumeOptions::default())?;
    assert!(in_b.recv_timeout(Duration::from_millis(20)).is_err(), "b's billing got nothing");
    let in_a = a.consume("billing", ConsumeOptions::default())?;
    assert_eq!(in_a.recv()?.body().as_ref(), b"for a");

    let (va, vb) = (broker.vhost("tenant-a").unwrap(), broker.vhost("tenant-b").unwrap());
    assert_eq!(va.queue_names(), ["billing"]);
    assert_eq!(vb.queue_names(), ["billing", "only-in-b"]);
    assert_eq!(va.explain_route("orders", "order.9", None).queues(), ["billing"]);
    assert!(broker.queue_names().is_empty(), "the default vhost holds none of it");
    assert_eq!(broker.vhost_names(), ["/", "tenant-a", "tenant-b"]);
    Ok(())
}

#[test]
fn deleting_a_vhost_takes_its_topology_permissions_and_connections() -> Result {
    let broker = Broker::new();
    let conn = connect_to(&broker, "tenant-a");
    shop(&conn)?;
    conn.publish("orders", "order.1", Message::new("m"))?;
    let consumer = conn.consume("billing", ConsumeOptions::default())?;
    let _held = consumer.recv()?;
    broker.add_user("alice", &Credentials::password("pw"), &[])?;
    broker.set_permissions("alice", "tenant-a", &Permissions::full())?;
    let topic = TopicPermissions { exchange: "orders".into(), write: ".*".into(), read: ".*".into() };
    broker.set_topic_permissions("alice", "tenant-a", &topic)?;

    broker.delete_vhost("tenant-a")?;
    assert!(broker.vhost("tenant-a").is_none());
    assert!(conn.is_closed(), "its connections are closed");
    assert!(matches!(
        conn.publish("orders", "order.2", Message::new("m")),
        Err(PublishError::ConnectionClosed { .. })
    ));
    let after = consumer.recv();
    assert!(matches!(after, Err(RecvError::QueueDeleted(_) | RecvError::ConnectionClosed)), "{after:?}");
    assert_eq!(broker.users().permissions("alice", "tenant-a"), None);
    assert!(broker.users().list_topic_permissions().is_empty());

    // A new vhost of the same name starts empty, and nobody may enter it yet.
    broker.add_vhost("tenant-a")?;
    let options = ConnectOptions::new("tenant-a", "alice", Credentials::password("pw"));
    assert!(broker.connect_with(options).is_err());
    let again = connect_to(&broker, "tenant-a");
    assert!(again.declare_queue("billing", QueueOptions { passive: true, ..Default::default() }).is_err());
    Ok(())
}

#[test]
fn settle_and_overview_see_every_vhost() -> Result {
    let broker = Broker::new();
    let a = connect_to(&broker, "tenant-a");
    shop(&a)?;
    a.publish("orders", "order.1", Message::new("waiting"))?;
    let error = broker.settle(Duration::from_millis(50)).unwrap_err();
    assert!(
        error.to_string().contains("queue 'billing' in vhost 'tenant-a': 1 ready (no consumer)"),
        "{error}"
    );
    let pending = error.pending();
    assert_eq!(pending.queues[0].vhost, "tenant-a");

    let overview = broker.overview();
    let billing = overview.queues.iter().find(|q| q.name == "billing").unwrap();
    assert_eq!((billing.vhost.as_str(), billing.ready), ("tenant-a", 1));
    assert!(overview.exchanges.iter().any(|e| e.vhost == "tenant-a" && e.name == "orders"));

    let _worker = a.worker("billing", WorkerOptions::default(), |_| Ok::<(), String>(()))?;
    broker.settle(Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn definitions_carry_vhosts_users_and_permissions_both_ways() -> Result {
    let broker = Broker::new();
    let a = connect_to(&broker, "tenant-a");
    shop(&a)?;
    broker.add_user("alice", &Credentials::password("pw"), &["monitoring"])?;
    broker.set_permissions("alice", "tenant-a", &Permissions::new("^alice", "^orders$", "^billing$"))?;
    let topic =
        TopicPermissions { exchange: "orders".into(), write: "^{username}\\.".into(), read: ".*".into() };
    broker.set_topic_permissions("alice", "tenant-a", &topic)?;

    let definitions = broker.export_definitions();
    let json = serde_json::to_value(&definitions)?;
    assert_eq!(json["vhosts"], serde_json::json!([{"name": "/"}, {"name": "tenant-a"}]));
    assert_eq!(json["queues"][0]["vhost"], "tenant-a");
    let alice = &json["users"].as_array().unwrap().iter().find(|u| u["name"] == "alice").unwrap().clone();
    assert_eq!(alice["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_eq!(alice["tags"], serde_json::json!(["monitoring"]));
    assert!(
        json["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["user"] == "alice" && p["write"] == "^orders$")
    );
    assert_eq!(json["topic_permissions"][0]["write"], "^{username}\\.", "written as set, before expansion");

    let copy = Broker::new();
    let report = copy.load_definitions(&serde_json::from_value(json.clone())?);
    assert!(report.refused.is_empty(), "{report:#?}");
    assert_eq!(serde_json::to_value(copy.export_definitions())?, json, "export → load → export is identical");
    // The copy enforces the same rules, with the same password.
    let conn = copy.connect_with(ConnectOptions::new("tenant-a", "alice", Credentials::password("pw")))?;
    conn.publish("orders", "alice.x", Message::new("ok"))?;
    assert!(conn.publish("orders", "bob.x", Message::new("no")).is_err());
    assert!(conn.publish("", "billing", Message::new("no")).is_err());
    Ok(())
}

#[test]
fn definitions_that_cannot_be_applied_are_refused_one_by_one() -> Result {
    let file = r#"{
        "vhosts": [{"name": "t"}],
        "users": [
            {"name": "ok", "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator,monitoring"},
            {"name": "md5", "password_hash": "abc", "hashing_algorithm": "rabbit_password_hashing_md5", "tags": []},
            {"name": "short", "password_hash": "AAAA", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}
        ],
        "permissions": [
            {"user": "ok", "vhost": "t", "configure": "(", "write": ".*", "read": ".*"},
            {"user": "ok", "vhost": "missing", "configure": ".*", "write": ".*", "read": ".*"},
            {"user": "nobody", "vhost": "t", "configure": ".*", "write": ".*", "read": ".*"}
        ],
        "topic_permissions": [{"user": "ok", "vhost": "t", "exchange": "amq.topic", "write": "[", "read": ".*"}],
        "queues": [{"name": "q", "vhost": "missing", "durable": true, "auto_delete": false, "arguments": {}}]
    }"#;
    let broker = Broker::new();
    let report = broker.load_definitions(&serde_json::from_str(file)?);
    assert_eq!((report.vhosts, report.users, report.permissions, report.queues), (1, 1, 0, 0));
    let refused = report.refused.join("\n");
    for expected in [
        "user 'md5': unreadable password hash: hashing algorithm 'rabbit_password_hashing_md5' not implemented",
        "user 'short': unreadable password hash: malformed",
        "permissions of 'ok' in vhost 't': invalid permission pattern '('",
        "permissions of 'ok' in vhost 'missing': no such vhost 'missing'",
        "permissions of 'nobody' in vhost 't': no such user 'nobody'",
        "topic permissions of 'ok' on 'amq.topic' in vhost 't': invalid permission pattern '['",
        "queue 'q': no virtual host 'missing'",
    ] {
        assert!(refused.contains(expected), "{expected:?} not in:\n{refused}");
    }
    let ok = broker.users().users().into_iter().find(|u| u.name == "ok").unwrap();
    assert_eq!(ok.tags, ["administrator", "monitoring"], "tags as one comma-separated string read too");
    // A user without a password cannot log in with one.
    assert!(broker.connect_with(ConnectOptions::new("/", "ok", Credentials::password(""))).is_err());
    Ok(())
}
