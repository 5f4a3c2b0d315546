//! cargo-fuzz target `quantity`: see `nodeless_fuzz::quantity` for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_fuzz::quantity(data));
