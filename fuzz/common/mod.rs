//! The fuzz targets' bodies, shared by `cargo fuzz` (the `fuzz_targets/`
//! binaries) and by `tests/fuzz_targets.rs`, which runs the same functions
//! as bounded proptests in CI (cargo-fuzz needs a nightly toolchain).
//!
//! Each target turns arbitrary bytes into calls on the public API and checks
//! that the bus never panics or hangs, whatever it is given; the topic target
//! also checks routing against a plain reference matcher (a differential
//! fuzz of the trie). Errors are expected and fine: they are the bus saying
//! no.

#![allow(dead_code)]

use std::time::Duration;

use interoffice::{
    Broker, BrokerOptions, ConnectOptions, ConsumeOptions, Credentials, DeleteExchangeOptions,
    DeleteQueueOptions, ExchangeKind, ExchangeOptions, FieldTable, FieldValue, ManualClock, Message,
    Permissions, PublishOptions, QueueOptions, TopicPermissions,
};

/// Reads the fuzzer's bytes as a stream of small decisions; past the end,
/// every read is 0.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// True one time in `n`, by the next byte.
    pub fn one_in(&mut self, n: u8) -> bool {
        self.byte().is_multiple_of(n)
    }

    pub fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | u64::from(self.byte()))
    }

    pub fn i64(&mut self) -> i64 {
        self.u64() as i64
    }

    /// A number biased to the edges: 0, 1, small, huge, the extremes.
    pub fn edgy(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => 1,
            2 => u64::from(self.byte()),
            3 => u64::MAX - u64::from(self.byte()),
            4 => 315_360_000_000 + u64::from(self.byte()) - 128,
            _ => self.u64(),
        }
    }

    pub fn duration(&mut self) -> Duration {
        match self.below(4) {
            0 => Duration::MAX,
            1 => Duration::from_millis(self.edgy()),
            2 => Duration::from_nanos(self.edgy()),
            _ => Duration::new(self.edgy(), u32::from(self.byte()) * 1_000_000),
        }
    }

    /// A string of up to `max` bytes, from a small alphabet that hits the
    /// interesting characters, or raw bytes made valid UTF-8.
    pub fn string(&mut self, max: usize) -> String {
        let len = self.below(max + 1);
        if self.one_in(4) {
            let bytes: Vec<u8> = (0..len).map(|_| self.byte()).collect();
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        const ALPHABET: &[char] = &['a', 'b', '.', '*', '#', '-', 'é', '\0', ' ', 'x'];
        (0..len).map(|_| ALPHABET[self.below(ALPHABET.len())]).collect()
    }

    pub fn value(&mut self, depth: u8) -> FieldValue {
        match self.below(if depth > 2 { 14 } else { 16 }) {
            0 => FieldValue::Bool(self.one_in(2)),
            1 => FieldValue::I8(self.byte() as i8),
            2 => FieldValue::U16(u16::from(self.byte())),
            3 => FieldValue::I32(self.i64() as i32),
            4 => FieldValue::I64(self.i64()),
            5 => FieldValue::U64(self.edgy()),
            6 => FieldValue::F32(f32::from_bits(self.u64() as u32)),
            7 => FieldValue::F64(f64::from_bits(self.u64())),
            8 => FieldValue::from(self.string(12)),
            9 => FieldValue::Bytes(self.string(6).into_bytes().into()),
            10 => FieldValue::Timestamp(self.edgy()),
            11 => FieldValue::Void,
            12 => FieldValue::I64(self.edgy() as i64),
            13 => FieldValue::String(
                ["all", "any", "all-with-x", "any-with-x", "quorum", "classic", "stream", "reject-publish"]
                    [self.below(8)]
                .into(),
            ),
            14 => FieldValue::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
            _ => FieldValue::Table(self.table(depth + 1)),
        }
    }

    pub fn table(&mut self, depth: u8) -> FieldTable {
        const KEYS: &[&str] = &[
            "x-match",
            "x-message-ttl",
            "x-expires",
            "x-max-length",
            "x-max-length-bytes",
            "x-overflow",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-max-priority",
            "x-delivery-limit",
            "x-single-active-consumer",
            "x-queue-type",
            "x-queue-mode",
            "x-max-age",
            "alternate-exchange",
            "x-death",
            "CC",
            "BCC",
            "x-delay",
            "x-priority",
            "count",
            "queue",
            "reason",
            "k",
            "",
        ];
        let mut table = FieldTable::new();
        for _ in 0..self.below(5) {
            let key = if self.one_in(5) { self.string(8) } else { KEYS[self.below(KEYS.len())].to_owned() };
            let value = self.value(depth);
            table.insert(key, value);
        }
        table
    }
}

