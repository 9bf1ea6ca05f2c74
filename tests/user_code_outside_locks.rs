//! User code never runs under the bus's locks (GUARANTEES.md, G8): a waker
//! and the owner of a message body may call back into the bus — publish to
//! the very queue that woke them, purge it — without deadlocking.
//!
//! Each scenario runs on a thread of its own and the test waits for it with
//! a generous timeout, so a regression fails the test instead of hanging it.

use std::future::Future;
use std::pin::pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use interoffice::{Broker, Connection, ConsumeOptions, Message, QueueOptions};

const PATIENCE: Duration = Duration::from_secs(30);

/// Runs `scenario` on its own thread; fails if it does not finish in time.
fn finishes(scenario: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        scenario();
        let _ = done.send(());
    });
    finished.recv_timeout(PATIENCE).expect("deadlocked: user code ran under a bus lock");
}

/// A waker that publishes to a queue when woken.
struct Publishing {
    conn: Connection,
    queue: &'static str,
    woken: Mutex<u32>,
}

impl Wake for Publishing {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        *self.woken.lock().unwrap() += 1;
        self.conn.publish("", self.queue, Message::new("from the waker")).unwrap();
    }
}

#[test]
fn a_waker_that_publishes_to_its_own_queue_does_not_deadlock() {
    finishes(|| {
        let broker = Broker::new();
        let conn = broker.connect();
        conn.declare_queue("q", QueueOptions::default()).unwrap();
        let consumer = conn.consume("q", ConsumeOptions::default()).unwrap();
        let waker_state = Arc::new(Publishing { conn: broker.connect(), queue: "q", woken: Mutex::new(0) });
        let waker = Waker::from(Arc::clone(&waker_state));
        let mut recv = pin!(consumer.recv_async());
        assert!(recv.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        // The dispatch to the waiting consumer wakes it; the waker publishes.
        conn.publish("", "q", Message::new("first")).unwrap();
        assert_eq!(*waker_state.woken.lock().unwrap(), 1);
        let Poll::Ready(Ok(first)) = recv.as_mut().poll(&mut Context::from_waker(&waker)) else {
            panic!("the first message was sent to the consumer")
        };
        assert_eq!(first.body().as_ref(), b"first");
        first.ack().unwrap();
        let second = consumer.recv_timeout(PATIENCE).unwrap();
        assert_eq!(second.body().as_ref(), b"from the waker");
        second.ack().unwrap();
    });
}

/// A body owner whose destructor calls back into the bus.
struct CallsBack {
    conn: Arc<Mutex<Option<Connection>>>,
    bytes: Vec<u8>,
}

impl AsRef<[u8]> for CallsBack {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for CallsBack {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.lock().unwrap().as_ref() {
            conn.purge_queue("q").unwrap();
            conn.publish("", "q", Message::new("from a destructor")).unwrap();
        }
    }
}

#[test]
fn a_body_dropped_by_purge_or_delete_may_call_back_into_the_bus() {
    finishes(|| {
        let broker = Broker::new();
        let conn = broker.connect();
        conn.declare_queue("q", QueueOptions::default()).unwrap();
        let hook = Arc::new(Mutex::new(Some(broker.connect())));
        let body = Bytes::from_owner(CallsBack { conn: Arc::clone(&hook), bytes: b"owned".to_vec() });
        conn.publish("", "q", Message::new(body)).unwrap();
        // Purge drops the body (the last reference): its destructor purges
        // and publishes again, after the purge released the queue.
        assert_eq!(conn.purge_queue("q").unwrap(), 1);
        assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 1);

        let body = Bytes::from_owner(CallsBack { conn: Arc::clone(&hook), bytes: b"owned".to_vec() });
        conn.declare_queue("other", QueueOptions::default()).unwrap();
        conn.publish("", "other", Message::new(body)).unwrap();
        conn.delete_queue("other", Default::default()).unwrap();
        assert_eq!(broker.queue_stats("q").unwrap().messages_ready, 1);
        hook.lock().unwrap().take();
    });
}
