//! The fuzz corpus (`fuzz/corpus/TARGET/`) replayed through the entry points the fuzz
//! targets call (`portcullis::fuzzing`), in the ordinary test build: every input the
//! fuzzer kept because it reached new code must still pass. `scripts/fuzz` fuzzes for
//! real (a libFuzzer build of its own); this keeps the corpus's coverage in every
//! `cargo test` at no extra build.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

/// Runs `each` on every input of the target's corpus; the corpus must not be empty.
fn replay(target: &str, each: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| each(&input)));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        count += 1;
    }
    assert!(count > 0, "{} is empty", dir.display());
}

fn text(each: fn(&str)) -> impl Fn(&[u8]) {
    move |bytes| {
        if let Ok(text) = std::str::from_utf8(bytes) {
            each(text);
        }
    }
}

#[test]
fn user_names() {
    replay("user_name", text(portcullis::fuzzing::user_name));
}

#[test]
fn known_targets_files() {
    replay("known_targets", text(portcullis::fuzzing::known_targets));
}

#[test]
fn configuration_files() {
    replay("config", text(portcullis::fuzzing::config));
}

#[test]
fn users_files() {
    replay("users", text(portcullis::fuzzing::users));
}

#[test]
fn command_logs() {
    replay("command_log", portcullis::fuzzing::command_log);
}

#[test]
fn connection_requests() {
    use portcullis_wire::ConnectionRequest;
    replay("request_codec", |bytes| {
        if let Ok(request) = ConnectionRequest::decode(bytes) {
            assert_eq!(ConnectionRequest::decode(&request.encode()), Ok(request));
        }
    });
}
