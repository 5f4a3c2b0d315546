//! cargo-fuzz target `apply`: see `nodeless_fuzz::apply` for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_fuzz::apply(data));
