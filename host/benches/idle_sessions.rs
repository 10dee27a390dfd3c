//! Concurrency: opens idle interactive sessions (pty + shell) through a running
//! Portcullis and reports its resident memory and the rate at which it accepted them.
//!
//! Driven by `scripts/bench`, which starts the target sshd and the proxy; by hand:
//!
//! ```text
//! cargo bench -p portcullis --bench idle_sessions -- --proxy 127.0.0.1:2222 \
//!     --user 'me%127.0.0.1:2200' --key ~/.ssh/id_ed25519 --pid $(pidof portcullis) \
//!     --levels 200,500,1000
//! ```
//!
//! One russh client process holds every session (an OpenSSH client per session would
//! measure the client, not the proxy). A session counts as open once the target's shell
//! has printed its prompt through the proxy. Sessions are opened `--parallel` at a time;
//! levels are cumulative (500 = the first 200 and 300 more). Prints one JSON object per
//! level. Without `--pid` it measures only the rate (the bench uses that to open
//! sessions straight to the target's sshd, for reference). The client does not check
//! host keys: it is a load generator on loopback, not a user.
//!
//! `--light-target LOGIN` starts a target in this process instead (a russh server that
//! accepts any key or certificate and answers a shell with a prompt) and logs in to it
//! as `LOGIN%127.0.0.1:PORT`: sshd needs two processes and a shell per session, which
//! this machine cannot hold 10,000 times; the proxy's side is the same either way.
//!
//! With `--pid`, each level also reports the proxy's CPU while the sessions sit idle:
//! its user + system ticks over `--idle-window` seconds (30), as a percentage of one
//! core, measured after `--idle-settle` seconds (65): a session's record is first
//! rewritten a minute after it starts (its shell channel is new), which is set-up, not
//! rest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::sync::Semaphore;

struct AnyHost;

impl client::Handler for AnyHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// The light target: every session costs it a russh connection and nothing else.
mod light_target {
    use std::sync::Arc;

    use russh::keys::Certificate;
    use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
    use russh::{Channel, ChannelId};

    struct Conn {
        /// Held so that the channels stay open.
        channels: Vec<Channel<Msg>>,
    }

    impl russh::server::Handler for Conn {
        type Error = russh::Error;

        async fn auth_publickey_offered(
            &mut self,
            _: &str,
            _: PublicKeyOffer<'_>,
        ) -> Result<Auth, Self::Error> {
            Ok(Auth::Accept)
        }

        async fn auth_publickey(
            &mut self,
            _: &str,
            _: VerifiedPublicKey<'_>,
        ) -> Result<Auth, Self::Error> {
            Ok(Auth::Accept)
        }

        async fn auth_openssh_certificate(
            &mut self,
            _: &str,
            _: &Certificate,
        ) -> Result<Auth, Self::Error> {
            Ok(Auth::Accept)
        }

        async fn channel_open_session(
            &mut self,
            channel: Channel<Msg>,
            reply: ChannelOpenHandle,
            _: &mut Session,
        ) -> Result<(), Self::Error> {
            self.channels.push(channel);
            reply.accept().await;
            Ok(())
        }

        #[allow(clippy::too_many_arguments)]
        async fn pty_request(
            &mut self,
            channel: ChannelId,
            _: &str,
            _: u32,
            _: u32,
            _: u32,
            _: u32,
            _: &[(russh::Pty, u32)],
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            session.channel_success(channel)
        }

        async fn shell_request(
            &mut self,
            channel: ChannelId,
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            session.channel_success(channel)?;
            session.data(channel, bytes::Bytes::from_static(b"$ "))
        }
    }

    /// Serves on a free loopback port; returns it.
    pub async fn start() -> anyhow::Result<u16> {
        let key =
            russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)?;
        let config = Arc::new(russh::server::Config {
            keys: vec![key],
            inactivity_timeout: None,
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let config = Arc::clone(&config);
                tokio::spawn(async move {
                    let conn = Conn {
                        channels: Vec::new(),
                    };
                    if let Ok(session) = russh::server::run_stream(config, socket, conn).await {
                        let _ = session.await;
                    }
                });
            }
        });
        Ok(port)
    }
}

/// An open session: kept alive by holding the handle and the channel.
struct Session {
    _handle: client::Handle<AnyHost>,
    _channel: russh::Channel<client::Msg>,
}

struct Args {
    proxy: SocketAddr,
    user: String,
    key: PathBuf,
    pid: Option<u32>,
    /// The login on the in-process light target, instead of `user`'s target.
    light: Option<String>,
    levels: Vec<usize>,
    parallel: usize,
    idle_window: u64,
    idle_settle: u64,
}

