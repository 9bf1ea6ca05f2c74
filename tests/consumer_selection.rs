//! Which consumer of a queue receives: single active consumer (the first
//! attached gets everything, the next takes over when it goes, with what it
//! left unsettled first) and consumer priorities (a higher priority gets
//! everything while it has prefetch credit; equals share round-robin).

use interoffice::{
    AckError, Broker, ConsumeOptions, Consumer, DeclareError, Delivery, FieldTable, Message, QueueOptions,
    TryRecvError,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(body).collect()
}

fn strings(range: impl IntoIterator<Item = i32>) -> Vec<String> {
    range.into_iter().map(|i| i.to_string()).collect()
}

/// Everything a consumer holds right now, without blocking. The deliveries
/// are returned unsettled: dropping them requeues them.
fn drain(consumer: &Consumer) -> Vec<Delivery> {
    std::iter::from_fn(|| consumer.try_recv().ok()).collect()
}

/// The bodies of everything a consumer holds right now, acknowledged.
fn drain_acked(consumer: &Consumer) -> Vec<String> {
    drain(consumer)
        .into_iter()
        .map(|d| {
            let b = body(&d);
            d.ack().unwrap();
            b
        })
        .collect()
}

/// Asserts that the consumer has nothing waiting.
fn assert_idle(consumer: &Consumer, who: &str) {
    match consumer.try_recv() {
        Err(TryRecvError::Empty) => {}
        Ok(d) => panic!("{who} received {:?}, expected nothing", body(&d)),
        Err(e) => panic!("{who}: {e}"),
    }
}

fn sac() -> QueueOptions {
    QueueOptions { single_active_consumer: true, ..Default::default() }
}

fn publish_all(conn: &interoffice::Connection, queue: &str, range: impl IntoIterator<Item = i32>) -> Result {
    for i in range {
        conn.publish("", queue, Message::new(i.to_string()))?;
    }
    Ok(())
}

fn with_priority(priority: i32) -> ConsumeOptions {
    ConsumeOptions { priority, ..Default::default() }
}

fn with_priority_and_prefetch(priority: i32, prefetch: u32) -> ConsumeOptions {
    ConsumeOptions { priority, prefetch, ..Default::default() }
}

// ---------------------------------------------------------------------------
// Single active consumer
// ---------------------------------------------------------------------------

#[test]
fn with_single_active_consumer_only_the_first_attached_of_three_receives_and_gets_everything() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("sac", sac())?;
    let first = conn.consume("sac", ConsumeOptions::default())?;
    let second = conn.consume("sac", ConsumeOptions::default())?;
    let third = conn.consume("sac", ConsumeOptions::default())?;
    publish_all(&conn, "sac", 0..10)?;

    assert_eq!(drain_acked(&first), strings(0..10));
    assert_idle(&second, "second");
    assert_idle(&third, "third");
    let stats = broker.queue_stats("sac").unwrap();
    assert_eq!((stats.consumers, stats.messages_ready, stats.messages_unacknowledged), (3, 0, 0));
    Ok(())
}

#[test]
fn with_single_active_consumer_a_backlog_goes_to_the_first_attached_consumer_only() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("sac", sac())?;
    publish_all(&conn, "sac", 0..5)?;
    let first = conn.consume("sac", ConsumeOptions::default())?;
    let second = conn.consume("sac", ConsumeOptions::default())?;
    publish_all(&conn, "sac", 5..8)?;

    assert_eq!(drain_acked(&first), strings(0..8));
    assert_idle(&second, "second");
    Ok(())
}

