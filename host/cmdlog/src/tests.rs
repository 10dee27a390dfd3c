//! The format's round trips, damage and recovery, and the exports.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::format::{be_u32, encode_packet_into};
use super::ring;
use super::writer::{HEADER_RESERVE, side_paths};
use super::*;

/// A decrypted log held in memory: its header, its packets, and what was wrong
/// past them, if anything.
#[derive(Debug)]
struct Decrypted {
    meta: Metadata,
    packets: Vec<Packet>,
    warning: Option<String>,
}

/// The whole log through [`LogReader`], in memory.
fn decrypt(bytes: &[u8], key: &OpeningKey) -> Result<Decrypted, CmdLogError> {
    let mut r = LogReader::new(bytes, key)?;
    let mut packets = Vec::new();
    while let Some(p) = r.next_packet()? {
        packets.push(p);
    }
    Ok(Decrypted {
        meta: r.meta.clone(),
        packets,
        warning: r.warning,
    })
}

fn unzip(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut zip = zip::ZipArchive::new(File::open(path).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).unwrap();
            (f.name().to_string(), bytes)
        })
        .collect()
}

fn keys(dir: &Path) -> (SealingKey, OpeningKey) {
    let public = keygen(&dir.join("sshkey")).unwrap();
    (
        SealingKey::read(&public).unwrap(),
        OpeningKey::read(&dir.join("sshkey")).unwrap(),
    )
}

/// A fresh directory with keys, and a log named `name` being written in it.
fn started(name: &str) -> (tempfile::TempDir, OpeningKey, PathBuf, Writer) {
    let d = tempfile::tempdir().unwrap();
    let (seal, open) = keys(d.path());
    let path = d.path().join(name);
    let w = Writer::create(&path, &seal).unwrap();
    (d, open, path, w)
}

