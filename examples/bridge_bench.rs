//! The same 1→1 scenario three ways, in one run: in-process on the bus;
//! through the bridge (local publish → outbound link → RabbitMQ → inbound
//! link → local consumer); and plain lapin against RabbitMQ (a publisher
//! with confirms, pipelined, and a consumer acking each message). Both
//! RabbitMQ paths use publisher confirms and a window of 256 messages.
//! Reports throughput and publish→delivery latency p50/p99, and the
//! bridge ÷ lapin ratio.
//!
//! ```text
//! cargo run --release --example bridge_bench --features amqp -- [messages] [reps]
//! ```
//!
//! `AMQP_URL` overrides the RabbitMQ URL (default: the local broker).

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Instant;

use futures_core::Stream;
use interoffice::bridge::{Bridge, LinkOptions};
use interoffice::{Broker, ConsumeOptions, FieldValue, Message, QueueOptions};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};

const WINDOW: u16 = 256;

#[path = "support/figures.rs"]
mod support;
use support::{Figures, figures};

fn stamp(epoch: Instant, n: usize) -> Message {
    let body = vec![0_u8; 64];
    Message::new(body)
        .with_message_id(n.to_string())
        .with_header("t", FieldValue::I64(epoch.elapsed().as_nanos() as i64))
}

fn latency_of(epoch: Instant, message: &Message) -> u64 {
    let sent = message.header("t").and_then(FieldValue::as_i64).unwrap_or_default() as u64;
    (epoch.elapsed().as_nanos() as u64).saturating_sub(sent)
}

/// One thread publishes `n` messages to local queue `into`; this one
/// receives them from `consumer`, acking each.
fn run_local(
    broker: &Broker,
    into: &'static str,
    consumer: &interoffice::Consumer,
    n: usize,
    epoch: Instant,
) -> Figures {
    let start = Instant::now();
    let publisher = {
        let conn = broker.connect();
        std::thread::spawn(move || {
            for i in 0..n {
                conn.publish("", into, stamp(epoch, i)).unwrap();
            }
        })
    };
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let delivery = consumer.recv().unwrap();
        latencies.push(latency_of(epoch, delivery.message()));
        delivery.ack().unwrap();
    }
    publisher.join().unwrap();
    figures(n, start.elapsed(), latencies)
}

/// In-process: one thread publishes, another consumes with manual acks.
fn in_process(n: usize, epoch: Instant) -> Figures {
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("bench", QueueOptions::default()).unwrap();
    let consumer =
        conn.consume("bench", ConsumeOptions { prefetch: u32::from(WINDOW), ..Default::default() }).unwrap();
    run_local(&broker, "bench", &consumer, n, epoch)
}

/// Through the bridge: out to RabbitMQ and back in.
fn through_bridge(url: &str, n: usize, epoch: Instant) -> Figures {
    let bridge = Bridge::connect(url.to_owned()).unwrap();
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_queue("out", QueueOptions::default()).unwrap();
    conn.declare_queue("in", QueueOptions::default()).unwrap();
    let options = LinkOptions { prefetch: WINDOW, ..Default::default() };
    let _out = bridge.link_outbound(&conn, "out", "", Some("interoffice.bench"), options).unwrap();
    let _in = bridge.link_inbound(&conn, "interoffice.bench", "", Some("in"), options);
    let consumer =
        conn.consume("in", ConsumeOptions { prefetch: u32::from(WINDOW), ..Default::default() }).unwrap();
    run_local(&broker, "out", &consumer, n, epoch)
}

/// Plain lapin: a publisher with pipelined confirms, a consumer acking.
fn plain_lapin(url: &str, n: usize, epoch: Instant) -> Figures {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let props = lapin::ConnectionProperties::default();
        let publisher = lapin::Connection::connect(url, props.clone()).await.unwrap();
        let subscriber = lapin::Connection::connect(url, props).await.unwrap();
        let out = publisher.create_channel().await.unwrap();
        out.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let inbox = subscriber.create_channel().await.unwrap();
        inbox.basic_qos(WINDOW, BasicQosOptions::default()).await.unwrap();
        let mut consumer = inbox
            .basic_consume(
                "interoffice.bench".into(),
                "".into(),
                BasicConsumeOptions::default(),
                Default::default(),
            )
            .await
            .unwrap();
        let start = Instant::now();
        let send = tokio::spawn(async move {
            let mut confirms = VecDeque::new();
            for i in 0..n {
                let message = stamp(epoch, i);
                let properties = interoffice::bridge::to_amqp_properties(message.properties()).unwrap();
                let confirm = out
                    .basic_publish(
                        "".into(),
                        "interoffice.bench".into(),
                        BasicPublishOptions::default(),
                        message.body(),
                        properties,
                    )
                    .await
                    .unwrap();
                confirms.push_back(confirm);
                if confirms.len() >= usize::from(WINDOW) {
                    confirms.pop_front().unwrap().await.unwrap();
                }
            }
            for confirm in confirms {
                confirm.await.unwrap();
            }
        });
        let mut latencies = Vec::with_capacity(n);
        for _ in 0..n {
            let delivery =
                std::future::poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)).await.unwrap().unwrap();
            let message =
                interoffice::bridge::from_amqp_message(&delivery.data, &delivery.properties).unwrap();
            latencies.push(latency_of(epoch, &message));
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        send.await.unwrap();
        figures(n, start.elapsed(), latencies)
    })
}

fn fresh_queue(url: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let connection =
            lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let _ = channel.queue_delete("interoffice.bench".into(), QueueDeleteOptions::default()).await;
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_declare("interoffice.bench".into(), QueueDeclareOptions::default(), Default::default())
            .await
            .unwrap();
        channel.queue_purge("interoffice.bench".into(), QueuePurgeOptions::default()).await.unwrap();
    });
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let epoch = Instant::now();
    println!("1→1, {n} messages of 64 bytes, manual acks, window {WINDOW}, {reps} reps (medians)");
    let (mut local, mut bridged, mut lapin_rates) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = Vec::new();
    for _ in 0..reps {
        // Alternated, so neither RabbitMQ path always runs on a warmer broker.
        let a = in_process(n, epoch);
        fresh_queue(&url);
        let b = through_bridge(&url, n, epoch);
        fresh_queue(&url);
        let c = plain_lapin(&url, n, epoch);
        local.push(a.per_sec);
        bridged.push(b.per_sec);
        lapin_rates.push(c.per_sec);
        last = vec![("in-process", a), ("through the bridge", b), ("plain lapin", c)];
    }
    let medians = [median(local), median(bridged), median(lapin_rates)];
    println!("{:<22} {:>12} {:>10} {:>10}", "path", "msg/s", "p50", "p99");
    for ((name, f), rate) in last.iter().zip(medians) {
        println!("{name:<22} {:>12.0} {:>10.1?} {:>10.1?}", rate, f.p50, f.p99);
    }
    println!("bridge ÷ plain lapin: {:.2}", medians[1] / medians[2]);
    println!("in-process ÷ bridge: {:.1}", medians[0] / medians[1]);
}
