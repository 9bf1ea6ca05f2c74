//! The layers of ARCHITECTURE.md ("Layering"), checked on the source: a
//! lower module never names a higher one (outside comments and its unit
//! tests). A lower layer that needs something of a higher one asks through
//! a trait the higher one implements.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Top-level module → the top-level modules its code names (`crate::x`).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src")).unwrap();
            let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
            let module = first.trim_end_matches(".rs").to_owned();
            let text = fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let names = graph.entry(module.clone()).or_default();
            for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let rest = &line[at + "crate::".len()..];
                    let name: String =
                        rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    if !name.is_empty() && name != module {
                        names.insert(name);
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn lower_layers_never_name_higher_ones() {
    let graph = imports();
    let forbidden: &[(&str, &[&str])] = &[
        ("message", &["queue", "vhost", "broker", "connection", "access", "core"]),
        ("death", &["queue", "dead_letter", "observe", "vhost", "broker", "connection"]),
        ("observe", &["queue", "dead_letter", "vhost", "broker", "connection", "access"]),
        ("queue", &["vhost", "broker", "connection", "access", "rpc", "worker", "core"]),
        ("consumer", &["vhost", "broker", "connection", "access", "rpc", "worker"]),
        ("delivery", &["vhost", "broker", "connection", "access", "rpc", "worker"]),
        ("dead_letter", &["vhost", "broker", "connection", "access"]),
        ("exchange", &["vhost", "broker", "connection", "access", "overview"]),
        ("core", &["vhost", "broker", "connection", "access", "worker", "rpc"]),
        ("access", &["vhost", "broker", "connection", "rpc", "worker", "core"]),
        ("vhost", &["broker", "connection", "rpc", "worker", "typed", "recorder", "definitions"]),
        ("rpc", &["broker", "connection", "worker"]),
        ("codec", &["connection", "broker", "vhost", "rpc", "delivery"]),
        ("conversation", &["broker", "connection", "vhost", "core"]),
        ("recorder", &["broker", "connection", "vhost"]),
        ("explain", &["recorder", "broker", "vhost"]),
        ("lint", &["recorder", "broker", "vhost"]),
        ("settle", &["broker", "vhost", "connection"]),
        ("durable", &["queue", "vhost", "broker", "connection", "access", "exchange", "core", "definitions"]),
        // A plain data structure under the queue engine: it knows no message.
        ("inbox", &["queue", "consumer", "message", "vhost", "broker", "connection", "core"]),
    ];
    let mut violations = Vec::new();
    for (module, higher) in forbidden {
        let names = graph.get(*module).unwrap_or_else(|| panic!("no module '{module}' in src/"));
        for name in *higher {
            if names.contains(*name) {
                violations.push(format!("{module} names {name}"));
            }
        }
    }
    assert!(violations.is_empty(), "layering broken:\n{}", violations.join("\n"));
}

#[test]
fn the_check_reads_the_source() {
    // A check that sees nothing would pass everything.
    let graph = imports();
    assert!(graph["connection"].contains("vhost"));
    assert!(graph["vhost"].contains("queue"));
    assert!(graph["broker"].contains("access"));
}
