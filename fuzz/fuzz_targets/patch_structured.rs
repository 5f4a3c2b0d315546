//! cargo-fuzz target `patch_structured`: see `nodeless_fuzz::patch_structured` for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_fuzz::patch_structured(data));
