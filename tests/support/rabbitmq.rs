//! Where the tests that compare with a real RabbitMQ find it.

/// `INTEROFFICE_RABBITMQ_URL` (`.ci/run` sets it to the local broker), or
/// `None` after saying why the test skips.
pub fn rabbitmq_url() -> Option<String> {
    match std::env::var("INTEROFFICE_RABBITMQ_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: INTEROFFICE_RABBITMQ_URL is not set (.ci/run sets it to the local RabbitMQ)");
            None
        }
    }
}
