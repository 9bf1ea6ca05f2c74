//! Request/reply over the bus: calls with a direct reply-to address, many in
//! flight at once, each reply to its own caller; typed errors for timeouts,
//! requests nobody serves and closed connections; late replies dropped and
//! counted. The servers here are plain consumers, so these tests check the
//! client side on its own.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use interoffice::{
    Broker, BrokerOptions, CallError, Connection, ConsumeOptions, Delivery, ManualClock, Message,
    PublishError, PublishOptions, QueueOptions,
};
use serde::{Deserialize, Serialize};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

const LONG: Duration = Duration::from_secs(3600);

/// A server answering each request on `queue` with `reply(request)`, until
/// its connection's broker is dropped or the queue deleted.
fn serve(broker: &Broker, queue: &str, reply: fn(&Delivery) -> Message) -> JoinHandle<usize> {
    let conn = broker.connect();
    conn.declare_queue(queue, QueueOptions::default()).unwrap();
    let consumer = conn.consume(queue, ConsumeOptions { prefetch: 100, ..Default::default() }).unwrap();
    std::thread::spawn(move || {
        let mut served = 0;
        while let Ok(request) = consumer.recv() {
            let props = request.properties();
            let answer =
                reply(&request).with_correlation_id(props.correlation_id().map(str::to_owned).unwrap());
            conn.publish("", props.reply_to().unwrap(), answer).unwrap();
            request.ack().unwrap();
            served += 1;
        }
        served
    })
}

fn echo(request: &Delivery) -> Message {
    Message::new(request.body().clone())
}

fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(d.body()).into_owned()
}

#[test]
fn a_call_returns_the_reply_to_its_request() -> Result {
    let broker = Broker::new();
    let server = serve(&broker, "echo", echo);
    let client = broker.connect();
    let reply = client.call("", "echo", Message::new("hello"), LONG)?;
    assert_eq!(text(&reply), "hello");
    assert!(!reply.needs_settling(), "replies come auto-acknowledged");
    assert!(reply.properties().correlation_id().is_some());
    assert_eq!(client.rpc_stats().calls_in_flight, 0);
    client.broker().connect().delete_queue("echo", Default::default())?;
    assert_eq!(server.join().unwrap(), 1);
    Ok(())
}

#[test]
fn the_request_carries_a_fresh_correlation_id_and_the_direct_reply_to_address() -> Result {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("inspect", QueueOptions::default())?;
    let consumer = conn.consume("inspect", ConsumeOptions::default())?;
    let client = Arc::new(broker.connect());
    let caller = {
        let client = Arc::clone(&client);
        std::thread::spawn(move || {
            client.call("", "inspect", Message::new("x").with_correlation_id("mine").with_reply_to("q"), LONG)
        })
    };
    let request = consumer.recv()?;
    let props = request.properties().clone();
    let address = client.reply_to_address()?;
    assert!(address.starts_with("amq.rabbitmq.reply-to."), "{address}");
    assert_eq!(props.reply_to(), Some(address.as_str()));
    assert_ne!(props.correlation_id(), Some("mine"));
    conn.publish("", &address, Message::new("ok").with_correlation_id(props.correlation_id().unwrap()))?;
    assert_eq!(text(&caller.join().unwrap()?), "ok");
    Ok(())
}

#[test]
fn calls_from_eight_threads_over_one_connection_each_get_their_own_reply() -> Result {
    let broker = Broker::new();
    let _server = serve(&broker, "echo", echo);
    let client = Arc::new(broker.connect());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                for i in 0..500 {
                    let body = format!("{t}-{i}");
                    let reply = client.call("", "echo", Message::new(body.clone()), LONG).unwrap();
                    assert_eq!(text(&reply), body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(client.rpc_stats().late_replies_dropped, 0);
    Ok(())
}

#[test]
fn ten_thousand_concurrent_calls_from_eight_tasks_on_a_current_thread_runtime_all_get_their_own_replies() {
    let broker = Broker::new();
    let _server = serve(&broker, "echo", echo);
    let client = Arc::new(broker.connect());
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let answered = rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let client = Arc::clone(&client);
                tokio::spawn(async move {
                    // All 1,250 calls of a task are in flight at once.
                    let calls: Vec<_> = (0..1_250)
                        .map(|i| {
                            let body = format!("{t}-{i}");
                            (body.clone(), client.call_async("", "echo", Message::new(body), LONG))
                        })
                        .collect();
                    let mut answered = 0;
                    for (body, call) in calls {
                        let reply = call.await.unwrap();
                        assert_eq!(text(&reply), body, "a reply reached the wrong call");
                        answered += 1;
                    }
                    answered
                })
            })
            .collect();
        let mut answered = 0;
        for task in tasks {
            answered += task.await.unwrap();
        }
        answered
    });
    assert_eq!(answered, 10_000);
    assert_eq!(client.rpc_stats(), interoffice::RpcStats::default());
}

