#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_edge::fuzzing::client_hello(data));
