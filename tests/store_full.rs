//! A full disk: publishes to durable queues fail with a typed error that
//! hands the message back, and the broker keeps serving memory-only queues
//! (GUARANTEES G38).
//!
//! The disk is made "full" for a child process (this test binary, run with
//! `--ignored --exact store_full_child`) by a file-size limit (`ulimit -f`,
//! with `SIGXFSZ` ignored): a write past it fails with `EFBIG`, through the
//! same path as `ENOSPC`.

#[path = "support/data_dir.rs"]
mod data_dir;

use std::process::Command;

use interoffice::{
    Broker, BrokerOptions, DeliveryMode, Message, PublishError, QueueOptions, StoreError, StoreOptions,
    SyncPolicy,
};

#[test]
fn a_full_disk_fails_durable_publishes_and_hands_the_message_back() {
    if Command::new("bash").arg("-c").arg("true").status().is_err() {
        eprintln!("skipped: no bash to set a file-size limit with");
        return;
    }
    let dir = data_dir::DataDir::new("full");
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#"trap "" XFSZ; ulimit -f 512; exec "$0" "$@""#)
        .arg(&exe)
        .args(["--ignored", "--exact", "store_full_child", "--nocapture", "--test-threads=1"])
        .env("INTEROFFICE_FULL_CHILD", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    let at = stdout.find("FULL ").unwrap_or_else(|| panic!("{stdout}\n{stderr}"));
    let accepted: usize = stdout[at + 5..].split_whitespace().next().unwrap().parse().unwrap();
    assert!(accepted > 100, "the limit is 512 KiB: about 450 messages of 1 KiB fit: {accepted}");
    // What the store confirmed before it filled is all there, but for the
    // one acked: its removal could not be written either (the disk was
    // full), so it may come back — at least once.
    let broker = Broker::open(dir.path(), BrokerOptions::default()).unwrap();
    let ready = broker.queue_stats("durable").unwrap().messages_ready;
    assert!(ready == accepted - 1 || ready == accepted, "{ready} of {accepted}");
}

#[test]
#[ignore = "the child process of a_full_disk_fails_durable_publishes_and_hands_the_message_back"]
fn store_full_child() {
    let Ok(dir) = std::env::var("INTEROFFICE_FULL_CHILD") else { return };
    let options = BrokerOptions {
        store: StoreOptions { sync: SyncPolicy::EveryMessage, ..Default::default() },
        ..Default::default()
    };
    let broker = Broker::open(&dir, options).unwrap();
    let conn = broker.connect();
    conn.declare_queue("durable", QueueOptions { durable: true, ..Default::default() }).unwrap();
    conn.declare_queue("memory", QueueOptions::default()).unwrap();
    let body = "x".repeat(1024);
    let mut accepted = 0;
    let refused = loop {
        let msg = Message::new(format!("{accepted:06}{body}")).with_delivery_mode(DeliveryMode::Persistent);
        match conn.publish("", "durable", msg.clone()) {
            Ok(routed) => {
                assert_eq!(routed.queues(), 1);
                accepted += 1;
                assert!(accepted < 100_000, "the file-size limit never bit");
            }
            Err(e) => break (e, msg),
        }
    };
    let (error, sent) = refused;
    assert!(error.to_string().starts_with("RESOURCE_ERROR"), "{error}");
    match &error {
        PublishError::StoreFailed { queues, routed: 0, error: StoreError::Full(_), .. } => {
            assert_eq!(queues, &["durable".to_owned()]);
        }
        other => panic!("expected a full store, got {other:?}"),
    }
    assert_eq!(error.into_message(), sent, "the message is handed back whole");
    // Nothing half-taken: the queue holds exactly what was accepted.
    assert_eq!(broker.queue_stats("durable").unwrap().messages_ready, accepted);
    // Memory-only queues, and transient messages, still work.
    for i in 0..1000 {
        conn.publish("", "memory", Message::new(format!("m{i}"))).unwrap();
    }
    conn.publish("", "durable", Message::new("transient")).unwrap();
    assert_eq!(broker.queue_stats("memory").unwrap().messages_ready, 1000);
    // Consuming from the durable queue still works too.
    let d = conn.get("durable", false).unwrap().unwrap();
    d.ack().unwrap();
    conn.get("durable", false).unwrap().unwrap().nack(true).unwrap();
    println!("FULL {accepted}");
}
