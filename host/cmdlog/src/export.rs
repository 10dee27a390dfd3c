//! Exports of a decrypted log: the hosted product's zip, and asciicast v2.

#[cfg(feature = "files")]
use std::fs::{File, OpenOptions};
#[cfg(feature = "files")]
use std::io::BufWriter;
use std::io::{Read, Write};
#[cfg(feature = "files")]
use std::path::Path;

use super::format::*;
use super::reader::*;

#[cfg(feature = "files")]
fn format_date(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let s = humantime::format_rfc3339_seconds(t).to_string(); // 2026-11-23T21:37:37Z
    format!("{}+00", s.trim_end_matches('Z').replace('T', " "))
}

/// What an export read: the packets, and the damage that ended the log early, if any.
#[derive(Debug)]
pub struct Exported {
    pub packets: usize,
    pub warning: Option<String>,
}

#[cfg(feature = "files")]
fn session_started(meta: &Metadata, pty: &PtyMeta) -> String {
    format!(
        "Session started on {} [TERM=\"{}\" COLUMNS=\"{}\" LINES=\"{}\"]\n",
        format_date(meta.started_at),
        pty.term.as_deref().unwrap_or("unknown"),
        pty.width,
        pty.height
    )
}

#[cfg(feature = "files")]
fn session_done(meta: &Metadata) -> String {
    match &meta.exit_data {
        Some(e) => match (&e.error_msg, e.core_dumped) {
            (Some(msg), _) => format!(
                "\nScript done on {} [ERROR=\"{msg}\"]\n",
                format_date(e.timestamp)
            ),
            (None, true) => format!(
                "\nScript done on {} [CORE DUMPED]\n",
                format_date(e.timestamp)
            ),
            (None, false) => format!(
                "\nScript done on {} [COMMAND_EXIT_CODE=\"{}\"]\n",
                format_date(e.timestamp),
                e.status.unwrap_or(0)
            ),
        },
        None => "\nSession has no termination data\n".to_string(),
    }
}

#[cfg(feature = "files")]
/// Creates (or truncates) an export readable by its owner only: it is the plaintext of
/// a sealed recording.
fn create_private(out: &Path) -> Result<File, CmdLogError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| file_err(out, e))
}

#[cfg(feature = "files")]
/// Writes the decrypted zip: `term_data.txt` + `term_times.txt` for a pty session,
/// `data_from_client.txt` + `data_from_server.txt` otherwise, and `requests.txt`.
/// Each file is streamed, reading the log twice through `open` (a fresh reader per
/// pass), so memory stays at one block plus the requests however long the log.
pub fn write_zip<R: Read>(
    mut open: impl FnMut() -> Result<LogReader<R>, CmdLogError>,
    out: &Path,
) -> Result<Exported, CmdLogError> {
    let mut first = open()?;
    let file = create_private(out)?;
    let mut zip = zip::ZipWriter::new(BufWriter::new(file));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let err = |e: &dyn std::fmt::Display| file_err(out, e);
    let is_data = |p: &Packet| p.code != CODE_REQUEST;
    let meta = first.meta().clone();
    let mut packets = 0;
    let mut requests = String::new();
    // The first file comes from the first pass, which also gathers the requests.
    let (first_name, first_source, second_name) = match &meta.pty {
        Some(_) => ("term_data.txt", SOURCE_SERVER, "term_times.txt"),
        None => (
            "data_from_client.txt",
            SOURCE_CLIENT,
            "data_from_server.txt",
        ),
    };
    zip.start_file(first_name, options).map_err(|e| err(&e))?;
    if let Some(pty) = &meta.pty {
        zip.write_all(session_started(&meta, pty).as_bytes())
            .map_err(|e| err(&e))?;
    }
    while let Some(p) = first.next_packet()? {
        packets += 1;
        if !is_data(&p) {
            requests.push_str(&format!(
                "{:.6} {}\n",
                p.elapsed_us as f64 / 1e6,
                String::from_utf8_lossy(&p.data).replacen('\0', " ", 1)
            ));
        } else if p.source == first_source {
            zip.write_all(&p.data).map_err(|e| err(&e))?;
        }
    }
    if meta.pty.is_some() {
        zip.write_all(session_done(&meta).as_bytes())
            .map_err(|e| err(&e))?;
    }
    zip.start_file(second_name, options).map_err(|e| err(&e))?;
    let mut second = open()?;
    let mut last = 0u64;
    while let Some(p) = second.next_packet()? {
        if !is_data(&p) || p.source != SOURCE_SERVER {
            continue;
        }
        if meta.pty.is_some() {
            let line = format!(
                "{:.6} {}\n",
                (p.elapsed_us - last.min(p.elapsed_us)) as f64 / 1e6,
                p.data.len()
            );
            zip.write_all(line.as_bytes()).map_err(|e| err(&e))?;
            last = p.elapsed_us;
        } else {
            zip.write_all(&p.data).map_err(|e| err(&e))?;
        }
    }
    if !requests.is_empty() {
        zip.start_file("requests.txt", options)
            .map_err(|e| err(&e))?;
        zip.write_all(requests.as_bytes()).map_err(|e| err(&e))?;
    }
    zip.finish()
        .and_then(|mut w| w.flush().map_err(Into::into))
        .map_err(|e| err(&e))?;
    Ok(Exported {
        packets,
        warning: first.warning,
    })
}

