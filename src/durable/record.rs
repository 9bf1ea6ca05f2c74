//! The store's records, as bytes: a frame (length, CRC-32 of the payload)
//! around a payload whose first byte says what it records.
//!
//! A frame is `[len: u32 LE][crc32: u32 LE][payload: len bytes]`. The CRC
//! covers the payload, so a torn write (a frame cut short by a crash) and a
//! flipped bit are both found when the log is read back.

use std::ops::Range;

/// Bytes before a frame's payload.
pub(crate) const FRAME_HEADER: usize = 8;

/// The largest payload a frame may announce: a body of the largest size a
/// broker accepts (`max_message_size`, at most 512 MiB as RabbitMQ caps it)
/// plus its names and properties stays below. A length above it is damage,
/// not a record.
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

const PUBLISH: u8 = 1;
const PLACE: u8 = 2;
const DELIVERED: u8 = 3;
const REMOVE: u8 = 4;
const UNDELIVERED: u8 = 5;

/// Where a persistent message sits in its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Ready (or delivered), at position `seq`, expiring at a wall-clock
    /// time (milliseconds since the Unix epoch), if it has a TTL.
    Ready { seq: u64, expires_ms: Option<u64> },
    /// Invisible until `due_ms` (wall clock), then at the tail, with a TTL
    /// still to start.
    Delayed { due_ms: u64, ttl_ms: Option<u64> },
}

/// What a restart must know of a message beyond its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MessageState {
    pub(crate) placement: Placement,
    /// Times it was delivered and came back.
    pub(crate) deliveries: u32,
    pub(crate) redelivered: bool,
}

/// One decoded record. Content fields are ranges into the payload, so
/// recovery can share the bytes it read rather than copy them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A persistent message entered durable queue `queue` as `pid`.
    Publish {
        queue: u64,
        pid: u64,
        state: MessageState,
        exchange: Range<usize>,
        routing_key: Range<usize>,
        properties: Range<usize>,
        body: Range<usize>,
    },
    /// It moved: a delayed message released, a quorum queue's return, a
    /// return put off by a delay.
    Place { queue: u64, pid: u64, placement: Placement },
    /// It was handed to a consumer (or `get`): after a crash it comes back
    /// flagged redelivered, its delivery counted as returned.
    Delivered { queue: u64, pid: u64 },
    /// It left the queue for good (acked, dead-lettered, expired, dropped).
    Remove { queue: u64, pid: u64 },
    /// A delivery that never reached the application came back (a
    /// cancelled consumer's inbox): it no longer counts.
    Undelivered { queue: u64, pid: u64 },
}

impl Record {
    pub(crate) fn pid(&self) -> u64 {
        match self {
            Record::Publish { pid, .. }
            | Record::Place { pid, .. }
            | Record::Delivered { pid, .. }
            | Record::Remove { pid, .. }
            | Record::Undelivered { pid, .. } => *pid,
        }
    }
}

/// The content of a Publish record, borrowed.
pub(crate) struct Content<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) properties: &'a [u8],
    pub(crate) body: &'a [u8],
}

/// Appends frames to a buffer.
pub(crate) struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Encoder<'a> {
    fn begin(out: &'a mut Vec<u8>, kind: u8) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        out.push(kind);
        Encoder { out, start }
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        // Lengths are checked by the caller: names ≤ 255 bytes, bodies
        // ≤ the broker's maximum message size.
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.out.extend_from_slice(b);
        self
    }

    fn placement(&mut self, placement: Placement) -> &mut Self {
        match placement {
            Placement::Ready { seq, expires_ms } => {
                self.u8(0).u64(seq).u64(expires_ms.map_or(u64::MAX, |ms| ms.min(u64::MAX - 1)))
            }
            Placement::Delayed { due_ms, ttl_ms } => {
                self.u8(1).u64(due_ms).u64(ttl_ms.map_or(u64::MAX, |ms| ms.min(u64::MAX - 1)))
            }
        }
    }

    /// Writes the frame header; returns the frame's length.
    fn finish(self) -> usize {
        let payload = &self.out[self.start + FRAME_HEADER..];
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(payload);
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
        self.out[self.start + 4..self.start + 8].copy_from_slice(&crc.to_le_bytes());
        self.out.len() - self.start
    }
}

