//! `portcullis sessions`, `keygen`, `decrypt` and `replay`: the session table and the
//! sealed command logs, for operators and auditors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use std::sync::Arc;

use crate::recording::cmdlog::{self, CmdLogError, OpeningKey};
use crate::recording::store;
use crate::recording::{SessionFilter, SessionRecord};
use crate::text::escape;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum DecryptFormat {
    /// The hosted product's zip: term_data.txt + term_times.txt, or data_from_*.txt.
    Zip,
    /// asciicast v2, playable with `asciinema play`.
    Asciicast,
}

/// What `portcullis sessions` lists, and how.
#[derive(Debug)]
pub(super) struct Listing<'a> {
    pub running: bool,
    pub json: bool,
    pub user: Option<&'a str>,
    pub target: Option<&'a str>,
    pub since: Option<std::time::Duration>,
    pub limit: usize,
}

pub(super) fn sessions(path: &Path, listing: Listing<'_>) -> anyhow::Result<ExitCode> {
    let Listing {
        running,
        json,
        user,
        target,
        since,
        limit,
    } = listing;
    let config = crate::config::Config::load(path)?;
    let filter = SessionFilter {
        user: user.map(str::to_string),
        target: target.map(str::to_string),
        since: since.map(|d| SystemTime::now() - d),
        limit,
    };
    let rows = match &config.state {
        // Every replica's sessions, from the shared store.
        Some(state) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let records = runtime.block_on(async {
                let store = crate::state::Postgres::connect(state).await?;
                store.sessions(running).await
            });
            let records = records.map_err(|e| anyhow::anyhow!("shared state: {e}"))?;
            crate::recording::filter_sessions(records, &filter)
        }
        None => crate::recording::list_sessions(&config.session_log, running, &filter)
            .map_err(|e| anyhow::anyhow!("{}: {e}", config.session_log.display()))?,
    };
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print_sessions(&rows, running, &config.recording_dir);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints sessions as a table. Every field a user or a target chose (logins, target
/// names, reasons) is escaped: none reaches the operator's terminal as a control
/// character.
fn print_sessions(rows: &[SessionRecord], running: bool, recording_dir: &Path) {
    println!(
        "{:<24} {:<24} {:<22} {:<10} {:<7} {:>8} {:>10} {:>10}  POLICY / REASON",
        "START", "USER", "TARGET", "LOGIN", "ACTION", "SECONDS", "BYTES IN", "BYTES OUT",
    );
    for r in rows {
        let target = format!("{}:{}", r.target_host, r.target_port);
        let seconds = if running {
            r.elapsed_at(SystemTime::now()).as_secs_f64()
        } else {
            r.duration_ms as f64 / 1000.0
        };
        println!(
            "{:<24} {:<24} {:<22} {:<10} {:<7} {:>8.1} {:>10} {:>10}  {} {}",
            escape(r.start.get(..23).unwrap_or(&r.start)),
            escape(&r.email),
            escape(&target),
            escape(&r.login),
            escape(&r.action),
            seconds,
            r.bytes_from_client,
            r.bytes_to_client,
            escape(r.policy.as_deref().unwrap_or("-")),
            escape(&r.reason)
        );
        for log in &r.command_logs {
            println!("    recording: {}", where_is(log, recording_dir));
        }
    }
}

/// Where a recording is: its path, or its object, with the local copy while the
/// upload is pending (on this machine).
fn where_is(log: &str, recording_dir: &Path) -> String {
    if store::parse_url(log).is_none() {
        return escape(log).into_owned();
    }
    let name = log.rsplit('/').next().unwrap_or_default();
    let local = recording_dir.join(name);
    let partial = recording_dir.join(format!("{name}.partial"));
    match [&local, &partial].into_iter().find(|p| p.exists()) {
        Some(p) => format!(
            "{} (upload pending; on the disk: {})",
            escape(log),
            escape(&p.display().to_string())
        ),
        None => escape(log).into_owned(),
    }
}

pub(super) fn keygen(output: &Path) -> anyhow::Result<ExitCode> {
    let public = cmdlog::keygen(output)?;
    eprintln!(
        "wrote {} (private: keep it off the proxy) and {} (set it as [recording] public_key)",
        output.display(),
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The log's bytes counted into a progress bar as they are read.
struct Counted<R> {
    inner: R,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

type LogFileReader = cmdlog::LogReader<Counted<Box<dyn std::io::Read>>>;

/// Where a log is read from: a file, or an object (`s3://bucket/key`), streamed.
enum LogSource {
    File(PathBuf),
    Object {
        url: String,
        store: store::Store,
        key: String,
        runtime: Arc<tokio::runtime::Runtime>,
    },
}

impl LogSource {
    /// `input` is a path or an `s3://` URL; the store's endpoint and credentials come
    /// from the environment, or from `config`'s `[recording.s3]` when given.
    fn parse(input: &str, config: Option<&Path>) -> anyhow::Result<LogSource> {
        let Some((bucket, key)) = store::parse_url(input) else {
            if input.starts_with("s3://") {
                anyhow::bail!("{input:?}: an object is named s3://BUCKET/KEY");
            }
            return Ok(LogSource::File(PathBuf::from(input)));
        };
        let config = match config {
            Some(p) => crate::config::Config::load(p)?.recording_store,
            None => None,
        };
        let store = store::Store::for_bucket(bucket, config.as_ref())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(LogSource::Object {
            url: input.to_string(),
            store,
            key: key.to_string(),
            runtime: Arc::new(runtime),
        })
    }

    /// The name in messages (a path or the URL).
    fn name(&self) -> PathBuf {
        match self {
            LogSource::File(p) => p.clone(),
            LogSource::Object { url, .. } => PathBuf::from(url),
        }
    }

    /// What the default output is named after: the file, or the object's last name
    /// segment in the current directory.
    fn stem(&self) -> PathBuf {
        match self {
            LogSource::File(p) => p.clone(),
            LogSource::Object { key, .. } => {
                PathBuf::from(key.rsplit('/').next().unwrap_or(key.as_str()))
            }
        }
    }

    fn len(&self) -> u64 {
        match self {
            LogSource::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            LogSource::Object {
                store,
                key,
                runtime,
                ..
            } => runtime.block_on(store.size(key)).unwrap_or(0),
        }
    }

    fn open(&self) -> Result<Box<dyn std::io::Read>, CmdLogError> {
        let failed = |message: String| CmdLogError::File {
            path: self.name(),
            message,
        };
        Ok(match self {
            LogSource::File(p) => Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(p).map_err(|e| failed(e.to_string()))?,
            )),
            LogSource::Object {
                store,
                key,
                runtime,
                ..
            } => Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                store::ObjectReader::open(Arc::clone(runtime), store, key)
                    .map_err(|e| failed(e.to_string()))?,
            )),
        })
    }
}

