//! cargo-fuzz target `body`: see `nodeless_fuzz::body` for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_fuzz::body(data));