#[test]
fn when_the_single_active_consumer_is_cancelled_the_next_in_attach_order_takes_over_at_once() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("sac", sac())?;
    let first = conn.consume("sac", ConsumeOptions::default())?;
    let second = conn.consume("sac", ConsumeOptions::default())?;
    let third = conn.consume("sac", ConsumeOptions::default())?;

    publish_all(&conn, "sac", 0..2)?;
    assert_eq!(drain_acked(&first), strings(0..2));
    assert_idle(&second, "second");

    first.cancel();
    publish_all(&conn, "sac", 2..4)?;
    assert_eq!(drain_acked(&second), strings(2..4));
    assert_idle(&third, "third");

    // A consumer attached now joins behind the third.
    let fourth = conn.consume("sac", ConsumeOptions::default())?;
    publish_all(&conn, "sac", 4..5)?;
    assert_eq!(drain_acked(&second), strings(4..5));

    drop(second);
    publish_all(&conn, "sac", 5..7)?;
    assert_eq!(drain_acked(&third), strings(5..7));
    assert_idle(&fourth, "fourth");

    third.cancel();
    publish_all(&conn, "sac", 7..8)?;
    assert_eq!(drain_acked(&fourth), strings(7..8));
    Ok(())
}

#[test]
fn what_sat_unreceived_in_the_cancelled_active_consumers_inbox_reaches_the_next_one_in_order() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("sac", sac())?;
    let first = conn.consume("sac", ConsumeOptions::default())?;
    let second = conn.consume("sac", ConsumeOptions::default())?;
    let third = conn.consume("sac", ConsumeOptions::default())?;
    publish_all(&conn, "sac", 0..5)?;

    // The first takes 0 and 1 out of its inbox; 2, 3, 4 stay there unreceived.
    let taken = [first.try_recv()?, first.try_recv()?];
    assert_eq!(bodies(&taken), strings(0..2));
    first.cancel();
    assert_idle(&third, "third");

    publish_all(&conn, "sac", 5..7)?;
    let got = drain(&second);
    assert_eq!(bodies(&got), strings(2..7));
    // 0 and 1 were received before the cancel: they stay with the first
    // consumer, settle-able, and were not handed on.
    assert_eq!(broker.queue_stats("sac").unwrap().messages_unacknowledged, 7);
    for d in taken {
        d.ack()?;
    }
    for d in got {
        d.ack()?;
    }
    assert_idle(&third, "third");
    let stats = broker.queue_stats("sac").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn dropping_the_single_active_consumer_hands_its_unreceived_messages_to_the_next_before_newer_ones() -> Result
{
    let conn = Broker::new().connect();
    conn.declare_queue("sac", sac())?;
    let first = conn.consume("sac", ConsumeOptions::default())?;
    let second = conn.consume("sac", ConsumeOptions::default())?;
    let third = conn.consume("sac", ConsumeOptions::default())?;
    publish_all(&conn, "sac", 0..4)?;
    drop(first);

    publish_all(&conn, "sac", 4..6)?;
    let got = drain(&second);
    assert_eq!(bodies(&got), strings(0..6));
    assert!(got.iter().all(|d| !d.redelivered()), "never seen by an application");
    assert_idle(&third, "third");

    // Received and returned unsettled: back in their positions, to the
    // active consumer; when it goes, the third gets them, in order.
    drop(got);
    drop(second);
    publish_all(&conn, "sac", 6..7)?;
    let got = drain(&third);
    assert_eq!(bodies(&got), strings(0..7));
    assert_eq!(
        got.iter().map(Delivery::redelivered).collect::<Vec<_>>(),
        [true, true, true, true, true, true, false]
    );
    Ok(())
}

#[test]
fn a_requeued_delivery_of_a_cancelled_active_consumer_goes_to_the_new_active_one() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("sac", sac())?;
    let first = conn.consume("sac", ConsumeOptions::default())?;
    let second = conn.consume("sac", ConsumeOptions::default())?;
    publish_all(&conn, "sac", 0..3)?;
    let held = drain(&first);
    assert_eq!(bodies(&held), strings(0..3));
    first.cancel();
    assert_idle(&second, "second");

    let mut held = held.into_iter();
    held.next().unwrap().ack()?;
    held.next().unwrap().nack(true)?;
    let d = second.try_recv()?;
    assert_eq!((body(&d), d.redelivered()), ("1".to_string(), true));
    d.ack()?;
    held.next().unwrap().ack()?;
    assert_idle(&second, "second");
    Ok(())
}