/// A reading error of the log, named by the log's path (errors about another file
/// name theirs already).
fn about_log(input: &Path) -> impl Fn(cmdlog::CmdLogError) -> cmdlog::CmdLogError + '_ {
    move |e| match e {
        CmdLogError::File { .. } => e,
        other => CmdLogError::File {
            path: input.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// Opens the log for one pass, the progress bar (if any) starting over.
fn open_log(
    input: &LogSource,
    key: &cmdlog::OpeningKey,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<LogFileReader, cmdlog::CmdLogError> {
    let inner = input.open()?;
    if let Some(b) = bar {
        b.set_position(0);
    }
    let counted = Counted {
        inner,
        bar: bar.cloned(),
    };
    cmdlog::LogReader::new(counted, key)
}

/// A progress bar for `passes` reads of a large log, when a person is watching.
fn progress_bar(input: &LogSource, passes: u32) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    let watched = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    if !watched {
        return None;
    }
    let len = input.len();
    (len > 16 << 20).then(|| {
        let bar = indicatif::ProgressBar::new(len);
        let template = if passes > 1 {
            "decrypting (two passes) {bar:40} {bytes}/{total_bytes} ({eta})"
        } else {
            "decrypting {bar:40} {bytes}/{total_bytes} ({eta})"
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    })
}

pub(super) fn decrypt(
    input: &str,
    config: Option<&Path>,
    key: &Path,
    output: Option<PathBuf>,
    format: DecryptFormat,
) -> anyhow::Result<ExitCode> {
    use crate::recording::cmdlog;
    let key = cmdlog::OpeningKey::read(key)?;
    let source = LogSource::parse(input, config)?;
    let stem = source.stem();
    let out = output.unwrap_or_else(|| match format {
        DecryptFormat::Zip => PathBuf::from(format!("{}-decrypted.zip", stem.display())),
        DecryptFormat::Asciicast => PathBuf::from(format!("{}.cast", stem.display())),
    });
    let name = source.name();
    let input = name.as_path();
    // Written beside the output and renamed at the end: a failure (a damaged input
    // that is not a log, a full disk) leaves no half-written file and any earlier
    // output as it was.
    let tmp = PathBuf::from(format!("{}.tmp", out.display()));
    let passes = match format {
        DecryptFormat::Zip => 2,
        DecryptFormat::Asciicast => 1,
    };
    let bar = progress_bar(&source, passes);
    let done = match format {
        DecryptFormat::Zip => cmdlog::write_zip(|| open_log(&source, &key, bar.as_ref()), &tmp),
        DecryptFormat::Asciicast => {
            open_log(&source, &key, bar.as_ref()).and_then(|r| cmdlog::write_asciicast(r, &tmp))
        }
    }
    .and_then(|done| {
        std::fs::rename(&tmp, &out)
            .map(|()| done)
            .map_err(|e| cmdlog::CmdLogError::File {
                path: out.clone(),
                message: e.to_string(),
            })
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let done = done.map_err(about_log(input)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    if let Some(w) = &done.warning {
        eprintln!("warning: {}: {w}", input.display());
    }
    eprintln!("wrote {} ({} packets)", out.display(), done.packets);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn replay(
    input: &str,
    config: Option<&Path>,
    key: &Path,
    speed: f64,
) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    anyhow::ensure!(speed > 0.0, "--speed must be positive");
    let key = OpeningKey::read(key)?;
    let source = LogSource::parse(input, config)?;
    let name = source.name();
    let input = name.as_path();
    // Streamed: the replay starts at once, however long the log.
    let about = about_log(input);
    let reader = open_log(&source, &key, None).map_err(&about)?;
    let mut output = cmdlog::TerminalOutput::new(reader);
    let mut out = std::io::stdout().lock();
    while let Some((pause, data)) = output.next_output().map_err(&about)? {
        // Long pauses are shortened, as scriptreplay users expect.
        std::thread::sleep(pause.div_f64(speed).min(std::time::Duration::from_secs(2)));
        out.write_all(&data)?;
        out.flush()?;
    }
    if let Some(w) = output.warning() {
        eprintln!("warning: {}: {w}", input.display());
    }
    Ok(ExitCode::SUCCESS)
}
