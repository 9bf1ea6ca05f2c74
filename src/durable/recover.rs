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

/// A persistent message read back at open: its state and its record's
/// bytes (a slice of the segment it was read from, shared).
#[derive(Debug)]
pub(crate) struct RecoveredMessage {
    pub(crate) pid: u64,
    pub(crate) state: MessageState,
    pub(crate) properties: Arc<Properties>,
    frame: Bytes,
    exchange: Range<usize>,
    routing_key: Range<usize>,
    body: Range<usize>,
}

impl RecoveredMessage {
    pub(crate) fn exchange(&self) -> &str {
        std::str::from_utf8(&self.frame[self.exchange.clone()]).unwrap_or_default()
    }

    pub(crate) fn routing_key(&self) -> &str {
        std::str::from_utf8(&self.frame[self.routing_key.clone()]).unwrap_or_default()
    }

    pub(crate) fn body_len(&self) -> usize {
        self.body.len()
    }

    pub(crate) fn body(&self) -> Bytes {
        self.frame.slice(self.body.clone())
    }
}

/// What open read back, until the broker takes it.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) report: RecoveryReport,
    /// Live messages by durable queue id, in publish order.
    pub(crate) messages: HashMap<u64, Vec<RecoveredMessage>>,
    segments: Vec<Bytes>,
    /// Every Publish record still in the log (live or not), oldest first:
    /// (queue, segment index, frame offset, properties range).
    publishes: Vec<(u64, u32, u32, Range<u32>)>,
}

impl Recovered {
    /// The message ids of every Publish of `queue` the log still holds,
    /// oldest first: what its deduplication window accepted.
    pub(crate) fn message_ids(&self, queue: u64) -> Vec<String> {
        let mut cache = PropertiesCache::default();
        self.publishes
            .iter()
            .filter(|(q, ..)| *q == queue)
            .filter_map(|(_, segment, frame, range)| {
                let data = self.segments.get(*segment as usize)?;
                let at = *frame as usize;
                let bytes = data.get(at + range.start as usize..at + range.end as usize)?;
                cache.decode(bytes)?.message_id.clone()
            })
            .collect()
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

/// Scans the segments `numbers` of `dir` and replays them. `known`: the
/// durable queue ids the topology names (records of others are dropped).
pub(crate) fn recover(
    dir: &Path,
    numbers: &[u64],
    known: &dyn Fn(u64) -> bool,
) -> Result<Replayed, OpenError> {
    let mut report = RecoveryReport::default();
    // Segments are read and checked in parallel, replayed in order.
    let workers = std::thread::available_parallelism().map_or(1, usize::from).min(numbers.len().max(1));
    let mut scans: Vec<Option<Result<Scan, OpenError>>> = (0..numbers.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let chunks: Vec<Vec<usize>> =
            (0..workers).map(|w| (w..numbers.len()).step_by(workers).collect()).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|indices| {
                s.spawn(move || indices.into_iter().map(|i| (i, scan(dir, numbers[i]))).collect::<Vec<_>>())
            })
            .collect();
        for handle in handles {
            for (i, result) in handle.join().unwrap_or_default() {
                scans[i] = Some(result);
            }
        }
    });
    struct Scanned {
        live: Live,
        segment: u32,
        frame: u32,
        ranges: [Range<usize>; 4],
    }
    let mut scanned: FastHashMap<u64, Scanned> = FastHashMap::default();
    let mut publishes = Vec::new();
    let mut segments = BTreeMap::new();
    let mut datas = Vec::with_capacity(numbers.len());
    let mut max_pid = 0;
    for scan in scans {
        let scan = scan.unwrap_or_else(|| {
            Err(OpenError::Io { path: dir.to_owned(), source: std::io::Error::other("segment scan lost") })
        })?;
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
            // Only a header (a broker that opened and closed without writing):
            // nothing to keep, and no reason to keep the file.
            std::fs::remove_file(&scan.path)
                .map_err(|source| OpenError::Io { path: scan.path.clone(), source })?;
            continue;
        }
        let index = datas.len() as u32;
        if scanned.capacity() == 0 {
            // About one live record per KiB of the first segment, times the segments.
            scanned.reserve((scan.data.len() / 1024).saturating_mul(numbers.len()).min(1 << 24));
        }
        for (at, len, record) in scan.frames {
            max_pid = max_pid.max(record.pid());
            match record {
                Record::Publish { queue, pid, state, exchange, routing_key, properties, body } => {
                    if !known(queue) {
                        continue;
                    }
                    publishes.push((queue, index, at, properties.start as u32..properties.end as u32));
                    let live =
                        Live { queue, segment: scan.number, offset: u64::from(at), len, state, marks: 0 };
                    scanned.insert(
                        pid,
                        Scanned {
                            live,
                            segment: index,
                            frame: at,
                            ranges: [exchange, routing_key, properties, body],
                        },
                    );
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
                    scanned.remove(&pid);
                }
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
        datas.push(scan.data);
    }
    let mut messages: HashMap<u64, Vec<RecoveredMessage>> = HashMap::new();
    let mut index = FastHashMap::with_capacity_and_hasher(scanned.len(), Default::default());
    let mut cache = PropertiesCache::default();
    // In log order: the records are read where they lie, not at random.
    let mut live: Vec<(u64, Scanned)> = scanned.into_iter().collect();
    live.sort_unstable_by_key(|(_, s)| (s.segment, s.frame));
    for (pid, s) in live {
        let frame_start = s.frame as usize;
        let data = &datas[s.segment as usize];
        let frame = data.slice(frame_start..frame_start + s.live.len as usize);
        let [exchange, routing_key, properties, body] = s.ranges;
        let Some(properties) = cache.decode(&frame[properties]) else {
            // A checksum that matches over properties that do not decode:
            // written by a build that encodes them otherwise.
            report.orphaned += 1;
            continue;
        };
        report.messages += 1;
        report.redelivered += u64::from(s.live.marks > 0);
        if let Some(stats) = segments.get_mut(&s.live.segment) {
            stats.live += u64::from(s.live.len);
        }
        let state = s.live.restart_state();
        messages.entry(s.live.queue).or_default().push(RecoveredMessage {
            pid,
            state,
            properties,
            frame,
            exchange,
            routing_key,
            body,
        });
        index.insert(pid, s.live);
    }
    for list in messages.values_mut() {
        list.sort_unstable_by_key(|m| m.pid);
    }
    let recovered = Recovered { report, messages, segments: datas, publishes };
    Ok((recovered, segments, index, max_pid))
}
