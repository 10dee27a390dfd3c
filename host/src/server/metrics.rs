//! Prometheus metrics (`[metrics] listen`): counters kept by the connections, served as
//! the text exposition format on `GET /metrics`, with `GET /healthz` for liveness probes.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::policy::{Action, PolicyEngine};

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
    bytes_from_client: AtomicU64,
    bytes_to_client: AtomicU64,
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

    pub(crate) fn session_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_ended(&self, bytes_from_client: u64, bytes_to_client: u64) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        bump(&self.ended);
        self.bytes_from_client
            .fetch_add(bytes_from_client, Ordering::Relaxed);
        self.bytes_to_client
            .fetch_add(bytes_to_client, Ordering::Relaxed);
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
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
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
        metric(
            "portcullis_session_bytes_total",
            "counter",
            "Channel bytes of ended sessions, by direction.",
            &[
                (
                    "{direction=\"from_client\"}",
                    get(&self.bytes_from_client).to_string(),
                ),
                (
                    "{direction=\"to_client\"}",
                    get(&self.bytes_to_client).to_string(),
                ),
            ],
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
            let _ = writeln!(
                out,
                "# HELP portcullis_replica_info This replica's name in the shared store.\n\
                 # TYPE portcullis_replica_info gauge\nportcullis_replica_info{{replica=\"{replica}\"}} 1"
            );
        }
        policy.stats().render(&policy.current().names(), &mut out);
        if let Some(sso) = self.sso.get() {
            sso.render_metrics(&mut out);
        }
        if let Some(uploads) = self.uploads.get() {
            uploads.render_metrics(&mut out);
        }
        out
    }
}

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