#[test]
fn a_call_nobody_serves_fails_at_once_with_no_route_and_hands_the_request_back() {
    let client = Broker::new().connect();
    let started = Instant::now();
    let err = client.call("", "nobody", Message::new("anyone?"), LONG).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(60), "waited for the timeout");
    match err {
        CallError::NoRoute { exchange, routing_key, message } => {
            assert_eq!((exchange.as_str(), routing_key.as_str()), ("", "nobody"));
            assert_eq!(message.body().as_ref(), b"anyone?");
        }
        other => panic!("expected NoRoute, got {other:?}"),
    }
    assert_eq!(client.rpc_stats().calls_in_flight, 0);
    let err = futures::executor::block_on(client.call_async("missing", "x", Message::new("m"), LONG));
    assert!(matches!(err, Err(CallError::Publish(_))), "{err:?}");
}

#[test]
fn a_call_to_a_server_that_never_answers_times_out_on_time_and_the_late_reply_is_counted_as_dropped() -> Result
{
    let broker = Broker::new();
    let server = broker.connect();
    server.declare_queue("slow", QueueOptions::default())?;
    let consumer = server.consume("slow", ConsumeOptions::default())?;
    let client = broker.connect();
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let err = client.call("", "slow", Message::new("late"), timeout).unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err, CallError::Timeout { timeout });
    assert!(waited >= timeout, "timed out early: {waited:?}");
    assert!(waited < timeout + Duration::from_secs(5), "timed out late: {waited:?}");
    // The server answers after all.
    let request = consumer.recv()?;
    let props = request.properties();
    let late =
        Message::new("too late").with_correlation_id(props.correlation_id().map(str::to_owned).unwrap());
    server.publish("", props.reply_to().unwrap(), late)?;
    request.ack()?;
    assert_eq!(client.rpc_stats().late_replies_dropped, 1);
    assert_eq!(client.rpc_stats().calls_in_flight, 0);
    Ok(())
}

#[test]
fn with_a_manual_clock_a_call_times_out_exactly_when_the_clock_passes_its_timeout() -> Result {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let server = broker.connect();
    server.declare_queue("silent", QueueOptions::default())?;
    let consumer = server.consume("silent", ConsumeOptions::default())?;
    let client = Arc::new(broker.connect());
    let caller = {
        let client = Arc::clone(&client);
        std::thread::spawn(move || client.call("", "silent", Message::new("?"), Duration::from_secs(10)))
    };
    let _request = consumer.recv()?; // the call is now waiting
    clock.advance(Duration::from_millis(9_999));
    assert_eq!(client.rpc_stats().calls_in_flight, 1, "timed out a tick early");
    clock.advance(Duration::from_millis(1));
    assert_eq!(caller.join().unwrap().unwrap_err(), CallError::Timeout { timeout: Duration::from_secs(10) });
    Ok(())
}

#[test]
fn an_async_call_times_out_on_the_broker_clock_without_a_runtime_timer() -> Result {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    let server = broker.connect();
    server.declare_queue("silent", QueueOptions::default())?;
    let client = broker.connect();
    let call = client.call_async("", "silent", Message::new("?"), Duration::from_secs(1));
    let advancer = std::thread::spawn(move || clock.advance(Duration::from_secs(1)));
    let outcome = futures::executor::block_on(call);
    advancer.join().unwrap();
    assert_eq!(outcome.unwrap_err(), CallError::Timeout { timeout: Duration::from_secs(1) });
    Ok(())
}