fn manual_broker() -> (ManualClock, Broker) {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions { clock: clock.clock(), ..Default::default() });
    (clock, broker)
}

/// A plain backtracking topic matcher over words, written for obviousness.
pub fn reference_topic_match(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|skip| go(rest, &k[skip..])),
            Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
            Some((word, rest)) => k.first() == Some(word) && go(rest, &k[1..]),
        }
    }
    fn words(s: &str) -> Vec<&str> {
        if s.is_empty() { Vec::new() } else { s.split('.').collect() }
    }
    go(&words(pattern), &words(key))
}

fn topic_string(input: &mut Input<'_>) -> String {
    const WORDS: &[&str] = &["a", "b", "", "*", "#", "a*", "#b", "c"];
    let n = input.below(6);
    (0..n).map(|_| WORDS[input.below(WORDS.len())]).collect::<Vec<_>>().join(".")
}

/// Topic patterns and keys: the trie routes exactly as the reference
/// matcher, through binds and unbinds.
pub fn topic(data: &[u8]) {
    let mut input = Input::new(data);
    let broker = Broker::new();
    let conn = broker.connect();
    conn.declare_exchange("t", ExchangeKind::Topic, ExchangeOptions::default()).unwrap();
    let mut bound: Vec<(String, String)> = Vec::new();
    let queues = 1 + input.below(6);
    for q in 0..queues {
        conn.declare_queue(&format!("q{q}"), QueueOptions::default()).unwrap();
    }
    while !input.is_empty() {
        match input.below(4) {
            0 | 1 => {
                let queue = format!("q{}", input.below(queues));
                let pattern = topic_string(&mut input);
                conn.bind_queue(&queue, "t", &pattern, FieldTable::new()).unwrap();
                if !bound.contains(&(queue.clone(), pattern.clone())) {
                    bound.push((queue, pattern));
                }
            }
            2 if !bound.is_empty() => {
                let (queue, pattern) = bound.swap_remove(input.below(bound.len()));
                conn.unbind_queue(&queue, "t", &pattern, None).unwrap();
            }
            _ => {
                let key = topic_string(&mut input);
                let expected: std::collections::BTreeSet<&str> = bound
                    .iter()
                    .filter(|(_, p)| reference_topic_match(p, &key))
                    .map(|(q, _)| q.as_str())
                    .collect();
                let routed = conn.publish("t", &key, Message::new("m")).unwrap();
                assert_eq!(routed.queues(), expected.len(), "key {key:?}, bindings {bound:?}");
                for q in 0..queues {
                    let name = format!("q{q}");
                    let got = conn.get(&name, true).unwrap().is_some();
                    assert_eq!(
                        got,
                        expected.contains(name.as_str()),
                        "key {key:?} to {name}, bindings {bound:?}"
                    );
                }
            }
        }
    }
}

/// Header tables and x-arguments anywhere the bus reads them: queue,
/// exchange, binding and consumer arguments, and message headers.
pub fn arguments(data: &[u8]) {
    let mut input = Input::new(data);
    let (clock, broker) = manual_broker();
    let conn = broker.connect();
    let _ = conn.declare_queue("dlq", QueueOptions::default());
    while !input.is_empty() {
        match input.below(6) {
            0 => {
                let options = QueueOptions {
                    arguments: input.table(0),
                    durable: input.one_in(2),
                    ..Default::default()
                };
                let _ = conn.declare_queue(&format!("q{}", input.below(3)), options);
            }
            1 => {
                let kind =
                    [ExchangeKind::Direct, ExchangeKind::Fanout, ExchangeKind::Topic, ExchangeKind::Headers]
                        [input.below(4)];
                let options = ExchangeOptions {
                    arguments: input.table(0),
                    delayed: input.one_in(2),
                    ..Default::default()
                };
                let _ = conn.declare_exchange(&format!("x{}", input.below(3)), kind, options);
            }
            2 => {
                let args = input.table(0);
                let _ = conn.bind_queue(
                    &format!("q{}", input.below(3)),
                    &format!("x{}", input.below(3)),
                    &input.string(8),
                    args,
                );
            }
            3 => {
                let options = ConsumeOptions {
                    arguments: input.table(0),
                    prefetch: u32::from(input.byte()),
                    ..Default::default()
                };
                if let Ok(consumer) = conn.consume(&format!("q{}", input.below(3)), options) {
                    while let Ok(d) = consumer.try_recv() {
                        let _ = if input.one_in(2) { d.nack(false) } else { d.ack() };
                    }
                }
            }
            4 => {
                let message = Message::new("m").with_headers(input.table(0));
                let exchange = if input.one_in(2) { String::new() } else { format!("x{}", input.below(3)) };
                let _ = conn.publish_with(
                    &exchange,
                    &format!("q{}", input.below(3)),
                    message,
                    PublishOptions { mandatory: input.one_in(2) },
                );
            }
            _ => {
                if let Ok(Some(d)) = conn.get(&format!("q{}", input.below(3)), false) {
                    let _ = d.nack(input.one_in(2));
                }
                clock.advance(input.duration());
            }
        }
    }
    for queue in broker.queue_names() {
        let _ = broker.queue_stats(&queue);
    }
}

