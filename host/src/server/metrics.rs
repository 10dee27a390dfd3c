//! Prometheus metrics (`[metrics] listen`): counters kept by the connections, served as
//! the text exposition format on `GET /metrics`, with `GET /healthz` for liveness probes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::channels::Traffic;
use crate::policy::{Action, PolicyEngine};
use crate::sync::lock;

/// Why the proxy disconnected a client.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Disconnect {
    AuthTimeout,
    Idle,
    Revoked,
}

/// The proxy's counters. Cheap to bump: relaxed atomics.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    connections: AtomicU64,
    unknown_keys: AtomicU64,
    allowed: AtomicU64,
    audited: AtomicU64,
    blocked: AtomicU64,
    decision_micros: AtomicU64,
    refused: AtomicU64,
    active: AtomicI64,
    ended: AtomicU64,
    bytes: Mutex<Bytes>,
    target_failures: AtomicU64,
    auth_timeouts: AtomicU64,
    idle: AtomicU64,
    revoked: AtomicU64,
    refused_startups: AtomicU64,
    refused_per_source: AtomicU64,
    refused_per_user: AtomicU64,
    accept_errors: AtomicU64,
    users_reload_failures: AtomicU64,
    /// Single sign-on, whose own counters are rendered after these.
    pub(crate) sso: std::sync::OnceLock<Arc<crate::identity::sso::Sso>>,
    /// Uploads of command logs to object storage, if configured.
    pub(crate) uploads: std::sync::OnceLock<Arc<crate::recording::store::Uploads>>,
    /// The replica's name in the shared store, if there is one.
    pub(crate) replica: std::sync::OnceLock<String>,
    /// The connections each connection thread holds (threads.rs), once they run.
    pub(crate) threads: std::sync::OnceLock<Vec<Arc<AtomicUsize>>>,
}

/// Channel bytes of the allowed sessions: the ended ones' totals, and the running
/// ones' counters (read at each scrape, so that a long transfer shows as it moves and
/// the data path counts nothing twice). A session moves from one to the other under
/// this lock, so the sum only grows.
#[derive(Debug, Default)]
struct Bytes {
    ended_from_client: u64,
    ended_to_client: u64,
    /// By the address of the session's `from_client` counter, which the entry keeps.
    running: HashMap<usize, Traffic>,
}

impl Bytes {
    /// (ended sessions, all sessions) from the client and to it.
    fn totals(&self) -> ([u64; 2], [u64; 2]) {
        let ended = [self.ended_from_client, self.ended_to_client];
        let all = self.running.values().fold(ended, |[from, to], t| {
            [from + t.from_client(), to + t.to_client()]
        });
        (ended, all)
    }
}

