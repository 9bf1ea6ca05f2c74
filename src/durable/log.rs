//! The segment log: numbered files of frames, appended at the newest,
//! deleted from the oldest.
//!
//! Every record goes to the active segment. A segment that reaches the
//! configured size is sealed (synced) and a new one begun. A segment is
//! deleted once every message published in it is gone — and only the
//! oldest, so that the removal records in a newer segment never outlive the
//! messages they remove. A sealed oldest segment that is mostly dead has
//! its live messages copied forward (with their current state) first; so
//! the log holds what is queued plus at most about as much again, plus the
//! active segment.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::hash::FastHashMap;

use super::record::{self, Content, Damage, MessageState, Placement, Record};

/// The first bytes of every segment: a name and the format version.
const MAGIC: &[u8; 8] = b"IOFSEG\0\0";
/// The record format this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Magic, version, reserved.
pub(crate) const SEGMENT_HEADER: usize = 16;

pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.seg"))
}

/// The segment numbers in `dir`, oldest first.
pub(crate) fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".seg")
            && stem.len() == 16
            && let Ok(n) = stem.parse::<u64>()
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

fn header() -> [u8; SEGMENT_HEADER] {
    let mut h = [0; SEGMENT_HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// What a segment's header says.
pub(crate) enum HeaderCheck {
    Ok,
    /// Shorter than a header, or not one of ours: the segment holds nothing
    /// readable.
    Damaged,
    /// Written by a later format.
    Version(u32),
}

pub(crate) fn check_header(data: &[u8]) -> HeaderCheck {
    let Some(h) = data.get(..SEGMENT_HEADER) else { return HeaderCheck::Damaged };
    if &h[..8] != MAGIC {
        return HeaderCheck::Damaged;
    }
    match u32::from_le_bytes([h[8], h[9], h[10], h[11]]) {
        FORMAT_VERSION => HeaderCheck::Ok,
        other => HeaderCheck::Version(other),
    }
}

/// Reads the frames of one segment's bytes, from after its header; stops
/// at the first damage and says where.
pub(crate) fn frames(data: &[u8], mut visit: impl FnMut(usize, usize, Record)) -> Option<(usize, Damage)> {
    let mut at = SEGMENT_HEADER;
    while at < data.len() {
        match record::decode(&data[at..]) {
            Ok((record, len)) => {
                visit(at, len, record);
                at += len;
            }
            Err(damage) => return Some((at, damage)),
        }
    }
    None
}

/// A live message's place in the log and its current state.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) queue: u64,
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) state: MessageState,
    /// Deliveries recorded since its Publish record was written.
    pub(crate) marks: u32,
}