#[test]
fn key_files_are_44_base64_characters_without_newline() {
    let d = tempfile::tempdir().unwrap();
    keygen(&d.path().join("sshkey")).unwrap();
    for name in ["sshkey", "sshkey.pub"] {
        let text = fs::read_to_string(d.path().join(name)).unwrap();
        assert_eq!(text.len(), 44, "{name}");
        assert!(!text.ends_with('\n'));
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(d.path().join("sshkey"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(
        keygen(&d.path().join("sshkey")).is_err(),
        "never overwrites"
    );
}

#[test]
fn a_log_round_trips_with_pty_and_exit_data() {
    let (d, open, path, mut w) = started("logs/s1-c0.sshlog");
    w.set_pty(PtyMeta {
        term: Some("xterm".into()),
        width: 80,
        height: 24,
        modes: vec![("ECHO".into(), 1)],
    })
    .unwrap();
    w.packet(SOURCE_CLIENT, CODE_REQUEST, b"shell\0").unwrap();
    w.packet(SOURCE_CLIENT, CODE_DATA, b"ls\r").unwrap();
    w.packet(SOURCE_SERVER, CODE_DATA, b"file1\r\n").unwrap();
    w.packet(SOURCE_SERVER, CODE_DATA, b"").unwrap();
    let exit = ExitData {
        timestamp: 1,
        status: Some(0),
        ..Default::default()
    };
    w.finish(Some(exit.clone())).unwrap();
    assert!(!side_paths(&path).0.exists() && !side_paths(&path).1.exists());
    let got = decrypt(&fs::read(&path).unwrap(), &open).unwrap();
    assert!(got.warning.is_none());
    assert_eq!(got.packets.len(), 3, "empty data is never sealed");
    assert_eq!(got.meta.exit_data, Some(exit));
    let zip = d.path().join("out.zip");
    let bytes = fs::read(&path).unwrap();
    let done = write_zip(|| LogReader::new(&bytes[..], &open), &zip).unwrap();
    assert_eq!(done.packets, 3);
    let files = unzip(&zip);
    let term = String::from_utf8(files["term_data.txt"].clone()).unwrap();
    let requests = String::from_utf8(files["requests.txt"].clone()).unwrap();
    let (secs, rest) = requests.split_once(' ').unwrap();
    assert!(
        secs.parse::<f64>().is_ok() && rest == "shell \n",
        "{requests}"
    );
    let times = String::from_utf8(files["term_times.txt"].clone()).unwrap();
    assert!(
        times.ends_with(" 7\n") && times.lines().count() == 1,
        "{times}"
    );
    assert!(
        term.starts_with("Session started on ") && term.contains("TERM=\"xterm\" COLUMNS=\"80\""),
        "{term}"
    );
    assert!(term.contains("file1") && !term.contains("ls\r"), "{term}");
    assert!(term.contains("COMMAND_EXIT_CODE=\"0\""));
    // The header was written in place, in the room reserved for it.
    let bytes = fs::read(&path).unwrap();
    assert_eq!(be_u32(&bytes, 0), Some(HEADER_RESERVE as usize - 4));
}

#[test]
fn a_header_too_big_for_its_room_is_copied_into_a_new_file() {
    let (_d, open, path, mut w) = started("big.sshlog");
    w.packet(SOURCE_SERVER, CODE_DATA, b"payload").unwrap();
    let exit = ExitData {
        error_msg: Some("x".repeat(5000)),
        ..Default::default()
    };
    w.finish(Some(exit.clone())).unwrap();
    let bytes = fs::read(&path).unwrap();
    assert!(be_u32(&bytes, 0).unwrap() > HEADER_RESERVE as usize);
    let got = decrypt(&bytes, &open).unwrap();
    assert!(got.warning.is_none());
    assert_eq!(got.packets[0].data, b"payload");
    assert_eq!(got.meta.exit_data, Some(exit));
    assert!(!side_paths(&path).0.exists() && !side_paths(&path).1.exists());
}

#[test]
fn leftovers_from_before_the_header_room_are_recovered_too() {
    let (d, open, path, mut w) = started("old.sshlog");
    w.packet(SOURCE_SERVER, CODE_DATA, b"old layout").unwrap();
    std::mem::forget(w);
    // Rewrite the side files as a proxy without the header room left them.
    let (partial, meta_path) = side_paths(&path);
    let blocks = fs::read(&partial).unwrap()[HEADER_RESERVE as usize..].to_vec();
    fs::write(&partial, blocks).unwrap();
    let mut side: serde_json::Value =
        serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
    side.as_object_mut().unwrap().remove("header_reserve");
    fs::write(&meta_path, side.to_string()).unwrap();
    assert_eq!(recover(d.path()).unwrap(), vec![path.clone()]);
    let got = decrypt(&fs::read(&path).unwrap(), &open).unwrap();
    assert_eq!(got.packets[0].data, b"old layout");
}

#[test]
fn a_wrong_key_and_a_non_log_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let (seal, _) = keys(d.path());
    let other = tempfile::tempdir().unwrap();
    let (_, wrong) = keys(other.path());
    let path = d.path().join("x.sshlog");
    let mut w = Writer::create(&path, &seal).unwrap();
    w.packet(SOURCE_SERVER, CODE_DATA, b"secret").unwrap();
    w.finish(None).unwrap();
    let err = decrypt(&fs::read(&path).unwrap(), &wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong key"), "{err}");
    let err = decrypt(b"hello world, not a log", &wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a command log"), "{err}");
}

fn three_block_log(dir: &Path) -> (Vec<u8>, OpeningKey, Vec<usize>) {
    let (seal, open) = keys(dir);
    let path = dir.join("t.sshlog");
    let mut w = Writer::create(&path, &seal).unwrap();
    for chunk in [&b"one"[..], b"two", b"three"] {
        w.packet(SOURCE_SERVER, CODE_DATA, chunk).unwrap();
    }
    w.finish(None).unwrap();
    let bytes = fs::read(&path).unwrap();
    // Block boundaries, found by walking the framing.
    let m = u32::from_be_bytes(bytes[0..4].try_into().unwrap()) as usize;
    let mut at = 4 + m;
    let mut ends = vec![];
    while at < bytes.len() {
        at += 4 + u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        ends.push(at);
    }
    (bytes, open, ends)
}

#[test]
fn truncation_at_a_block_boundary_and_mid_block_keeps_what_came_before() {
    let d = tempfile::tempdir().unwrap();
    let (bytes, open, ends) = three_block_log(d.path());
    assert_eq!(ends.len(), 3);
    let at_boundary = decrypt(&bytes[..ends[1]], &open).unwrap();
    assert_eq!(at_boundary.packets.len(), 2);
    assert!(
        at_boundary.warning.is_none(),
        "a boundary cut looks like a shorter log"
    );
    let mid = decrypt(&bytes[..ends[1] + 7], &open).unwrap();
    assert_eq!(mid.packets.len(), 2);
    assert!(
        mid.warning.as_deref().unwrap().contains("truncated"),
        "{:?}",
        mid.warning
    );
}

#[test]
fn a_corrupt_block_keeps_the_blocks_before_it() {
    let d = tempfile::tempdir().unwrap();
    let (mut bytes, open, ends) = three_block_log(d.path());
    bytes[ends[1] + 6] ^= 0xff;
    let got = decrypt(&bytes, &open).unwrap();
    assert_eq!(got.packets.len(), 2);
    assert!(
        got.warning
            .as_deref()
            .unwrap()
            .contains("block 3 is corrupt"),
        "{:?}",
        got.warning
    );
}

#[test]
fn recovery_finalises_leftovers_and_keeps_complete_blocks() {
    let (d, open, path, mut w) = started("crash.sshlog");
    w.packet(SOURCE_SERVER, CODE_DATA, b"before the crash")
        .unwrap();
    w.flush().unwrap();
    std::mem::forget(w); // the proxy dies here
    // A torn block at the end.
    let mut f = OpenOptions::new()
        .append(true)
        .open(side_paths(&path).0)
        .unwrap();
    f.write_all(&[0, 0, 0, 50, 1, 2, 3]).unwrap();
    let done = recover(d.path()).unwrap();
    assert_eq!(done, vec![path.clone()]);
    let got = decrypt(&fs::read(&path).unwrap(), &open).unwrap();
    assert_eq!(got.packets[0].data, b"before the crash");
    assert!(got.meta.exit_data.is_none());
}

#[test]
fn a_packet_split_across_blocks_reads_whole() {
    // Our writer seals whole packets, but a reader must not depend on it.
    let (_d, open, path, mut w) = started("split.sshlog");
    w.packet(SOURCE_SERVER, CODE_DATA, b"first").unwrap();
    let mut packet = Vec::new();
    encode_packet_into(&mut packet, SOURCE_SERVER, CODE_DATA, 7, b"split in two");
    for half in [&packet[..9], &packet[9..]] {
        let sealed = w.ctx.seal(half, &[]).unwrap();
        w.blocks
            .write_all(&(sealed.len() as u32).to_be_bytes())
            .unwrap();
        w.blocks.write_all(&sealed).unwrap();
        w.spooled += 4 + sealed.len() as u64;
    }
    w.finish(None).unwrap();
    let got = decrypt(&fs::read(&path).unwrap(), &open).unwrap();
    assert!(got.warning.is_none(), "{:?}", got.warning);
    let data: Vec<&[u8]> = got.packets.iter().map(|p| &p.data[..]).collect();
    assert_eq!(data, [&b"first"[..], b"split in two"]);
}

#[test]
fn a_long_log_is_read_with_one_block_in_memory() {
    let (d, open, path, mut w) = started("long.sshlog");
    for i in 0..2000u32 {
        let source = if i % 2 == 0 {
            SOURCE_CLIENT
        } else {
            SOURCE_SERVER
        };
        w.packet(source, CODE_DATA, &[i as u8; 1000]).unwrap();
    }
    w.finish(None).unwrap();
    let file = File::open(&path).unwrap();
    let mut r = LogReader::new(std::io::BufReader::new(file), &open).unwrap();
    let mut n = 0;
    while let Some(p) = r.next_packet().unwrap() {
        assert_eq!(p.data, vec![n as u8; 1000]);
        n += 1;
        assert!(
            r.plain.capacity() < 4096 && r.sealed.capacity() < 4096,
            "buffers grow to a block, not to the log"
        );
    }
    assert_eq!(n, 2000);
    assert_eq!(r.consumed(), fs::metadata(&path).unwrap().len());
    // Both zip files stream from their own pass.
    let zip = d.path().join("long.zip");
    let open_file = || LogReader::new(File::open(&path).unwrap(), &open);
    let done = write_zip(open_file, &zip).unwrap();
    assert_eq!(done.packets, 2000);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&zip).unwrap().permissions().mode() & 0o777,
        0o600,
        "the plaintext is its owner's only"
    );
    let files = unzip(&zip);
    assert_eq!(files["data_from_client.txt"].len(), 1000 * 1000);
    assert_eq!(files["data_from_server.txt"][..1000], [1u8; 1000]);
    assert!(!files.contains_key("requests.txt"));
}

#[test]
fn an_export_with_the_wrong_key_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (bytes, _, _) = three_block_log(d.path());
    let other = tempfile::tempdir().unwrap();
    let (_, wrong) = keys(other.path());
    let zip = d.path().join("never.zip");
    let err = write_zip(|| LogReader::new(&bytes[..], &wrong), &zip).unwrap_err();
    assert!(err.to_string().contains("wrong key"), "{err}");
    assert!(!zip.exists());
}

#[test]
fn asciicast_has_output_and_window_changes_only() {
    let (d, open, path, mut w) = started("cast.sshlog");
    w.packet(SOURCE_CLIENT, CODE_DATA, b"typed").unwrap();
    w.packet(SOURCE_SERVER, CODE_DATA, b"shown").unwrap();
    w.packet(SOURCE_CLIENT, CODE_REQUEST, b"window-change\x00100x30")
        .unwrap();
    w.finish(None).unwrap();
    let cast = d.path().join("out.cast");
    let bytes = fs::read(&path).unwrap();
    let done = write_asciicast(LogReader::new(&bytes[..], &open).unwrap(), &cast).unwrap();
    assert_eq!(done.packets, 3);
    let text = fs::read_to_string(&cast).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["version"], 2);
    assert_eq!(
        (lines[1][1].clone(), lines[1][2].clone()),
        ("o".into(), "shown".into())
    );
    assert_eq!(
        (lines[2][1].clone(), lines[2][2].clone()),
        ("r".into(), "100x30".into())
    );
}

