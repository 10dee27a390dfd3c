//! The session log: append-only JSON lines, one record per session when it ends (and
//! one when a session is refused). No command text ever appears here.
//!
//! While a session runs, its record so far is kept as `<id>.json` in a directory beside
//! the log (`sessions.jsonl.running/`), rewritten every minute (ten while idle). `portcullis sessions
//! --running` lists them; a proxy that starts and finds records left there (it was
//! killed) appends them to the log as interrupted, so no session goes unrecorded.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// One channel of a session.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelRecord {
    /// `shell`, `exec`, `subsystem:sftp`, `direct-tcpip`...
    pub kind: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<String>,
}

/// One session, as logged when it ends.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub email: String,
    pub groups: Vec<String>,
    /// The replica that holds (held) the session, with a shared store.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replica: String,
    /// How the user authenticated: `publickey SHA256:...`, `certificate SHA256:...`,
    /// `sso ISSUER amr=... key=SHA256:...`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authentication: String,
    pub source: String,
    /// `proxyjump`, `username` or `transparent`.
    pub via: String,
    pub target_host: String,
    pub target_ip: Option<String>,
    pub target_port: u16,
    pub login: String,
    /// The deciding policy module, if any.
    pub policy: Option<String>,
    /// `allow`, `audit` or `block`; `refused` when the login was not permitted or the
    /// target could not be reached.
    pub action: String,
    pub command_logging: bool,
    pub reason: String,
    pub start: String,
    pub end: String,
    pub duration_ms: u64,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub channels: Vec<ChannelRecord>,
    /// The sealed command logs of the session's channels.
    #[serde(default)]
    pub command_logs: Vec<String>,
    pub close_reason: String,
}

impl SessionRecord {
    /// How long the session has run at `now`, from its start time (zero if that does
    /// not read as a time).
    pub fn elapsed_at(&self, now: SystemTime) -> Duration {
        humantime::parse_rfc3339(&self.start)
            .ok()
            .and_then(|start| now.duration_since(start).ok())
            .unwrap_or_default()
    }
}

/// Formats a time as RFC 3339 with milliseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Where else session records go (the shared store, `crate::state`): every record the
/// log keeps is handed over too, running or ended.
pub trait RecordMirror: Send + Sync + std::fmt::Debug {
    fn queue(&self, record: &SessionRecord, running: bool);
}

/// The append-only session log file.
#[derive(Debug)]
pub struct SessionLog {
    path: PathBuf,
    file: Mutex<File>,
    /// The records of running sessions.
    running: PathBuf,
    /// The shared store's copy, when configured.
    mirror: std::sync::OnceLock<std::sync::Arc<dyn RecordMirror>>,
}

/// The directory of running sessions' records, beside the log.
pub fn running_dir(log: &Path) -> PathBuf {
    PathBuf::from(format!("{}.running", log.display()))
}

/// What a record recovered at start-up says of how its session ended.
pub const INTERRUPTED: &str =
    "interrupted: the proxy stopped while the session ran (end, bytes: as last seen)";

impl SessionLog {
    /// Opens (creating) the log for appending, and the running sessions' directory.
    pub fn open(path: &Path) -> std::io::Result<SessionLog> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let running = running_dir(path);
        std::fs::create_dir_all(&running)?;
        Ok(SessionLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            running,
            mirror: std::sync::OnceLock::new(),
        })
    }

    /// Hands every record from now on to `mirror` as well.
    pub fn mirror_to(&self, mirror: std::sync::Arc<dyn RecordMirror>) {
        let _ = self.mirror.set(mirror);
    }

    fn running_path(&self, id: &str) -> PathBuf {
        self.running.join(format!("{id}.json"))
    }

    /// Keeps a running session's record so far (written aside and renamed, so a reader
    /// or a crash never sees half of it). A failure is logged and returned.
    pub fn running(&self, record: &SessionRecord) -> std::io::Result<()> {
        if let Some(mirror) = self.mirror.get() {
            mirror.queue(record, true);
        }
        self.running_here(record)
    }

    /// [`SessionLog::running`] without handing the record to the mirror (which already
    /// has it: a session's first record is written to the shared store directly).
    pub fn running_here(&self, record: &SessionRecord) -> std::io::Result<()> {
        let path = self.running_path(&record.id);
        let tmp = self.running.join(format!(".{}.tmp", record.id));
        let written = serde_json::to_vec(record)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&tmp, json))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = &written {
            let _ = std::fs::remove_file(&tmp);
            tracing::error!(path = %path.display(), "cannot keep the running session's record: {e}");
        }
        written
    }

    /// Appends the records that a proxy killed while sessions ran left behind, marked
    /// interrupted; returns how many. One that cannot be read is renamed `*.corrupt`
    /// and reported, not dropped.
    pub fn recover(&self) -> std::io::Result<usize> {
        let mut recovered = 0;
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.running)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let parsed = std::fs::read(&path).and_then(|bytes| {
                serde_json::from_slice::<SessionRecord>(&bytes).map_err(std::io::Error::other)
            });
            match parsed {
                Ok(mut record) => {
                    record.close_reason = INTERRUPTED.into();
                    self.append(&record);
                    recovered += 1;
                }
                Err(e) => {
                    let aside = path.with_extension("corrupt");
                    tracing::error!(
                        path = %path.display(),
                        "a running session's record cannot be read ({e}); kept as {}",
                        aside.display()
                    );
                    std::fs::rename(&path, &aside)?;
                }
            }
        }
        Ok(recovered)
    }

    /// Appends one record as a single line (one `write` call, so lines never interleave).
    pub fn append(&self, record: &SessionRecord) {
        if let Some(mirror) = self.mirror.get() {
            mirror.queue(record, false);
        }
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot encode session record {}: {e}", record.id);
                return;
            }
        };
        line.push(b'\n');
        let mut file = crate::sync::lock(&self.file);
        if let Err(e) = file.write_all(&line).and_then(|()| file.flush()) {
            tracing::error!(path = %self.path.display(), "cannot write session log: {e}");
            // The running record stays, for the next start to recover.
            return;
        }
        drop(file);
        match std::fs::remove_file(self.running_path(&record.id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("cannot remove the running record of {}: {e}", record.id);
            }
            _ => {}
        }
    }
}

