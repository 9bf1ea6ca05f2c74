//! Conversations: the conversation id travels from a delivery to what its
//! handler publishes (workers, RPC servers, async workers, a plain consumer
//! inside `enter_conversation`), and `Conversation::settle` waits for
//! everything one publish caused — three hops deep and across an RPC —
//! while ignoring unrelated traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interoffice::{
    Broker, CONVERSATION_ID_HEADER, ConsumeOptions, FieldValue, INITIATOR_ID_HEADER, Message, QueueOptions,
    WorkerOptions,
};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

/// A bound on a hang, not a delay.
const PATIENCE: Duration = Duration::from_secs(30);

fn header(message: &Message, name: &str) -> Option<String> {
    message.header(name).and_then(FieldValue::as_str).map(str::to_owned)
}

#[test]
fn a_causal_settle_waits_for_three_hops_including_an_rpc() -> Result {
    let broker = Broker::new();
    let conn = Arc::new(broker.connect());
    for queue in ["orders", "billing", "tax", "shipping", "audit"] {
        conn.declare_queue(queue, QueueOptions::default())?;
    }
    let shipped: Arc<Mutex<Vec<Message>>> = Arc::default();

    // orders → billing
    let publisher = Arc::clone(&conn);
    let _orders = conn.worker("orders", WorkerOptions::default(), move |order| {
        let bill = Message::new(order.body().clone()).with_message_id("bill-1");
        publisher.publish("", "billing", bill).map(|_| ())
    })?;
    // billing → (RPC) tax → shipping
    let publisher = Arc::clone(&conn);
    let _billing = conn.worker("billing", WorkerOptions::default(), move |bill| {
        let tax = publisher
            .call("", "tax", Message::new(bill.body().clone()), PATIENCE)
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(20)); // a slow handler: settle must wait for it
        publisher
            .publish("", "shipping", Message::new(tax.body().clone()))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;
    let _tax = conn.serve("tax", WorkerOptions::default(), |request| {
        Ok::<_, String>(Message::new(format!("{} + 20% VAT", String::from_utf8_lossy(request.body()))))
    })?;
    let seen = Arc::clone(&shipped);
    let _shipping = conn.worker("shipping", WorkerOptions::default(), move |parcel| {
        seen.lock().unwrap().push(parcel.message().clone());
        Ok::<(), String>(())
    })?;
    // Unrelated traffic nobody consumes: a plain settle would wait for it.
    conn.publish("", "audit", Message::new("unrelated"))?;

    let conversation = broker.conversation();
    conn.publish("", "orders", conversation.stamp(Message::new("order 42").with_message_id("order-42")))?;
    conversation.settle(PATIENCE)?;

    let shipped = shipped.lock().unwrap();
    assert_eq!(shipped.len(), 1, "the third hop ran before the settle returned");
    assert_eq!(shipped[0].body().as_ref(), b"order 42 + 20% VAT");
    assert_eq!(header(&shipped[0], CONVERSATION_ID_HEADER).as_deref(), Some(conversation.id()));
    // Shipping's message was published by billing's handler, whose delivery was bill-1.
    assert_eq!(header(&shipped[0], INITIATOR_ID_HEADER).as_deref(), Some("bill-1"));
    assert_eq!(conversation.messages_held(), 0);
    assert!(broker.settle(Duration::ZERO).is_err(), "the unrelated message is still there");
    Ok(())
}

#[test]
fn a_conversation_is_pending_while_one_of_its_messages_is_unsettled() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("jobs", QueueOptions::default())?;
    let conversation = broker.conversation();
    conn.publish("", "jobs", conversation.stamp(Message::new("job")))?;
    assert_eq!(conversation.messages_held(), 1);
    let consumer = conn.consume("jobs", ConsumeOptions::default())?;
    let job = consumer.recv()?;
    let err = conversation.settle(Duration::from_millis(10)).unwrap_err();
    assert_eq!(err.pending().conversation_messages, 1);
    assert!(err.to_string().contains("1 message(s) of the conversation still held"), "{err}");
    assert!(err.to_string().contains("1 unacknowledged by"), "{err}");
    job.nack(true)?; // back to the queue: still pending
    assert!(conversation.settle(Duration::ZERO).is_err());
    consumer.recv()?.ack()?;
    conversation.settle(PATIENCE)?;
    Ok(())
}

#[test]
fn a_plain_consumer_carries_the_conversation_on_inside_its_scope() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("in", QueueOptions::default())?;
    conn.declare_queue("out", QueueOptions::default())?;
    let conversation = broker.conversation();
    conn.publish("", "in", conversation.stamp(Message::new("x").with_message_id("m-1")))?;
    let delivery = conn.get("in", false)?.expect("a message");
    {
        let _scope = delivery.enter_conversation();
        conn.publish("", "out", Message::new("caused"))?;
        // A message naming its own conversation keeps it.
        conn.publish("", "out", Message::new("other").with_header(CONVERSATION_ID_HEADER, "elsewhere"))?;
    }
    conn.publish("", "out", Message::new("outside the scope"))?;
    delivery.ack()?;
    let caused = conn.get("out", true)?.unwrap();
    assert_eq!(caused.conversation_id(), Some(conversation.id()));
    assert_eq!(header(caused.message(), INITIATOR_ID_HEADER).as_deref(), Some("m-1"));
    assert_eq!(conn.get("out", true)?.unwrap().conversation_id(), Some("elsewhere"));
    assert_eq!(conn.get("out", true)?.unwrap().conversation_id(), None);
    Ok(())
}

#[test]
fn a_dead_letter_stays_in_its_conversation() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("dlx", interoffice::ExchangeKind::Fanout, Default::default())?;
    let dlq = QueueOptions { dead_letter_exchange: Some("dlx".into()), ..Default::default() };
    conn.declare_queue("work", dlq)?;
    conn.declare_queue("parked", QueueOptions::default())?;
    conn.bind_queue("parked", "dlx", "", interoffice::FieldTable::new())?;
    let conversation = broker.conversation();
    conn.publish("", "work", conversation.stamp(Message::new("poison")))?;
    conn.get("work", false)?.unwrap().reject(false)?;
    assert_eq!(conversation.messages_held(), 1, "the dead letter is still the conversation's");
    conn.get("parked", false)?.unwrap().ack()?;
    conversation.settle(PATIENCE)?;
    Ok(())
}

#[test]
fn an_async_worker_carries_the_conversation_on() -> Result {
    let broker = Broker::new();
    let conn = Arc::new(broker.connect());
    conn.declare_queue("in", QueueOptions::default())?;
    conn.declare_queue("out", QueueOptions::default())?;
    let publisher = Arc::clone(&conn);
    let published = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&published);
    let worker =
        conn.worker_async("in", WorkerOptions::default(), async move |d: &interoffice::Delivery| {
            futures::future::ready(()).await;
            publisher.publish("", "out", Message::new(d.body().clone())).map(|_| ())?;
            count.fetch_add(1, Ordering::SeqCst);
            Ok::<(), interoffice::PublishError>(())
        })?;
    let stop = worker.stop_handle();
    let conversation = broker.conversation();
    conn.publish("", "in", conversation.stamp(Message::new("x")))?;
    let runner = std::thread::spawn(move || futures::executor::block_on(worker.run()));
    let out = conn.consume("out", ConsumeOptions::default())?.recv()?;
    assert_eq!(out.conversation_id(), Some(conversation.id()));
    stop.stop();
    runner.join().unwrap();
    out.ack()?;
    conversation.settle(PATIENCE)?;
    Ok(())
}