#[test]
fn when_the_active_consumers_connection_closes_its_unacked_deliveries_reach_the_next_consumer_first() -> Result
{
    let broker = Broker::new();
    let producer = broker.connect();
    producer.declare_queue("sac", sac())?;
    let conn_a = broker.connect();
    let conn_b = broker.connect();
    let conn_c = broker.connect();
    let a = conn_a.consume("sac", ConsumeOptions { prefetch: 3, ..Default::default() })?;
    let b = conn_b.consume("sac", ConsumeOptions::default())?;
    let c = conn_c.consume("sac", ConsumeOptions::default())?;
    publish_all(&producer, "sac", 0..7)?;

    // a holds 0, 1, 2; acking 1 gives it 3; 4, 5, 6 wait in the queue.
    let mut held = drain(&a);
    assert_eq!(bodies(&held), strings(0..3));
    held.remove(1).ack()?;
    held.extend(drain(&a));
    assert_eq!(bodies(&held), ["0", "2", "3"]);
    assert_idle(&b, "b");
    let stats = broker.queue_stats("sac").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (3, 3));

    conn_a.close();
    let got = drain(&b);
    assert_eq!(bodies(&got), ["0", "2", "3", "4", "5", "6"]);
    assert_eq!(
        got.iter().map(Delivery::redelivered).collect::<Vec<_>>(),
        [true, true, true, false, false, false]
    );
    assert_eq!(got.iter().map(Delivery::delivery_count).collect::<Vec<_>>(), [1, 1, 1, 0, 0, 0]);
    assert_idle(&c, "c");
    for d in held {
        assert!(matches!(d.ack(), Err(AckError::ConnectionClosed(_))));
    }

    // Later messages queue behind them; the third takes over from b the same way.
    publish_all(&producer, "sac", 7..8)?;
    let mut got = got;
    got.extend(drain(&b));
    assert_eq!(bodies(&got), ["0", "2", "3", "4", "5", "6", "7"]);
    let mut got = got.into_iter();
    got.next().unwrap().ack()?; // "0" done
    drop(conn_b);
    let rest = drain(&c);
    assert_eq!(bodies(&rest), ["2", "3", "4", "5", "6", "7"]);
    assert!(rest.iter().all(Delivery::redelivered));
    for d in rest {
        d.ack()?;
    }
    let stats = broker.queue_stats("sac").unwrap();
    assert_eq!((stats.consumers, stats.messages_ready, stats.messages_unacknowledged), (1, 0, 0));
    Ok(())
}

#[test]
fn when_the_active_consumers_connection_closes_its_unacked_deliveries_come_before_messages_published_after()
-> Result {
    let broker = Broker::new();
    let producer = broker.connect();
    producer.declare_queue("sac", sac())?;
    let conn_a = broker.connect();
    let conn_b = broker.connect();
    let a = conn_a.consume("sac", ConsumeOptions::default())?;
    let b = conn_b.consume("sac", ConsumeOptions::default())?;
    publish_all(&producer, "sac", 0..3)?;
    let held = drain(&a);
    assert_eq!(bodies(&held), strings(0..3));

    conn_a.close();
    publish_all(&producer, "sac", 3..5)?;
    let got = drain(&b);
    assert_eq!(bodies(&got), strings(0..5));
    assert_eq!(got.iter().map(Delivery::redelivered).collect::<Vec<_>>(), [true, true, true, false, false]);
    drop(held);
    for d in got {
        d.ack()?;
    }
    assert_idle(&b, "b");
    Ok(())
}

