//! Connections: what closes with them, sharing them between threads, and
//! concurrent publishing and consuming that loses and duplicates nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use interoffice::{
    Broker, ConsumeOptions, Delivery, ExchangeKind, ExchangeOptions, FieldTable, Message, QueueOptions,
    RecvError,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn number(d: &Delivery) -> u64 {
    u64::from_le_bytes(d.body()[..8].try_into().unwrap())
}

#[test]
fn dropping_a_connection_requeues_every_unsettled_delivery_flagged_redelivered() -> Result {
    let broker = Broker::new();
    let setup = broker.connect();
    setup.declare_queue("q", QueueOptions::default())?;
    for i in 0..6 {
        setup.publish("", "q", Message::new(i.to_string()))?;
    }
    let conn = broker.connect();
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 3, ..Default::default() })?;
    let held = (consumer.recv()?, consumer.recv()?);
    let got = conn.get("q", false)?.unwrap();
    assert_eq!(broker.queue_stats("q").unwrap().messages_unacknowledged, 4);
    drop(conn);
    let stats = broker.queue_stats("q").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged, stats.consumers), (6, 0, 0));
    let order: Vec<(String, bool)> = std::iter::from_fn(|| setup.get("q", true).unwrap())
        .map(|d| (String::from_utf8(d.body().to_vec()).unwrap(), d.redelivered()))
        .collect();
    let want: Vec<(String, bool)> = (0..6).map(|i| (i.to_string(), i < 2 || i == 3)).collect();
    assert_eq!(order, want);
    drop((held, got));
    Ok(())
}

#[test]
fn closing_a_connection_ends_a_recv_blocked_on_another_thread() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    let waiter = std::thread::spawn(move || consumer.recv().map(|_| ()));
    conn.close();
    assert_eq!(waiter.join().unwrap(), Err(RecvError::ConnectionClosed));
    Ok(())
}

#[test]
fn consuming_on_a_connection_does_not_outlive_it() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    drop(conn);
    let other = broker.connect();
    other.publish("", "q", Message::new("later"))?;
    assert_eq!(
        consumer.recv_timeout(Duration::from_millis(1)).err().map(|e| e.to_string()),
        Some("the connection is closed".into())
    );
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 1);
    Ok(())
}

#[test]
fn a_connection_is_shared_by_reference_between_threads() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("events", ExchangeKind::Fanout, ExchangeOptions::default())?;
    conn.declare_queue("q", QueueOptions::default())?;
    conn.bind_queue("q", "events", "", FieldTable::new())?;
    std::thread::scope(|s| {
        for t in 0..4 {
            let conn = &conn;
            s.spawn(move || {
                for i in 0..1000 {
                    conn.publish("events", "", Message::new(format!("{t}-{i}"))).unwrap();
                }
            });
        }
    });
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 4000);
    Ok(())
}

#[test]
fn exclusive_queues_go_with_their_connection() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    let name = conn.declare_queue("", QueueOptions { exclusive: true, ..Default::default() })?;
    assert!(broker.queue_stats(&name).is_ok());
    conn.close();
    assert!(broker.queue_stats(&name).is_err());
    Ok(())
}

