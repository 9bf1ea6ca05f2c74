//! The hasher of the maps on the publish and delivery paths.
//!
//! Every publish looks up an exchange, a queue or a routing key by name, and
//! every manual-ack delivery files and finds its tag: with std's SipHash
//! those lookups took about 8% of a 1→1 run. foldhash is several times
//! faster on short keys. Its per-process random seed keeps some resistance
//! to crafted collisions, which matters little here anyway: names and keys
//! come from the application's own modules, not from the network.

/// The hash state of those maps.
pub(crate) type FastState = foldhash::fast::RandomState;

/// A `std` hash map with [`FastState`].
pub(crate) type FastHashMap<K, V> = std::collections::HashMap<K, V, FastState>;

/// A `std` hash set with [`FastState`].
pub(crate) type FastHashSet<T> = std::collections::HashSet<T, FastState>;

/// A persistent (`imbl`) hash map with [`FastState`]: the broker's
/// snapshot maps, read by every publish.
pub(crate) type FastImblMap<K, V> = imbl::GenericHashMap<K, V, FastState, imbl::shared_ptr::DefaultSharedPtr>;
