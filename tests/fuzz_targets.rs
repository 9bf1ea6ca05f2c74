//! The cargo-fuzz targets (`fuzz/`), run as bounded proptests so CI runs
//! them on a stable toolchain (GUARANTEES.md, G12): random bytes into topic
//! routing (checked against a reference matcher), argument tables and
//! headers, durations, names, users and permission patterns, and a two-thread
//! API sequence. None may panic
//! or hang. `INTEROFFICE_FUZZ_CASES` sets the cases per target (default 2,000);
//! for coverage-guided fuzzing, see `fuzz/README.md`.

#[path = "../fuzz/common/mod.rs"]
mod targets;

use proptest::prelude::*;
use proptest::test_runner::Config;

fn cases() -> u32 {
    std::env::var("INTEROFFICE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..512)
}

proptest! {
    #![proptest_config(Config { cases: cases(), ..Config::default() })]

    #[test]
    fn topic_routing_matches_the_reference(data in bytes()) {
        targets::topic(&data);
    }

    #[test]
    fn arguments_and_headers_never_panic(data in bytes()) {
        targets::arguments(&data);
    }

    #[test]
    fn durations_never_panic(data in bytes()) {
        targets::durations(&data);
    }

    #[test]
    fn names_never_panic(data in bytes()) {
        targets::names(&data);
    }

    #[test]
    fn permissions_and_logins_never_panic(data in bytes()) {
        targets::permissions(&data);
    }

    #[test]
    fn api_sequences_from_two_threads_never_panic(data in bytes()) {
        targets::api_sequence(&data);
    }
}