#[test]
fn closing_the_connection_fails_its_waiting_calls() -> Result {
    let broker = Broker::new();
    let server = broker.connect();
    server.declare_queue("silent", QueueOptions::default())?;
    let consumer = server.consume("silent", ConsumeOptions::default())?;
    let client = Arc::new(broker.connect());
    let caller = {
        let client = Arc::clone(&client);
        std::thread::spawn(move || client.call("", "silent", Message::new("?"), LONG))
    };
    let request = consumer.recv()?;
    let reply_to = request.properties().reply_to().map(str::to_owned).unwrap();
    client.close();
    assert_eq!(caller.join().unwrap().unwrap_err(), CallError::ConnectionClosed);
    assert_eq!(client.call("", "silent", Message::new("?"), LONG).unwrap_err(), CallError::ConnectionClosed);
    assert_eq!(client.rpc_stats().calls_in_flight, 0, "the figures outlive the connection");
    // The address is gone with the connection: a reply to it is unroutable.
    let routed = server.publish("", &reply_to, Message::new("x"))?;
    assert_eq!(routed.queues(), 0);
    Ok(())
}

#[test]
fn a_reply_with_an_unknown_correlation_id_reaches_no_call_and_is_counted() -> Result {
    let broker = Broker::new();
    let server = broker.connect();
    server.declare_queue("confused", QueueOptions::default())?;
    let consumer = server.consume("confused", ConsumeOptions::default())?;
    let client = Arc::new(broker.connect());
    let caller = {
        let client = Arc::clone(&client);
        std::thread::spawn(move || client.call("", "confused", Message::new("q"), LONG))
    };
    let request = consumer.recv()?;
    let props = request.properties().clone();
    let reply_to = props.reply_to().unwrap();
    server.publish("", reply_to, Message::new("wrong").with_correlation_id("someone else"))?;
    server.publish("", reply_to, Message::new("no id"))?;
    // The right call's number written another way (a leading zero) is not
    // its correlation id either.
    let number = props.correlation_id().unwrap().strip_prefix(reply_to).unwrap();
    let padded = format!("{reply_to}.0{}", number.trim_start_matches('.'));
    server.publish("", reply_to, Message::new("padded").with_correlation_id(padded))?;
    assert_eq!(client.rpc_stats().late_replies_dropped, 3);
    server.publish(
        "",
        reply_to,
        Message::new("right").with_correlation_id(props.correlation_id().unwrap()),
    )?;
    assert_eq!(text(&caller.join().unwrap()?), "right");
    Ok(())
}

