//! Typed payloads with any codec: [`Connection::typed`] gives a view of a
//! connection that encodes and decodes with codec `C` — bincode by default,
//! JSON or MessagePack (features `json`, `msgpack`) or a codec of the
//! user's — for publishing, calling and serving alike.

use std::fmt::Display;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Bincode, Codec, DecodeError, TypedPublishError};
use crate::connection::Connection;
use crate::delivery::Delivery;
use crate::error::ConsumeError;
use crate::message::Message;
use crate::rpc::CallError;
use crate::vhost::publish::Routed;
use crate::worker::{Worker, WorkerOptions};

/// A connection speaking codec `C` (bincode unless named): see
/// [`Connection::typed`]. A borrowed view; `Copy`.
///
/// ```
/// use std::time::Duration;
/// use interoffice::{Bincode, Broker, QueueOptions, WorkerOptions};
///
/// let conn = Broker::new().connect();
/// conn.declare_queue("totals", QueueOptions::default())?;
/// let typed = conn.typed::<Bincode>(); // or Json, MsgPack, a codec of yours
/// let _server = typed.serve("totals", WorkerOptions::default(), |lines: Vec<u64>| {
///     Ok::<_, String>(lines.iter().sum::<u64>())
/// })?;
/// let total: u64 = typed.call("", "totals", &vec![2_u64, 3], Duration::from_secs(5))?;
/// assert_eq!(total, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Typed<'a, C: Codec = Bincode> {
    conn: &'a Connection,
    codec: PhantomData<fn() -> C>,
}

impl<C: Codec> Clone for Typed<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C: Codec> Copy for Typed<'_, C> {}

impl Connection {
    /// This connection, encoding and decoding typed payloads with codec
    /// `C`: `conn.typed::<Json>().publish(..)`, `.call(..)`, `.serve(..)`.
    /// [`publish_typed`](Self::publish_typed), [`call_typed`](Self::call_typed)
    /// and [`serve_typed`](Self::serve_typed) are the same with [`Bincode`].
    pub fn typed<C: Codec>(&self) -> Typed<'_, C> {
        Typed { conn: self, codec: PhantomData }
    }

    /// An RPC server over bincode payloads: see [`Typed::serve`].
    ///
    /// # Errors
    ///
    /// As [`serve`](Self::serve).
    pub fn serve_typed<Req, Resp, F, E>(
        &self,
        queue: &str,
        options: WorkerOptions,
        handler: F,
    ) -> Result<Worker, ConsumeError>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Fn(Req) -> Result<Resp, E> + Send + Sync + 'static,
        E: Display,
    {
        self.typed::<Bincode>().serve(queue, options, handler)
    }
}

impl<C: Codec> Typed<'_, C> {
    /// Encodes `value` with `C` (setting its content type) and publishes it.
    ///
    /// # Errors
    ///
    /// [`TypedPublishError`]: the value did not encode, or the publish failed.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        exchange: &str,
        routing_key: &str,
        value: &T,
    ) -> Result<Routed, TypedPublishError> {
        Ok(self.conn.publish(exchange, routing_key, Message::encode_with::<C, T>(value)?)?)
    }

    /// Calls with a request encoded by `C` and decodes the reply by the
    /// codec its content type names, or with `C` when it names none.
    ///
    /// # Errors
    ///
    /// [`CallError`]: encoding, routing, the timeout, decoding the reply.
    pub fn call<Req, Resp>(
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
        let reply =
            self.conn.call(exchange, routing_key, Message::encode_with::<C, Req>(request)?, timeout)?;
        decode_reply::<C, Resp>(&reply)
    }

    /// The async form of [`call`](Self::call).
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub async fn call_async<Req, Resp>(
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
        let message = Message::encode_with::<C, Req>(request)?;
        let reply = self.conn.call_async(exchange, routing_key, message, timeout).await?;
        decode_reply::<C, Resp>(&reply)
    }

    /// An RPC server whose handler takes the request decoded with `C` and
    /// returns the reply to encode with `C`, as [`Connection::serve`]
    /// otherwise does. A request that does not decode is a handler failure
    /// (its error names the type), settled per `options.on_error`.
    ///
    /// # Errors
    ///
    /// As [`Connection::serve`].
    pub fn serve<Req, Resp, F, E>(
        &self,
        queue: &str,
        options: WorkerOptions,
        handler: F,
    ) -> Result<Worker, ConsumeError>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Fn(Req) -> Result<Resp, E> + Send + Sync + 'static,
        E: Display,
    {
        self.conn.serve(queue, options, move |request| {
            let decoded: Req = request.decode_with::<C, Req>().map_err(|e| e.to_string())?;
            let reply = handler(decoded).map_err(|e| e.to_string())?;
            Message::encode_with::<C, Resp>(&reply).map_err(|e| e.to_string())
        })
    }
}