/// Durations at every edge, everywhere the bus takes one.
pub fn durations(data: &[u8]) {
    let mut input = Input::new(data);
    let (clock, broker) = manual_broker();
    let conn = broker.connect();
    let options = QueueOptions {
        message_ttl: (input.one_in(2)).then(|| input.duration()),
        expires: (input.one_in(4)).then(|| input.duration()),
        deduplication_window: (input.one_in(4))
            .then(|| interoffice::DeduplicationWindow { max_ids: None, duration: Some(input.duration()) }),
        ..Default::default()
    };
    if conn.declare_queue("q", options).is_err() {
        conn.declare_queue("q", QueueOptions::default()).unwrap();
    }
    let consumer = conn.consume("q", ConsumeOptions { prefetch: 2, ..Default::default() }).unwrap();
    while !input.is_empty() {
        match input.below(5) {
            0 => {
                let mut message =
                    Message::new("m").with_expiration(input.duration()).with_delay(input.duration());
                if input.one_in(3) {
                    message.properties_mut().set_expiration(input.edgy().to_string());
                }
                let _ = conn.publish("", "q", message);
            }
            1 => {
                if let Ok(d) = consumer.try_recv() {
                    let _ = d.nack_with_delay(input.duration());
                }
            }
            2 => clock.advance(input.duration()),
            3 => {
                let _ = conn.call("", "q", Message::new("?"), Duration::ZERO);
            }
            _ => {
                // A deadline far away waits that long when nothing comes (the
                // caller asked): bounded here, extreme only when a message waits.
                let timeout = Duration::from_micros(u64::from(input.byte()));
                if let Ok(d) = consumer.recv_timeout(timeout) {
                    let _ = d.ack();
                }
            }
        }
    }
    let _ = broker.queue_stats("q");
}

/// Names and routing keys of every length and content.
pub fn names(data: &[u8]) {
    let mut input = Input::new(data);
    let broker = Broker::new();
    let conn = broker.connect();
    while !input.is_empty() {
        let name = input.string(300);
        match input.below(6) {
            0 => {
                let _ = conn
                    .declare_queue(&name, QueueOptions { exclusive: input.one_in(2), ..Default::default() });
            }
            1 => {
                let _ = conn.declare_exchange(&name, ExchangeKind::Topic, ExchangeOptions::default());
            }
            2 => {
                let key = input.string(300);
                let _ = conn.bind_queue(&name, "amq.topic", &key, FieldTable::new());
            }
            3 => {
                let key = input.string(300);
                let _ = conn.publish(&name, &key, Message::new("m"));
                let _ = conn.publish("amq.topic", &key, Message::new("m"));
            }
            4 => {
                let _ = conn.delete_queue(&name, DeleteQueueOptions::default());
                let _ = conn.delete_exchange(&name, DeleteExchangeOptions::default());
            }
            _ => {
                let _ = conn.consume(
                    &name,
                    ConsumeOptions { consumer_tag: Some(input.string(300)), ..Default::default() },
                );
                let _ = conn.publisher(&name);
            }
        }
    }
}

