//! The session log: append-only JSON lines, one record per session when it ends (and
//! one when a session is refused). No command text ever appears here.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

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
    pub source: String,
    /// `proxyjump` or `username`.
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

/// Formats a time as RFC 3339 with milliseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The append-only session log file.
#[derive(Debug)]
pub struct SessionLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl SessionLog {
    /// Opens (creating) the log for appending.
    pub fn open(path: &Path) -> std::io::Result<SessionLog> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(SessionLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Appends one record as a single line (one `write` call, so lines never interleave).
    pub fn append(&self, record: &SessionRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot encode session record {}: {e}", record.id);
                return;
            }
        };
        line.push(b'\n');
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = file.write_all(&line).and_then(|()| file.flush()) {
            tracing::error!(path = %self.path.display(), "cannot write session log: {e}");
        }
    }
}

/// Prints recent sessions as a table: newest last, filtered.
pub fn print_sessions(
    path: &Path,
    user: Option<&str>,
    target: Option<&str>,
    since: Option<SystemTime>,
    limit: usize,
) -> std::io::Result<()> {
    let file = File::open(path)?;
    let since = since.map(timestamp);
    let mut rows: Vec<SessionRecord> = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let r: SessionRecord = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "warning: {}:{}: not a session record ({e})",
                    path.display(),
                    n + 1
                );
                continue;
            }
        };
        if user.is_some_and(|u| !r.email.contains(u))
            || target
                .is_some_and(|t| !r.target_host.contains(t) && r.target_ip.as_deref() != Some(t))
            || since
                .as_ref()
                .is_some_and(|s| r.start.as_str() < s.as_str())
        {
            continue;
        }
        rows.push(r);
    }
    let skip = rows.len().saturating_sub(limit);
    println!(
        "{:<24} {:<24} {:<22} {:<10} {:<7} {:>8} {:>10} {:>10}  POLICY / REASON",
        "START", "USER", "TARGET", "LOGIN", "ACTION", "SECONDS", "BYTES IN", "BYTES OUT",
    );
    for r in rows.iter().skip(skip) {
        let target = format!("{}:{}", r.target_host, r.target_port);
        println!(
            "{:<24} {:<24} {:<22} {:<10} {:<7} {:>8.1} {:>10} {:>10}  {} {}",
            r.start.get(..23).unwrap_or(&r.start),
            r.email,
            target,
            r.login,
            r.action,
            r.duration_ms as f64 / 1000.0,
            r.bytes_from_client,
            r.bytes_to_client,
            r.policy.as_deref().unwrap_or("-"),
            r.reason
        );
    }
    Ok(())
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
}
