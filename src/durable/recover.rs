//! Reading a data directory back at open: every segment scanned (in
//! parallel, one thread per core), damage cut off, the records replayed in
//! log order into the messages still live, their properties decoded once
//! per distinct encoding (a million messages published alike share one
//! `Properties`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::log::{self, Live, SegmentStats};
use super::record::{Damage, MessageState, Record};
use super::{OpenError, RecoveryReport, Truncation};
use crate::hash::FastHashMap;
use crate::message::Properties;

/// A persistent message read back at open: its state, its record's bytes
/// but for the body (names and properties), and its body if it was kept
/// (the first bytes of each queue, up to its memory budget).
#[derive(Debug)]
pub(crate) struct RecoveredMessage {
    pub(crate) pid: u64,
    pub(crate) state: MessageState,
    pub(crate) properties: Arc<Properties>,
    head: Bytes,
    exchange: Range<usize>,
    routing_key: Range<usize>,
    body: Option<Bytes>,
    body_len: usize,
}

impl RecoveredMessage {
    pub(crate) fn exchange(&self) -> &str {
        std::str::from_utf8(&self.head[self.exchange.clone()]).unwrap_or_default()
    }

    pub(crate) fn routing_key(&self) -> &str {
        std::str::from_utf8(&self.head[self.routing_key.clone()]).unwrap_or_default()
    }

    pub(crate) fn body_len(&self) -> usize {
        self.body_len
    }

    /// The body, if it was kept in memory (else it is read back when the
    /// message is delivered).
    pub(crate) fn body(&self) -> Option<Bytes> {
        self.body.clone()
    }
}

/// What open read back, until the broker takes it.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) report: RecoveryReport,
    /// Live messages by durable queue id, in publish order.
    pub(crate) messages: HashMap<u64, Vec<RecoveredMessage>>,
    /// The message id of every Publish record still in the log (live or
    /// not) that had one: (queue, pid, id).
    ids: Vec<(u64, u64, String)>,
}

impl Recovered {
    /// The message ids of every Publish of `queue` the log still holds,
    /// oldest first: what its deduplication window accepted.
    pub(crate) fn message_ids(&self, queue: u64) -> Vec<String> {
        self.ids.iter().filter(|(q, ..)| *q == queue).map(|(.., id)| id.clone()).collect()
    }
}

/// Decoded properties by their encoding: most messages share a few.
#[derive(Default)]
struct PropertiesCache {
    last: Option<(Vec<u8>, Arc<Properties>)>,
    seen: HashMap<Vec<u8>, Arc<Properties>>,
}

/// Distinct encodings kept; past it, only the last one is.
const CACHED_PROPERTIES: usize = 4096;

impl PropertiesCache {
    fn decode(&mut self, bytes: &[u8]) -> Option<Arc<Properties>> {
        if let Some((last, properties)) = &self.last
            && last.as_slice() == bytes
        {
            return Some(Arc::clone(properties));
        }
        let properties = match self.seen.get(bytes) {
            Some(p) => Arc::clone(p),
            None => {
                let (p, _) =
                    bincode::serde::decode_from_slice::<Properties, _>(bytes, bincode::config::standard())
                        .ok()?;
                let p = Arc::new(p);
                if self.seen.len() < CACHED_PROPERTIES {
                    self.seen.insert(bytes.to_vec(), Arc::clone(&p));
                }
                p
            }
        };
        self.last = Some((bytes.to_vec(), Arc::clone(&properties)));
        Some(properties)
    }
}

/// One segment, read and checked.
struct Scan {
    number: u64,
    path: PathBuf,
    data: Bytes,
    frames: Vec<(u32, u32, Record)>,
    damage: Option<(usize, Damage)>,
    header: log::HeaderCheck,
}

fn scan(dir: &Path, number: u64) -> Result<Scan, OpenError> {
    let path = log::segment_path(dir, number);
    let data =
        log::read_segment(dir, number).map_err(|source| OpenError::Io { path: path.clone(), source })?;
    let header = log::check_header(&data);
    let mut frames = Vec::new();
    let damage = match header {
        log::HeaderCheck::Ok => {
            log::frames(&data, |at, len, record| frames.push((at as u32, len as u32, record)))
        }
        _ => None,
    };
    Ok(Scan { number, path, data, frames, damage, header })
}

