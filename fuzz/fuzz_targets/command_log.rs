//! Fuzz target: see `portcullis::fuzzing::command_log`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::command_log(data);
});