#[test]
fn with_single_active_consumer_and_prefetch_1_the_others_get_nothing_while_it_is_at_its_limit() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("sac", sac())?;
    let active = conn.consume("sac", ConsumeOptions { prefetch: 1, ..Default::default() })?;
    let waiting = conn.consume("sac", ConsumeOptions::default())?;
    let also_waiting = conn.consume("sac", ConsumeOptions { prefetch: 5, ..Default::default() })?;
    publish_all(&conn, "sac", 0..4)?;

    let d = active.try_recv()?;
    assert_eq!(body(&d), "0");
    assert_idle(&active, "active");
    assert_idle(&waiting, "waiting");
    assert_idle(&also_waiting, "also waiting");
    let stats = broker.queue_stats("sac").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (3, 1));

    d.ack()?;
    let d = active.try_recv()?;
    assert_eq!(body(&d), "1");
    assert_idle(&waiting, "waiting");
    assert_idle(&also_waiting, "also waiting");
    assert_eq!(broker.queue_stats("sac").unwrap().messages_ready, 2);

    // It goes still holding "1": the next takes what is ready, "1" stays with it.
    active.cancel();
    assert_eq!(drain_acked(&waiting), ["2", "3"]);
    assert_idle(&also_waiting, "also waiting");
    d.ack()?;
    assert_idle(&waiting, "waiting");
    Ok(())
}

#[test]
fn the_x_single_active_consumer_argument_turns_on_single_active_consumer() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    let arguments = FieldTable::new().with("x-single-active-consumer", true);
    conn.declare_queue("sac", QueueOptions { arguments: arguments.clone(), ..Default::default() })?;
    let first = conn.consume("sac", ConsumeOptions::default())?;
    let second = conn.consume("sac", ConsumeOptions::default())?;
    publish_all(&conn, "sac", 0..4)?;
    assert_eq!(drain_acked(&first), strings(0..4));
    assert_idle(&second, "second");

    drop(first);
    publish_all(&conn, "sac", 4..6)?;
    assert_eq!(drain_acked(&second), strings(4..6));

    // The typed field and the argument mean the same thing.
    conn.declare_queue("sac", sac())?;
    conn.declare_queue(
        "sac",
        QueueOptions { arguments, single_active_consumer: true, ..Default::default() },
    )?;
    Ok(())
}

#[test]
fn without_single_active_consumer_the_same_three_consumers_share_round_robin() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("plain", QueueOptions::default())?;
    let a = conn.consume("plain", ConsumeOptions::default())?;
    let b = conn.consume("plain", ConsumeOptions::default())?;
    let c = conn.consume("plain", ConsumeOptions::default())?;
    publish_all(&conn, "plain", 0..6)?;
    assert_eq!(drain_acked(&a), ["0", "3"]);
    assert_eq!(drain_acked(&b), ["1", "4"]);
    assert_eq!(drain_acked(&c), ["2", "5"]);
    Ok(())
}

#[test]
fn redeclaring_a_single_active_consumer_queue_without_it_is_refused() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("sac", sac())?;
    let err = conn.declare_queue("sac", QueueOptions::default()).unwrap_err();
    assert!(
        matches!(&err, DeclareError::PreconditionFailed(m) if m.contains("x-single-active-consumer")),
        "{err}"
    );

    conn.declare_queue("plain", QueueOptions::default())?;
    let err = conn.declare_queue("plain", sac()).unwrap_err();
    assert!(
        matches!(&err, DeclareError::PreconditionFailed(m) if m.contains("x-single-active-consumer")),
        "{err}"
    );

    let disagree = QueueOptions {
        single_active_consumer: true,
        arguments: FieldTable::new().with("x-single-active-consumer", false),
        ..Default::default()
    };
    let err = conn.declare_queue("other", disagree).unwrap_err();
    assert!(matches!(err, DeclareError::PreconditionFailed(_)), "{err}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Consumer priorities
// ---------------------------------------------------------------------------

#[test]
fn a_higher_priority_consumer_gets_every_message_while_it_has_credit() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let low = conn.consume("work", ConsumeOptions::default())?;
    let high = conn.consume("work", with_priority(10))?;
    let low_too = conn.consume("work", ConsumeOptions::default())?;
    publish_all(&conn, "work", 0..8)?;
    assert_eq!(drain_acked(&high), strings(0..8));
    assert_idle(&low, "low");
    assert_idle(&low_too, "low_too");
    Ok(())
}