/// Events held back while an export of a 0x0 pty waits for a window size.
const HOLD_BACK: usize = 4 << 20;

/// `COLSxROWS`, when both are positive.
fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (c, r) = s.split_once('x')?;
    let (c, r) = (c.parse().ok()?, r.parse().ok()?);
    (c > 0 && r > 0).then_some((c, r))
}

/// Writes asciicast v2 to `out` (a file readable by its owner only), streamed: see
/// [`asciicast`].
#[cfg(feature = "files")]
pub fn write_asciicast<R: Read>(r: LogReader<R>, out: &Path) -> Result<Exported, CmdLogError> {
    let mut w = BufWriter::new(create_private(out)?);
    let exported = cast(r, &mut w, |e| file_err(out, e))?;
    w.flush().map_err(|e| file_err(out, e))?;
    Ok(exported)
}

/// Writes asciicast v2 to `w`, streamed: a header line, then `[seconds, "o", text]` for
/// output and `[seconds, "r", "COLSxROWS"]` for window changes. What the console's
/// page plays (in memory, in the browser) and `portcullis decrypt --format asciicast`
/// writes.
pub fn asciicast<R: Read>(r: LogReader<R>, w: &mut impl Write) -> Result<Exported, CmdLogError> {
    cast(r, w, |e| {
        CmdLogError::Format(format!("cannot write the asciicast: {e}"))
    })
}

fn cast<R: Read, W: Write>(
    mut r: LogReader<R>,
    w: &mut W,
    write_err: impl Fn(std::io::Error) -> CmdLogError,
) -> Result<Exported, CmdLogError> {
    let pty = r.meta().pty.clone().unwrap_or(PtyMeta {
        term: None,
        width: 80,
        height: 24,
        modes: vec![],
    });
    // OpenSSH asks for a 0x0 pty for `ssh -tt` without a terminal: a player cannot
    // draw that. The header then takes the first window change's size (the events
    // before it are held back, up to a bound), or 80x24.
    let no_size = pty.width == 0 || pty.height == 0;
    let mut size = if no_size {
        None
    } else {
        Some((pty.width, pty.height))
    };
    let mut held: Vec<String> = Vec::new();
    let mut held_bytes = 0usize;
    let started_at = r.meta().started_at;
    let header = |size: Option<(u32, u32)>| {
        let (width, height) = size.unwrap_or((80, 24));
        serde_json::json!({
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": started_at,
            "env": {"TERM": pty.term.clone().unwrap_or_else(|| "xterm".into())},
        })
        .to_string()
    };
    let mut started = false;
    if !no_size {
        writeln!(w, "{}", header(size)).map_err(&write_err)?;
        started = true;
    }
    let mut packets = 0;
    while let Some(p) = r.next_packet()? {
        packets += 1;
        let t = p.elapsed_us as f64 / 1e6;
        let event = if p.code == CODE_REQUEST {
            let text = String::from_utf8_lossy(&p.data);
            match text.strip_prefix("window-change\0") {
                Some(s) => {
                    if size.is_none() {
                        size = parse_size(s);
                    }
                    serde_json::json!([t, "r", s])
                }
                None => continue,
            }
        } else if p.source == SOURCE_SERVER {
            serde_json::json!([t, "o", String::from_utf8_lossy(&p.data)])
        } else {
            continue;
        };
        if started {
            writeln!(w, "{event}").map_err(&write_err)?;
            continue;
        }
        let event = event.to_string();
        held_bytes += event.len();
        held.push(event);
        if size.is_some() || held_bytes > HOLD_BACK {
            writeln!(w, "{}", header(size)).map_err(&write_err)?;
            for e in held.drain(..) {
                writeln!(w, "{e}").map_err(&write_err)?;
            }
            started = true;
        }
    }
    if !started {
        writeln!(w, "{}", header(size)).map_err(&write_err)?;
        for e in held.drain(..) {
            writeln!(w, "{e}").map_err(&write_err)?;
        }
    }
    Ok(Exported {
        packets,
        warning: r.warning,
    })
}

/// The target's terminal output in a log, piece by piece, each with the pause before
/// it as the session ran: what `portcullis replay` plays. Requests and the client's
/// input are left out, as in the reference tool's replay.
#[derive(Debug)]
pub struct TerminalOutput<R> {
    reader: LogReader<R>,
    last_us: u64,
}

impl<R: Read> TerminalOutput<R> {
    /// Starts at the first packet of `reader`.
    pub fn new(reader: LogReader<R>) -> Self {
        TerminalOutput { reader, last_us: 0 }
    }

    /// The next piece of output and the pause before it, or `None` at the end.
    pub fn next_output(&mut self) -> Result<Option<(std::time::Duration, Vec<u8>)>, CmdLogError> {
        while let Some(p) = self.reader.next_packet()? {
            if p.source != SOURCE_SERVER || p.code == CODE_REQUEST {
                continue;
            }
            let pause = std::time::Duration::from_micros(p.elapsed_us.saturating_sub(self.last_us));
            self.last_us = p.elapsed_us;
            return Ok(Some((pause, p.data)));
        }
        Ok(None)
    }

    /// What was wrong past the last whole block, if anything (see [`LogReader::warning`]).
    pub fn warning(&self) -> Option<&str> {
        self.reader.warning()
    }
}