#[test]
fn a_reply_to_a_dropped_call_future_is_dropped_and_counted() -> Result {
    let broker = Broker::new();
    let server = broker.connect();
    server.declare_queue("q", QueueOptions::default())?;
    let consumer = server.consume("q", ConsumeOptions::default())?;
    let client = broker.connect();
    let call = client.call_async("", "q", Message::new("never mind"), LONG);
    assert_eq!(client.rpc_stats().calls_in_flight, 1);
    drop(call);
    assert_eq!(client.rpc_stats().calls_in_flight, 0);
    let request = consumer.recv()?;
    let props = request.properties();
    let reply = Message::new("x").with_correlation_id(props.correlation_id().map(str::to_owned).unwrap());
    server.publish("", props.reply_to().unwrap(), reply)?;
    assert_eq!(client.rpc_stats().late_replies_dropped, 1);
    Ok(())
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Quote {
    symbol: String,
    quantity: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Priced {
    Ok { total_cents: u64 },
    Unknown(String),
}

#[test]
fn a_typed_call_encodes_the_request_and_decodes_the_reply() -> Result {
    let broker = Broker::new();
    let _server = serve(&broker, "pricing", |request| {
        let quote: Quote = request.decode().unwrap();
        let priced = match quote.symbol.as_str() {
            "ACME" => Priced::Ok { total_cents: 1_250 * u64::from(quote.quantity) },
            other => Priced::Unknown(other.to_owned()),
        };
        Message::encode(&priced).unwrap()
    });
    let client = broker.connect();
    let acme = Quote { symbol: "ACME".into(), quantity: 3 };
    assert_eq!(
        client.call_typed::<_, Priced>("", "pricing", &acme, LONG)?,
        Priced::Ok { total_cents: 3_750 }
    );
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let other = Quote { symbol: "XYZ".into(), quantity: 1 };
    let priced: Priced = rt.block_on(client.call_typed_async("", "pricing", &other, LONG))?;
    assert_eq!(priced, Priced::Unknown("XYZ".into()));
    Ok(())
}

#[test]
fn a_typed_reply_that_cannot_be_decoded_is_a_decode_error() -> Result {
    let broker = Broker::new();
    // A server answering in plain text, without a content type.
    let _server = serve(&broker, "plain", |_| Message::new("not bincode"));
    let client = broker.connect();
    let err = client.call_typed::<_, Priced>("", "plain", &Quote { symbol: "A".into(), quantity: 1 }, LONG);
    assert!(matches!(err, Err(CallError::Decode(_))), "{err:?}");
    Ok(())
}

#[test]
fn a_closed_connection_cannot_leave_a_will() {
    let conn = Broker::new().connect();
    conn.close();
    assert!(conn.set_will("", "q", Message::new("w")).is_err());
}

fn will_count(broker: &Broker) -> usize {
    broker.queue_stats("wills").map_or(0, |s| s.messages_ready)
}

fn will_broker() -> (Broker, Connection) {
    let broker = Broker::new();
    let watcher = broker.connect();
    watcher.declare_queue("wills", QueueOptions::default()).unwrap();
    (broker, watcher)
}

#[test]
fn a_thread_that_panics_holding_a_connection_with_a_will_causes_exactly_one_will_message() {
    let (broker, watcher) = will_broker();
    let conn = broker.connect_named("doomed");
    conn.set_will("", "wills", Message::new("doomed died")).unwrap();
    let worker = std::thread::spawn(move || {
        let _held = conn;
        panic!("the module crashed");
    });
    assert!(worker.join().is_err());
    assert_eq!(will_count(&broker), 1);
    let will = watcher.get("wills", true).unwrap().unwrap();
    assert_eq!(will.body().as_ref(), b"doomed died");
}

#[test]
fn a_clean_close_publishes_no_will_and_a_later_drop_none_either() {
    let (broker, _watcher) = will_broker();
    let conn = broker.connect();
    conn.set_will("", "wills", Message::new("w")).unwrap();
    conn.close();
    drop(conn);
    assert_eq!(will_count(&broker), 0);
}

#[test]
fn dropping_a_connection_without_close_publishes_its_latest_will_once() {
    let (broker, _watcher) = will_broker();
    let conn = broker.connect();
    conn.set_will("", "wills", Message::new("first")).unwrap();
    conn.set_will("", "wills", Message::new("second")).unwrap();
    drop(conn);
    let stats = broker.queue_stats("wills").unwrap();
    assert_eq!(stats.messages_ready, 1);
    let conn = broker.connect();
    assert_eq!(conn.get("wills", true).unwrap().unwrap().body().as_ref(), b"second");
    let cleared = broker.connect();
    cleared.set_will("", "wills", Message::new("w")).unwrap();
    assert_eq!(cleared.clear_will().map(|m| m.body().clone()), Some("w".into()));
    drop(cleared);
    assert_eq!(will_count(&broker), 0);
}

#[test]
fn a_will_nobody_is_bound_for_is_dropped_quietly() {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.set_will("", "nobody", Message::new("w")).unwrap();
    drop(conn); // must not panic
    assert!(broker.queue_names().is_empty());
}

#[test]
fn a_reply_address_whose_connection_closed_is_unroutable_though_replies_reached_it_before() -> Result {
    let broker = Broker::new();
    let server = broker.connect();
    server.declare_queue("once", QueueOptions::default())?;
    let consumer = server.consume("once", ConsumeOptions { auto_ack: true, ..Default::default() })?;
    let client = Arc::new(broker.connect());
    let caller = {
        let client = Arc::clone(&client);
        std::thread::spawn(move || client.call("", "once", Message::new("q"), LONG))
    };
    let request = consumer.recv()?;
    let props = request.properties().clone();
    let reply_to = props.reply_to().unwrap();
    let answer = Message::new("a").with_correlation_id(props.correlation_id().unwrap());
    // Replies from this connection go through its route cache, which now
    // holds the address's route.
    server.publish_with("", reply_to, answer, PublishOptions { mandatory: true })?;
    assert_eq!(text(&caller.join().unwrap()?), "a");
    server.publish_with("", reply_to, Message::new("late"), PublishOptions { mandatory: true })?;
    assert_eq!(client.rpc_stats().late_replies_dropped, 1, "an open address takes a late reply");
    client.close();
    match server.publish_with("", reply_to, Message::new("gone"), PublishOptions { mandatory: true }) {
        Err(PublishError::Unroutable { message, .. }) => assert_eq!(message.body().as_ref(), b"gone"),
        other => panic!("a reply to a closed connection's address: {other:?}"),
    }
    Ok(())
}
