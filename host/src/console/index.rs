//! The session log in memory for the console: read once, then only what was appended
//! since (a page over 100,000 records filters in memory, not by parsing the file
//! again), and the console's filters, sorting and paging over it.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::recording::SessionRecord;

/// The ended sessions' records, as far as the file has been read.
#[derive(Debug, Default)]
pub(crate) struct SessionIndex {
    path: PathBuf,
    offset: u64,
    /// Shared with the requests reading it; appending copies only while one holds it.
    records: std::sync::Arc<Vec<SessionRecord>>,
}

impl SessionIndex {
    pub(crate) fn new(path: &Path) -> Self {
        SessionIndex {
            path: path.to_path_buf(),
            offset: 0,
            records: std::sync::Arc::default(),
        }
    }

    /// Reads what was appended since the last call (everything again if the file is
    /// now shorter: it was rotated).
    pub(crate) fn refresh(&mut self) -> std::io::Result<std::sync::Arc<Vec<SessionRecord>>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.records = std::sync::Arc::default();
                self.offset = 0;
                return Ok(std::sync::Arc::clone(&self.records));
            }
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            self.records = std::sync::Arc::default();
            self.offset = 0;
        }
        if len > self.offset {
            file.seek(SeekFrom::Start(self.offset))?;
            let mut fresh = Vec::new();
            file.take(len - self.offset).read_to_end(&mut fresh)?;
            // Only whole lines: a record being appended is read next time.
            let whole = fresh.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for line in fresh
                .get(..whole)
                .unwrap_or_default()
                .split(|b| *b == b'\n')
            {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<SessionRecord>(line) {
                    Ok(r) => std::sync::Arc::make_mut(&mut self.records).push(r),
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), "not a session record: {e}")
                    }
                }
            }
            self.offset += whole as u64;
        }
        Ok(std::sync::Arc::clone(&self.records))
    }
}

/// The console's query string over the sessions.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct Query {
    pub user: String,
    pub target: String,
    pub login: String,
    /// `allow`, `audit`, `block`, `refused`, or empty for any.
    pub action: String,
    /// `YYYY-MM-DD` or a full RFC 3339 time; inclusive.
    pub from: String,
    /// `YYYY-MM-DD` (the whole day) or a full RFC 3339 time; exclusive.
    pub to: String,
    /// `yes`, `no`, or empty for any.
    pub recorded: String,
    /// `start` (default), `user`, `target`, `duration`, `bytes`.
    pub sort: String,
    /// `desc` (default) or `asc`.
    pub order: String,
    pub page: usize,
}

/// Rows per page.
pub(crate) const PAGE: usize = 50;

impl Query {
    fn admits(&self, r: &SessionRecord) -> bool {
        let has = |field: &str, want: &str| {
            want.is_empty()
                || field
                    .to_ascii_lowercase()
                    .contains(&want.to_ascii_lowercase())
        };
        let target = format!(
            "{}:{} {}",
            r.target_host,
            r.target_port,
            r.target_ip.as_deref().unwrap_or("")
        );
        let recorded = !r.command_logs.is_empty();
        has(&r.email, &self.user)
            && has(&target, &self.target)
            && has(&r.login, &self.login)
            && (self.action.is_empty() || r.action == self.action)
            && match self.recorded.as_str() {
                "yes" => recorded,
                "no" => !recorded,
                _ => true,
            }
            && (self.from.is_empty() || r.start.as_str() >= bound(&self.from, false).as_str())
            && (self.to.is_empty() || r.start.as_str() < bound(&self.to, true).as_str())
    }

    /// The records this query selects, sorted; and how many there are in all.
    pub(crate) fn select<'a>(&self, all: &'a [SessionRecord]) -> Vec<&'a SessionRecord> {
        let mut rows: Vec<&SessionRecord> = all.iter().filter(|r| self.admits(r)).collect();
        match self.sort.as_str() {
            "user" => rows.sort_by(|a, b| a.email.cmp(&b.email).then(a.start.cmp(&b.start))),
            "target" => rows.sort_by(|a, b| {
                (&a.target_host, a.target_port, &a.start).cmp(&(
                    &b.target_host,
                    b.target_port,
                    &b.start,
                ))
            }),
            "duration" => rows.sort_by_key(|r| r.duration_ms),
            "bytes" => rows.sort_by_key(|r| r.bytes_from_client + r.bytes_to_client),
            _ => rows.sort_by(|a, b| a.start.cmp(&b.start)),
        }
        if self.order != "asc" {
            rows.reverse();
        }
        rows
    }
}

/// A date or time as the lower bound of RFC 3339 strings (which sort as text); a
/// bare date as an upper bound means the end of that day.
fn bound(s: &str, upper: bool) -> String {
    let s = s.trim();
    if s.len() == 10 && s.as_bytes().get(4) == Some(&b'-') {
        if upper {
            // The next day's start: any time on `s` sorts before it.
            if let Ok(d) =
                time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
                && let Some(next) = d.next_day()
            {
                return format!("{next}T00:00:00");
            }
        }
        return format!("{s}T00:00:00");
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, email: &str, start: &str, action: &str, logs: usize) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            email: email.into(),
            start: start.into(),
            action: action.into(),
            target_host: "db1.internal".into(),
            target_port: 22,
            login: "jdoe".into(),
            command_logs: vec!["x".into(); logs],
            ..Default::default()
        }
    }

    #[test]
    fn filters_sort_and_bound_by_day() {
        let all = vec![
            record(
                "a",
                "jdoe@example.com",
                "2026-11-30T10:00:00.000Z",
                "allow",
                0,
            ),
            record(
                "b",
                "ann@example.com",
                "2026-12-01T09:00:00.000Z",
                "audit",
                1,
            ),
            record(
                "c",
                "jdoe@example.com",
                "2026-12-01T23:59:00.000Z",
                "block",
                0,
            ),
        ];
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            q.select(&all)
                .iter()
                .map(|r| r.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(q(&|_| {}), ["c", "b", "a"]);
        assert_eq!(q(&|q| q.user = "JDOE".into()), ["c", "a"]);
        assert_eq!(q(&|q| q.recorded = "yes".into()), ["b"]);
        assert_eq!(q(&|q| q.action = "block".into()), ["c"]);
        assert_eq!(q(&|q| q.from = "2026-12-01".into()), ["c", "b"]);
        assert_eq!(q(&|q| q.to = "2026-11-30".into()), ["a"]);
        assert_eq!(
            q(&|q| {
                q.sort = "user".into();
                q.order = "asc".into()
            }),
            ["b", "a", "c"]
        );
    }

    #[test]
    fn the_index_reads_only_what_was_appended() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sessions.jsonl");
        let line = |id: &str| {
            let mut s =
                serde_json::to_string(&record(id, "a@b", "2026-12-01T00:00:00Z", "allow", 0))
                    .unwrap();
            s.push('\n');
            s
        };
        std::fs::write(&p, line("a")).unwrap();
        let mut index = SessionIndex::new(&p);
        assert_eq!(index.refresh().unwrap().len(), 1);
        // A line being written is left for the next read.
        let mut text = line("a") + &line("b");
        text.push_str("{\"id\":");
        std::fs::write(&p, &text).unwrap();
        assert_eq!(index.refresh().unwrap().len(), 2);
        std::fs::write(&p, line("a") + &line("b") + &line("c")).unwrap();
        let ids: Vec<String> = index
            .refresh()
            .unwrap()
            .iter()
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        // Rotated: read again from the start.
        std::fs::write(&p, line("z")).unwrap();
        assert_eq!(index.refresh().unwrap().len(), 1);
    }
}
