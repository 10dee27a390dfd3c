//! Sealed command logs end to end: audited sessions through the real proxy to a real
//! sshd, decrypted by the real `portcullis decrypt`, and checked byte for byte by an
//! independent reader written here from the format's description.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use common::lab::{Lab, OutputExt, ensure_user};
use hpke::{Deserializable, OpModeR};

fn audited_lab(command_logging: bool) -> Lab {
    let mut lab = audited_lab_unstarted(command_logging);
    lab.start();
    lab
}

fn audited_lab_unstarted(command_logging: bool) -> Lab {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.audit_loopback(command_logging);
    lab.add_config("[recording]\npublic_key = \"sshkey.pub\"\ndir = \"command-logs\"\n");
    lab
}

fn logs(lab: &Lab) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(lab.path().join("command-logs"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The one file left in the lab's log directory, a finished log, decrypted: asserts
/// that what it recorded from the server begins with what the client `received`.
fn the_log_holds(lab: &Lab, received: &[u8]) -> PathBuf {
    let left = logs(lab);
    assert!(
        left.len() == 1 && left[0].extension().is_some_and(|e| e == "sshlog"),
        "only the finished log is left: {left:?}"
    );
    // The plaintext goes beside the lab (the log's disk may be full).
    let zip = lab.path().join("recorded.zip");
    decrypt_cli(&left[0], &lab.path().join("sshkey"), &zip, &[])
        .success_or_panic("decrypt the log");
    let recorded = unzip(&zip)["data_from_server.txt"].clone();
    assert!(
        recorded.starts_with(received),
        "the recording holds what the client got: {} bytes recorded, {} received",
        recorded.len(),
        received.len()
    );
    left[0].clone()
}

fn unzip(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut files = std::collections::BTreeMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        files.insert(f.name().to_string(), bytes);
    }
    files
}

/// Runs `portcullis decrypt -i LOG -k KEY -o OUT EXTRA...`.
fn decrypt_cli(log: &Path, key: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    common::portcullis()
        .arg("decrypt")
        .args(extra)
        .arg("-i")
        .arg(log)
        .arg("-k")
        .arg(key)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

/// An independent reader of the format (docs/log-format.md), for checking framing and layout.
struct Parsed {
    meta: serde_json::Value,
    /// (source, code, elapsed µs, data)
    packets: Vec<(u8, u32, u64, Vec<u8>)>,
    blocks: usize,
}

fn independent_read(file: &[u8], private_key_b64: &str) -> Parsed {
    let b64 = base64::engine::general_purpose::STANDARD;
    let m = u32::from_be_bytes(file[0..4].try_into().unwrap()) as usize;
    let meta: serde_json::Value =
        serde_json::from_slice(&b64.decode(&file[4..4 + m]).unwrap()).unwrap();
    type Kem = hpke::kem::X25519HkdfSha256;
    let sk =
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&b64.decode(private_key_b64.trim()).unwrap())
            .unwrap();
    let enc_hex = meta["encapsulated_key"].as_str().unwrap();
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&hex::decode(enc_hex).unwrap()).unwrap();
    let mut ctx = hpke::setup_receiver::<hpke::aead::ChaCha20Poly1305, hpke::kdf::HkdfSha256, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        b"",
    )
    .unwrap();
    let mut at = 4 + m;
    let mut plain = Vec::new();
    let mut blocks = 0;
    while at < file.len() {
        let n = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        let block = ctx
            .open(&file[at + 4..at + 4 + n], b"")
            .expect("every block opens in order");
        assert!(
            block.len() >= 17,
            "never an empty block, whole packets only"
        );
        plain.extend_from_slice(&block);
        at += 4 + n;
        blocks += 1;
    }
    assert_eq!(at, file.len(), "blocks run exactly to EOF");
    let mut packets = Vec::new();
    let mut p = 0;
    while p < plain.len() {
        let t = u32::from_be_bytes(plain[p..p + 4].try_into().unwrap()) as usize;
        assert!(t >= 13);
        let body = &plain[p + 4..p + 4 + t];
        assert!(body[0] <= 1, "source is 0 or 1");
        let code = u32::from_be_bytes(body[1..5].try_into().unwrap());
        let elapsed = u64::from_be_bytes(body[5..13].try_into().unwrap());
        packets.push((body[0], code, elapsed, body[13..].to_vec()));
        p += 4 + t;
    }
    Parsed {
        meta,
        packets,
        blocks,
    }
}

