//! Flow control: the memory high watermark (GUARANTEES.md, G14). Past it
//! publishing blocks (`publish`) or fails fast (`try_publish`, handing the
//! message back), connections are told, and draining unblocks.

use std::sync::mpsc;
use std::time::Duration;

use interoffice::{Broker, BrokerOptions, ConsumeOptions, FlowEvent, Message, PublishError, QueueOptions};

const PATIENCE: Duration = Duration::from_secs(30);
const KIB: usize = 1024;

fn broker(watermark: usize) -> Broker {
    Broker::with_options(BrokerOptions { memory_high_watermark: Some(watermark), ..Default::default() })
}

#[test]
fn past_the_watermark_try_publish_fails_with_the_message_and_draining_unblocks() {
    let broker = broker(256 * KIB);
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let events = conn.flow_events();
    while !broker.flow().blocked {
        conn.try_publish("", "q", Message::new(vec![0_u8; 4 * KIB])).unwrap();
    }
    assert!(broker.flow().used > 256 * KIB);
    match conn.try_publish("", "q", Message::new("one more")) {
        Err(PublishError::Blocked { message }) => assert_eq!(message.body().as_ref(), b"one more"),
        other => panic!("expected Blocked, got {other:?}"),
    }
    assert!(matches!(events.try_recv(), Ok(FlowEvent::Blocked { watermark, .. }) if watermark == 256 * KIB));
    // A late subscriber is told at once.
    assert!(matches!(broker.connect().flow_events().try_recv(), Ok(FlowEvent::Blocked { .. })));

    let consumer = conn.consume("q", ConsumeOptions::default()).unwrap();
    while broker.flow().blocked {
        consumer.recv().unwrap().ack().unwrap();
    }
    assert_eq!(events.try_recv(), Ok(FlowEvent::Unblocked));
    conn.try_publish("", "q", Message::new("flows again")).unwrap();
}

#[test]
fn publish_waits_while_blocked_and_goes_on_once_drained() {
    let broker = broker(128 * KIB);
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    conn.publish("", "q", Message::new(vec![0_u8; 256 * KIB])).unwrap();
    assert!(broker.flow().blocked);
    let (done, published) = mpsc::channel();
    let publisher = broker.connect();
    std::thread::spawn(move || {
        publisher.publish("", "q", Message::new("waited")).unwrap();
        done.send(()).unwrap();
    });
    assert!(published.try_recv().is_err(), "a blocked publish returned");
    conn.consume("q", ConsumeOptions::default()).unwrap().recv().unwrap().ack().unwrap();
    published.recv_timeout(PATIENCE).expect("the publish went on once unblocked");
    assert_eq!(conn.get("q", true).unwrap().unwrap().body().as_ref(), b"waited");
}

#[test]
fn a_producer_outrunning_its_consumer_stays_near_the_watermark() {
    let watermark = 1024 * KIB;
    let broker = broker(watermark);
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 10, ..Default::default() }).unwrap();
    let producer = broker.connect();
    let watch = broker.clone();
    let running = std::thread::spawn(move || {
        let mut peak = 0;
        for _ in 0..20_000 {
            producer.publish("", "q", Message::new(vec![0_u8; KIB])).unwrap();
            peak = peak.max(watch.flow().used);
        }
        peak
    });
    let mut received = 0;
    while received < 20_000 {
        consumer.recv_timeout(PATIENCE).unwrap().ack().unwrap();
        received += 1;
    }
    let peak = running.join().unwrap();
    // One queue reports every 64 KiB, and the producer can pass the check
    // once before a report lands: the estimate's peak is bounded.
    assert!(peak <= watermark + 64 * KIB + 2 * KIB, "peak {peak}");
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 0);
}

#[test]
fn without_a_watermark_nothing_is_counted_and_nothing_blocks() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default()).unwrap();
    conn.publish("", "q", Message::new(vec![0_u8; 4 << 20])).unwrap();
    let flow = broker.flow();
    assert_eq!((flow.used, flow.watermark, flow.blocked), (0, None, false));
    assert!(conn.flow_events().try_recv().is_err());
    conn.try_publish("", "q", Message::new("m")).unwrap();
}