/// Several threads publish and consume a million messages through a direct
/// exchange, with manual acks: every message arrives once.
#[test]
fn a_million_messages_through_concurrent_publishers_and_consumers_lose_none_and_duplicate_none() -> Result {
    const PUBLISHERS: u64 = 2;
    const CONSUMERS: usize = 3;
    const PER_PUBLISHER: u64 = 500_000;
    const TOTAL: u64 = PUBLISHERS * PER_PUBLISHER;
    let broker = Broker::new();
    let setup = broker.connect();
    setup.declare_exchange("work", ExchangeKind::Direct, ExchangeOptions::default())?;
    setup.declare_queue("jobs", QueueOptions::default())?;
    setup.bind_queue("jobs", "work", "job", FieldTable::new())?;
    let received = Arc::new(AtomicUsize::new(0));
    let seen: Vec<Vec<u64>> = std::thread::scope(|s| {
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let (broker, received) = (&broker, Arc::clone(&received));
                s.spawn(move || {
                    let conn = broker.connect();
                    let consumer =
                        conn.consume("jobs", ConsumeOptions { prefetch: 100, ..Default::default() }).unwrap();
                    let mut seen = Vec::new();
                    while received.load(Ordering::Relaxed) < TOTAL as usize {
                        match consumer.recv_timeout(Duration::from_millis(50)) {
                            Ok(d) => {
                                seen.push(number(&d));
                                d.ack().unwrap();
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => continue,
                        }
                    }
                    seen
                })
            })
            .collect();
        for p in 0..PUBLISHERS {
            let broker = &broker;
            s.spawn(move || {
                let conn = broker.connect();
                for i in 0..PER_PUBLISHER {
                    let n = p * PER_PUBLISHER + i;
                    let routed = conn.publish("work", "job", Message::new(n.to_le_bytes().to_vec())).unwrap();
                    assert_eq!(routed.queues(), 1);
                }
            });
        }
        consumers.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let mut all = HashSet::with_capacity(TOTAL as usize);
    for n in seen.iter().flatten() {
        assert!(all.insert(*n), "message {n} delivered twice");
    }
    assert_eq!(all.len() as u64, TOTAL);
    let stats = broker.queue_stats("jobs").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (0, 0));
    Ok(())
}

