//! The decryptor natively: what the page gets for a good log, a wrong key and junk.

use std::path::Path;

use portcullis_cmdlog::{
    CODE_DATA, CODE_REQUEST, OpeningKey, SOURCE_CLIENT, SOURCE_SERVER, SealingKey, encode_packet,
    generate_keypair, sealed_in_memory,
};

use super::*;

fn sealed(packets: &[Vec<u8>]) -> (String, Vec<u8>) {
    let (private, public) = generate_keypair();
    let key = SealingKey::parse(&public, Path::new("k")).unwrap();
    let blocks: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
    (private, sealed_in_memory(&key, &blocks).unwrap())
}

fn split(out: &[u8]) -> (serde_json::Value, String) {
    let text = String::from_utf8(out.to_vec()).unwrap();
    let (about, cast) = text.split_once('\n').unwrap();
    (serde_json::from_str(about).unwrap(), cast.to_string())
}

#[test]
fn a_log_becomes_an_asciicast_with_what_the_target_printed() {
    let (private, log) = sealed(&[
        encode_packet(SOURCE_CLIENT, CODE_REQUEST, 0, b"window-change\x00100x30"),
        encode_packet(SOURCE_CLIENT, CODE_DATA, 10, b"typed secret"),
        encode_packet(
            SOURCE_SERVER,
            CODE_DATA,
            2_500_000,
            b"hello from the target\r\n",
        ),
    ]);
    let (about, cast) = split(&replay(private.as_bytes(), &log).unwrap());
    assert_eq!(about["packets"], 3);
    assert_eq!(about["warning"], serde_json::Value::Null);
    let mut lines = cast.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events[0], serde_json::json!([0.0, "r", "100x30"]));
    assert_eq!(
        events[1],
        serde_json::json!([2.5, "o", "hello from the target\r\n"])
    );
    assert_eq!(events.len(), 2, "the client's keystrokes are not played");
}

#[test]
fn a_wrong_key_or_a_file_that_is_not_a_log_is_a_message() {
    let (_, log) = sealed(&[encode_packet(SOURCE_SERVER, CODE_DATA, 0, b"x")]);
    let (other, _) = generate_keypair();
    let e = replay(other.as_bytes(), &log).unwrap_err();
    assert!(e.contains("wrong key"), "{e}");
    let (private, _) = sealed(&[]);
    let e = replay(private.as_bytes(), b"\x00\x00\x00\x05hello").unwrap_err();
    assert!(e.contains("not a command log"), "{e}");
    let e = replay(b"\xff\xfe", &log).unwrap_err();
    assert!(e.contains("not text"), "{e}");
    let e = replay(b"c2hvcnQ=", &log).unwrap_err();
    assert!(e.contains("32 bytes"), "{e}");
}

#[test]
fn the_exports_zero_the_key_and_report_through_the_output() {
    let (private, log) = sealed(&[encode_packet(SOURCE_SERVER, CODE_DATA, 0, b"out")]);
    INPUT.with_borrow_mut(|input| {
        input.extend_from_slice(private.as_bytes());
        input.extend_from_slice(&log);
    });
    assert_eq!(open_log(private.len()), 0);
    assert!(INPUT.with_borrow(|i| i.is_empty()), "the key is not kept");
    let out = OUTPUT.with_borrow(|o| o.clone());
    assert_eq!(output_len(), out.len());
    let (about, cast) = split(&out);
    assert_eq!(about["packets"], 1);
    assert!(cast.contains("\"out\""), "{cast}");
    release();
    assert_eq!(output_len(), 0);
    // A key length past the input is an error, not a panic.
    input(3);
    assert_eq!(open_log(10), 1);
    let message = String::from_utf8(OUTPUT.with_borrow(|o| o.clone())).unwrap();
    assert!(message.contains("longer than the input"), "{message}");
    // OpeningKey is what the page's key file parses to.
    assert!(OpeningKey::parse(&private, Path::new("k")).is_ok());
}