fn key(traffic: &Traffic) -> usize {
    Arc::as_ptr(&traffic.from_client) as usize
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub(crate) fn connection(&self) {
        bump(&self.connections);
    }

    pub(crate) fn unknown_key(&self) {
        bump(&self.unknown_keys);
    }

    pub(crate) fn decided(&self, action: Action, took: Duration) {
        bump(match action {
            Action::Allow => &self.allowed,
            Action::Audit => &self.audited,
            Action::Block => &self.blocked,
        });
        self.decision_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// A session the policies allowed but the proxy refused (login not granted, target
    /// not resolved, no recording possible).
    pub(crate) fn refused(&self) {
        bump(&self.refused);
    }

    /// An allowed session starts; its bytes count from now on.
    pub(crate) fn session_started(&self, traffic: &Traffic) {
        self.active.fetch_add(1, Ordering::Relaxed);
        lock(&self.bytes)
            .running
            .insert(key(traffic), traffic.clone());
    }

    pub(crate) fn session_ended(&self, traffic: &Traffic) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        bump(&self.ended);
        let mut bytes = lock(&self.bytes);
        bytes.running.remove(&key(traffic));
        bytes.ended_from_client += traffic.from_client();
        bytes.ended_to_client += traffic.to_client();
    }

    pub(crate) fn target_failure(&self) {
        bump(&self.target_failures);
    }

    pub(crate) fn disconnected(&self, why: Disconnect) {
        bump(match why {
            Disconnect::AuthTimeout => &self.auth_timeouts,
            Disconnect::Idle => &self.idle,
            Disconnect::Revoked => &self.revoked,
        });
    }

    /// A connection the admission limits refused.
    pub(crate) fn not_admitted(&self, why: super::admission::Refusal) {
        use super::admission::Refusal;
        bump(match why {
            Refusal::Startups => &self.refused_startups,
            Refusal::PerSource => &self.refused_per_source,
            Refusal::PerUser => &self.refused_per_user,
        });
    }

    pub(crate) fn accept_error(&self) {
        bump(&self.accept_errors);
    }

    pub(crate) fn users_reload_failed(&self) {
        bump(&self.users_reload_failures);
    }

    /// The text exposition format.
    pub(crate) fn render(&self, policy: &PolicyEngine) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            write_metric(&mut out, name, kind, help, samples)
        };
        metric(
            "portcullis_connections_total",
            "counter",
            "Client TCP connections accepted.",
            &[("", get(&self.connections).to_string())],
        );
        metric(
            "portcullis_unknown_keys_total",
            "counter",
            "Public keys offered that are not in the users file.",
            &[("", get(&self.unknown_keys).to_string())],
        );
        metric(
            "portcullis_decisions_total",
            "counter",
            "Connection decisions of the policies, by action.",
            &[
                ("{action=\"allow\"}", get(&self.allowed).to_string()),
                ("{action=\"audit\"}", get(&self.audited).to_string()),
                ("{action=\"block\"}", get(&self.blocked).to_string()),
            ],
        );
        let count = get(&self.allowed) + get(&self.audited) + get(&self.blocked);
        metric(
            "portcullis_decision_seconds",
            "summary",
            "Time to decide a connection (all modules).",
            &[
                (
                    "_sum",
                    format!("{:.6}", get(&self.decision_micros) as f64 / 1e6),
                ),
                ("_count", count.to_string()),
            ],
        );
        metric(
            "portcullis_sessions_refused_total",
            "counter",
            "Sessions the policies allowed that the proxy refused (login, target, recording).",
            &[("", get(&self.refused).to_string())],
        );
        metric(
            "portcullis_sessions_active",
            "gauge",
            "Allowed sessions running now.",
            &[("", self.active.load(Ordering::Relaxed).to_string())],
        );
        metric(
            "portcullis_sessions_ended_total",
            "counter",
            "Allowed sessions that have ended.",
            &[("", get(&self.ended).to_string())],
        );
        let (ended, all) = lock(&self.bytes).totals();
        let directions = |[from, to]: [u64; 2]| {
            [
                ("{direction=\"from_client\"}", from.to_string()),
                ("{direction=\"to_client\"}", to.to_string()),
            ]
        };
        metric(
            "portcullis_session_bytes_total",
            "counter",
            "Channel bytes of ended sessions, by direction.",
            &directions(ended),
        );
        metric(
            "portcullis_forwarded_bytes_total",
            "counter",
            "Channel bytes of all allowed sessions, running ones included, by direction.",
            &directions(all),
        );
        metric(
            "portcullis_target_failures_total",
            "counter",
            "Connections to targets that failed (unreachable, host key, login).",
            &[("", get(&self.target_failures).to_string())],
        );
        metric(
            "portcullis_disconnects_total",
            "counter",
            "Clients the proxy disconnected, by reason.",
            &[
                (
                    "{reason=\"auth_timeout\"}",
                    get(&self.auth_timeouts).to_string(),
                ),
                ("{reason=\"idle\"}", get(&self.idle).to_string()),
                ("{reason=\"revoked\"}", get(&self.revoked).to_string()),
            ],
        );
        metric(
            "portcullis_connections_refused_total",
            "counter",
            "Connections refused by the admission limits, by limit.",
            &[
                (
                    "{limit=\"max_startups\"}",
                    get(&self.refused_startups).to_string(),
                ),
                (
                    "{limit=\"per_source_max_startups\"}",
                    get(&self.refused_per_source).to_string(),
                ),
                (
                    "{limit=\"max_connections_per_user\"}",
                    get(&self.refused_per_user).to_string(),
                ),
            ],
        );
        metric(
            "portcullis_accept_errors_total",
            "counter",
            "Failed accepts on the listening socket (e.g. out of file descriptors).",
            &[("", get(&self.accept_errors).to_string())],
        );
        metric(
            "portcullis_users_reload_failures_total",
            "counter",
            "Reloads of the users file refused (the previous one stayed in force).",
            &[("", get(&self.users_reload_failures).to_string())],
        );
        if let Some(threads) = self.threads.get() {
            let labels: Vec<String> = (0..threads.len())
                .map(|i| format!("{{thread=\"{i}\"}}"))
                .collect();
            let samples: Vec<(&str, String)> = labels
                .iter()
                .zip(threads)
                .map(|(label, n)| (label.as_str(), n.load(Ordering::Relaxed).to_string()))
                .collect();
            metric(
                "portcullis_connection_thread_connections",
                "gauge",
                "Client connections each connection thread serves now (server.threads).",
                &samples,
            );
        }
        let set = policy.current();
        metric(
            "portcullis_policy_modules",
            "gauge",
            "Policy modules in force.",
            &[("", set.names().len().to_string())],
        );
        metric(
            "portcullis_policy_generation",
            "gauge",
            "Generation of the policy set in force (each successful reload adds one).",
            &[("", set.generation().to_string())],
        );
        metric(
            "portcullis_policy_reload_failures_total",
            "counter",
            "Policy reloads refused (the previous set stayed in force).",
            &[("", policy.failed_reloads().to_string())],
        );
        if let Some(replica) = self.replica.get() {
            metric(
                "portcullis_replica_info",
                "gauge",
                "This replica's name in the shared store.",
                &[(&format!("{{replica=\"{replica}\"}}"), "1".into())],
            );
        }
        policy.stats().render(&policy.current().names(), &mut out);
        if let Some(sso) = self.sso.get() {
            sso.render_metrics(&mut out);
        }
        if let Some(uploads) = self.uploads.get() {
            uploads.render_metrics(&mut out);
        }
        render_process(&mut out);
        out
    }
}