pub(crate) fn encode_publish(
    out: &mut Vec<u8>,
    queue: u64,
    pid: u64,
    state: MessageState,
    content: &Content<'_>,
) -> usize {
    let mut e = Encoder::begin(out, PUBLISH);
    e.u64(queue).u64(pid).placement(state.placement).u32(state.deliveries).u8(u8::from(state.redelivered));
    e.bytes(content.exchange.as_bytes())
        .bytes(content.routing_key.as_bytes())
        .bytes(content.properties)
        .bytes(content.body);
    e.finish()
}

pub(crate) fn encode_place(out: &mut Vec<u8>, queue: u64, pid: u64, placement: Placement) -> usize {
    let mut e = Encoder::begin(out, PLACE);
    e.u64(queue).u64(pid).placement(placement);
    e.finish()
}

pub(crate) fn encode_delivered(out: &mut Vec<u8>, queue: u64, pid: u64) -> usize {
    let mut e = Encoder::begin(out, DELIVERED);
    e.u64(queue).u64(pid);
    e.finish()
}

pub(crate) fn encode_undelivered(out: &mut Vec<u8>, queue: u64, pid: u64) -> usize {
    let mut e = Encoder::begin(out, UNDELIVERED);
    e.u64(queue).u64(pid);
    e.finish()
}

pub(crate) fn encode_remove(out: &mut Vec<u8>, queue: u64, pid: u64) -> usize {
    let mut e = Encoder::begin(out, REMOVE);
    e.u64(queue).u64(pid);
    e.finish()
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Fewer bytes left than the frame needs: a torn write.
    Torn,
    /// The checksum does not match.
    Checksum,
    /// The checksum matches but the payload makes no sense (an unknown
    /// kind, a field running past the end, a name that is not UTF-8).
    Malformed,
}

/// Reads the frame at the start of `data`: its record and its length.
pub(crate) fn decode(data: &[u8]) -> Result<(Record, usize), Damage> {
    let header: [u8; FRAME_HEADER] =
        data.get(..FRAME_HEADER).and_then(|h| h.try_into().ok()).ok_or(Damage::Torn)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_PAYLOAD {
        return Err(Damage::Malformed);
    }
    let payload = data.get(FRAME_HEADER..FRAME_HEADER + len).ok_or(Damage::Torn)?;
    if crc32fast::hash(payload) != crc {
        return Err(Damage::Checksum);
    }
    let record = Decoder { payload, at: 1 }.record(payload[0]).ok_or(Damage::Malformed)?;
    Ok((record, FRAME_HEADER + len))
}

