//! cargo-fuzz target `selector`: see `nodeless_fuzz::selector` for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_fuzz::selector(data));
