//! Command logs shipped to object storage (`[recording] store = "s3"`), against a real
//! S3-compatible server (s3s-fs, tests/common/s3.rs): uploaded in parts while the
//! session runs, checked, then removed from the disk; nothing lost when the store or
//! the proxy goes down; read back with `portcullis decrypt -i s3://`.

use std::io::Read;
use std::time::{Duration, Instant};

use super::common;
use super::common::s3::S3Server;
use super::{Lab, OutputExt, ensure_user};
use crate::lifecycle::http;

const BUCKET: &str = "audit";
/// Random bytes, base64-encoded by the target: about 16 MB of output, three parts of
/// 5 MiB and a last one.
const SIZE: &str = "12000000";

/// A lab whose audited sessions are recorded to `server`, with 5 MiB parts and quick
/// retries; the proxy is not started.
fn stored_lab(server: &S3Server, secret: &str) -> (Lab, u16) {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.audit_loopback(true);
    let credentials = server.credentials_file(lab.path(), secret);
    let metrics = common::lab::free_port();
    lab.add_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
         [recording]\npublic_key = \"sshkey.pub\"\ndir = \"command-logs\"\nstore = \"s3\"\n\
         [recording.s3]\nbucket = \"{BUCKET}\"\nprefix = \"portcullis/\"\nendpoint = \"{}\"\n\
         credentials_file = \"{}\"\npart_size_mib = 5\nretry_max_delay = \"1s\"\n",
        server.endpoint(),
        credentials.display()
    ));
    (lab, metrics)
}

