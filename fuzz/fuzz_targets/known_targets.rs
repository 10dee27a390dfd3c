//! Fuzz target: see `portcullis::fuzzing::known_targets`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        portcullis::fuzzing::known_targets(text);
    }
});
