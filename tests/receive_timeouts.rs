//! Receiving with a timeout or a deadline (`Consumer::recv_timeout`,
//! `recv_deadline`): what is waiting is taken at once, whatever the bound;
//! nothing waiting, the receive waits until the bound and no longer, and a
//! bound past what an `Instant` can hold waits as `recv` does.

use std::time::{Duration, Instant};

use interoffice::{Broker, ConsumeOptions, Message, QueueOptions, RecvTimeoutError};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

/// A receive's timeout at either extreme: zero takes what is waiting and
/// times out on nothing; `Duration::MAX` (past what an `Instant` can hold)
/// waits as `recv` does. The waiting message is taken before the clock is
/// read, so neither bound is ever added to it.
#[test]
fn a_receive_with_a_zero_or_endless_timeout_takes_what_is_waiting() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let consumer = conn.consume("q", ConsumeOptions { auto_ack: true, ..Default::default() })?;
    assert!(matches!(consumer.recv_timeout(Duration::ZERO), Err(RecvTimeoutError::Timeout)));
    conn.publish("", "q", Message::new("one"))?;
    assert_eq!(consumer.recv_timeout(Duration::ZERO)?.body().as_ref(), b"one");
    conn.publish("", "q", Message::new("two"))?;
    assert_eq!(consumer.recv_timeout(Duration::MAX)?.body().as_ref(), b"two");
    std::thread::scope(|s| -> Result {
        s.spawn(|| conn.publish("", "q", Message::new("three")).map(drop));
        assert_eq!(consumer.recv_timeout(Duration::MAX)?.body().as_ref(), b"three");
        Ok(())
    })?;
    Ok(())
}

/// A deadline already past still takes what is waiting; with nothing
/// waiting it times out, and a later deadline is kept (the wait ends at it,
/// not before).
#[test]
fn a_deadline_takes_what_is_waiting_and_otherwise_is_kept() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("q", QueueOptions::default())?;
    let consumer = conn.consume("q", ConsumeOptions { auto_ack: true, ..Default::default() })?;
    let past = Instant::now();
    conn.publish("", "q", Message::new("late"))?;
    assert_eq!(consumer.recv_deadline(past)?.body().as_ref(), b"late");
    assert!(matches!(consumer.recv_deadline(past), Err(RecvTimeoutError::Timeout)));
    let deadline = Instant::now() + Duration::from_millis(20);
    assert!(matches!(consumer.recv_deadline(deadline), Err(RecvTimeoutError::Timeout)));
    assert!(Instant::now() >= deadline, "the wait ends at its deadline, not before");
    let start = Instant::now();
    assert!(matches!(consumer.recv_timeout(Duration::from_millis(20)), Err(RecvTimeoutError::Timeout)));
    assert!(start.elapsed() >= Duration::from_millis(20), "the wait lasts its timeout");
    Ok(())
}