/// Consumers that come and go, drop deliveries unsettled and nack some with
/// requeue, while publishers run: every message is acknowledged exactly once.
#[test]
fn churning_consumers_that_drop_and_requeue_still_ack_every_message_exactly_once() -> Result {
    const TOTAL: u64 = 20_000;
    let broker = Broker::new();
    let setup = broker.connect();
    setup.declare_queue("jobs", QueueOptions::default())?;
    let acked = Arc::new(AtomicUsize::new(0));
    let seen: Vec<Vec<u64>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..3u64)
            .map(|w| {
                let (broker, acked) = (&broker, Arc::clone(&acked));
                s.spawn(move || {
                    let mut seen = Vec::new();
                    let mut round = 0u64;
                    while acked.load(Ordering::Relaxed) < TOTAL as usize {
                        round += 1;
                        // A new connection every few rounds: closing it requeues.
                        let conn = broker.connect();
                        let prefetch = (round % 7) as u32;
                        let consumer =
                            conn.consume("jobs", ConsumeOptions { prefetch, ..Default::default() }).unwrap();
                        for k in 0..200u64 {
                            let Ok(d) = consumer.recv_timeout(Duration::from_millis(20)) else { break };
                            match (k + w + round) % 10 {
                                0 => drop(d),
                                1 => d.nack(true).unwrap(),
                                2 if round.is_multiple_of(3) => {
                                    // Left unsettled for the connection close to requeue.
                                    std::mem::forget(d);
                                }
                                _ => {
                                    seen.push(number(&d));
                                    d.ack().unwrap();
                                    acked.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        s.spawn(|| {
            let conn = broker.connect();
            for n in 0..TOTAL {
                conn.publish("", "jobs", Message::new(n.to_le_bytes().to_vec())).unwrap();
            }
        });
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut all = HashSet::new();
    for n in seen.iter().flatten() {
        assert!(all.insert(*n), "message {n} acked twice");
    }
    assert_eq!(all.len() as u64, TOTAL);
    Ok(())
}

/// Prefetch 1 makes every ack free the consumer's only credit while
/// publishers race to enqueue: a lost wake-up would strand a message in the
/// queue while its consumer idles, and this test would miss it.
#[test]
fn acks_racing_publishes_at_prefetch_1_never_strand_a_message() -> Result {
    const TOTAL: u64 = 100_000;
    let broker = Broker::new();
    broker.connect().declare_queue("jobs", QueueOptions::default())?;
    let received = Arc::new(AtomicUsize::new(0));
    let counts: Vec<usize> = std::thread::scope(|s| {
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let (broker, received) = (&broker, Arc::clone(&received));
                s.spawn(move || {
                    let conn = broker.connect();
                    let consumer =
                        conn.consume("jobs", ConsumeOptions { prefetch: 1, ..Default::default() }).unwrap();
                    let (mut count, mut idle) = (0, 0);
                    // A stranded message shows as a consumer idling for
                    // seconds with messages still missing: fail, don't hang.
                    while received.load(Ordering::SeqCst) < TOTAL as usize && idle < 50 {
                        match consumer.recv_timeout(Duration::from_millis(100)) {
                            Ok(d) => {
                                d.ack().unwrap();
                                (count, idle) = (count + 1, 0);
                                received.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => idle += 1,
                        }
                    }
                    count
                })
            })
            .collect();
        for p in 0..2 {
            let broker = &broker;
            s.spawn(move || {
                let conn = broker.connect();
                for i in 0..TOTAL / 2 {
                    conn.publish("", "jobs", Message::new((p * TOTAL + i).to_le_bytes().to_vec())).unwrap();
                }
            });
        }
        consumers.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(counts.iter().sum::<usize>() as u64, TOTAL);
    let stats = broker.queue_stats("jobs").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn every_operation_on_a_closed_connection_fails_with_connection_closed() -> Result {
    use interoffice::{BindError, ConsumeError, DeclareError, DeleteError, DeleteQueueOptions, ErrorKind};
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    conn.close();
    conn.close();
    assert!(conn.is_closed());
    let err = conn.publish("", "q", Message::new("kept")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionClosed);
    assert_eq!(err.into_message().body().as_ref(), b"kept");
    assert_eq!(conn.declare_queue("r", QueueOptions::default()), Err(DeclareError::ConnectionClosed));
    assert_eq!(
        conn.declare_exchange("x", ExchangeKind::Direct, ExchangeOptions::default()),
        Err(DeclareError::ConnectionClosed)
    );
    assert_eq!(conn.bind_queue("q", "amq.direct", "k", FieldTable::new()), Err(BindError::ConnectionClosed));
    assert_eq!(conn.purge_queue("q"), Err(DeleteError::ConnectionClosed));
    assert_eq!(conn.delete_queue("q", DeleteQueueOptions::default()), Err(DeleteError::ConnectionClosed));
    assert_eq!(conn.consume("q", ConsumeOptions::default()).unwrap_err(), ConsumeError::ConnectionClosed);
    assert_eq!(conn.get("q", true).unwrap_err(), ConsumeError::ConnectionClosed);
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 0);
    Ok(())
}

#[test]
fn a_consumer_cancelled_from_another_thread_ends_its_blocked_recv() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    let outcome = std::thread::scope(|s| {
        let waiter = s.spawn(|| consumer.recv().map(|_| ()));
        consumer.cancel();
        waiter.join().unwrap()
    });
    assert_eq!(outcome, Err(RecvError::Cancelled));
    assert!(consumer.is_cancelled());
    conn.publish("", "q", Message::new("after"))?;
    assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 1);
    Ok(())
}

#[test]
fn a_connection_closed_from_another_thread_ends_a_consumers_blocked_recv() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    let outcome = std::thread::scope(|s| {
        let waiter = s.spawn(|| consumer.recv().map(|_| ()));
        s.spawn(|| conn.close());
        waiter.join().unwrap()
    });
    assert_eq!(outcome, Err(RecvError::ConnectionClosed));
    Ok(())
}

/// An auto-delete queue is deleted only when it has no consumer: a consumer
/// attaching while the previous one's cancel deletes the queue must either
/// fail to attach (the queue is gone) or keep a live queue.
#[test]
fn an_auto_delete_queue_is_never_deleted_under_a_live_consumer() -> Result {
    use interoffice::{ConsumeError, TryRecvError};
    let broker = Broker::new();
    let options = QueueOptions { auto_delete: true, ..Default::default() };
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (broker, options) = (&broker, options.clone());
            s.spawn(move || {
                let conn = broker.connect();
                for _ in 0..5_000 {
                    conn.declare_queue("shared", options.clone()).unwrap();
                    let consumer = match conn.consume("shared", ConsumeOptions::default()) {
                        Ok(consumer) => consumer,
                        Err(ConsumeError::NotFound(_)) => continue,
                        Err(e) => panic!("{e}"),
                    };
                    match consumer.try_recv() {
                        Err(TryRecvError::Empty) => {}
                        other => panic!("a live consumer's queue was deleted: {other:?}"),
                    }
                }
            });
        }
    });
    assert!(broker.queue_stats("shared").is_err());
    Ok(())
}
