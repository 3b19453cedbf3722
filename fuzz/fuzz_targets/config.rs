#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_agent::fuzzing::config(data));