#[test]
fn with_prefetch_2_the_high_priority_consumer_gets_two_and_the_low_one_the_rest() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let low = conn.consume("work", ConsumeOptions::default())?;
    let high = conn.consume("work", with_priority_and_prefetch(10, 2))?;
    publish_all(&conn, "work", 1..=6)?;

    let held = drain(&high);
    assert_eq!(bodies(&held), ["1", "2"]);
    assert_eq!(drain_acked(&low), ["3", "4", "5", "6"]);

    // Credit back: the high one is first again.
    for d in held {
        d.ack()?;
    }
    publish_all(&conn, "work", 7..=9)?;
    let held = drain(&high);
    assert_eq!(bodies(&held), ["7", "8"]);
    assert_eq!(drain_acked(&low), ["9"]);
    for d in held {
        d.ack()?;
    }
    assert_eq!(broker.queue_stats("work").unwrap().messages_unacknowledged, 0);
    Ok(())
}

#[test]
fn an_ack_gives_the_high_priority_consumer_the_next_ready_message() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let high = conn.consume("work", with_priority_and_prefetch(10, 2))?;
    let low = conn.consume("work", with_priority_and_prefetch(0, 1))?;
    publish_all(&conn, "work", 1..=6)?;

    let mut high_held = drain(&high);
    assert_eq!(bodies(&high_held), ["1", "2"]);
    let low_held = drain(&low);
    assert_eq!(bodies(&low_held), ["3"]);
    assert_eq!(broker.queue_stats("work").unwrap().messages_ready, 3);

    high_held.remove(0).ack()?; // "1"
    let next = drain(&high);
    assert_eq!(bodies(&next), ["4"]);
    high_held.extend(next);
    assert_idle(&low, "low");

    // The high one is full again: the low one's ack gets it the next.
    for d in low_held {
        d.ack()?;
    }
    let low_held = drain(&low);
    assert_eq!(bodies(&low_held), ["5"]);
    assert_idle(&high, "high");
    assert_eq!(broker.queue_stats("work").unwrap().messages_ready, 1);

    high_held.remove(0).ack()?; // "2"
    assert_eq!(drain_acked(&high), ["6"]);
    assert_idle(&low, "low");
    for d in high_held.into_iter().chain(low_held) {
        d.ack()?;
    }
    let stats = broker.queue_stats("work").unwrap();
    assert_eq!((stats.messages_ready, stats.messages_unacknowledged), (0, 0));
    Ok(())
}

#[test]
fn consumers_of_equal_priority_share_round_robin_above_a_lower_one() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let low = conn.consume("work", with_priority(1))?;
    let a = conn.consume("work", with_priority(5))?;
    let b = conn.consume("work", with_priority(5))?;
    publish_all(&conn, "work", 0..6)?;
    assert_eq!(drain_acked(&a), ["0", "2", "4"]);
    assert_eq!(drain_acked(&b), ["1", "3", "5"]);
    assert_idle(&low, "low");
    Ok(())
}

#[test]
fn when_equal_high_priority_consumers_are_full_the_lower_ones_share_round_robin() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let low_a = conn.consume("work", ConsumeOptions::default())?;
    let high_a = conn.consume("work", with_priority_and_prefetch(3, 1))?;
    let low_b = conn.consume("work", ConsumeOptions::default())?;
    let high_b = conn.consume("work", with_priority_and_prefetch(3, 1))?;
    publish_all(&conn, "work", 0..6)?;
    let held_a = drain(&high_a);
    let held_b = drain(&high_b);
    assert_eq!(bodies(&held_a), ["0"]);
    assert_eq!(bodies(&held_b), ["1"]);
    assert_eq!(drain_acked(&low_a), ["2", "4"]);
    assert_eq!(drain_acked(&low_b), ["3", "5"]);
    Ok(())
}

