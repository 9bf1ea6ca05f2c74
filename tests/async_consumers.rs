//! Consumers from async code: `recv_async` and streams, woken by the publish
//! that makes a delivery available, under any executor (tokio multi-thread
//! and current-thread, `futures::executor`, smol), and cancellation-safe.

use std::collections::HashSet;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::StreamExt;
use interoffice::{Broker, Connection, ConsumeOptions, Message, QueueOptions, RecvError};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn setup(queue: &str) -> Connection {
    let conn = Broker::new().connect();
    conn.declare_queue(queue, QueueOptions::default()).unwrap();
    conn
}

fn id(d: &interoffice::Delivery) -> u64 {
    String::from_utf8_lossy(d.body()).parse().unwrap()
}

/// Publishes `n` numbered messages from another thread, after the consumer
/// has started waiting, so the receive really has to be woken.
fn publish_from_thread(conn: &Connection, queue: &'static str, n: u64) -> std::thread::JoinHandle<()> {
    let broker = conn.broker().clone();
    std::thread::spawn(move || {
        let conn = broker.connect();
        for i in 0..n {
            conn.publish("", queue, Message::new(i.to_string())).unwrap();
        }
    })
}

async fn receive_all(conn: &Connection, queue: &'static str, n: u64) -> Vec<u64> {
    let consumer = conn.consume(queue, ConsumeOptions { prefetch: 10, ..Default::default() }).unwrap();
    let publisher = publish_from_thread(conn, queue, n);
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        let d = consumer.recv_async().await.unwrap();
        got.push(id(&d));
        d.ack().unwrap();
    }
    publisher.join().unwrap();
    got
}

#[test]
fn recv_async_is_woken_by_publishes_under_tokio_multi_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let conn = setup("q");
    let got = rt.block_on(receive_all(&conn, "q", 2_000));
    assert_eq!(got, (0..2_000).collect::<Vec<_>>());
}

#[test]
fn recv_async_is_woken_by_publishes_under_tokio_current_thread() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let conn = setup("q");
    let got = rt.block_on(receive_all(&conn, "q", 2_000));
    assert_eq!(got, (0..2_000).collect::<Vec<_>>());
}

#[test]
fn recv_async_is_woken_by_publishes_under_futures_executor() {
    let conn = setup("q");
    let got = futures::executor::block_on(receive_all(&conn, "q", 2_000));
    assert_eq!(got, (0..2_000).collect::<Vec<_>>());
}

#[test]
fn recv_async_is_woken_by_publishes_under_smol() {
    let conn = setup("q");
    let got = smol::block_on(receive_all(&conn, "q", 2_000));
    assert_eq!(got, (0..2_000).collect::<Vec<_>>());
}

#[test]
fn tasks_on_one_runtime_share_a_queue_round_robin() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let conn = Arc::new(setup("q"));
    let counts = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let consumer = conn.consume("q", ConsumeOptions::default()).unwrap();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while let Ok(d) = consumer.recv_async().await {
                    d.ack().unwrap();
                    n += 1;
                    if n == 25 {
                        break;
                    }
                }
                n
            }));
        }
        for i in 0..100 {
            conn.publish("", "q", Message::new(i.to_string())).unwrap();
        }
        let mut counts = Vec::new();
        for t in tasks {
            counts.push(t.await.unwrap());
        }
        counts
    });
    assert_eq!(counts, [25, 25, 25, 25]);
}

#[test]
fn a_stream_yields_deliveries_and_ends_when_the_consumer_is_cancelled() -> Result {
    let conn = setup("q");
    for i in 0..3 {
        conn.publish("", "q", Message::new(i.to_string()))?;
    }
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    let got: Vec<u64> = futures::executor::block_on(async {
        let mut stream = consumer.stream();
        let mut got = Vec::new();
        while let Some(d) = stream.next().await {
            got.push(id(&d));
            d.ack().unwrap();
            if got.len() == 3 {
                consumer.cancel();
            }
        }
        got
    });
    assert_eq!(got, [0, 1, 2]);
    Ok(())
}

#[test]
fn an_owned_stream_can_move_into_a_spawned_task() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let conn = setup("q");
    let stream = conn.consume("q", ConsumeOptions::default()).unwrap().into_stream();
    let task = rt.spawn(async move {
        let mut stream = stream;
        let mut sum = 0;
        while let Some(d) = stream.next().await {
            sum += id(&d);
            d.ack().unwrap();
            if sum == 45 {
                break;
            }
        }
        sum
    });
    for i in 0..10 {
        conn.publish("", "q", Message::new(i.to_string())).unwrap();
    }
    assert_eq!(rt.block_on(task).unwrap(), 45);
}