#[test]
fn an_audited_exec_session_is_sealed_and_decrypts() {
    let lab = audited_lab(true);
    let out = lab.ssh_jump("jdoe", "jdoe", "echo audited-$((40+2)); exit 4");
    assert_eq!(out.status.code(), Some(4), "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "audited-42\n");
    let session = &lab.wait_sessions(1)[0];
    assert_eq!(session["action"], "audit");
    assert_eq!(session["command_logging"], true);
    let logs = logs(&lab);
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(
        session["command_logs"][0].as_str().unwrap(),
        logs[0].to_str().unwrap()
    );
    // Nothing in plaintext: not the output, not the command line.
    let sealed = std::fs::read(&logs[0]).unwrap();
    let needle = b"audited";
    assert!(!sealed.windows(needle.len()).any(|w| w == needle));
    let text = std::fs::read_to_string(lab.path().join("sessions.jsonl")).unwrap();
    assert!(!text.contains("echo audited"));

    // The real decrypt.
    let zip = lab.path().join("out.zip");
    let key = lab.path().join("sshkey");
    decrypt_cli(&logs[0], &key, &zip, &[]).success_or_panic("decrypt");
    let files = unzip(&zip);
    assert_eq!(
        String::from_utf8_lossy(&files["data_from_server.txt"]),
        "audited-42\n"
    );
    assert!(files.contains_key("data_from_client.txt"));
    assert!(
        String::from_utf8_lossy(&files["requests.txt"])
            .contains("exec echo audited-$((40+2)); exit 4")
    );
    // A wrong key fails naming the file, and leaves the earlier output as it was.
    let other = lab.path().join("otherkey");
    common::portcullis()
        .args(["keygen", "-o"])
        .arg(&other)
        .output()
        .unwrap()
        .success_or_panic("keygen");
    let failed = decrypt_cli(&logs[0], &other, &zip, &[]);
    assert!(!failed.status.success());
    let err = failed.stderr_text();
    assert!(
        err.contains(logs[0].to_str().unwrap()) && err.contains("wrong key"),
        "{err}"
    );
    assert_eq!(unzip(&zip), files, "the earlier output is untouched");
    assert!(!lab.path().join("out.zip.tmp").exists());

    // The independent reader agrees, byte for byte on the layout.
    let parsed = independent_read(&sealed, &std::fs::read_to_string(&key).unwrap());
    assert_eq!(parsed.meta["exit_data"]["status"], 4);
    assert!(parsed.meta["pty"].is_null());
    assert_eq!(
        parsed.meta["data_size"].as_u64().unwrap() as usize,
        parsed.packets.iter().map(|p| 17 + p.3.len()).sum::<usize>()
    );
    assert!(parsed.blocks >= 2);
    let elapsed: Vec<u64> = parsed.packets.iter().map(|p| p.2).collect();
    assert!(
        elapsed.windows(2).all(|w| w[0] <= w[1]),
        "elapsed never decreases: {elapsed:?}"
    );
    let server: Vec<u8> = parsed
        .packets
        .iter()
        .filter(|p| p.0 == 1 && p.1 == 94)
        .flat_map(|p| p.3.clone())
        .collect();
    assert_eq!(server, b"audited-42\n");
    let started = parsed.meta["started_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now - started < 120, "started_at is the session's start");
}

#[test]
fn an_audited_pty_session_replays_with_timing() {
    let lab = audited_lab(true);
    let out = lab.ssh_pty(
        "jdoe",
        "jdoe",
        "echo pty-$((6*7)); sleep 0.3; echo done-typing; exit 0\n",
    );
    assert!(
        out.stdout_text().contains("pty-42"),
        "{}",
        out.stdout_text()
    );
    lab.wait_sessions(1);
    let logs = logs(&lab);
    let zip = lab.path().join("pty.zip");
    let key = lab.path().join("sshkey");
    decrypt_cli(&logs[0], &key, &zip, &[]).success_or_panic("decrypt");
    let files = unzip(&zip);
    let term = String::from_utf8_lossy(&files["term_data.txt"]).to_string();
    assert!(term.starts_with("Session started on "), "{term}");
    assert!(
        term.contains("pty-42") && term.contains("done-typing"),
        "{term}"
    );
    assert!(term.contains("COMMAND_EXIT_CODE=\"0\""), "{term}");
    let times = String::from_utf8_lossy(&files["term_times.txt"]).to_string();
    let total: f64 = times
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        (0.3..60.0).contains(&total),
        "the recorded timing spans the sleep: {total}\n{times}"
    );
    let bytes: usize = times
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse::<usize>().unwrap())
        .sum();
    let header_len = term.find('\n').unwrap() + 1;
    let tail_len = term.len() - term.rfind("\nScript done").unwrap();
    assert_eq!(
        bytes,
        term.len() - header_len - tail_len,
        "timing lines cover the output"
    );

    let cast = lab.path().join("pty.cast");
    decrypt_cli(&logs[0], &key, &cast, &["--format", "asciicast"])
        .success_or_panic("decrypt asciicast");
    let cast = std::fs::read_to_string(cast).unwrap();
    let header: serde_json::Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(cast.contains("pty-42"));
}

