//! Calls: request/reply over the connection's direct reply-to address.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Connection;
use crate::delivery::Delivery;
use crate::message::Message;
use crate::rpc::{self, Call, CallError, ReplyEndpoint, RpcStats};
use crate::sync::Arc;
use crate::vhost::route_cache::Target;

impl Connection {
    /// Calls a service: publishes `request` to `exchange` with `routing_key`
    /// and waits, blocking, at most `timeout` for the reply. The request
    /// gets a fresh `correlation_id` and a `reply_to` naming this
    /// connection's direct reply-to address (no queue to declare); any the
    /// request had are replaced. Many calls may be in flight at once, from
    /// many threads, over one connection: each reply reaches its own caller.
    ///
    /// Fails at once with [`CallError::NoRoute`] if the request reached no
    /// queue; with [`CallError::Timeout`] when the broker's clock passes the
    /// timeout (a reply arriving later is dropped and counted in
    /// [`rpc_stats`](Self::rpc_stats)); with [`CallError::ConnectionClosed`]
    /// if the connection closes meanwhile.
    ///
    /// ```
    /// use std::time::Duration;
    /// use interoffice::{Broker, Message, QueueOptions, WorkerOptions};
    /// let broker = Broker::new();
    /// let server = broker.connect();
    /// server.declare_queue("rates", QueueOptions::default())?;
    /// let _service = server.serve("rates", WorkerOptions::default(), |request| {
    ///     let currency = String::from_utf8_lossy(request.body()).into_owned();
    ///     Ok::<_, std::convert::Infallible>(Message::new(format!("1 {currency} = 1.08 USD")))
    /// })?;
    ///
    /// let client = broker.connect();
    /// let reply = client.call("", "rates", Message::new("EUR"), Duration::from_secs(5))?;
    /// assert_eq!(reply.body().as_ref(), b"1 EUR = 1.08 USD");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`CallError`]: the request did not encode or was refused, it reached no queue (`NoRoute`), no reply came in time, the reply did not decode, or the connection closed.
    pub fn call(
        &self,
        exchange: &str,
        routing_key: &str,
        request: Message,
        timeout: Duration,
    ) -> Result<Delivery, CallError> {
        let call = self.start_call(exchange, routing_key, request, timeout, true)?;
        rpc::wait(&call)
    }

    /// The async form of [`call`](Self::call): the request is published
    /// now, and the returned future resolves to the reply. Works under any
    /// executor; the timeout runs on the broker's clock. Dropping the future
    /// gives up the call.
    pub fn call_async(&self, exchange: &str, routing_key: &str, request: Message, timeout: Duration) -> Call {
        match self.start_call(exchange, routing_key, request, timeout, false) {
            Ok(call) => Call::waiting(call),
            Err(error) => Call::failed(error),
        }
    }

    /// A typed call: the request is encoded with bincode, the reply decoded
    /// by its content type.
    ///
    /// # Errors
    ///
    /// [`CallError`]: the request did not encode or was refused, it reached no queue (`NoRoute`), no reply came in time, the reply did not decode, or the connection closed.
    pub fn call_typed<Req, Resp>(
        &self,
        exchange: &str,
        routing_key: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.typed::<crate::Bincode>().call(exchange, routing_key, request, timeout)
    }

    /// The async form of [`call_typed`](Self::call_typed).
    ///
    /// # Errors
    ///
    /// [`CallError`]: the request did not encode or was refused, it reached no queue (`NoRoute`), no reply came in time, the reply did not decode, or the connection closed.
    pub async fn call_typed_async<Req, Resp>(
        &self,
        exchange: &str,
        routing_key: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.typed::<crate::Bincode>().call_async(exchange, routing_key, request, timeout).await
    }

    /// This connection's direct reply-to address: the `reply_to` its calls
    /// set. A reply published to the default exchange with it as the
    /// routing key reaches the waiting call with the same `correlation_id`.
    ///
    /// # Errors
    ///
    /// [`CallError`]: the request did not encode or was refused, it reached no queue (`NoRoute`), no reply came in time, the reply did not decode, or the connection closed.
    pub fn reply_to_address(&self) -> Result<String, CallError> {
        Ok(self.reply_endpoint()?.name.to_string())
    }

    /// Figures of this connection's calls.
    pub fn rpc_stats(&self) -> RpcStats {
        self.shared.replies.lock().as_ref().map(|e| e.stats()).unwrap_or_default()
    }

    fn reply_endpoint(&self) -> Result<Arc<ReplyEndpoint>, CallError> {
        let mut slot = self.shared.replies.lock();
        if self.is_closed() {
            return Err(CallError::ConnectionClosed);
        }
        Ok(Arc::clone(slot.get_or_insert_with(|| ReplyEndpoint::register(&self.vhost))))
    }

    fn start_call(
        &self,
        exchange: &str,
        routing_key: &str,
        request: Message,
        timeout: Duration,
        blocking: bool,
    ) -> Result<Arc<rpc::PendingCall>, CallError> {
        let endpoint = self.reply_endpoint()?;
        endpoint.start(&self.vhost, request, timeout, blocking, |request, options| {
            let target = Target::Named(exchange);
            self.vhost.publish_cached(
                &*self.grant,
                &self.shared.routes,
                target,
                routing_key,
                request,
                options,
            )
        })
    }
}
