//! cargo-fuzz target `resource`: see `nodeless_fuzz::resource` for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_fuzz::resource(data));