/// The running sessions' records under `log`, oldest first.
pub fn running_sessions(log: &Path) -> std::io::Result<Vec<SessionRecord>> {
    let dir = running_dir(log);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match std::fs::read(&path).map(|b| serde_json::from_slice::<SessionRecord>(&b)) {
            Ok(Ok(r)) => records.push(r),
            // Ended between listing and reading.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => eprintln!("warning: {}: not a session record ({e})", path.display()),
            Err(e) => return Err(e),
        }
    }
    records.sort_by(|a, b| a.start.cmp(&b.start));
    Ok(records)
}

/// Which sessions to list.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// Only users whose email contains this.
    pub user: Option<String>,
    /// Only targets whose host contains this, or with this address.
    pub target: Option<String>,
    /// Only sessions started at or after this time.
    pub since: Option<SystemTime>,
    /// At most this many (the most recent).
    pub limit: usize,
}

impl SessionFilter {
    fn admits(&self, r: &SessionRecord, since: Option<&str>) -> bool {
        !(self.user.as_deref().is_some_and(|u| !r.email.contains(u))
            || self
                .target
                .as_deref()
                .is_some_and(|t| !r.target_host.contains(t) && r.target_ip.as_deref() != Some(t))
            || since.is_some_and(|s| r.start.as_str() < s))
    }
}

/// Sessions from the log, oldest first: the most recent ended ones, or with `running`
/// the sessions running now (their bytes as of the record's last rewrite).
pub fn list_sessions(
    path: &Path,
    running: bool,
    filter: &SessionFilter,
) -> std::io::Result<Vec<SessionRecord>> {
    let records = if running {
        running_sessions(path)?
    } else {
        ended_sessions(path)?
    };
    Ok(filter_sessions(records, filter))
}

/// The records `filter` admits, the most recent `filter.limit` of them, oldest first.
pub fn filter_sessions(records: Vec<SessionRecord>, filter: &SessionFilter) -> Vec<SessionRecord> {
    let since = filter.since.map(timestamp);
    let mut rows: Vec<SessionRecord> = records
        .into_iter()
        .filter(|r| filter.admits(r, since.as_deref()))
        .collect();
    let skip = rows.len().saturating_sub(filter.limit);
    rows.drain(..skip);
    rows
}

/// The records of the log; a line that is not one is reported and skipped.
fn ended_sessions(path: &Path) -> std::io::Result<Vec<SessionRecord>> {
    let file = File::open(path)?;
    let mut records = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(r) => records.push(r),
            Err(e) => eprintln!(
                "warning: {}:{}: not a session record ({e})",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_append_as_one_json_line_each() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.jsonl");
        let log = SessionLog::open(&path).unwrap();
        let mut r = SessionRecord {
            id: "a".into(),
            email: "jdoe@example.com".into(),
            ..Default::default()
        };
        log.append(&r);
        r.id = "b".into();
        log.append(&r);
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<SessionRecord>(l).unwrap().id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn running_records_are_listed_removed_at_the_end_and_recovered_after_a_crash() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.jsonl");
        let log = SessionLog::open(&path).unwrap();
        let record = |id: &str| SessionRecord {
            id: id.into(),
            start: format!("2026-11-24T06:00:0{}.000Z", id.len()),
            ..Default::default()
        };
        log.running(&record("a")).unwrap();
        log.running(&record("bb")).unwrap();
        let running: Vec<String> = running_sessions(&path)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(running, ["a", "bb"]);
        log.append(&record("a"));
        assert_eq!(running_sessions(&path).unwrap().len(), 1, "a ended");

        // The proxy dies with bb running, and a record on disk is damaged.
        std::fs::write(
            running_dir(&path).join("cc.json"),
            b"{\"id\": \"cc\", trunc",
        )
        .unwrap();
        drop(log);
        let log = SessionLog::open(&path).unwrap();
        assert_eq!(log.recover().unwrap(), 1);
        let ended = ended_sessions(&path).unwrap();
        assert_eq!(ended.len(), 2);
        assert_eq!(ended[1].id, "bb");
        assert_eq!(ended[1].close_reason, INTERRUPTED);
        assert!(running_sessions(&path).unwrap().is_empty());
        assert!(running_dir(&path).join("cc.corrupt").exists(), "kept aside");
    }
}