#[test]
fn sessions_without_command_logging_write_no_log() {
    let lab = audited_lab(false);
    lab.ssh_jump("jdoe", "jdoe", "true")
        .success_or_panic("audit without logging");
    let s = &lab.wait_sessions(1)[0];
    assert_eq!(s["action"], "audit");
    assert_eq!(s["command_logging"], false);
    assert!(logs(&lab).is_empty());

    ensure_user("jdoe");
    let mut plain = Lab::new(&[("jdoe@example.com", &[])]);
    plain
        .policies
        .module("90-default-principal.wasm", "default_principal");
    plain.start();
    plain
        .ssh_jump("jdoe", "jdoe", "true")
        .success_or_panic("not audited");
    plain.wait_sessions(1);
    assert!(logs(&plain).is_empty());
}

#[test]
fn a_proxy_killed_mid_session_loses_nothing_already_sent() {
    let mut lab = audited_lab(true);
    // Once the output has reached the client, it went through the recorder.
    let (mut child, seen) = lab.spawn_jump_until(
        "jdoe",
        "jdoe",
        "echo before-the-kill; sleep 30",
        "before-the-kill",
    );
    lab.kill_proxy();
    let _ = child.kill();
    let _ = child.wait();
    let leftovers: Vec<PathBuf> = logs(&lab);
    assert!(
        leftovers
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".partial")),
        "{leftovers:?}"
    );
    lab.start_proxy();
    assert!(lab.proxy_log().contains("finalised"));
    the_log_holds(&lab, &seen);
}

#[test]
fn a_proxy_killed_mid_bulk_transfer_loses_nothing_already_sent() {
    // Past its first MiB a log's blocks go through a ring file and reach the log in
    // large direct writes (host/cmdlog/src/ring.rs): the last ones are only in the ring
    // when the proxy dies, and recovery puts them in the log.
    let mut lab = audited_lab(true);
    let bulk = 3_000_000;
    let (mut child, seen) = lab.spawn_jump_until(
        "jdoe",
        "jdoe",
        &format!("head -c {bulk} /dev/zero | tr '\\0' x; echo bulk-sent; sleep 30"),
        "bulk-sent",
    );
    lab.kill_proxy();
    let _ = child.kill();
    let _ = child.wait();
    let leftovers = logs(&lab);
    assert!(
        leftovers
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".partial.ring")),
        "the log went through its ring: {leftovers:?}"
    );
    lab.start_proxy();
    the_log_holds(&lab, &seen);
    assert_eq!(&seen[..bulk], vec![b'x'; bulk].as_slice());
}

#[test]
fn an_audited_upload_held_up_by_the_target_arrives_and_is_logged_whole() {
    // An upload in many small packets to a target that stops reading for a while: the
    // proxy's window to it fills, the client's packets wait in the proxy, then go on.
    // Every byte must arrive once and in order, and be recorded as the client sent it,
    // by either way in.
    let lab = audited_lab(true);
    let size = 3_000_000;
    // Each 4 bytes hold their own offset: a byte lost, doubled or moved shows.
    let data: Vec<u8> = (0..size / 4)
        .flat_map(|i: u32| (i * 4).to_be_bytes())
        .collect();
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    let forms = [
        lab.jump_args("jdoe", "jdoe"),
        lab.username_form_args("jdoe"),
    ];
    for (n, form) in forms.iter().enumerate() {
        // Fed through a pipe a little at a time: the client sends what it reads, in
        // packets of about 4 KiB.
        let mut child = common::lab::command_in(&lab.ns_client, "ssh")
            .args(lab.client_args("jdoe"))
            .args(form)
            // The target reads nothing for a second: its window fills and the
            // client's packets queue in the proxy.
            .arg("sleep 1; sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feed = data.clone();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            for chunk in feed.chunks(4096) {
                stdin.write_all(chunk).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        });
        let out = child.wait_with_output().unwrap();
        let fed = feeder.join();
        // A client that failed says why first (the feeder then fails on a closed pipe).
        let out = out.success_or_panic("upload");
        assert!(fed.is_ok(), "the whole upload was written to the client");
        assert_eq!(
            out.stdout_text().split_whitespace().next(),
            Some(expected.as_str()),
            "the target got the upload whole ({form:?})"
        );
        // The session's record is written once its log is finished.
        let session = &lab.wait_sessions(n + 1)[n];
        let log = PathBuf::from(session["command_logs"][0].as_str().unwrap());
        let zip = lab.path().join(format!("upload-{n}.zip"));
        decrypt_cli(&log, &lab.path().join("sshkey"), &zip, &[]).success_or_panic("decrypt");
        assert!(
            unzip(&zip)["data_from_client.txt"] == data,
            "the log holds the upload as sent ({form:?})"
        );
    }
}