#[test]
fn a_negative_priority_consumer_ranks_below_the_default_priority() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let backup = conn.consume("work", with_priority(-5))?;
    let normal = conn.consume("work", ConsumeOptions { prefetch: 2, ..Default::default() })?;
    publish_all(&conn, "work", 0..5)?;
    let held = drain(&normal);
    assert_eq!(bodies(&held), ["0", "1"]);
    assert_eq!(drain_acked(&backup), ["2", "3", "4"]);

    for d in held {
        d.ack()?;
    }
    publish_all(&conn, "work", 5..6)?;
    assert_eq!(drain_acked(&normal), ["5"]);
    assert_idle(&backup, "backup");
    Ok(())
}

#[test]
fn the_x_priority_consume_argument_sets_the_consumer_priority() -> Result {
    let conn = Broker::new().connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let below = conn.consume(
        "work",
        ConsumeOptions { arguments: FieldTable::new().with("x-priority", -1i32), ..Default::default() },
    )?;
    let normal = conn.consume("work", ConsumeOptions::default())?;
    let above = conn.consume(
        "work",
        ConsumeOptions {
            prefetch: 1,
            arguments: FieldTable::new().with("x-priority", 10i64),
            ..Default::default()
        },
    )?;
    publish_all(&conn, "work", 0..4)?;
    let held = drain(&above);
    assert_eq!(bodies(&held), ["0"]);
    assert_eq!(drain_acked(&normal), ["1", "2", "3"]);
    assert_idle(&below, "below");

    drop(normal);
    publish_all(&conn, "work", 4..6)?;
    assert_eq!(drain_acked(&below), ["4", "5"]);
    for d in held {
        d.ack()?;
    }
    publish_all(&conn, "work", 6..7)?;
    assert_eq!(drain_acked(&above), ["6"]);
    Ok(())
}

#[test]
fn when_the_high_priority_consumer_is_cancelled_the_lower_one_takes_everything() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("work", QueueOptions::default())?;
    let low = conn.consume("work", ConsumeOptions::default())?;
    let high = conn.consume("work", with_priority(10))?;
    publish_all(&conn, "work", 0..4)?;
    assert_idle(&low, "low");

    // The high one received 0; 1, 2, 3 sit unreceived in its inbox.
    let d = high.try_recv()?;
    assert_eq!(body(&d), "0");
    high.cancel();
    publish_all(&conn, "work", 4..7)?;
    assert_eq!(drain_acked(&low), strings(1..7));
    d.ack()?;
    let stats = broker.queue_stats("work").unwrap();
    assert_eq!((stats.consumers, stats.messages_ready, stats.messages_unacknowledged), (1, 0, 0));
    Ok(())
}

#[test]
fn when_the_high_priority_consumers_connection_closes_the_lower_one_gets_its_unacked_messages_first() -> Result
{
    let broker = Broker::new();
    let producer = broker.connect();
    producer.declare_queue("work", QueueOptions::default())?;
    let low_conn = broker.connect();
    let high_conn = broker.connect();
    let low = low_conn.consume("work", ConsumeOptions::default())?;
    let high = high_conn.consume("work", with_priority_and_prefetch(10, 2))?;
    publish_all(&producer, "work", 0..2)?;
    let held = drain(&high);
    assert_eq!(bodies(&held), ["0", "1"]);
    assert_idle(&low, "low");

    high_conn.close();
    publish_all(&producer, "work", 2..4)?;
    let got = drain(&low);
    assert_eq!(bodies(&got), strings(0..4));
    assert_eq!(got.iter().map(Delivery::redelivered).collect::<Vec<_>>(), [true, true, false, false]);
    drop(held);
    for d in got {
        d.ack()?;
    }
    Ok(())
}
