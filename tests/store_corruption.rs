//! Damage to a store: bytes flipped and files cut at random offsets in a
//! copy of a data directory. Opening never panics, reports what it cut
//! off, and recovers every message whose record lies before the damage
//! (GUARANTEES G38). `INTEROFFICE_CORRUPTION_CASES` sets the number of
//! cases (200 by default).

#[path = "support/data_dir.rs"]
mod data_dir;
#[path = "support/rng.rs"]
mod rng;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use interoffice::{Broker, BrokerOptions, DeliveryMode, Message, OpenError, QueueOptions, StoreOptions};

const MESSAGES: usize = 300;

fn options() -> BrokerOptions {
    // Small segments: the messages span several, so damage in one leaves
    // the others whole.
    BrokerOptions {
        store: StoreOptions { segment_bytes: 8 * 1024, ..Default::default() },
        ..Default::default()
    }
}

fn body(i: usize) -> String {
    format!("<m{i:05}>{}", ".".repeat(100))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg") && std::fs::metadata(p).unwrap().len() > 16)
        .collect();
    files.sort();
    files
}

/// Where each message's body ends, per segment file name.
fn body_ends(dir: &Path) -> Vec<(String, Vec<(usize, usize)>)> {
    segments(dir)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            let mut ends = Vec::new();
            for i in 0..MESSAGES {
                let needle = body(i);
                if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle.as_bytes()) {
                    ends.push((i, at + needle.len()));
                }
            }
            (path.file_name().unwrap().to_string_lossy().into_owned(), ends)
        })
        .collect()
}

#[test]
fn damage_at_random_offsets_is_cut_off_and_everything_before_it_recovered() {
    let cases: u64 =
        std::env::var("INTEROFFICE_CORRUPTION_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let original = data_dir::DataDir::new("corruption-original");
    {
        let broker = Broker::open(original.path(), options()).unwrap();
        let conn = broker.connect();
        conn.declare_queue("q", QueueOptions { durable: true, ..Default::default() }).unwrap();
        for i in 0..MESSAGES {
            let msg = Message::new(body(i)).with_delivery_mode(DeliveryMode::Persistent);
            conn.publish("", "q", msg).unwrap();
        }
    }
    let layout = body_ends(original.path());
    assert!(layout.len() >= 3, "the messages should span several segments: {}", layout.len());
    let mut rng = rng::Rng::for_case(0x00c0_ffee);
    for case in 0..cases {
        let copy = data_dir::DataDir::new("corruption-case");
        copy_dir(original.path(), copy.path());
        let (name, ends) = &layout[rng.below(layout.len())];
        let path = copy.path().join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        let offset = rng.below(bytes.len());
        let truncate = rng.chance(40);
        if truncate {
            bytes.truncate(offset);
        } else {
            bytes[offset] ^= 1 << rng.below(8);
        }
        std::fs::write(&path, &bytes).unwrap();
        let what = format!("case {case}: {} {name} at {offset}", if truncate { "cut" } else { "flip" });
        let lost: BTreeSet<usize> = match offset {
            // The magic: the whole segment is unreadable.
            0..8 if !truncate => ends.iter().map(|(i, _)| *i).collect(),
            // Cut inside the header: nothing readable either.
            0..16 if truncate => ends.iter().map(|(i, _)| *i).collect(),
            // The version: refused as a later format (checked below).
            8..12 => BTreeSet::new(),
            // Reserved bytes: not read.
            12..16 => BTreeSet::new(),
            _ => ends.iter().filter(|(_, end)| *end > offset).map(|(i, _)| *i).collect(),
        };
        let broker = match Broker::open(copy.path(), options()) {
            Ok(broker) => broker,
            Err(OpenError::UnsupportedVersion { .. }) if (8..12).contains(&offset) && !truncate => continue,
            Err(e) => panic!("{what}: open failed: {e}"),
        };
        let report = broker.recovery().unwrap();
        // A cut exactly between records cannot be told from a shorter file.
        let damaged = if truncate {
            offset < 16 || (offset > 16 && !ends.iter().any(|(_, end)| *end == offset))
        } else {
            !(12..16).contains(&offset)
        };
        assert_eq!(!report.truncations.is_empty(), damaged, "{what}: {report:?}");
        let conn = broker.connect();
        let mut recovered = Vec::new();
        while let Some(d) = conn.get("q", true).unwrap() {
            let text = String::from_utf8(d.message().body().to_vec()).unwrap();
            recovered.push(text[2..7].parse::<usize>().unwrap());
        }
        let expected: Vec<usize> = (0..MESSAGES).filter(|i| !lost.contains(i)).collect();
        assert_eq!(recovered, expected, "{what}: {report:?}");
    }
}

#[test]
fn a_damaged_topology_file_is_refused_with_a_clear_error() {
    let dir = data_dir::DataDir::new("corruption-topology");
    {
        let broker = Broker::open(dir.path(), options()).unwrap();
        broker.connect().declare_queue("q", QueueOptions { durable: true, ..Default::default() }).unwrap();
    }
    std::fs::write(dir.path().join("topology.json"), b"{ \"format\": 1, \"entr").unwrap();
    match Broker::open(dir.path(), options()) {
        Err(e @ OpenError::Topology { .. }) => assert!(e.to_string().contains("topology file"), "{e}"),
        other => panic!("expected a topology error, got {:?}", other.map(|_| ())),
    }
}