/// Arbitrary users, vhosts, permission and topic patterns (hostile
/// regexes included), logins and operations by the users they make: every
/// one is decided — allowed or refused with an error — never a panic or a
/// hang; a refused publish hands its message back.
pub fn permissions(data: &[u8]) {
    let mut input = Input::new(data);
    let broker = Broker::new();
    let admin = broker.connect();
    let mut users: Vec<String> = Vec::new();
    while !input.is_empty() {
        match input.below(7) {
            0 => {
                let name = input.string(40);
                let password = input.string(20);
                if broker.add_user(&name, &Credentials::password(password), &[]).is_ok() {
                    users.push(name);
                }
            }
            1 => {
                let _ = broker.add_vhost(&input.string(20));
            }
            2 => {
                let user = pick(&mut input, &users);
                let vhost = if input.one_in(2) { "/".to_owned() } else { input.string(20) };
                let permissions = Permissions::new(&input.string(60), &input.string(60), &input.string(60));
                let _ = broker.set_permissions(&user, &vhost, &permissions);
            }
            3 => {
                let user = pick(&mut input, &users);
                let topic = TopicPermissions {
                    exchange: if input.one_in(2) { "amq.topic".into() } else { input.string(20) },
                    write: input.string(60),
                    read: input.string(60),
                };
                let _ = broker.set_topic_permissions(&user, "/", &topic);
            }
            4 => {
                let name = input.string(40);
                let _ = admin.declare_exchange(&name, ExchangeKind::Topic, ExchangeOptions::default());
                let _ = admin.declare_queue(&name, QueueOptions::default());
            }
            5 => {
                let user = pick(&mut input, &users);
                let _ = broker.connect_with(ConnectOptions::new(
                    "/",
                    &user,
                    Credentials::password(input.string(20)),
                ));
            }
            _ => {
                // Log in as the user, its password reset to a known one.
                let user = pick(&mut input, &users);
                let _ = broker.users().change_password(&user, &Credentials::password("pw"));
                let Ok(conn) =
                    broker.connect_with(ConnectOptions::new("/", &user, Credentials::password("pw")))
                else {
                    continue;
                };
                let name = input.string(40);
                let key = input.string(60);
                let signed = Message::new("m").with_user_id(input.string(10));
                if let Err(error) = conn.publish(&name, &key, signed) {
                    assert_eq!(error.into_message().body().as_ref(), b"m", "a refused publish hands it back");
                }
                let _ = conn.publish("amq.topic", &key, Message::new("m"));
                let _ = conn
                    .declare_queue(&name, QueueOptions { passive: input.one_in(2), ..Default::default() });
                let _ = conn.bind_queue(&name, "amq.topic", &key, None);
                let _ = conn.get(&name, true);
                let _ = conn.purge_queue(&name);
            }
        }
    }
}

fn pick(input: &mut Input<'_>, users: &[String]) -> String {
    if users.is_empty() || input.one_in(8) {
        input.string(20)
    } else {
        users[input.below(users.len())].clone()
    }
}

/// A random API sequence from two threads on one broker: no panic, no
/// deadlock, and the queue's figures add up at the end.
pub fn api_sequence(data: &[u8]) {
    let half = data.len() / 2;
    let broker = Broker::new();
    broker.connect().declare_queue("q", QueueOptions::default()).unwrap();
    std::thread::scope(|scope| {
        for part in [&data[..half], &data[half..]] {
            let broker = broker.clone();
            scope.spawn(move || {
                let mut input = Input::new(part);
                let mut conn = broker.connect();
                let mut consumer = None;
                let mut held = Vec::new();
                while !input.is_empty() {
                    match input.below(9) {
                        0 | 1 => {
                            let _ = conn.publish("", "q", Message::new("m"));
                        }
                        2 => {
                            consumer = conn
                                .consume(
                                    "q",
                                    ConsumeOptions {
                                        prefetch: u32::from(input.byte() % 4),
                                        ..Default::default()
                                    },
                                )
                                .ok()
                        }
                        3 => {
                            if let Some(Ok(d)) =
                                consumer.as_ref().map(|c: &interoffice::Consumer| c.try_recv())
                            {
                                held.push(d);
                            }
                        }
                        4 if !held.is_empty() => {
                            let d = held.swap_remove(input.below(held.len()));
                            let _ = match input.below(4) {
                                0 => d.ack(),
                                1 => d.nack(true),
                                2 => d.nack(false),
                                _ => {
                                    drop(d);
                                    Ok(())
                                }
                            };
                        }
                        5 => {
                            if let Ok(Some(d)) = conn.get("q", input.one_in(2)) {
                                held.push(d);
                            }
                        }
                        6 => {
                            let _ = conn.purge_queue("q");
                        }
                        7 => {
                            if let Some(c) = consumer.take() {
                                c.cancel();
                            }
                        }
                        _ => {
                            conn.close();
                            conn = broker.connect();
                        }
                    }
                }
                drop(held);
                drop(consumer);
            });
        }
    });
    let stats = broker.queue_stats("q").unwrap();
    assert_eq!(stats.messages_unacknowledged, 0, "every holder is gone: nothing can be unacknowledged");
}