/// What a replay hands the writer: what was recovered, each segment's
/// figures, the live index, and the highest pid seen.
pub(crate) type Replayed = (Recovered, BTreeMap<u64, SegmentStats>, FastHashMap<u64, Live>, u64);

/// A live message while the log is replayed.
struct Scanned {
    live: Live,
    properties: Arc<Properties>,
    /// The frame but for the body.
    head: Bytes,
    exchange: Range<usize>,
    routing_key: Range<usize>,
    body: Option<Bytes>,
    body_len: usize,
}

/// Scans the segments `numbers` of `dir` and replays them. `known`: the
/// durable queue ids the topology names (records of others are dropped).
/// Segments are read and checked a few at a time in parallel, then
/// replayed in order and let go: a live message keeps its names and
/// properties, and its body only while its queue has kept fewer than
/// `budget` bytes of bodies — so opening a store larger than memory holds
/// about a segment per core at a time, not the store.
pub(crate) fn recover(
    dir: &Path,
    numbers: &[u64],
    known: &dyn Fn(u64) -> bool,
    budget: usize,
) -> Result<Replayed, OpenError> {
    let mut report = RecoveryReport::default();
    let workers = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 4);
    let mut scanned: FastHashMap<u64, Scanned> = FastHashMap::default();
    let mut kept: FastHashMap<u64, usize> = FastHashMap::default();
    let mut ids = Vec::new();
    let mut segments = BTreeMap::new();
    let mut cache = PropertiesCache::default();
    let mut max_pid = 0;
    // Workers read and check segments (segment i on worker i mod n), each
    // at most one ahead of the replay: a bounded channel per worker keeps
    // about two segments per worker in memory, not the store.
    std::thread::scope(|s| -> Result<(), OpenError> {
        let receivers: Vec<crossbeam_channel::Receiver<Result<Scan, OpenError>>> = (0..workers)
            .map(|w| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                s.spawn(move || {
                    for i in (w..numbers.len()).step_by(workers) {
                        if tx.send(scan(dir, numbers[i])).is_err() {
                            return;
                        }
                    }
                });
                rx
            })
            .collect();
        for i in 0..numbers.len() {
            let scan = receivers[i % workers].recv().unwrap_or_else(|_| {
                Err(OpenError::Io {
                    path: dir.to_owned(),
                    source: std::io::Error::other("segment scan lost"),
                })
            });
            let scans = [scan];
            for scan in scans {
                let scan = scan?;
                report.segments += 1;
                match scan.header {
                    log::HeaderCheck::Ok => {}
                    log::HeaderCheck::Version(found) => {
                        return Err(OpenError::UnsupportedVersion {
                            path: dir.to_owned(),
                            found,
                            supported: log::FORMAT_VERSION,
                        });
                    }
                    log::HeaderCheck::Damaged => {
                        // Not even a header: nothing in it can be read.
                        report.truncations.push(Truncation {
                            segment: scan.path.clone(),
                            offset: 0,
                            dropped_bytes: scan.data.len() as u64,
                            reason: "no segment header".into(),
                        });
                        std::fs::remove_file(&scan.path)
                            .map_err(|source| OpenError::Io { path: scan.path.clone(), source })?;
                        continue;
                    }
                }
                if scan.frames.is_empty() && scan.damage.is_none() {
                    // Only a header (a broker that opened and closed without
                    // writing): nothing to keep, and no reason to keep the file.
                    std::fs::remove_file(&scan.path)
                        .map_err(|source| OpenError::Io { path: scan.path.clone(), source })?;
                    continue;
                }
                if scanned.capacity() == 0 {
                    // About one live record per KiB of a segment, times the segments.
                    scanned.reserve((scan.data.len() / 1024).saturating_mul(numbers.len()).min(1 << 24));
                }
                // The live candidates' heads (all but the body) go into one
                // buffer per segment: one allocation, not one per message.
                let mut heads: Vec<u8> = Vec::new();
                let mut pending: Vec<(u64, u64, Range<usize>)> = Vec::new();
                for (at, len, record) in scan.frames {
                    max_pid = max_pid.max(record.pid());
                    match record {
                        Record::Publish {
                            queue,
                            pid,
                            state,
                            exchange,
                            routing_key,
                            properties,
                            body: range,
                        } => {
                            if !known(queue) {
                                continue;
                            }
                            let at = at as usize;
                            let Some(decoded) =
                                cache.decode(&scan.data[at + properties.start..at + properties.end])
                            else {
                                // A checksum that matches over properties that
                                // do not decode: another build's encoding.
                                report.orphaned += 1;
                                continue;
                            };
                            if let Some(id) = decoded.message_id() {
                                ids.push((queue, pid, id.to_owned()));
                            }
                            let body_len = range.len();
                            let in_budget = kept.entry(queue).or_default();
                            let body = (*in_budget + body_len <= budget).then(|| {
                                *in_budget += body_len;
                                // A slice: it keeps its segment's buffer, which
                                // only the first budget's worth of segments do.
                                scan.data.slice(at + range.start..at + range.end)
                            });
                            let head_at = heads.len();
                            heads.extend_from_slice(&scan.data[at..at + range.start.min(len as usize)]);
                            let head = head_at..heads.len();
                            let live =
                                Live { queue, segment: scan.number, offset: at as u64, len, state, marks: 0 };
                            pending.push((pid, live.offset, head));
                            let replaced = scanned.insert(
                                pid,
                                Scanned {
                                    live,
                                    properties: decoded,
                                    head: Bytes::new(),
                                    exchange,
                                    routing_key,
                                    body,
                                    body_len,
                                },
                            );
                            if let Some(old) = replaced {
                                unkeep(&mut kept, &old);
                            }
                        }
                        Record::Place { pid, placement, .. } => {
                            if let Some(s) = scanned.get_mut(&pid) {
                                s.live.state.placement = placement;
                            }
                        }
                        Record::Delivered { pid, .. } => {
                            if let Some(s) = scanned.get_mut(&pid) {
                                s.live.marks = s.live.marks.saturating_add(1);
                            }
                        }
                        Record::Undelivered { pid, .. } => {
                            if let Some(s) = scanned.get_mut(&pid) {
                                s.live.marks = s.live.marks.saturating_sub(1);
                            }
                        }
                        Record::Remove { pid, .. } => {
                            if let Some(old) = scanned.remove(&pid) {
                                unkeep(&mut kept, &old);
                            }
                        }
                    }
                }
                let heads = Bytes::from(heads);
                for (pid, offset, range) in pending {
                    if let Some(s) = scanned.get_mut(&pid)
                        && s.live.segment == scan.number
                        && s.live.offset == offset
                    {
                        s.head = heads.slice(range);
                    }
                }
                let mut total = scan.data.len() as u64;
                if let Some((offset, damage)) = scan.damage {
                    let io = |source| OpenError::Io { path: scan.path.clone(), source };
                    let file = File::options().write(true).open(&scan.path).map_err(io)?;
                    file.set_len(offset as u64).map_err(io)?;
                    file.sync_all().map_err(io)?;
                    report.truncations.push(Truncation {
                        segment: scan.path.clone(),
                        offset: offset as u64,
                        dropped_bytes: scan.data.len() as u64 - offset as u64,
                        reason: format!("{damage:?}").to_lowercase(),
                    });
                    total = offset as u64;
                }
                segments.insert(scan.number, SegmentStats { total, live: 0 });
            }
        }
        Ok(())
    })?;
    ids.sort_unstable_by_key(|(_, pid, _)| *pid);
    let mut messages: HashMap<u64, Vec<RecoveredMessage>> = HashMap::new();
    let mut index = FastHashMap::with_capacity_and_hasher(scanned.len(), Default::default());
    for (pid, s) in scanned {
        report.messages += 1;
        report.redelivered += u64::from(s.live.marks > 0);
        if let Some(stats) = segments.get_mut(&s.live.segment) {
            stats.live += u64::from(s.live.len);
        }
        let state = s.live.restart_state();
        messages.entry(s.live.queue).or_default().push(RecoveredMessage {
            pid,
            state,
            properties: s.properties,
            head: s.head,
            exchange: s.exchange,
            routing_key: s.routing_key,
            body: s.body,
            body_len: s.body_len,
        });
        index.insert(pid, s.live);
    }
    for list in messages.values_mut() {
        list.sort_unstable_by_key(|m| m.pid);
    }
    let recovered = Recovered { report, messages, ids };
    Ok((recovered, segments, index, max_pid))
}

/// A kept body no longer counts against its queue's budget.
fn unkeep(kept: &mut FastHashMap<u64, usize>, old: &Scanned) {
    if old.body.is_some()
        && let Some(bytes) = kept.get_mut(&old.live.queue)
    {
        *bytes = bytes.saturating_sub(old.body_len);
    }
}
