//! A recording's local side while it is shipped: the log file, read by ranges and
//! hashed, and its upload state beside it (`NAME.upload`), which lets an upload resume
//! after a restart or a crash.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What is kept beside a log while it is uploaded (`NAME.upload`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Sidecar {
    /// The object's name in the bucket.
    pub(super) key: String,
    /// The part size the parts were cut with.
    pub(super) part_size: u64,
    /// The multipart upload, once started.
    pub(super) upload_id: Option<String>,
    /// The ETag of each part uploaded, by index (part number - 1).
    pub(super) parts: Vec<Option<String>>,
}

pub(super) fn sidecar_path(log: &Path) -> PathBuf {
    PathBuf::from(format!("{}.upload", log.display()))
}

/// One recording being shipped.
#[derive(Debug)]
pub(super) struct Job {
    /// The finished log's path (`NAME`; `NAME.partial` while it is written).
    pub(super) path: PathBuf,
    pub(super) state: Sidecar,
}

impl Job {
    pub(super) fn save(&self) -> std::io::Result<()> {
        let side = sidecar_path(&self.path);
        let tmp = PathBuf::from(format!("{}.tmp", side.display()));
        let json = serde_json::to_vec(&self.state).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &side)
    }

    pub(super) fn name(&self) -> String {
        name_of(&self.path)
    }
}

/// `YYYY/MM/DD` (UTC) of a Unix time.
pub fn day_of(unix_seconds: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix_seconds as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}/{:02}/{:02}", t.year(), u8::from(t.month()), t.day())
}

pub(super) fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `size` bytes of `file` from `start`, read off the runtime's threads.
pub(super) async fn read_range(
    file: &Arc<std::fs::File>,
    start: u64,
    size: u64,
) -> std::io::Result<bytes::Bytes> {
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; size as usize];
        file.read_exact_at(&mut buf, start)?;
        Ok(bytes::Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
}

pub(super) fn sha256_of(
    file: &std::fs::File,
    len: u64,
) -> std::io::Result<sha2::digest::Output<Sha256>> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the log shrank while it was checked",
            ));
        }
        h.update(buf.get(..n).unwrap_or_default());
        at += n as u64;
    }
    Ok(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_of(0), "1970/01/01");
        assert_eq!(day_of(1_796_083_199), "2026/11/30");
        assert_eq!(day_of(1_796_083_200), "2026/12/01");
    }

    #[test]
    fn the_upload_state_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let job = Job {
            path: dir.path().join("abc-0.sshlog"),
            state: Sidecar {
                key: "audit/2026/12/01/abc-0.sshlog".into(),
                part_size: 5 << 20,
                upload_id: Some("id".into()),
                parts: vec![None, Some("\"etag\"".into())],
            },
        };
        job.save().unwrap();
        let back: Sidecar =
            serde_json::from_slice(&std::fs::read(sidecar_path(&job.path)).unwrap()).unwrap();
        assert_eq!(back, job.state);
    }
}
