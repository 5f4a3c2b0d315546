//! cargo-fuzz target `protobuf`: see `nodeless_fuzz::protobuf` for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodeless_fuzz::protobuf(data));
