//! Fuzz target: any bytes given to the pgoutput and replication decoders must decode or fail
//! with an error, never panic or allocate without bound.
//!
//! Run with `cargo +nightly fuzz run pgoutput` from the repository root (cargo-fuzz needs a
//! nightly toolchain); seed the corpus from crates/pgoutput/tests/fixtures/pg15.hex.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let b = Bytes::copy_from_slice(data);
    let _ = collect_pgoutput::decode(&b, false);
    let _ = collect_pgoutput::decode(&b, true);
    let _ = collect_pgoutput::replication::parse_server_message(&b);
    let mut state = collect_pgoutput::StreamState::default();
    for chunk in data.split(|&c| c == 0xff) {
        let _ = state.decode(&Bytes::copy_from_slice(chunk));
    }
});
