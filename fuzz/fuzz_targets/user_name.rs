//! Fuzz target: see `portcullis::fuzzing::user_name`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        portcullis::fuzzing::user_name(text);
    }
});