fn args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let (mut proxy, mut user, mut key, mut pid, mut light) = (None, None, None, None, None);
    let (mut levels, mut parallel) = (vec![200, 500, 1000], 16);
    let (mut idle_window, mut idle_settle) = (30, 65);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench` to every bench target.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--proxy" => proxy = Some(value.parse().context("--proxy")?),
            "--user" => user = Some(value),
            "--light-target" => light = Some(value),
            "--key" => key = Some(PathBuf::from(value)),
            "--pid" => pid = Some(value.parse().context("--pid")?),
            "--parallel" => parallel = value.parse().context("--parallel")?,
            "--idle-window" => idle_window = value.parse().context("--idle-window")?,
            "--idle-settle" => idle_settle = value.parse().context("--idle-settle")?,
            "--levels" => {
                levels = value
                    .split(',')
                    .map(|l| l.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--levels")?
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(Args {
        proxy: proxy.context("--proxy is required")?,
        user: match (&user, &light) {
            (Some(u), None) => u.clone(),
            (None, Some(_)) => String::new(), // set once the light target listens
            _ => bail!("give one of --user and --light-target"),
        },
        light,
        key: key.context("--key is required")?,
        pid,
        levels,
        parallel,
        idle_window,
        idle_settle,
    })
}

/// The process's CPU time (user + system) in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime
    // and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .context("short stat")?
            .parse()
            .context("bad stat field")
    };
    Ok(field(14)? + field(15)?)
}

/// Clock ticks per second.
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The proxy's resident set size in KiB, from /proc (0 when no process is watched).
fn rss_kib(pid: Option<u32>) -> Result<u64> {
    let Some(pid) = pid else { return Ok(0) };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

async fn open(args: &Args, key: &Arc<PrivateKey>) -> Result<Session> {
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        ..Default::default()
    });
    let mut handle = client::connect(config, args.proxy, AnyHost).await?;
    let auth = handle
        .authenticate_publickey(
            args.user.clone(),
            PrivateKeyWithHashAlg::new(Arc::clone(key), None),
        )
        .await?;
    if !auth.success() {
        bail!("the proxy refused the key for {}", args.user);
    }
    let mut channel = handle.channel_open_session().await?;
    channel
        .request_pty(false, "xterm", 80, 24, 0, 0, &[])
        .await?;
    channel.request_shell(false).await?;
    // Open = the target's shell has spoken through the proxy.
    loop {
        match tokio::time::timeout(Duration::from_secs(60), channel.wait()).await {
            Err(_) => bail!("no prompt within 60 s"),
            Ok(None) => bail!("the channel closed before the shell printed anything"),
            Ok(Some(russh::ChannelMsg::Data { .. })) => break,
            Ok(Some(_)) => continue,
        }
    }
    Ok(Session {
        _handle: handle,
        _channel: channel,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = args()?;
    if let Some(login) = &args.light {
        let port = light_target::start().await?;
        args.user = format!("{login}%127.0.0.1:{port}");
    }
    // Both ends of every session are in this process at 10,000 sessions.
    rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open file limit")?;
    let args = Arc::new(args);
    let key = Arc::new(russh::keys::load_secret_key(&args.key, None).context("--key")?);
    // One session first so that the proxy's lazily built state (policy instances, the
    // host certificate cache, the tokio workers) is not counted per session.
    let warm = open(&args, &key).await.context("first session")?;
    let baseline = rss_kib(args.pid)?;
    let mut sessions: Vec<Session> = vec![warm];
    for &level in &args.levels {
        let want = level.saturating_sub(sessions.len());
        let gate = Arc::new(Semaphore::new(args.parallel));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(want);
        for _ in 0..want {
            let (args, key, gate) = (Arc::clone(&args), Arc::clone(&key), Arc::clone(&gate));
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await?;
                // A proxy out of file descriptors accepts nothing and the connection
                // waits in its backlog: counted as failed, not waited for forever.
                tokio::time::timeout(Duration::from_secs(90), open(&args, &key))
                    .await
                    .unwrap_or_else(|_| bail!("no session within 90 s (connect, login, shell)"))
            }));
        }
        let mut failures = 0usize;
        let mut first_error = None;
        for t in tasks {
            match t.await? {
                Ok(s) => sessions.push(s),
                Err(e) => {
                    failures += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        // Let the proxy settle (freed buffers, finished handshakes) before reading.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib(args.pid)?;
        let open_now = sessions.len();
        // The proxy's CPU while every session sits idle.
        let idle_cpu_percent = match args.pid {
            Some(pid) if args.idle_window > 0 => {
                tokio::time::sleep(Duration::from_secs(args.idle_settle)).await;
                let before = cpu_ticks(pid)?;
                tokio::time::sleep(Duration::from_secs(args.idle_window)).await;
                let ticks = cpu_ticks(pid)?.saturating_sub(before);
                Some(ticks as f64 / clock_ticks() as f64 / args.idle_window as f64 * 100.0)
            }
            _ => None,
        };
        println!(
            "{}",
            serde_json::json!({
                "level": level,
                "open": open_now,
                "failed": failures,
                "first_error": first_error,
                "rss_kib": rss,
                "baseline_kib": baseline,
                "per_session_kib": (rss.saturating_sub(baseline)) as f64 / (open_now.max(2) - 1) as f64,
                "accept_per_s": want.saturating_sub(failures) as f64 / elapsed,
                "idle_cpu_percent": idle_cpu_percent,
            })
        );
        if failures > 0 {
            break;
        }
    }
    drop(sessions);
    Ok(())
}
