//! The command line. `serve` runs the proxy; the other commands work on its parts, one
//! file per family: `ca` (the gateway CA), `policy` (check and evaluate modules), and
//! `recording` (the session table, the auditor's keys, decrypt and replay).

mod ca;
mod logins;
mod policy;
mod policy_test;
mod recording;
mod scaffold;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        command: ca::CaCommand,
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
        /// One JSON record per line instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// List single sign-on logins, or revoke them (`logins revoke EMAIL|FINGERPRINT`).
    Logins {
        #[arg(long, short, global = true, default_value = "portcullis.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: Option<logins::LoginsCommand>,
    },
    /// Work with policy modules.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Generate the auditor's key pair for sealed command logs: FILE (private, 0600)
    /// and FILE.pub (the proxy's `[recording] public_key`).
    Keygen {
        #[arg(short = 'o', long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Decrypt a sealed command log into a zip (or an asciicast v2 recording).
    Decrypt {
        /// A log file, or an object in the store: s3://BUCKET/KEY (read as it streams).
        #[arg(short = 'i', long, value_name = "SSHLOG")]
        input: String,
        /// Take the store's endpoint and credentials from this configuration's
        /// [recording.s3] (default: the AWS_* environment).
        #[arg(short = 'c', long, value_name = "CONFIG")]
        config: Option<PathBuf>,
        #[arg(short = 'k', long, value_name = "PRIVATE_KEY")]
        key: PathBuf,
        /// Default: INPUT-decrypted.zip (or INPUT.cast).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "zip")]
        format: recording::DecryptFormat,
    },
    /// Replay a recorded terminal session in this terminal.
    Replay {
        /// A log file, or s3://BUCKET/KEY.
        #[arg(short = 'i', long, value_name = "SSHLOG")]
        input: String,
        /// As for decrypt.
        #[arg(short = 'c', long, value_name = "CONFIG")]
        config: Option<PathBuf>,
        #[arg(short = 'k', long, value_name = "PRIVATE_KEY")]
        key: PathBuf,
        /// Playback speed factor (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Ca { config, command } => ca::run(&config, command),
        Command::Sessions {
            config,
            user,
            target,
            since,
            limit,
            running,
            json,
        } => recording::sessions(
            &config,
            recording::Listing {
                running,
                json,
                user: user.as_deref(),
                target: target.as_deref(),
                since,
                limit,
            },
        ),
        Command::Logins { config, command } => logins::run(&config, command),
        Command::Keygen { output } => recording::keygen(&output),
        Command::Decrypt {
            input,
            config,
            key,
            output,
            format,
        } => recording::decrypt(&input, config.as_deref(), &key, output, format),
        Command::Replay {
            input,
            config,
            key,
            speed,
        } => recording::replay(&input, config.as_deref(), &key, speed),
        Command::Policy(policy::PolicyCommand::Check {
            dir,
            json,
            allowed_signers,
        }) => policy::check(dir, json, allowed_signers),
        Command::Policy(policy::PolicyCommand::Eval(args)) => policy::eval(*args),
        Command::Policy(policy::PolicyCommand::Test {
            dir,
            cases,
            json,
            allowed_signers,
        }) => policy_test::run(&dir, cases, json, allowed_signers.as_deref()),
        Command::Policy(policy::PolicyCommand::Bench {
            request,
            iterations,
        }) => policy::bench(*request, iterations),
        Command::Policy(policy::PolicyCommand::New(args)) => scaffold::new(args),
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
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = match format {
        // Every line escaped: fields hold text that clients and targets chose.
        LogFormat::Text => log
            .with_writer(move || crate::text::EscapingWriter {
                inner: std::io::stderr(),
                keep_colours: ansi,
            })
            .try_init(),
        // JSON escapes control characters in strings itself.
        LogFormat::Json => log
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .try_init(),
    };
}