#[test]
fn a_zero_sized_pty_casts_at_the_first_window_size_or_80x24() {
    let cast_of = |resize: bool| {
        let (d, open, path, mut w) = started("zero.sshlog");
        // What OpenSSH asks for with `ssh -tt` and no terminal.
        w.set_pty(PtyMeta {
            term: Some("xterm".into()),
            width: 0,
            height: 0,
            modes: vec![],
        })
        .unwrap();
        w.packet(SOURCE_SERVER, CODE_DATA, b"before").unwrap();
        if resize {
            w.packet(SOURCE_CLIENT, CODE_REQUEST, b"window-change\x00120x40")
                .unwrap();
        }
        w.packet(SOURCE_SERVER, CODE_DATA, b"after").unwrap();
        w.finish(None).unwrap();
        let cast = d.path().join("out.cast");
        let bytes = fs::read(&path).unwrap();
        write_asciicast(LogReader::new(&bytes[..], &open).unwrap(), &cast).unwrap();
        let text = fs::read_to_string(&cast).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let lines = cast_of(true);
    assert_eq!(
        (lines[0]["width"].clone(), lines[0]["height"].clone()),
        (120.into(), 40.into())
    );
    // Nothing held back is lost, in order.
    let kinds: Vec<String> = lines[1..]
        .iter()
        .map(|e| e[1].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["o", "r", "o"]);
    let lines = cast_of(false);
    assert_eq!(
        (lines[0]["width"].clone(), lines[0]["height"].clone()),
        (80.into(), 24.into())
    );
    assert_eq!(lines.len(), 3);
}

#[test]
fn both_chacha20_implementations_agree() {
    use super::fast_aead::ChaCha20Poly1305Ossl as Ossl;
    use hpke::aead::ChaCha20Poly1305 as Portable;
    use hpke::kdf::HkdfSha256;
    use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
    type Kem = hpke::kem::X25519HkdfSha256;
    let d = tempfile::tempdir().unwrap();
    let (seal, open) = keys(d.path());
    // Sizes around the AEAD's 64-byte blocks and a channel packet's 32 KiB.
    let messages: Vec<Vec<u8>> = [0usize, 1, 63, 64, 65, 1000, 32768, 70000]
        .iter()
        .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
        .collect();

    // libcrypto seals, the portable code opens; and the other way round. One context per
    // direction, so every message also checks the nonce sequence.
    let (enc, mut ossl) =
        hpke::setup_sender::<Ossl, HkdfSha256, Kem>(&OpModeS::Base, &seal.0, &[]).unwrap();
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc.to_bytes()).unwrap();
    let mut portable =
        hpke::setup_receiver::<Portable, HkdfSha256, Kem>(&OpModeR::Base, &open.0, &enc, &[])
            .unwrap();
    for m in &messages {
        let sealed = ossl.seal(m, &[]).unwrap();
        assert_eq!(sealed.len(), m.len() + 16);
        assert_eq!(&portable.open(&sealed, &[]).unwrap(), m);
    }
    let (enc, mut portable) =
        hpke::setup_sender::<Portable, HkdfSha256, Kem>(&OpModeS::Base, &seal.0, &[]).unwrap();
    let mut ossl =
        hpke::setup_receiver::<Ossl, HkdfSha256, Kem>(&OpModeR::Base, &open.0, &enc, &[]).unwrap();
    for m in &messages {
        let sealed = portable.seal(m, &[]).unwrap();
        let mut damaged = sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        // A damaged block fails and does not advance the context: the intact one opens.
        assert!(ossl.open(&damaged, &[]).is_err());
        // Opened in place, a damaged block leaves nothing deciphered in the buffer.
        let (body, tag) = damaged.split_at(damaged.len() - 16);
        let tag = hpke::aead::AeadTag::<Ossl>::from_bytes(tag).unwrap();
        let mut buffer = body.to_vec();
        let opened = ossl.open_inout_detached((&mut buffer[..]).into(), &[], &tag);
        assert!(opened.is_err());
        assert!(buffer.iter().all(|&b| b == 0));
        assert_eq!(&ossl.open(&sealed, &[]).unwrap(), m);
    }
}

