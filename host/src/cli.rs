//! The command line: `portcullis policy check|eval`, and the commands of later stages.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::policy::{
    Authentication, ChannelDecision, ChannelRequest, DecisionRequest, Evaluation, Limits,
    ModuleInfo, PolicyEngine,
};
use crate::server::target::split_host_port;

/// Self-hosted SSH access proxy with WebAssembly policies.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// How the log on stderr is written: `text`, or `json` (one object a line, for log
    /// shippers). RUST_LOG sets the level (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The configuration file.
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
    },
    /// Manage the gateway CA.
    Ca {
        /// The configuration file (its `[ca] dir` holds the CA).
        #[arg(long, short, global = true, default_value = "portcullis.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Show recent sessions from the session log.
    Sessions {
        #[arg(long, short, default_value = "portcullis.toml")]
        config: PathBuf,
        /// Only sessions of users whose email contains this.
        #[arg(long)]
        user: Option<String>,
        /// Only sessions to targets whose host contains this (or with this address).
        #[arg(long)]
        target: Option<String>,
        /// Only sessions started within this long ago, e.g. 2h, 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// At most this many sessions (the most recent).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The sessions running now (bytes as of their last minute), not the ended ones.
        #[arg(long)]
        running: bool,
    },
    /// Work with policy modules.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Generate the auditor's key pair for sealed command logs: FILE (private, 0600)
    /// and FILE.pub (the proxy's `[recording] public_key`).
    Keygen {
        #[arg(short = 'o', long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Decrypt a sealed command log into a zip (or an asciicast v2 recording).
    Decrypt {
        #[arg(short = 'i', long, value_name = "SSHLOG")]
        input: PathBuf,
        #[arg(short = 'k', long, value_name = "PRIVATE_KEY")]
        key: PathBuf,
        /// Default: INPUT-decrypted.zip (or INPUT.cast).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "zip")]
        format: DecryptFormat,
    },
    /// Replay a recorded terminal session in this terminal.
    Replay {
        #[arg(short = 'i', long, value_name = "SSHLOG")]
        input: PathBuf,
        #[arg(short = 'k', long, value_name = "PRIVATE_KEY")]
        key: PathBuf,
        /// Playback speed factor (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DecryptFormat {
    /// The hosted product's zip: term_data.txt + term_times.txt, or data_from_*.txt.
    Zip,
    /// asciicast v2, playable with `asciinema play`.
    Asciicast,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the gateway user CA and host CA (fails if a CA exists).
    Init {
        #[arg(long, value_enum, default_value = "ecdsa")]
        key_type: crate::ca::KeyKind,
    },
    /// Print the user CA public keys for the targets' TrustedUserCAKeys file.
    Show {
        /// Print the @cert-authority line for users' known_hosts instead.
        #[arg(long)]
        known_hosts: bool,
    },
    /// Add a new user CA key that signs from now on; old keys stay trusted.
    Rotate {
        #[arg(long, value_enum, default_value = "ecdsa")]
        key_type: crate::ca::KeyKind,
    },
    /// Remove every user CA key but the newest (after targets trust the new one).
    Retire,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Load and validate every module of a directory and its configuration.
    Check {
        /// The policy directory.
        dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Decide one connection offline and print the decision as JSON.
    Eval(Box<EvalArgs>),
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// The policy directory.
    #[arg(long, value_name = "DIR")]
    policies: PathBuf,
    /// The user's email address.
    #[arg(long, value_name = "EMAIL")]
    user: String,
    /// A group of the user (repeat for several).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// The target, as a user would type it: HOST, HOST:PORT or [IPV6]:PORT.
    #[arg(long, value_name = "HOST[:PORT]")]
    target: String,
    /// The address the target resolves to (default: resolve HOST now).
    #[arg(long, value_name = "IP")]
    resolve: Option<IpAddr>,
    /// The login asked for on the target.
    #[arg(long, value_name = "NAME")]
    login: String,
    /// The client's address.
    #[arg(long, value_name = "IP[:PORT]", default_value = "127.0.0.1")]
    source: String,
    /// The time of the connection (default: now), e.g. 2026-11-23T09:30:00+01:00.
    #[arg(long, value_name = "RFC3339")]
    time: Option<String>,
    /// The client's SSH version string.
    #[arg(long, value_name = "VERSION", default_value = "SSH-2.0-OpenSSH_9.2p1")]
    client_version: String,
    /// The fingerprint of the key the user authenticated with.
    #[arg(long, value_name = "SHA256:...", default_value = "SHA256:policy-eval")]
    key_fingerprint: String,
    /// Also decide a channel request: shell, exec:COMMAND, subsystem:NAME,
    /// direct-tcpip:HOST:PORT, tcpip-forward:ADDR:PORT, agent or x11 (repeatable).
    #[arg(long = "channel", value_name = "REQUEST")]
    channels: Vec<String>,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Ca { config, command } => ca(&config, command),
        Command::Sessions {
            config,
            user,
            target,
            since,
            limit,
            running,
        } => sessions(
            &config,
            running,
            user.as_deref(),
            target.as_deref(),
            since,
            limit,
        ),
        Command::Keygen { output } => keygen(&output),
        Command::Decrypt {
            input,
            key,
            output,
            format,
        } => decrypt(&input, &key, output, format),
        Command::Replay { input, key, speed } => replay(&input, &key, speed),
        Command::Policy(PolicyCommand::Check { dir, json }) => policy_check(dir, json),
        Command::Policy(PolicyCommand::Eval(args)) => policy_eval(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(2)
        }
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = crate::config::Config::load(path)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("cannot handle SIGTERM: {e}");
                        return std::future::pending().await;
                    }
                };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            }
        };
        crate::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn sessions(
    path: &std::path::Path,
    running: bool,
    user: Option<&str>,
    target: Option<&str>,
    since: Option<std::time::Duration>,
    limit: usize,
) -> anyhow::Result<ExitCode> {
    let config = crate::config::Config::load(path)?;
    let since = since.map(|d| SystemTime::now() - d);
    crate::recording::print_sessions(&config.session_log, running, user, target, since, limit)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.session_log.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn ca(path: &std::path::Path, command: CaCommand) -> anyhow::Result<ExitCode> {
    let config = crate::config::Config::load(path)?;
    let dir = &config.ca_dir;
    let print_user = |ca: &crate::ca::Ca| {
        for line in ca.user_ca_lines() {
            println!("{line}");
        }
    };
    match command {
        CaCommand::Init { key_type } => {
            let ca = crate::ca::init(dir, key_type)?;
            eprintln!(
                "created the gateway CA in {}; targets trust it with TrustedUserCAKeys:",
                dir.display()
            );
            print_user(&ca);
        }
        CaCommand::Show { known_hosts } => {
            let ca = crate::ca::Ca::open(dir)?;
            if known_hosts {
                println!("{}", ca.known_hosts_line());
            } else {
                print_user(&ca);
            }
        }
        CaCommand::Rotate { key_type } => {
            let ca = crate::ca::rotate(dir, key_type)?;
            eprintln!("added a user CA key; it signs from now on. Targets should trust all of:");
            print_user(&ca);
        }
        CaCommand::Retire => {
            for key in crate::ca::retire_old(dir)? {
                eprintln!(
                    "retired {}",
                    key.fingerprint(russh::keys::ssh_key::HashAlg::Sha256)
                );
            }
            print_user(&crate::ca::Ca::open(dir)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn keygen(output: &std::path::Path) -> anyhow::Result<ExitCode> {
    let public = crate::recording::cmdlog::keygen(output)?;
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

type LogFileReader =
    crate::recording::cmdlog::LogReader<Counted<std::io::BufReader<std::fs::File>>>;

/// A reading error of the log, named by the log's path (errors about another file
/// name theirs already).
fn about_log(
    input: &std::path::Path,
) -> impl Fn(crate::recording::cmdlog::CmdLogError) -> crate::recording::cmdlog::CmdLogError + '_ {
    use crate::recording::cmdlog::CmdLogError;
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
    input: &std::path::Path,
    key: &crate::recording::cmdlog::OpeningKey,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<LogFileReader, crate::recording::cmdlog::CmdLogError> {
    let file =
        std::fs::File::open(input).map_err(|e| crate::recording::cmdlog::CmdLogError::File {
            path: input.to_path_buf(),
            message: e.to_string(),
        })?;
    if let Some(b) = bar {
        b.set_position(0);
    }
    let counted = Counted {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        bar: bar.cloned(),
    };
    crate::recording::cmdlog::LogReader::new(counted, key)
}

/// A progress bar for `passes` reads of a large log, when a person is watching.
fn progress_bar(input: &std::path::Path, passes: u32) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    let len = std::fs::metadata(input).map(|m| m.len()).unwrap_or(0);
    let watched = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    (len > 16 << 20 && watched).then(|| {
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

fn decrypt(
    input: &std::path::Path,
    key: &std::path::Path,
    output: Option<PathBuf>,
    format: DecryptFormat,
) -> anyhow::Result<ExitCode> {
    use crate::recording::cmdlog;
    let key = cmdlog::OpeningKey::read(key)?;
    let out = output.unwrap_or_else(|| match format {
        DecryptFormat::Zip => PathBuf::from(format!("{}-decrypted.zip", input.display())),
        DecryptFormat::Asciicast => PathBuf::from(format!("{}.cast", input.display())),
    });
    // Written beside the output and renamed at the end: a failure (a damaged input
    // that is not a log, a full disk) leaves no half-written file and any earlier
    // output as it was.
    let tmp = PathBuf::from(format!("{}.tmp", out.display()));
    let passes = match format {
        DecryptFormat::Zip => 2,
        DecryptFormat::Asciicast => 1,
    };
    let bar = progress_bar(input, passes);
    let done = match format {
        DecryptFormat::Zip => cmdlog::write_zip(|| open_log(input, &key, bar.as_ref()), &tmp),
        DecryptFormat::Asciicast => {
            open_log(input, &key, bar.as_ref()).and_then(|r| cmdlog::write_asciicast(r, &tmp))
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

fn replay(input: &std::path::Path, key: &std::path::Path, speed: f64) -> anyhow::Result<ExitCode> {
    use crate::recording::cmdlog::{self, CODE_REQUEST, SOURCE_SERVER};
    use std::io::Write;
    anyhow::ensure!(speed > 0.0, "--speed must be positive");
    let key = cmdlog::OpeningKey::read(key)?;
    // Streamed: the replay starts at once, however long the log.
    let about = about_log(input);
    let mut r = open_log(input, &key, None).map_err(&about)?;
    let mut out = std::io::stdout().lock();
    let mut last = 0u64;
    while let Some(p) = r.next_packet().map_err(&about)? {
        if p.source != SOURCE_SERVER || p.code == CODE_REQUEST {
            continue;
        }
        let wait = (p.elapsed_us.saturating_sub(last)) as f64 / 1e6 / speed;
        // Long pauses are shortened, as scriptreplay users expect.
        std::thread::sleep(std::time::Duration::from_secs_f64(wait.min(2.0)));
        last = p.elapsed_us;
        out.write_all(&p.data)?;
        out.flush()?;
    }
    if let Some(w) = r.warning() {
        eprintln!("warning: {}: {w}", input.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The error and its causes, each once: many errors here already name their cause.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: not in files, pipes or the journal.
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => log.try_init(),
        LogFormat::Json => log.json().flatten_event(true).try_init(),
    };
}

fn policy_check(dir: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    match PolicyEngine::new(&dir, Limits::default()) {
        Ok(engine) => {
            let modules = engine.current().modules();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&CheckReport {
                        ok: true,
                        modules,
                        errors: vec![]
                    })?
                );
            } else {
                print_modules(&dir, &modules);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(crate::policy::PolicyError::Load(errors)) => {
            if json {
                let report = CheckReport {
                    ok: false,
                    modules: vec![],
                    errors: errors.0,
                };
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eprintln!("error: {errors}");
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Serialize)]
struct CheckReport {
    ok: bool,
    modules: Vec<ModuleInfo>,
    errors: Vec<crate::policy::LoadError>,
}

fn print_modules(dir: &std::path::Path, modules: &[ModuleInfo]) {
    if modules.is_empty() {
        println!(
            "{}: no policy modules; every connection would be blocked",
            dir.display()
        );
        return;
    }
    println!(
        "{}: {} module(s) OK, in precedence order:",
        dir.display(),
        modules.len()
    );
    for m in modules {
        let config = m
            .config
            .as_ref()
            .and_then(|c| c.file_name())
            .map_or("no configuration".to_string(), |c| {
                format!("configured by {}", c.to_string_lossy())
            });
        println!("  {}  ({config})", m.name);
        if !m.denied_imports.is_empty() {
            // wasi:cli/stderr@0.2.6 -> wasi:cli/*; the full list is in --json.
            let mut families: Vec<String> = m
                .denied_imports
                .iter()
                .map(|i| {
                    i.split_once('/')
                        .map_or(i.clone(), |(pkg, _)| format!("{pkg}/*"))
                })
                .collect();
            families.sort();
            families.dedup();
            println!(
                "      {} import(s) outside the policy world, linked to traps: {}",
                m.denied_imports.len(),
                families.join(", ")
            );
        }
    }
}

#[derive(Serialize)]
struct EvalReport<'a> {
    #[serde(flatten)]
    decision: &'a Evaluation,
    login: &'a str,
    login_permitted: bool,
    request: &'a DecisionRequest,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    channels: Vec<ChannelReport>,
}

#[derive(Serialize)]
struct ChannelReport {
    request: ChannelRequest,
    #[serde(flatten)]
    decision: ChannelDecision,
}

fn policy_eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let (host, port) = split_host_port(&args.target).map_err(anyhow::Error::msg)?;
    let target_ip = match args.resolve {
        Some(ip) => Some(ip),
        None => host.parse::<IpAddr>().ok().or_else(|| {
            (host.as_str(), port)
                .to_socket_addrs()
                .ok()?
                .next()
                .map(|a| a.ip())
        }),
    };
    let source = match args.source.parse::<SocketAddr>() {
        Ok(sa) => sa,
        Err(_) => SocketAddr::new(
            args.source.parse::<IpAddr>().map_err(|_| {
                anyhow::anyhow!("--source {:?} is not an IP address or IP:PORT", args.source)
            })?,
            50_000,
        ),
    };
    let now = match &args.time {
        None => SystemTime::now(),
        Some(t) => parse_time(t)?,
    };
    let channels = args
        .channels
        .iter()
        .map(|c| parse_channel(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let request = DecisionRequest {
        session_id: "policy-eval".into(),
        email: args.user,
        groups: args.groups,
        authentication: Authentication::PublicKey(args.key_fingerprint),
        source,
        target_host: host,
        target_ip,
        target_port: port,
        login: args.login,
        now,
        client_version: args.client_version,
    };
    let engine = PolicyEngine::new(&args.policies, Limits::default())?;
    let set = engine.current();
    let decision = set.decide(&request);
    let channels = channels
        .into_iter()
        .map(|c| ChannelReport {
            decision: set.check_channel(&request, &decision, &c),
            request: c,
        })
        .collect();
    let report = EvalReport {
        decision: &decision,
        login: &request.login,
        login_permitted: decision.permits_login(&request.login),
        request: &request,
        channels,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

fn parse_time(t: &str) -> anyhow::Result<SystemTime> {
    let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            anyhow::anyhow!(
                "--time {t:?} is not an RFC 3339 time ({e}), e.g. 2026-11-23T09:30:00+01:00"
            )
        })?;
    Ok(SystemTime::from(dt))
}

fn parse_channel(s: &str) -> anyhow::Result<ChannelRequest> {
    let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
    let host_port = |a: &str| -> anyhow::Result<(String, u16)> {
        let (h, p) = split_host_port(a).map_err(anyhow::Error::msg)?;
        Ok((h, p))
    };
    Ok(match kind {
        "shell" => ChannelRequest::Shell,
        "exec" => ChannelRequest::Exec {
            command: arg.to_string(),
        },
        "subsystem" => ChannelRequest::Subsystem {
            name: arg.to_string(),
        },
        "direct-tcpip" => {
            let (host, port) = host_port(arg)?;
            ChannelRequest::DirectTcpip { host, port }
        }
        "tcpip-forward" => {
            let (address, port) = host_port(arg)?;
            ChannelRequest::TcpipForward { address, port }
        }
        "agent" => ChannelRequest::AgentForwarding,
        "x11" => ChannelRequest::X11Forwarding,
        _ => anyhow::bail!(
            "--channel {s:?}: expected shell, exec:COMMAND, subsystem:NAME, direct-tcpip:HOST:PORT, \
             tcpip-forward:ADDR:PORT, agent or x11"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_with_offsets_parse() {
        let t = parse_time("2026-11-23T09:30:00+01:00").unwrap();
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs, 1_795_392_000 + 8 * 3600 + 30 * 60);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn channel_requests_parse_from_their_short_form() {
        assert_eq!(
            parse_channel("subsystem:sftp").unwrap(),
            ChannelRequest::Subsystem {
                name: "sftp".into()
            }
        );
        assert_eq!(
            parse_channel("direct-tcpip:db:5432").unwrap(),
            ChannelRequest::DirectTcpip {
                host: "db".into(),
                port: 5432
            }
        );
        assert!(parse_channel("teleport").is_err());
    }
}
