//! A real S3-compatible server for the tests: `s3s-fs` (built from crates.io into
//! target/tools by scripts/setup) on a loopback port, keeping its objects and the
//! parts of unfinished multipart uploads as files in a temporary directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::lab::free_port;

pub const ACCESS_KEY: &str = "portcullis-test";
pub const SECRET_KEY: &str = "portcullis-test-secret-key";

fn binary() -> PathBuf {
    let p = super::root().join("target/tools/bin/s3s-fs");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup (it builds the test S3 server)",
        p.display()
    );
    p
}

/// A server, stopped on drop.
pub struct S3Server {
    root: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server holding an empty `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        let mut s = S3Server {
            root,
            port: free_port(),
            child: None,
        };
        s.run();
        s
    }

    /// Starts the server (again, on the same port and files).
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("server.log"))
            .unwrap();
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.data())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (its files stay).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The directory of buckets (`DATA/BUCKET/KEY`).
    pub fn data(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    /// The parts of unfinished multipart uploads the server holds, with their sizes.
    pub fn pending_parts(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(self.data())
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name.starts_with(".upload_id-") && name.contains(".part-"))
                    .then(|| (name, e.metadata().unwrap().len()))
            })
            .collect();
        v.sort();
        v
    }

    /// Every object in `bucket`, by key.
    pub fn objects(&self, bucket: &str) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
            {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // the server's own metadata
                }
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut v = Vec::new();
        let base = self.data().join(bucket);
        walk(&base, &base, &mut v);
        v.sort();
        v
    }

    /// Writes an AWS shared credentials file with these keys (or `secret`) and returns
    /// its path.
    pub fn credentials_file(&self, dir: &Path, secret: &str) -> PathBuf {
        let p = dir.join("aws-credentials");
        std::fs::write(
            &p,
            format!(
                "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {secret}\n"
            ),
        )
        .unwrap();
        p
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