/// A small tmpfs mounted at `dir` for the life of the value.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "portcullis-test",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        out.success_or_panic("mount a tmpfs (the test needs root)");
        SmallDisk(dir)
    }

    /// Fills what is left; returns the filler.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Runs `command` as jdoe, which the proxy must end because its log cannot be written.
fn ended_by_the_recorder(lab: &Lab, command: &str) -> std::process::Output {
    let out = lab.ssh_jump("jdoe", "jdoe", command);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        out.stderr_text()
            .contains("recording failed; ending the session"),
        "{}",
        out.stderr_text()
    );
    out
}

#[test]
fn a_full_disk_ends_recorded_sessions_and_refuses_new_ones_losing_nothing() {
    let mut lab = audited_lab_unstarted(true);
    let logs_disk = SmallDisk::mount(lab.path().join("command-logs"), "1m");
    let records_disk = SmallDisk::mount(lab.path().join("sessions.jsonl.running"), "256k");
    lab.start();

    // 4 MB of output cannot be recorded on 1 MiB: the session ends when the disk fills.
    let out = ended_by_the_recorder(&lab, "yes portcullis | head -c 4000000");
    let received = out.stdout.len();
    assert!(received < 4_000_000, "{received} bytes reached the client");
    // What was recorded decrypts, and holds at least what reached the client. The log
    // is finished when the channel's task ends, which can be after the client exits:
    // the session's record is written after that.
    lab.wait_sessions(1);
    let finished = the_log_holds(&lab, &out.stdout);

    // With no room for a running session's record, a new session is refused...
    let filler = records_disk.fill();
    let out = lab.ssh_jump("jdoe", "jdoe", "echo should-not-run");
    assert_ne!(out.status.code(), Some(0));
    assert!(!out.stdout_text().contains("should-not-run"));
    assert!(
        out.stderr_text().contains("cannot write the session log"),
        "{}",
        out.stderr_text()
    );
    // ...and allowed again once there is room.
    std::fs::remove_file(filler).unwrap();
    std::fs::remove_file(&finished).unwrap();
    let out = lab.ssh_jump("jdoe", "jdoe", "echo room-again");
    assert_eq!(out.stdout_text(), "room-again\n", "{}", out.stderr_text());

    let sessions = lab.wait_sessions(3);
    assert!(
        sessions[1]["close_reason"]
            .as_str()
            .unwrap()
            .contains("cannot write the session log"),
        "{}",
        sessions[1]
    );
    drop((logs_disk, records_disk));
}

#[test]
fn a_disk_filling_during_a_bulk_transfer_ends_it_losing_nothing() {
    // The log passes its first MiB, so its blocks go through the ring, before the disk
    // fills: the ring's space in the log was reserved, so the log still finishes whole.
    let mut lab = audited_lab_unstarted(true);
    let logs_disk = SmallDisk::mount(lab.path().join("command-logs"), "8m");
    lab.start();
    let out = ended_by_the_recorder(&lab, "head -c 40000000 /dev/zero | tr '\\0' y");
    let received = out.stdout.len();
    assert!(
        (2 << 20..40_000_000).contains(&received),
        "{received} bytes reached the client"
    );
    assert!(
        !lab.proxy_log().contains("written through the page cache"),
        "the log used its ring: {}",
        lab.proxy_log()
    );
    lab.wait_sessions(1);
    the_log_holds(&lab, &out.stdout);
    drop(logs_disk);
}

#[test]
fn a_policy_asking_for_logging_without_a_key_is_refused() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.policies
        .module("20-network-audit.wasm", "network_audit")
        .file(
            "20-network-audit.toml",
            b"[[rule]]\ndestinations = [\"127.0.0.1\"]\ncommand_logging = true\n",
        );
    lab.start();
    let out = lab.ssh_jump("jdoe", "jdoe", "echo should-not-run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr_text().contains("must be recorded"),
        "{}",
        out.stderr_text()
    );
    assert!(!lab.known_targets().exists());
}
