use super::*;
use std::time::Duration;

#[test]
fn messages_come_out_in_order_across_takes() {
    let (mut tx, rx) = unbounded();
    for i in 0..10 {
        tx.send(i).unwrap();
    }
    assert_eq!(rx.try_recv(), Ok(0));
    for i in 10..15 {
        tx.send(i).unwrap();
    }
    let got: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(got, (1..15).collect::<Vec<_>>());
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn disconnection_is_reported_only_once_everything_is_taken() {
    let (mut tx, rx) = unbounded();
    tx.send(1).unwrap();
    tx.send(2).unwrap();
    drop(tx);
    assert_eq!(rx.try_recv(), Ok(1));
    assert_eq!(rx.recv(), Ok(2));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(rx.recv(), Err(RecvError));
    assert_eq!(rx.recv_deadline(Instant::now()), Err(RecvTimeoutError::Disconnected));
}

#[test]
fn a_send_to_a_dropped_receiver_hands_the_message_back() {
    let (mut tx, rx) = unbounded();
    drop(rx);
    assert_eq!(tx.send(7), Err(SendError(7)));
}

#[test]
fn a_batch_take_keeps_order_across_both_buffers_and_stops_at_max() {
    let (mut tx, rx) = unbounded();
    for i in 0..4 {
        tx.send(i).unwrap();
    }
    assert_eq!(rx.try_recv(), Ok(0)); // 1..4 now buffered by the receiver
    for i in 4..10 {
        tx.send(i).unwrap();
    }
    let mut got = Vec::new();
    assert!(!rx.take_up_to(5, None, &mut got));
    assert_eq!(got, [1, 2, 3, 4, 5]);
    assert!(got.capacity() < 8, "one allocation of the batch's size, not a doubling series");
    let mut got = Vec::new();
    assert!(!rx.take_up_to(3, Some(100), &mut got));
    assert_eq!(got, [100, 6, 7]);
    let mut got = Vec::new();
    assert!(!rx.take_up_to(64, None, &mut got));
    assert_eq!(got, [8, 9]);
    assert!(!rx.take_up_to(64, None, &mut got), "empty, the sender still there");
    assert_eq!(got, [8, 9]);
    tx.send(10).unwrap();
    drop(tx);
    let mut got = Vec::new();
    assert!(!rx.take_up_to(64, None, &mut got), "what was sent before leaving comes first");
    assert_eq!(got, [10]);
    let mut got = Vec::new();
    assert!(rx.take_up_to(64, None, &mut got));
    assert!(got.is_empty());
    assert!(!rx.take_up_to(0, Some(7), &mut got), "a first message is always appended");
}

#[test]
fn sends_past_a_full_ring_wait_in_the_deque_and_keep_their_order() {
    let (mut tx, rx) = unbounded();
    let ring = RING as u32;
    let n = 2 * ring + 10;
    for i in 0..n {
        tx.send(i).unwrap();
    }
    assert_eq!(
        rx.shared.len.load(Ordering::Relaxed),
        ring as usize + 10,
        "the ring took its fill, the deque the rest"
    );
    assert_eq!(rx.try_recv(), Ok(0));
    // The ring has room again, but the deque holds messages: a send
    // goes behind them.
    tx.send(n).unwrap();
    assert_eq!(rx.shared.len.load(Ordering::Relaxed), ring as usize + 11);
    let mut got = Vec::new();
    assert!(!rx.take_up_to(RING + 5, None, &mut got));
    assert_eq!(got, (1..ring + 6).collect::<Vec<_>>(), "the ring first, then the deque");
    // The deque was swapped out whole, but that take found more than a
    // ring's worth: the receiver is behind (its buffer holds messages),
    // so a send keeps to the deque and comes out after the buffer.
    tx.send(n + 1).unwrap();
    assert_eq!(rx.shared.len.load(Ordering::Relaxed), 1);
    assert_eq!(rx.try_recv(), Ok(ring + 6));
    tx.send(n + 2).unwrap();
    let rest: Vec<u32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(rest, (ring + 7..n + 3).collect::<Vec<_>>());
    // Having found its inbox empty, the receiver has caught up: sends
    // use the ring again.
    tx.send(n + 3).unwrap();
    assert_eq!(rx.shared.len.load(Ordering::Relaxed), 0);
    assert!(rx.shared.ring.is_ready());
    assert_eq!(rx.try_recv(), Ok(n + 3));
    // A take from the deque that finds at most a ring's worth reopens
    // the ring too: the receiver is nearly caught up.
    for i in 0..=ring {
        tx.send(i).unwrap();
    }
    assert!(!rx.shared.ring_open.load(Ordering::Relaxed), "the ring filled up");
    let mut all = Vec::new();
    assert!(!rx.take_up_to(64, None, &mut all));
    assert_eq!(all, (0..=ring).collect::<Vec<_>>());
    assert!(rx.shared.ring_open.load(Ordering::Relaxed), "one message came from the deque");
    // And so does a batch receive that finds nothing.
    for i in 0..2 * ring + 1 {
        tx.send(i).unwrap();
    }
    all.clear();
    assert!(!rx.take_up_to(64, None, &mut all));
    assert_eq!(all, (0..2 * ring + 1).collect::<Vec<_>>());
    assert!(!rx.shared.ring_open.load(Ordering::Relaxed), "more than a ring's worth came from the deque");
    all.clear();
    assert!(!rx.take_up_to(64, None, &mut all));
    assert!(all.is_empty() && rx.shared.ring_open.load(Ordering::Relaxed));
    // Past a full ring again, `drain` takes the buffer, the ring and the
    // deque, in that order.
    for i in 0..n {
        tx.send(i).unwrap();
    }
    assert_eq!(rx.try_recv(), Ok(0));
    assert_eq!(rx.drain(), (1..n).collect::<Vec<_>>());
}

#[test]
fn a_batch_goes_behind_what_the_ring_holds() {
    let (mut tx, rx) = unbounded();
    tx.send(0).unwrap();
    let mut batch = vec![1, 2, 3];
    tx.send_all(&mut batch).unwrap();
    assert!(batch.is_empty());
    tx.send(4).unwrap();
    let mut single = vec![5];
    tx.send_all(&mut single).unwrap();
    let got: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    drop(rx);
    let mut refused = vec![6, 7];
    assert_eq!(tx.send_all(&mut refused), Err(()));
    assert_eq!(refused, [6, 7], "a gone receiver leaves the batch with the caller");
    let mut refused = vec![8];
    assert_eq!(tx.send_all(&mut refused), Err(()));
    assert_eq!(refused, [8]);
}

/// A receiver that falls behind now and then (busy for a while every
/// few thousand messages), taking one at a time and in batches, while a
/// sender sends singles and now and then a batch: the sends move
/// between the ring and the deque many times (a batch always goes to
/// the deque, and the singles behind it; singles fill the ring while
/// the receiver is busy), and every message arrives once, in order.
#[test]
fn a_receiver_falling_behind_and_catching_up_gets_everything_in_order() {
    let (mut tx, rx) = unbounded::<u64>();
    let n = 300_000;
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut next = 0;
            let mut batch = Vec::new();
            while next < n {
                if next % 50 == 0 {
                    batch.extend(next..(next + 5).min(n));
                    next = (next + 5).min(n);
                    tx.send_all(&mut batch).unwrap();
                } else {
                    tx.send(next).unwrap();
                    next += 1;
                }
            }
        });
        let mut expected = 0;
        let mut got = Vec::new();
        while expected < n {
            if expected % 4096 < 3 {
                // Fall behind: the ring fills and the deque takes over.
                std::hint::black_box((0..20_000u64).sum::<u64>());
            }
            if expected % 3 == 0 {
                got.clear();
                let first = rx.recv().unwrap();
                rx.take_up_to(100, Some(first), &mut got);
                for msg in got.drain(..) {
                    assert_eq!(msg, expected);
                    expected += 1;
                }
            } else {
                assert_eq!(rx.recv(), Ok(expected));
                expected += 1;
            }
        }
        assert_eq!(rx.recv(), Err(RecvError));
    });
}