/// One metric in the text exposition format: its help and type lines, then a line for
/// each sample (labels, value).
fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The process metrics every Prometheus client library exports (the same names), from
/// /proc: with `portcullis_forwarded_bytes_total`, the CPU the proxy spends per GiB it
/// forwards. A value /proc does not give is left out.
#[cfg(target_os = "linux")]
fn render_process(out: &mut String) {
    use procfs::process::{LimitValue, Process};
    let Ok(me) = Process::myself() else {
        return;
    };
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        write_metric(out, name, kind, help, &[("", value)])
    };
    if let Ok(stat) = me.stat() {
        let ticks = procfs::ticks_per_second() as f64;
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            format!("{:.2}", (stat.utime + stat.stime) as f64 / ticks),
        );
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            (stat.rss * procfs::page_size()).to_string(),
        );
        metric(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            stat.vsize.to_string(),
        );
        metric(
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            stat.num_threads.to_string(),
        );
        if let Ok(boot) = procfs::boot_time_secs() {
            metric(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                format!("{:.2}", boot as f64 + stat.starttime as f64 / ticks),
            );
        }
    }
    if let Ok(fds) = me.fd_count() {
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.to_string(),
        );
    }
    if let Ok(limits) = me.limits() {
        let max = match limits.max_open_files.soft_limit {
            LimitValue::Value(n) => n.to_string(),
            LimitValue::Unlimited => "+Inf".to_string(),
        };
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn render_process(_out: &mut String) {}

/// Serves `/metrics` and `/healthz` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>, policy: Arc<PolicyEngine>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, policy) = (Arc::clone(&metrics), Arc::clone(&policy));
        tokio::spawn(async move {
            let answer =
                tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics, &policy));
            let _ = answer.await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    policy: &PolicyEngine,
) -> std::io::Result<()> {
    // The request head, up to 8 KiB; no request of ours has a body.
    let mut head = Vec::with_capacity(1024);
    let route = loop {
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    request.method.unwrap_or_default().to_string(),
                    request.path.unwrap_or_default().to_string(),
                );
            }
            Ok(httparse::Status::Partial) if head.len() < 8192 => {}
            _ => break (String::new(), String::new()),
        }
    };
    let (status, content_type, body) = match (route.0.as_str(), route.1.as_str()) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(policy),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("", _) => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics or /healthz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(metrics: &Metrics) -> ([u64; 2], [u64; 2]) {
        lock(&metrics.bytes).totals()
    }

    #[test]
    fn a_sessions_bytes_count_while_it_runs_and_once_when_it_ends() {
        let metrics = Metrics::default();
        let (a, b) = (Traffic::default(), Traffic::default());
        metrics.session_started(&a);
        metrics.session_started(&b);
        a.to_client.fetch_add(100, Ordering::Relaxed);
        b.from_client.fetch_add(7, Ordering::Relaxed);
        // (ended sessions, all sessions), each [from the client, to the client].
        assert_eq!(totals(&metrics), ([0, 0], [7, 100]));
        metrics.session_ended(&a);
        assert_eq!(totals(&metrics), ([0, 100], [7, 100]));
        // Bytes a session still reports after its end are counted nowhere: the
        // counters never go back.
        a.to_client.fetch_add(5, Ordering::Relaxed);
        b.to_client.fetch_add(1, Ordering::Relaxed);
        assert_eq!(totals(&metrics), ([0, 100], [7, 101]));
        metrics.session_ended(&b);
        assert_eq!(totals(&metrics), ([7, 101], [7, 101]));
        assert_eq!(metrics.active.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.ended.load(Ordering::Relaxed), 2);
    }
}