impl Live {
    /// The state a restart would give it: each delivery not yet settled
    /// comes back as a return.
    pub(crate) fn restart_state(&self) -> MessageState {
        MessageState {
            placement: self.state.placement,
            deliveries: self.state.deliveries.saturating_add(self.marks),
            redelivered: self.state.redelivered || self.marks > 0,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SegmentStats {
    /// Bytes in the file (header included).
    pub(crate) total: u64,
    /// Bytes of its Publish records still live.
    pub(crate) live: u64,
}

/// The appending side of the log, behind the store's lock.
#[derive(Debug)]
pub(crate) struct Writer {
    dir: PathBuf,
    file: File,
    /// A second handle on the active segment, synced without the lock.
    sync_handle: Arc<File>,
    number: u64,
    /// Frames not yet written to the file (only removals wait here).
    buf: Vec<u8>,
    /// Bytes written to the active file.
    file_len: u64,
    /// Log sequence numbers: bytes of frames accepted and written, ever.
    pub(crate) appended: u64,
    pub(crate) written: u64,
    pub(crate) segments: BTreeMap<u64, SegmentStats>,
    pub(crate) index: FastHashMap<u64, Live>,
    pub(crate) next_pid: u64,
    segment_bytes: u64,
    /// Removals waiting in `buf`, written with the next write or sync.
    scratch: Vec<u8>,
    pub(crate) compacted_segments: u64,
    pub(crate) copied_records: u64,
    /// The last failure to seal or compact, if any.
    pub(crate) last_error: Option<String>,
    /// Read handles on segments, opened when a paged-out body is read.
    readers: FastHashMap<u64, File>,
    pub(crate) paged_in: u64,
    pub(crate) unreadable: u64,
}

/// Buffered removals are written once this many bytes wait.
const REMOVAL_BUFFER: usize = 32 * 1024;

impl Writer {
    /// Starts segment `number` in `dir` (a new, empty file).
    pub(crate) fn create(
        dir: &Path,
        number: u64,
        segments: BTreeMap<u64, SegmentStats>,
        index: FastHashMap<u64, Live>,
        next_pid: u64,
        segment_bytes: u64,
    ) -> std::io::Result<Writer> {
        let (file, sync_handle) = new_segment(dir, number)?;
        let mut segments = segments;
        segments.insert(number, SegmentStats { total: SEGMENT_HEADER as u64, live: 0 });
        Ok(Writer {
            dir: dir.to_owned(),
            file,
            sync_handle,
            number,
            buf: Vec::with_capacity(REMOVAL_BUFFER),
            file_len: SEGMENT_HEADER as u64,
            appended: 0,
            written: 0,
            segments,
            index,
            next_pid,
            segment_bytes: segment_bytes.max(4096),
            scratch: Vec::new(),
            compacted_segments: 0,
            copied_records: 0,
            last_error: None,
            readers: FastHashMap::default(),
            paged_in: 0,
            unreadable: 0,
        })
    }

    pub(crate) fn sync_handle(&self) -> Arc<File> {
        Arc::clone(&self.sync_handle)
    }

    /// Appends a Publish record for a new message and writes it through.
    pub(crate) fn publish(
        &mut self,
        queue: u64,
        state: MessageState,
        content: &Content<'_>,
    ) -> std::io::Result<(u64, u64)> {
        let pid = self.next_pid;
        let start = self.buf.len();
        let len = record::encode_publish(&mut self.buf, queue, pid, state, content);
        let offset = self.file_len + start as u64;
        self.write_through()?;
        self.next_pid += 1;
        let segment = self.number;
        self.live_added(segment, len as u64);
        self.index.insert(pid, Live { queue, segment, offset, len: len as u32, state, marks: 0 });
        let lsn = self.appended;
        self.maybe_roll();
        Ok((pid, lsn))
    }

    /// Records a move; written through.
    pub(crate) fn place(&mut self, queue: u64, pid: u64, placement: Placement) -> std::io::Result<u64> {
        record::encode_place(&mut self.buf, queue, pid, placement);
        self.write_through()?;
        if let Some(live) = self.index.get_mut(&pid) {
            live.state.placement = placement;
        }
        let lsn = self.appended;
        self.maybe_roll();
        Ok(lsn)
    }

    /// Records a delivery; written through, so that a crash after the
    /// application saw the message brings it back flagged redelivered.
    pub(crate) fn delivered(&mut self, queue: u64, pid: u64) -> std::io::Result<()> {
        record::encode_delivered(&mut self.buf, queue, pid);
        self.write_through()?;
        if let Some(live) = self.index.get_mut(&pid) {
            live.marks = live.marks.saturating_add(1);
        }
        self.maybe_roll();
        Ok(())
    }

    /// Takes back a delivery that never reached the application; buffered
    /// like a removal (lost in a crash, the message comes back flagged
    /// redelivered: the cautious side).
    pub(crate) fn undelivered(&mut self, queue: u64, pid: u64) -> std::io::Result<()> {
        let Some(live) = self.index.get_mut(&pid) else { return Ok(()) };
        live.marks = live.marks.saturating_sub(1);
        record::encode_undelivered(&mut self.buf, queue, pid);
        if self.buf.len() >= REMOVAL_BUFFER {
            self.write_through()?;
            self.maybe_roll();
        }
        Ok(())
    }

    /// Records a removal; buffered (a crash that loses it redelivers the
    /// message: at least once).
    pub(crate) fn remove(&mut self, queue: u64, pid: u64) -> std::io::Result<()> {
        let Some(live) = self.index.remove(&pid) else { return Ok(()) };
        record::encode_remove(&mut self.buf, queue, pid);
        self.live_removed(live.segment, u64::from(live.len));
        if self.buf.len() >= REMOVAL_BUFFER {
            self.write_through()?;
            self.maybe_roll();
        } else {
            self.delete_dead_oldest();
        }
        Ok(())
    }

    /// Forgets every message of a deleted queue (no record: the topology no
    /// longer names the queue, so a restart drops its records).
    pub(crate) fn forget_queue(&mut self, queue: u64) {
        let gone: Vec<(u64, u64, u32)> = self
            .index
            .iter()
            .filter(|(_, live)| live.queue == queue)
            .map(|(pid, live)| (*pid, live.segment, live.len))
            .collect();
        for (pid, segment, len) in gone {
            self.index.remove(&pid);
            self.live_removed(segment, u64::from(len));
        }
        self.delete_dead_oldest();
    }

    fn live_added(&mut self, segment: u64, len: u64) {
        if let Some(stats) = self.segments.get_mut(&segment) {
            stats.live += len;
        }
    }

    fn live_removed(&mut self, segment: u64, len: u64) {
        if let Some(stats) = self.segments.get_mut(&segment) {
            stats.live = stats.live.saturating_sub(len);
        }
    }

    /// Writes what waits in the buffer; on failure truncates the file back
    /// to its last whole frame and drops the buffer (the caller reports
    /// the error; buffered removals are lost, which redelivers).
    pub(crate) fn write_through(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                let n = self.buf.len() as u64;
                self.file_len += n;
                if let Some(stats) = self.segments.get_mut(&self.number) {
                    stats.total += n;
                }
                self.appended += n;
                self.written = self.appended;
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                self.buf.clear();
                // A partial write leaves a torn frame: cut it off, so the
                // next frame starts where the reader expects one.
                let _ = self.file.set_len(self.file_len);
                Err(e)
            }
        }
    }

    /// Seals the active segment if it is full and starts the next; then
    /// compacts from the oldest end. A failure here fails no record (what
    /// was appended is written): it is kept for the figures, and the roll
    /// is tried again at the next append.
    fn maybe_roll(&mut self) {
        if self.file_len < self.segment_bytes {
            return;
        }
        if let Err(e) = self.roll() {
            self.last_error = Some(e.to_string());
        }
    }

    fn roll(&mut self) -> std::io::Result<()> {
        self.write_through()?;
        self.file.sync_data()?;
        let number = self.number + 1;
        let (file, sync_handle) = new_segment(&self.dir, number)?;
        self.file = file;
        self.sync_handle = sync_handle;
        self.number = number;
        self.file_len = SEGMENT_HEADER as u64;
        self.segments.insert(number, SegmentStats { total: SEGMENT_HEADER as u64, live: 0 });
        self.compact()
    }

    /// Deletes the oldest sealed segments while nothing in them is live.
    fn delete_dead_oldest(&mut self) {
        while let Some((&oldest, stats)) = self.segments.first_key_value() {
            if oldest == self.number || stats.live > 0 {
                return;
            }
            self.readers.remove(&oldest);
            if std::fs::remove_file(segment_path(&self.dir, oldest)).is_err() {
                return;
            }
            self.segments.remove(&oldest);
            self.compacted_segments += 1;
        }
    }

    /// Compacts from the oldest end: dead segments are deleted; a sealed
    /// oldest segment less than half live has its live messages copied to
    /// the active segment (synced) and is deleted.
    pub(crate) fn compact(&mut self) -> std::io::Result<()> {
        loop {
            self.delete_dead_oldest();
            let Some((&oldest, stats)) = self.segments.first_key_value() else { return Ok(()) };
            if oldest == self.number || stats.live * 2 >= stats.total {
                return Ok(());
            }
            self.copy_forward(oldest)?;
            // The copies must be on disk before their originals go.
            self.write_through()?;
            self.file.sync_data()?;
            if let Some(stats) = self.segments.get_mut(&oldest) {
                stats.live = 0;
            }
        }
    }

    /// Copies segment `number`'s live messages to the active segment, each
    /// as a Publish record with its current state.
    fn copy_forward(&mut self, number: u64) -> std::io::Result<()> {
        let data = std::fs::read(segment_path(&self.dir, number))?;
        let mut pids: Vec<(u64, u64)> =
            self.index.iter().filter(|(_, l)| l.segment == number).map(|(pid, l)| (l.offset, *pid)).collect();
        pids.sort_unstable();
        for (offset, pid) in pids {
            let Some(live) = self.index.get(&pid).cloned() else { continue };
            let at = offset as usize;
            let frame = data.get(at..at + live.len as usize);
            let Some(Ok((Record::Publish { exchange, routing_key, properties, body, .. }, _))) =
                frame.map(record::decode)
            else {
                // Unreadable now (damaged on disk since it was written):
                // nothing to copy; the message lives on in memory.
                continue;
            };
            let frame = frame.unwrap_or_default();
            let text = |r: std::ops::Range<usize>| std::str::from_utf8(&frame[r]).unwrap_or_default();
            self.scratch.clear();
            let state = live.restart_state();
            let content = Content {
                exchange: text(exchange),
                routing_key: text(routing_key),
                properties: &frame[properties],
                body: &frame[body],
            };
            let len = record::encode_publish(&mut self.scratch, live.queue, pid, state, &content);
            let new_offset = self.file_len + self.buf.len() as u64;
            self.buf.extend_from_slice(&self.scratch);
            let segment = self.number;
            self.live_added(segment, len as u64);
            self.index.insert(
                pid,
                Live { queue: live.queue, segment, offset: new_offset, len: len as u32, state, marks: 0 },
            );
            self.copied_records += 1;
            if self.buf.len() >= REMOVAL_BUFFER {
                self.write_through()?;
            }
        }
        Ok(())
    }

    /// Reads live message `pid`'s body from its segment (a paged-out
    /// message being delivered), checking its record's CRC. Under the
    /// store's lock, so compaction cannot move it meanwhile.
    pub(crate) fn read_body(&mut self, pid: u64) -> std::io::Result<Bytes> {
        use std::io::{Read, Seek, SeekFrom};
        let live = self.index.get(&pid).ok_or_else(|| std::io::Error::other("not in the store"))?;
        let (segment, offset, len) = (live.segment, live.offset, live.len as usize);
        // A frame may still wait in the buffer only during compaction,
        // which flushes before it lets go of the lock.
        self.write_through()?;
        let file = match self.readers.entry(segment) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(File::open(segment_path(&self.dir, segment))?)
            }
        };
        let mut frame = vec![0; len];
        let mut reader: &File = file;
        reader.seek(SeekFrom::Start(offset))?;
        reader.read_exact(&mut frame)?;
        match record::decode(&frame) {
            Ok((Record::Publish { body, .. }, _)) => Ok(Bytes::from(frame).slice(body)),
            Ok(_) => Err(std::io::Error::other("not a publish record")),
            Err(damage) => Err(std::io::Error::other(format!("record damaged on disk: {damage:?}"))),
        }
    }

    /// Bytes of all segment files.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.total).sum::<u64>() + self.buf.len() as u64
    }
}

/// Creates a segment file with its header, and makes its name durable.
fn new_segment(dir: &Path, number: u64) -> std::io::Result<(File, Arc<File>)> {
    let path = segment_path(dir, number);
    let mut file = OpenOptions::new().create_new(true).append(true).open(&path)?;
    file.write_all(&header())?;
    file.sync_data()?;
    sync_dir(dir)?;
    let sync_handle = Arc::new(file.try_clone()?);
    Ok((file, sync_handle))
}

/// Syncs a directory, so a file created or renamed in it survives a power
/// cut.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A segment's bytes, shared: recovered message bodies are slices of it.
pub(crate) fn read_segment(dir: &Path, number: u64) -> std::io::Result<Bytes> {
    Ok(Bytes::from(std::fs::read(segment_path(dir, number))?))
}