#[test]
fn a_waiting_task_is_woken_when_its_consumer_is_cancelled_from_another_thread() {
    let conn = setup("q");
    let consumer = Arc::new(conn.consume("q", ConsumeOptions::default()).unwrap());
    let canceller = {
        let consumer = Arc::clone(&consumer);
        std::thread::spawn(move || consumer.cancel())
    };
    let result = futures::executor::block_on(consumer.recv_async());
    canceller.join().unwrap();
    assert_eq!(result.err(), Some(RecvError::Cancelled));
}

#[test]
fn a_waiting_task_learns_that_its_queue_was_deleted() {
    let conn = setup("q");
    let consumer = conn.consume("q", ConsumeOptions::default()).unwrap();
    let deleter = {
        let broker = conn.broker().clone();
        std::thread::spawn(move || broker.connect().delete_queue("q", Default::default()).unwrap())
    };
    let result = futures::executor::block_on(consumer.recv_async());
    deleter.join().unwrap();
    assert_eq!(result.err(), Some(RecvError::QueueDeleted("q".into())));
}

#[test]
fn sync_and_async_consumers_share_one_queue() {
    let conn = setup("q");
    let sync = Arc::new(conn.consume("q", ConsumeOptions { prefetch: 1, ..Default::default() }).unwrap());
    let asynchronous =
        Arc::new(conn.consume("q", ConsumeOptions { prefetch: 1, ..Default::default() }).unwrap());
    let n = 1_000;
    let total = Arc::new(AtomicUsize::new(0));
    // Whoever takes the last message cancels both, which ends both loops.
    let took = {
        let (total, sync, asynchronous) = (Arc::clone(&total), Arc::clone(&sync), Arc::clone(&asynchronous));
        move || {
            if total.fetch_add(1, Ordering::SeqCst) + 1 == n {
                sync.cancel();
                asynchronous.cancel();
            }
        }
    };
    let publisher = publish_from_thread(&conn, "q", n as u64);
    let sync_thread = {
        let (sync, took) = (Arc::clone(&sync), took.clone());
        std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok(d) = sync.recv() {
                got.push(id(&d));
                d.ack().unwrap();
                took();
            }
            got
        })
    };
    let mut got_async = futures::executor::block_on(async {
        let mut got = Vec::new();
        while let Ok(d) = asynchronous.recv_async().await {
            got.push(id(&d));
            d.ack().unwrap();
            took();
        }
        got
    });
    publisher.join().unwrap();
    let mut all = sync_thread.join().unwrap();
    assert!(!all.is_empty() && !got_async.is_empty(), "both kinds received");
    all.append(&mut got_async);
    all.sort_unstable();
    assert_eq!(all, (0..n as u64).collect::<Vec<_>>());
}

struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn dropping_1000_recv_async_futures_at_random_points_loses_no_message() -> Result {
    let conn = setup("q");
    let consumer = conn.consume("q", ConsumeOptions::default())?;
    let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut published, mut received) = (0u64, HashSet::new());
    for _ in 0..1_000 {
        let mut fut = pin!(consumer.recv_async());
        // Some futures are dropped before any poll, some after a pending
        // poll, some after a publish that woke them but before the re-poll,
        // some after they returned a delivery (which is then acked).
        match next() % 4 {
            0 => {}
            1 => {
                let _ = fut.as_mut().poll(&mut cx);
            }
            2 => {
                let first = fut.as_mut().poll(&mut cx);
                if let Poll::Ready(d) = first {
                    let d = d?;
                    received.insert(id(&d));
                    d.ack()?;
                    continue;
                }
                conn.publish("", "q", Message::new(published.to_string()))?;
                published += 1;
            }
            _ => {
                conn.publish("", "q", Message::new(published.to_string()))?;
                published += 1;
                if let Poll::Ready(d) = fut.as_mut().poll(&mut cx) {
                    let d = d?;
                    assert!(received.insert(id(&d)), "delivered twice");
                    d.ack()?;
                }
            }
        }
    }
    assert!(counter.0.load(Ordering::SeqCst) > 0, "publishes woke the pending futures");
    // Everything not yet received is still there, in the consumer's inbox.
    while let Ok(d) = consumer.try_recv() {
        assert!(received.insert(id(&d)), "delivered twice");
        d.ack()?;
    }
    assert_eq!(received.len() as u64, published);
    assert_eq!(conn.queue_stats("q")?.messages_unacknowledged, 0);
    Ok(())
}
