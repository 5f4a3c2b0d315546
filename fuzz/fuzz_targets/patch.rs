//! cargo-fuzz target `patch`: see `nodeless_fuzz::patch` for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_fuzz::patch(data));
