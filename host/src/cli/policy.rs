//! `portcullis policy`: check a policy directory, and decide a connection offline with
//! the same resolution the proxy uses.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::identity::Authentication;
use crate::policy::{
    ChannelDecision, ChannelRequest, DecisionRequest, Evaluation, Limits, ModuleInfo, PolicyEngine,
};
use crate::server::username_form::split_host_port;

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Load and validate every module of a directory and its configuration.
    Check {
        /// The policy directory.
        dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Require every module (and configuration) to be signed by a signer of this
        /// OpenSSH allowed_signers file, as `[policy] allowed_signers` does.
        #[arg(long, value_name = "FILE")]
        allowed_signers: Option<PathBuf>,
    },
    /// Decide one connection offline and print the decision as JSON.
    Eval(Box<EvalArgs>),
    /// Run tables of requests and expected outcomes (TOML) against the modules of DIR.
    Test {
        /// The policy directory.
        dir: PathBuf,
        /// Case files (default: DIR/tests/*.toml).
        cases: Vec<PathBuf>,
        /// Print the results as JSON (for CI).
        #[arg(long)]
        json: bool,
        /// Check signatures as `policy check --allowed-signers` does.
        #[arg(long, value_name = "FILE")]
        allowed_signers: Option<PathBuf>,
    },
    /// Time each module's decision over one request (the same arguments as eval).
    Bench {
        #[command(flatten)]
        request: Box<EvalArgs>,
        /// Decisions to time.
        #[arg(long, default_value_t = 2000)]
        iterations: u32,
    },
    /// Create a new policy crate in DIR, ready to build, test and sign.
    New(super::scaffold::NewArgs),
}

#[derive(Debug, Args)]
pub(super) struct EvalArgs {
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
    /// direct-tcpip:HOST:PORT, tcpip-forward:ADDR:PORT, env:NAME=VALUE, agent or x11
    /// (repeatable).
    #[arg(long = "channel", value_name = "REQUEST")]
    channels: Vec<String>,
}

pub(super) fn check(
    dir: PathBuf,
    json: bool,
    allowed_signers: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let engine = match &allowed_signers {
        Some(signers) => PolicyEngine::new_signed(&dir, Limits::default(), signers),
        None => PolicyEngine::new(&dir, Limits::default()),
    };
    match engine {
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

pub(super) fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let (request, channels) = request_of(&args)?;
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

/// `policy bench`: decides the request `iterations` times (after a warm-up) and prints
/// each module's calls and mean time, from the same figures the metrics serve.
pub(super) fn bench(args: EvalArgs, iterations: u32) -> anyhow::Result<ExitCode> {
    let (request, _) = request_of(&args)?;
    let engine = PolicyEngine::new(&args.policies, Limits::default())?;
    let set = engine.current();
    let warm = set.decide(&request);
    // The warm-up (instantiation) is not counted: figures are read as differences.
    let before: Vec<(u64, std::time::Duration)> = set
        .names()
        .iter()
        .map(|n| engine.stats().of(n).calls())
        .collect();
    let started = std::time::Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(set.decide(&request));
    }
    let total = started.elapsed();
    println!(
        "{iterations} decisions in {:.1} ms: {:.1} µs each; decided by {} ({:?})",
        total.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e6 / f64::from(iterations.max(1)),
        warm.module.as_deref().unwrap_or("no module"),
        warm.action
    );
    println!(
        "{:<40} {:>8} {:>12} {:>14}",
        "MODULE", "CALLS", "MEAN (µs)", "MEMORY (KiB)"
    );
    for (name, (calls0, mean0)) in set.names().iter().zip(before) {
        let stats = engine.stats().of(name);
        let (calls, mean) = stats.calls();
        let n = calls - calls0;
        // Mean over the timed calls only.
        let sum = mean.as_secs_f64() * calls as f64 - mean0.as_secs_f64() * calls0 as f64;
        let timed_mean = if n > 0 { sum / n as f64 * 1e6 } else { 0.0 };
        println!(
            "{name:<40} {n:>8} {timed_mean:>12.1} {:>14}",
            stats.memory_high_water() / 1024
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The request and channel requests `eval` and `bench` describe.
fn request_of(args: &EvalArgs) -> anyhow::Result<(DecisionRequest, Vec<ChannelRequest>)> {
    let (host, port) = split_host_port(&args.target).map_err(anyhow::Error::msg)?;
    // The same checks and canonical form as the proxy's.
    let host = crate::server::target_name::canonical_host(&host)
        .map_err(|e| anyhow::anyhow!("--target: {e}"))?;
    // Resolved as the proxy resolves it, so the address reported is the one it would use.
    let (target_ip, target_canonical) = match args.resolve {
        Some(ip) => (Some(ip), None),
        None => {
            let resolved = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(crate::server::resolve(&host, port));
            match resolved {
                Some(r) => (Some(r.addr.ip()), r.canonical_name),
                None => (None, None),
            }
        }
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
        email: args.user.clone(),
        groups: args.groups.clone(),
        authentication: Authentication::PublicKey(args.key_fingerprint.clone()),
        source,
        target_host: host,
        target_ip,
        target_canonical,
        target_port: port,
        login: args.login.clone(),
        now,
        client_version: args.client_version.clone(),
    };
    Ok((request, channels))
}

pub(super) fn parse_time(t: &str) -> anyhow::Result<SystemTime> {
    let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            anyhow::anyhow!(
                "--time {t:?} is not an RFC 3339 time ({e}), e.g. 2026-11-23T09:30:00+01:00"
            )
        })?;
    Ok(SystemTime::from(dt))
}

pub(super) fn parse_channel(s: &str) -> anyhow::Result<ChannelRequest> {
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
        "env" => {
            let (name, value) = arg
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--channel {s:?}: expected env:NAME=VALUE"))?;
            ChannelRequest::Env {
                name: name.to_string(),
                value: value.to_string(),
            }
        }
        "agent" => ChannelRequest::AgentForwarding,
        "x11" => ChannelRequest::X11Forwarding,
        _ => anyhow::bail!(
            "--channel {s:?}: expected shell, exec:COMMAND, subsystem:NAME, direct-tcpip:HOST:PORT, \
             tcpip-forward:ADDR:PORT, env:NAME=VALUE, agent or x11"
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