struct Decoder<'a> {
    payload: &'a [u8],
    at: usize,
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Option<Range<usize>> {
        let end = self.at.checked_add(n)?;
        (end <= self.payload.len()).then(|| {
            let range = self.at..end;
            self.at = end;
            range
        })
    }

    fn u64(&mut self) -> Option<u64> {
        let r = self.take(8)?;
        Some(u64::from_le_bytes(self.payload[r].try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        let r = self.take(4)?;
        Some(u32::from_le_bytes(self.payload[r].try_into().ok()?))
    }

    fn u8(&mut self) -> Option<u8> {
        let r = self.take(1)?;
        Some(self.payload[r.start])
    }

    /// A length-prefixed field, as a range of the frame (header included).
    fn bytes(&mut self) -> Option<Range<usize>> {
        let n = self.u32()? as usize;
        let r = self.take(n)?;
        Some(r.start + FRAME_HEADER..r.end + FRAME_HEADER)
    }

    fn text(&mut self) -> Option<Range<usize>> {
        let r = self.bytes()?;
        std::str::from_utf8(&self.payload[r.start - FRAME_HEADER..r.end - FRAME_HEADER]).ok()?;
        Some(r)
    }

    fn optional(v: u64) -> Option<u64> {
        (v != u64::MAX).then_some(v)
    }

    fn placement(&mut self) -> Option<Placement> {
        match self.u8()? {
            0 => Some(Placement::Ready { seq: self.u64()?, expires_ms: Self::optional(self.u64()?) }),
            1 => Some(Placement::Delayed { due_ms: self.u64()?, ttl_ms: Self::optional(self.u64()?) }),
            _ => None,
        }
    }

    fn record(mut self, kind: u8) -> Option<Record> {
        let record = match kind {
            PUBLISH => {
                let queue = self.u64()?;
                let pid = self.u64()?;
                let placement = self.placement()?;
                let deliveries = self.u32()?;
                let redelivered = match self.u8()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                Record::Publish {
                    queue,
                    pid,
                    state: MessageState { placement, deliveries, redelivered },
                    exchange: self.text()?,
                    routing_key: self.text()?,
                    properties: self.bytes()?,
                    body: self.bytes()?,
                }
            }
            PLACE => Record::Place { queue: self.u64()?, pid: self.u64()?, placement: self.placement()? },
            DELIVERED => Record::Delivered { queue: self.u64()?, pid: self.u64()? },
            REMOVE => Record::Remove { queue: self.u64()?, pid: self.u64()? },
            UNDELIVERED => Record::Undelivered { queue: self.u64()?, pid: self.u64()? },
            _ => return None,
        };
        // Trailing bytes mean a record this version does not understand.
        (self.at == self.payload.len()).then_some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> Content<'static> {
        Content {
            exchange: "orders",
            routing_key: "order.created",
            properties: b"props",
            body: b"body bytes",
        }
    }

    #[test]
    fn records_read_back_as_written() {
        let mut out = Vec::new();
        let state = MessageState {
            placement: Placement::Ready { seq: 7, expires_ms: Some(123) },
            deliveries: 2,
            redelivered: true,
        };
        let n1 = encode_publish(&mut out, 3, 9, state, &content());
        let delayed = Placement::Delayed { due_ms: 5, ttl_ms: None };
        let n2 = encode_place(&mut out, 3, 9, delayed);
        let n3 = encode_delivered(&mut out, 3, 9);
        let n4 = encode_remove(&mut out, 3, 9);
        assert_eq!(out.len(), n1 + n2 + n3 + n4);
        let (first, len) = decode(&out).unwrap();
        assert_eq!(len, n1);
        let Record::Publish { queue, pid, state: read, exchange, routing_key, properties, body } = first
        else {
            panic!("{first:?}")
        };
        assert_eq!((queue, pid, read), (3, 9, state));
        assert_eq!(&out[exchange], b"orders");
        assert_eq!(&out[routing_key], b"order.created");
        assert_eq!(&out[properties], b"props");
        assert_eq!(&out[body], b"body bytes");
        assert_eq!(decode(&out[n1..]).unwrap(), (Record::Place { queue: 3, pid: 9, placement: delayed }, n2));
        assert_eq!(decode(&out[n1 + n2..]).unwrap(), (Record::Delivered { queue: 3, pid: 9 }, n3));
        assert_eq!(decode(&out[n1 + n2 + n3..]).unwrap(), (Record::Remove { queue: 3, pid: 9 }, n4));
    }

    #[test]
    fn damage_is_told_apart_and_never_panics() {
        let mut out = Vec::new();
        let state = MessageState {
            placement: Placement::Ready { seq: 1, expires_ms: None },
            deliveries: 0,
            redelivered: false,
        };
        encode_publish(&mut out, 1, 1, state, &content());
        for cut in 0..out.len() {
            assert_eq!(decode(&out[..cut]).unwrap_err(), Damage::Torn, "cut at {cut}");
        }
        for i in 0..out.len() {
            for bit in 0..8 {
                let mut copy = out.clone();
                copy[i] ^= 1 << bit;
                assert!(decode(&copy).is_err(), "a flip of bit {bit} of byte {i} went unnoticed");
            }
        }
    }
}
