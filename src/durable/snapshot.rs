//! The durable topology, as one JSON file replaced atomically on every
//! change: its entries are opaque to the store (the broker writes them in
//! RabbitMQ's definitions format), keyed so a change replaces one entry.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::log::sync_dir;

/// The file's name in the data directory.
pub(crate) const TOPOLOGY_FILE: &str = "topology.json";
/// The version of the topology file's layout.
pub(crate) const TOPOLOGY_FORMAT: u32 = 1;

/// What kind of thing an entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EntryKind {
    Vhost,
    Exchange,
    Queue,
    Binding,
}

/// One entry: its kind, its key (vhost and name, or a binding's ends), the
/// durable queue id for queues, and what the broker wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) kind: EntryKind,
    pub(crate) key: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) queue_id: Option<u64>,
    pub(crate) definition: serde_json::Value,
}

/// The file's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Topology {
    pub(crate) format: u32,
    /// Durable queue ids are never reused: records of a deleted queue
    /// must not be mistaken for a new one's.
    pub(crate) next_queue_id: u64,
    pub(crate) entries: Vec<Entry>,
}

/// The topology in memory, and where it is saved.
#[derive(Debug)]
pub(crate) struct TopologyFile {
    path: PathBuf,
    dir: PathBuf,
    pub(crate) next_queue_id: u64,
    pub(crate) entries: BTreeMap<(EntryKind, Vec<String>), Entry>,
}

impl TopologyFile {
    /// Reads the file in `dir`, or an empty topology if there is none.
    pub(crate) fn load(dir: &Path) -> Result<TopologyFile, String> {
        let path = dir.join(TOPOLOGY_FILE);
        let topology = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Topology>(&bytes).map_err(|e| e.to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Topology { format: TOPOLOGY_FORMAT, next_queue_id: 1, entries: Vec::new() }
            }
            Err(e) => return Err(e.to_string()),
        };
        if topology.format != TOPOLOGY_FORMAT {
            return Err(format!(
                "topology format {} (this build reads format {TOPOLOGY_FORMAT})",
                topology.format
            ));
        }
        let entries = topology.entries.into_iter().map(|e| ((e.kind, e.key.clone()), e)).collect();
        Ok(TopologyFile { path, dir: dir.to_owned(), next_queue_id: topology.next_queue_id.max(1), entries })
    }

    /// Writes the topology to a temporary file, syncs it, and renames it
    /// over the old one: a crash leaves the old file or the new, whole.
    pub(crate) fn save(&self) -> std::io::Result<()> {
        let topology = Topology {
            format: TOPOLOGY_FORMAT,
            next_queue_id: self.next_queue_id,
            entries: self.entries.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&topology).map_err(std::io::Error::other)?;
        let temporary = self.dir.join(format!("{TOPOLOGY_FILE}.tmp"));
        {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, &self.path)?;
        sync_dir(&self.dir)
    }

    /// The durable queue id of queue `key`, if the file names it.
    pub(crate) fn queue_id(&self, key: &[String]) -> Option<u64> {
        self.entries.get(&(EntryKind::Queue, key.to_vec())).and_then(|e| e.queue_id)
    }
}