#[test]
fn drain_takes_both_buffers_in_order() {
    let (mut tx, rx) = unbounded();
    for i in 0..4 {
        tx.send(i).unwrap();
    }
    assert_eq!(rx.try_recv(), Ok(0));
    tx.send(4).unwrap();
    assert_eq!(rx.drain(), vec![1, 2, 3, 4]);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn a_parked_receiver_wakes_for_a_send_and_for_the_sender_leaving() {
    let (mut tx, rx) = unbounded::<u32>();
    std::thread::scope(|s| {
        let parked = || {
            while rx.shared.parked.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
        };
        let waiter = s.spawn(|| (rx.recv(), rx.recv()));
        parked();
        tx.send(5).unwrap();
        parked();
        drop(tx);
        assert_eq!(waiter.join().unwrap(), (Ok(5), Err(RecvError)));
    });
    let (_tx, rx) = unbounded::<u32>();
    let start = Instant::now();
    let deadline = start + Duration::from_millis(30);
    assert_eq!(rx.recv_deadline(deadline), Err(RecvTimeoutError::Timeout));
    assert!(Instant::now() >= deadline);
}

#[test]
fn many_messages_through_two_threads_arrive_once_in_order() {
    let (mut tx, rx) = unbounded::<u64>();
    let n = 200_000;
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..n {
                tx.send(i).unwrap();
            }
        });
        for i in 0..n {
            assert_eq!(rx.recv(), Ok(i));
        }
        assert_eq!(rx.recv(), Err(RecvError));
    });
}

#[test]
fn the_ring_hands_out_values_once_in_order_and_refuses_when_full() {
    let (_ring, mut tail, mut head) = ring::ring::<String>(4);
    for lap in 0..3 {
        for i in 0..4 {
            tail.push(format!("{lap}.{i}")).unwrap();
        }
        assert_eq!(tail.push("over".into()), Err("over".to_owned()));
        for i in 0..4 {
            assert_eq!(head.pop(), Some(format!("{lap}.{i}")));
        }
        assert_eq!(head.pop(), None);
    }
}

#[test]
fn values_left_in_the_ring_are_dropped_with_it() {
    let token = Arc::new(());
    let (ring_, mut tail, mut head) = ring::ring(3);
    for _ in 0..3 {
        tail.push(Arc::clone(&token)).unwrap();
    }
    drop(head.pop());
    assert!(ring_.is_ready());
    assert_eq!(Arc::strong_count(&token), 3);
    drop((ring_, tail, head));
    assert_eq!(Arc::strong_count(&token), 1, "the two unread values were dropped, the read one not twice");
}

#[test]
fn the_ring_passes_every_value_once_in_order_between_two_threads() {
    let (_ring, mut tail, mut head) = ring::ring::<u64>(8);
    let n = 200_000;
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..n {
                let mut v = i;
                while let Err(back) = tail.push(v) {
                    v = back;
                    std::hint::spin_loop();
                }
            }
        });
        for i in 0..n {
            loop {
                if let Some(v) = head.pop() {
                    assert_eq!(v, i);
                    break;
                }
                std::hint::spin_loop();
            }
        }
    });
}