/// The data of packet `i` of the ring tests: sizes from 1 byte to a channel packet's
/// 32 KiB, so that blocks land across the ring's halves and its end at every offset.
fn ring_data(i: usize) -> Vec<u8> {
    let len = [32768, 1, 5000, 32768, 77, 32768, 16384, 32768][i % 8];
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

/// Writes `n` ring-test packets; returns the spool's length after each one.
fn write_ring_packets(w: &mut Writer, n: usize) {
    for i in 0..n {
        let source = if i % 3 == 0 {
            SOURCE_CLIENT
        } else {
            SOURCE_SERVER
        };
        w.packet(source, CODE_DATA, &ring_data(i)).unwrap();
    }
}

fn assert_ring_packets(path: &Path, open: &OpeningKey, n: usize) {
    let got = decrypt(&fs::read(path).unwrap(), open).unwrap();
    assert!(got.warning.is_none(), "{:?}", got.warning);
    assert_eq!(got.packets.len(), n);
    for (i, p) in got.packets.iter().enumerate() {
        assert_eq!(p.data, ring_data(i), "packet {i}");
    }
}

#[test]
fn a_long_log_passes_through_the_ring_and_reads_whole() {
    let (_d, open, path, mut w) = started("ringed.sshlog");
    let ring_file = ring::ring_path(&side_paths(&path).0);
    // Up to RING_AFTER the blocks go straight to the file; after it, through the ring.
    write_ring_packets(&mut w, 40);
    assert!(w.spooled < RING_AFTER && !ring_file.exists());
    let n = 400; // about 11 MiB: many halves written while the other fills
    write_ring_packets(&mut w, n);
    assert!(w.ring.is_some() && ring_file.exists());
    let spooled = w.spooled;
    let done = w.finish(None).unwrap();
    assert!(
        !ring_file.exists(),
        "the ring is removed once the log is whole"
    );
    let m = fs::metadata(&done).unwrap();
    assert_eq!(m.len(), spooled);
    use std::os::unix::fs::MetadataExt;
    assert!(
        m.blocks() * 512 < m.len() + 64 * 1024,
        "the space reserved past the end is freed: {} bytes on the disk for {}",
        m.blocks() * 512,
        m.len()
    );
    // The packets of both calls, in order.
    let got = decrypt(&fs::read(&path).unwrap(), &open).unwrap();
    assert!(got.warning.is_none(), "{:?}", got.warning);
    let data: Vec<Vec<u8>> = (0..40).chain(0..n).map(ring_data).collect();
    assert_eq!(got.packets.len(), data.len());
    assert!(got.packets.iter().zip(&data).all(|(p, d)| &p.data == d));
}

#[test]
fn a_proxy_killed_while_blocks_are_in_the_ring_loses_none() {
    let (d, open, path, mut w) = started("ring-crash.sshlog");
    let partial = side_paths(&path).0;
    let n = 200;
    write_ring_packets(&mut w, n);
    let spooled = w.spooled;
    let durable = w.in_file();
    drop(w); // the proxy dies: nothing drains the ring
    let ring_file = ring::ring_path(&partial);
    assert!(ring_file.exists());
    let in_log = fs::metadata(&partial).unwrap().len();
    assert!(
        durable <= in_log && in_log < spooled,
        "the last blocks are only in the ring: {durable} <= {in_log} < {spooled}"
    );
    assert_eq!(recover(d.path()).unwrap(), vec![path.clone()]);
    assert!(!ring_file.exists() && !partial.exists());
    assert_ring_packets(&path, &open, n);
    let got = decrypt(&fs::read(&path).unwrap(), &open).unwrap();
    assert_eq!(got.meta.data_size, spooled - HEADER_RESERVE);
}

#[test]
fn a_block_larger_than_half_the_ring_leaves_it() {
    let (_d, open, path, mut w) = started("ring-big.sshlog");
    write_ring_packets(&mut w, 60);
    assert!(w.ring.is_some());
    let big = vec![7u8; ring::HALF as usize + 1];
    w.packet(SOURCE_SERVER, CODE_DATA, &big).unwrap();
    assert!(w.ring.is_none());
    assert!(!ring::ring_path(&side_paths(&path).0).exists());
    w.packet(SOURCE_SERVER, CODE_DATA, b"after").unwrap();
    w.finish(None).unwrap();
    let got = decrypt(&fs::read(&path).unwrap(), &open).unwrap();
    assert!(got.warning.is_none(), "{:?}", got.warning);
    assert_eq!(got.packets.len(), 62);
    assert_eq!(got.packets[59].data, ring_data(59));
    assert_eq!(got.packets[60].data, big);
    assert_eq!(got.packets[61].data, b"after");
}

#[test]
fn a_damaged_ring_is_left_in_place_with_its_log() {
    let (d, _open, path, mut w) = started("ring-bad.sshlog");
    write_ring_packets(&mut w, 100);
    drop(w);
    let (partial, meta) = side_paths(&path);
    let ring_file = ring::ring_path(&partial);
    let mut bytes = fs::read(&ring_file).unwrap();
    bytes[24..32].copy_from_slice(&u64::MAX.to_le_bytes()); // flushed past written
    fs::write(&ring_file, &bytes).unwrap();
    assert_eq!(recover(d.path()).unwrap(), Vec::<PathBuf>::new());
    assert!(partial.exists() && meta.exists() && ring_file.exists() && !path.exists());
}

#[test]
fn a_log_followed_by_its_upload_stays_out_of_the_ring() {
    // The upload reads each block as soon as it is in the file: no ring holding the
    // last MiB back.
    let (_d, open, path, mut w) = started("watched.sshlog");
    let watcher = std::sync::Arc::new(SpoolLength {
        len: std::sync::atomic::AtomicU64::new(0),
        every: 1 << 20,
        grew: tokio::sync::Notify::new(),
    });
    w.watch(std::sync::Arc::clone(&watcher));
    let partial = side_paths(&path).0;
    let n = 300;
    for i in 0..n {
        w.packet(SOURCE_SERVER, CODE_DATA, &ring_data(i)).unwrap();
        let told = watcher.len.load(std::sync::atomic::Ordering::Acquire);
        assert_eq!(told, w.spooled, "told of every block at once");
        assert_eq!(told, fs::metadata(&partial).unwrap().len());
    }
    assert!(w.ring.is_none() && w.spooled > 4 * RING_AFTER);
    assert!(!ring::ring_path(&partial).exists());
    w.finish(None).unwrap();
    assert_ring_packets(&path, &open, n);
}