/// The files left in the proxy's recording directory.
fn local_files(lab: &Lab) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(lab.path().join("command-logs"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits for one object in the bucket, and for the local copy to be gone.
fn wait_uploaded(lab: &Lab, server: &S3Server, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let objects = server.objects(BUCKET);
        if objects.len() == 1 && local_files(lab).is_empty() {
            return objects.into_iter().next().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "not uploaded: objects {objects:?}, on the disk {:?}\n{}",
            local_files(lab),
            lab.proxy_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the server holds `n` parts of an unfinished upload.
fn wait_parts(server: &S3Server, n: usize, lab: &Lab) -> Vec<(String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let parts = server.pending_parts();
        if parts.len() >= n {
            return parts;
        }
        assert!(
            Instant::now() < deadline,
            "parts {parts:?}\n{}",
            lab.proxy_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Decrypts `s3://audit/KEY` with the CLI (the store's settings from the lab's
/// configuration) and returns what the target sent.
fn decrypt_object(lab: &Lab, key: &str) -> Vec<u8> {
    let out = lab.path().join("decrypted.zip");
    common::portcullis()
        .args(["decrypt", "-i", &format!("s3://{BUCKET}/{key}"), "-k"])
        .arg(lab.path().join("sshkey"))
        .arg("-c")
        .arg(lab.path().join("portcullis.toml"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap()
        .success_or_panic("decrypt -i s3://");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let mut data = Vec::new();
    zip.by_name("data_from_server.txt")
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    data
}

/// An `ssh -J` session running `command` on its own thread; returns its stdout.
fn session(lab: &Lab, command: &str) -> std::process::Child {
    common::lab::command_in(&None, "ssh")
        .args(lab.client_args("jdoe"))
        .args(lab.jump_args("jdoe", "jdoe"))
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads the child's stdout to the end on a thread.
fn collect(child: &mut std::process::Child) -> std::thread::JoinHandle<Vec<u8>> {
    let mut stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    })
}

fn metric(port: u16, name: &str) -> f64 {
    let text = http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn a_recorded_session_is_uploaded_in_parts_while_it_runs_and_decrypts_from_the_store() {
    let server = S3Server::start(BUCKET);
    let (mut lab, metrics) = stored_lab(&server, common::s3::SECRET_KEY);
    lab.start();
    let mut ssh = session(
        &lab,
        &format!("head -c {SIZE} /dev/urandom | base64 -w 100; sleep 10"),
    );
    let output = collect(&mut ssh);
    // Parts 2 and 3 (the spool's full parts after the first) are in the store while
    // the session still runs; part 1 holds the header, written at the end.
    let parts = wait_parts(&server, 2, &lab);
    assert!(
        ssh.try_wait().unwrap().is_none(),
        "the session ended before its parts were uploaded"
    );
    assert!(parts.iter().all(|(_, size)| *size == 5 << 20), "{parts:?}");
    assert!(
        parts.iter().any(|(n, _)| n.ends_with(".part-2")),
        "{parts:?}"
    );
    let status = ssh.wait().unwrap();
    let seen = output.join().unwrap();
    assert!(status.success());
    assert!(seen.len() > 16_000_000);

    let key = wait_uploaded(&lab, &server, Duration::from_secs(60));
    let session = &lab.wait_sessions(1)[0];
    let id = session["id"].as_str().unwrap();
    let date = &session["start"].as_str().unwrap()[..10].replace('-', "/");
    assert_eq!(key, format!("portcullis/{date}/{id}-0.sshlog"));
    // The session record points at the object; the parts are gone from the server.
    assert_eq!(
        session["command_logs"],
        serde_json::json!([format!("s3://{BUCKET}/{key}")])
    );
    assert!(server.pending_parts().is_empty());
    // What the store holds is the sealed log: the output is not in it in clear.
    let stored = std::fs::read(server.data().join(BUCKET).join(&key)).unwrap();
    assert!(
        !stored.windows(64).any(|w| w == &seen[1000..1064]),
        "plaintext in the store"
    );
    assert_eq!(decrypt_object(&lab, &key), seen);
    // The operator's table says where it is.
    let table = lab.portcullis(&["sessions"]).success_or_panic("sessions");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!("recording: s3://{BUCKET}/{key}")),
        "{table}"
    );
    assert_eq!(
        metric(
            metrics,
            "portcullis_recording_uploads_total{store=\"s3://audit/portcullis\",outcome=\"uploaded\"}"
        ),
        1.0
    );
    assert_eq!(metric(metrics, "portcullis_recording_uploads_pending"), 0.0);
    assert!(metric(metrics, "portcullis_recording_upload_parts_total") >= 4.0);
}

#[test]
fn a_store_down_mid_session_slows_nothing_and_gets_the_recording_when_it_is_back() {
    let mut server = S3Server::start(BUCKET);
    let (mut lab, metrics) = stored_lab(&server, common::s3::SECRET_KEY);
    lab.start();
    // The store goes away once the session's first part is up.
    let mut ssh = session(
        &lab,
        &format!(
            "head -c {SIZE} /dev/urandom | base64 -w 100; sleep 3; head -c {SIZE} /dev/urandom | base64 -w 100"
        ),
    );
    let output = collect(&mut ssh);
    wait_parts(&server, 1, &lab);
    server.stop();
    let started = Instant::now();
    assert!(ssh.wait().unwrap().success());
    let seen = output.join().unwrap();
    assert!(seen.len() > 32_000_000);
    // A session held up by the store would wait until it is back, which is after the
    // session ends: any bound shows it; this one leaves room for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "the session waited for the store"
    );
    // Everything is on the disk, waiting; the failures are counted.
    std::thread::sleep(Duration::from_secs(2));
    let files = local_files(&lab);
    assert!(
        files.iter().any(|f| f.ends_with("-0.sshlog"))
            && files.iter().any(|f| f.ends_with(".upload")),
        "{files:?}"
    );
    assert!(server.objects(BUCKET).is_empty());
    assert!(metric(metrics, "portcullis_recording_upload_errors_total") >= 1.0);
    assert_eq!(metric(metrics, "portcullis_recording_uploads_pending"), 1.0);
    server.run();
    let key = wait_uploaded(&lab, &server, Duration::from_secs(60));
    assert_eq!(decrypt_object(&lab, &key), seen);
}

#[test]
fn a_proxy_killed_mid_upload_completes_the_upload_when_it_starts_again() {
    let server = S3Server::start(BUCKET);
    let (mut lab, _) = stored_lab(&server, common::s3::SECRET_KEY);
    lab.start();
    let mut ssh = session(
        &lab,
        &format!("head -c {SIZE} /dev/urandom | base64 -w 100; sleep 60"),
    );
    let output = collect(&mut ssh);
    wait_parts(&server, 2, &lab);
    lab.kill_proxy();
    let _ = ssh.wait();
    let seen = output.join().unwrap();
    // The client got at least the parts already in the store (on a busy machine it may
    // lag behind what the proxy recorded and sent).
    assert!(seen.len() > 10_000_000, "{}", seen.len());
    // A spool, its side file and the upload's state are left.
    let files = local_files(&lab);
    assert!(
        files.iter().any(|f| f.ends_with(".sshlog.partial")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.ends_with(".sshlog.upload")),
        "{files:?}"
    );
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            lab.path()
                .join("command-logs")
                .join(files.iter().find(|f| f.ends_with(".upload")).unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(state["upload_id"].is_string(), "{state}");

    lab.start_proxy();
    let key = wait_uploaded(&lab, &server, Duration::from_secs(60));
    assert!(lab.proxy_log().contains("resuming the upload"));
    // Everything the client saw was recorded (before it was forwarded), and is in
    // the store; what was recorded but not delivered before the kill is there too.
    let stored = decrypt_object(&lab, &key);
    assert!(
        stored.len() >= seen.len() && stored[..seen.len()] == seen[..],
        "the store has {} bytes, the client saw {}",
        stored.len(),
        seen.len()
    );
}

#[test]
fn refused_credentials_stop_the_proxy_at_start_with_the_reason() {
    let server = S3Server::start(BUCKET);
    let (lab, _) = stored_lab(&server, "not-the-secret");
    let out = serve_briefly(&lab.path().join("portcullis.toml"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("recording store")
            && err.contains(
                "cannot write the check object s3://audit/portcullis/.portcullis-write-check"
            ),
        "{err}"
    );
    // No such bucket is refused the same way.
    let (lab, _) = stored_lab(&server, common::s3::SECRET_KEY);
    let config = lab.path().join("portcullis.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("bucket = \"audit\"", "bucket = \"no-such-bucket\"");
    std::fs::write(&config, text).unwrap();
    let out = serve_briefly(&config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s3://no-such-bucket/"), "{err}");
}

/// `portcullis serve`, stopped after 30 s if it has not exited by then (a proxy that
/// started despite the refusal fails the test instead of hanging it).
fn serve_briefly(config: &std::path::Path) -> std::process::Output {
    std::process::Command::new("timeout")
        .arg("30")
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(config)
        .output()
        .unwrap()
}
