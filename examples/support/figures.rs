//! Throughput and latency percentiles, shared by the benchmark examples
//! that measure against RabbitMQ (`bridge_bench`, `durable_bench`).

use std::time::Duration;

/// One run's throughput and latency percentiles.
#[derive(Clone, Copy)]
pub struct Figures {
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// `n` messages in `elapsed`, with each one's latency in nanoseconds.
pub fn figures(n: usize, elapsed: Duration, mut latencies: Vec<u64>) -> Figures {
    latencies.sort_unstable();
    let at = |q: f64| Duration::from_nanos(latencies[((latencies.len() - 1) as f64 * q) as usize]);
    Figures { per_sec: n as f64 / elapsed.as_secs_f64(), p50: at(0.50), p99: at(0.99) }
}