/// A reply, decoded by the codec its content type names, or with `C`.
fn decode_reply<C: Codec, Resp: DeserializeOwned>(reply: &crate::Delivery) -> Result<Resp, CallError> {
    Ok(match reply.properties().content_type() {
        Some(_) => reply.decode()?,
        None => reply.decode_with::<C, Resp>()?,
    })
}

impl Delivery {
    /// Decodes the message's body with the codec its content type names, as
    /// [`Message::decode`] does.
    ///
    /// Decoding does not settle the delivery: on an error it is still the
    /// caller's to nack, reject (dead-letter) or acknowledge.
    ///
    /// ```
    /// use interoffice::{Broker, ConsumeOptions, DecodeError, Message, QueueOptions};
    ///
    /// let conn = Broker::new().connect();
    /// conn.declare_queue("totals", QueueOptions::default())?;
    /// conn.publish_typed("", "totals", &1250u64)?;
    /// conn.publish("", "totals", Message::new("not bincode").with_content_type("text/plain"))?;
    ///
    /// let consumer = conn.consume("totals", ConsumeOptions::default())?;
    /// let first = consumer.recv()?;
    /// assert_eq!(first.decode::<u64>()?, 1250);
    /// first.ack()?;
    ///
    /// let second = consumer.recv()?;
    /// match second.decode::<u64>() {
    ///     Err(DecodeError::UnsupportedContentType { .. }) => second.reject(false)?, // dead-letter it
    ///     other => panic!("expected an unsupported content type, got {other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`DecodeError`]: the body is not a whole value of the type, or its content type names no codec of this build.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        self.message().decode()
    }

    /// Decodes the message's body with codec `C`, whatever the content type
    /// says, as [`Message::decode_with`] does. Does not settle the delivery.
    ///
    /// # Errors
    ///
    /// [`DecodeError`]: the body is not a whole value of the type, or its content type names no codec of this build.
    pub fn decode_with<C: Codec, T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        self.message().decode_with::<C, T>()
    }
}

impl Connection {
    /// Encodes `value` with [`Bincode`] (see [`Message::encode`]) and
    /// publishes it to `exchange` with `routing_key`. For another codec or
    /// more properties, build the message with [`Message::encode_with`] and
    /// publish it with [`publish`](Self::publish).
    ///
    /// ```
    /// use interoffice::{Broker, QueueOptions};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// enum Shipment { Packed { parcels: u8 }, Sent { carrier: String } }
    ///
    /// let conn = Broker::new().connect();
    /// conn.declare_queue("shipping", QueueOptions::default())?;
    /// let routed = conn.publish_typed("", "shipping", &Shipment::Packed { parcels: 2 })?;
    /// assert_eq!(routed.queues(), 1);
    ///
    /// let delivery = conn.get("shipping", false)?.expect("a message");
    /// assert_eq!(delivery.decode::<Shipment>()?, Shipment::Packed { parcels: 2 });
    /// delivery.ack()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`TypedPublishError`]: the value did not encode, or the publish failed (see [`PublishError`](crate::PublishError)).
    pub fn publish_typed<T: Serialize + ?Sized>(
        &self,
        exchange: &str,
        routing_key: &str,
        value: &T,
    ) -> Result<Routed, TypedPublishError> {
        self.typed::<Bincode>().publish(exchange, routing_key, value)
    }
}
