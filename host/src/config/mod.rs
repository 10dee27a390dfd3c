//! The configuration file (`portcullis.toml`): read into its serde types (`file.rs`,
//! one `Default` for all), then `validate()` into the checked [`Config`] that everything
//! after start-up uses (here; sections with more to check have their own file).
//!
//! Unknown keys are errors naming the key. Relative paths are relative to the
//! directory of the configuration file.

mod admission;
mod cidr;
mod console;
mod file;
mod oidc;
mod recording;
mod state;

pub use admission::{AdmissionLimits, MaxStartups};
pub use cidr::Cidr;
pub use console::ConsoleConfig;
pub use oidc::OidcConfig;
pub use recording::{MIN_PART_SIZE, S3Config, S3Credentials};
pub use state::StateConfig;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::policy::Limits;

/// Errors of loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}` {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The ciphers clients may use by default: every supported one, in the proxy's order.
/// With `cipher_order = "proxy"` (the default) a client gets the first of these it
/// supports, even when it prefers another (OpenSSH lists ChaCha20 first).
pub const DEFAULT_CIPHERS: &[&str] = SUPPORTED_CIPHERS;

/// The most connection threads `server.threads` may ask for.
pub const MAX_THREADS: usize = 1024;

/// The ciphers that may be offered (no CBC, no 3DES, no `none`), the fastest first:
/// AES-GCM, which runs on AES-NI, then ChaCha20-Poly1305 and CTR for clients that
/// cannot do GCM.
pub const SUPPORTED_CIPHERS: &[&str] = &[
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
];

/// Whose preference decides the cipher of a client's connection (`server.cipher_order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherOrder {
    /// The proxy's: the first of `server.ciphers` that the client supports. The proxy
    /// sends its key exchange offer after the client's, naming that cipher alone.
    Proxy,
    /// The client's, as SSH negotiates by itself: its first cipher the proxy offers.
    Client,
}

/// How target host keys are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// Trust on first use: a target's key is pinned the first time; a change is refused.
    Tofu,
    /// Only keys already in the known-hosts file are accepted.
    Strict,
}

/// How to check target host keys.
#[derive(Debug, Clone)]
pub struct HostKeyPolicy {
    pub mode: HostKeyCheck,
    /// The OpenSSH known_hosts file of pins and `@cert-authority` lines.
    pub known_hosts: PathBuf,
    pub connect_timeout: Duration,
    /// The firewall mark set on connections to targets, if any.
    pub socket_mark: Option<u32>,
    /// SSH keepalives to the target (`server.keepalive_interval`; None: off).
    pub keepalive: Keepalive,
}

/// SSH keepalives, on either leg: a keepalive request after `interval` without
/// traffic, the connection closed after `count_max` unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Option<Duration>,
    pub count_max: usize,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where connections redirected by the kernel (REDIRECT, TPROXY) arrive.
    pub transparent_listen: Vec<SocketAddr>,
    /// Load balancers whose connections start with a PROXY protocol header.
    pub proxy_protocol_from: Vec<Cidr>,
    /// The ciphers clients may use (names from [`SUPPORTED_CIPHERS`]), in the proxy's
    /// order of preference.
    pub ciphers: Vec<&'static str>,
    /// Whose order of [`Config::ciphers`] decides a connection's cipher.
    pub cipher_order: CipherOrder,
    /// The proxy's own SSH host key (created on first start).
    pub host_key: PathBuf,
    pub auth_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Sessions with no channel data either way for this long are disconnected.
    pub idle_timeout: Option<Duration>,
    /// SSH keepalives to clients (and, in `host_keys`, to targets).
    pub keepalive: Keepalive,
    /// Limits on unauthenticated connections and on connections per user.
    pub admission: AdmissionLimits,
    /// The connection threads (`server.threads`, 0 resolved to the CPU count).
    pub threads: usize,
    pub ca_dir: PathBuf,
    pub cert_validity: Duration,
    pub users_file: PathBuf,
    /// Single sign-on with an OpenID Connect provider, if configured.
    pub oidc: Option<OidcConfig>,
    pub policy_dir: PathBuf,
    /// Signatures the policy modules must carry, if required.
    pub policy_signatures: Option<crate::policy::SignaturePolicy>,
    pub policy_limits: Limits,
    pub reload_debounce: Duration,
    /// Decide running sessions again on every reload; end those no longer allowed.
    pub recheck_sessions: bool,
    /// How target host keys are checked, where they are pinned, how long to wait.
    pub host_keys: HostKeyPolicy,
    pub session_log: PathBuf,
    /// The auditor's HPKE public key file, if command logging is set up.
    pub recording_key: Option<PathBuf>,
    pub recording_dir: PathBuf,
    /// S3-compatible storage the command logs are uploaded to, if configured.
    pub recording_store: Option<S3Config>,
    /// Where to serve Prometheus metrics (`/metrics`, `/healthz`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Shared state in PostgreSQL, if configured.
    pub state: Option<StateConfig>,
    /// The auditors' web console, if configured.
    pub console: Option<ConsoleConfig>,
}

impl Config {
    /// Loads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: file::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', "\n  "),
        })?;
        // Relative paths are anchored at the file's directory, made absolute so that a
        // bare file name (the default `--config portcullis.toml`) anchors at the current
        // directory and messages name whole paths.
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(dir).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!("cannot resolve its directory: {e}"),
        })?;
        raw.validate(&base, path)
    }
}

impl file::RawConfig {
    fn validate(self, base: &Path, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let listen = self.server.listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "server.listen",
                format!(
                    "must be an address and port such as \"0.0.0.0:2222\", not {:?}",
                    self.server.listen
                ),
            )
        })?;
        let mut transparent_listen = Vec::new();
        for text in &self.server.transparent_listen {
            let addr = text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "server.transparent_listen",
                    format!(
                        "must be addresses and ports such as \"0.0.0.0:2223\" or \"[::]:2223\", not {text:?}"
                    ),
                )
            })?;
            if addr == listen || transparent_listen.contains(&addr) {
                return Err(invalid(
                    "server.transparent_listen",
                    format!("{addr} is listed twice (or is server.listen)"),
                ));
            }
            transparent_listen.push(addr);
        }
        let proxy_protocol_from = self
            .server
            .proxy_protocol_from
            .iter()
            .map(|n| n.parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("server.proxy_protocol_from", e))?;
        let mut ciphers = Vec::new();
        for name in &self.server.ciphers {
            let Some(known) = SUPPORTED_CIPHERS.iter().find(|c| **c == name.as_str()) else {
                return Err(invalid(
                    "server.ciphers",
                    format!("{name:?} is not one of {}", SUPPORTED_CIPHERS.join(", ")),
                ));
            };
            if !ciphers.contains(known) {
                ciphers.push(*known);
            }
        }
        if ciphers.is_empty() {
            return Err(invalid(
                "server.ciphers",
                "must name at least one cipher".into(),
            ));
        }
        let cipher_order = match self.server.cipher_order.as_str() {
            "proxy" => CipherOrder::Proxy,
            "client" => CipherOrder::Client,
            other => {
                return Err(invalid(
                    "server.cipher_order",
                    format!("must be \"proxy\" or \"client\", not {other:?}"),
                ));
            }
        };
        let p = &self.policy;
        if p.timeout < Duration::from_millis(1) || p.timeout > Duration::from_secs(10) {
            return Err(invalid(
                "policy.timeout",
                "must be between 1ms and 10s".into(),
            ));
        }
        if !(1..=4096).contains(&p.memory_limit_mib) {
            return Err(invalid(
                "policy.memory_limit_mib",
                "must be between 1 and 4096".into(),
            ));
        }
        let cert_validity = self.ca.cert_validity;
        if cert_validity < Duration::from_secs(30) || cert_validity > Duration::from_secs(24 * 3600)
        {
            return Err(invalid(
                "ca.cert_validity",
                "must be between 30s and 24h".into(),
            ));
        }
        let metrics_listen = match &self.metrics.listen {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("must be an address and port such as \"127.0.0.1:9187\", not {text:?}"),
                )
            })?),
        };
        let idle_timeout = match self.server.idle_timeout {
            Duration::ZERO => None,
            t if t < Duration::from_secs(1) => {
                return Err(invalid(
                    "server.idle_timeout",
                    "must be 0 (off) or at least 1s".into(),
                ));
            }
            t => Some(t),
        };
        let keepalive = Keepalive {
            interval: match self.server.keepalive_interval {
                Duration::ZERO => None,
                t if t < Duration::from_secs(1) => {
                    return Err(invalid(
                        "server.keepalive_interval",
                        "must be 0 (off) or at least 1s".into(),
                    ));
                }
                t => Some(t),
            },
            count_max: match self.server.keepalive_count_max {
                0 => {
                    return Err(invalid(
                        "server.keepalive_count_max",
                        "must be at least 1".into(),
                    ));
                }
                n => n,
            },
        };
        let admission = AdmissionLimits {
            max_startups: self
                .server
                .max_startups
                .parse()
                .map_err(|e| invalid("server.max_startups", e))?,
            per_source_max_startups: (self.server.per_source_max_startups > 0)
                .then_some(self.server.per_source_max_startups),
            max_connections_per_user: (self.server.max_connections_per_user > 0)
                .then_some(self.server.max_connections_per_user),
        };
        let threads = match self.server.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n if n > MAX_THREADS => {
                return Err(invalid(
                    "server.threads",
                    format!("must be 0 (one per CPU) to {MAX_THREADS}, not {n}"),
                ));
            }
            n => n,
        };
        let host_key_check = match self.upstream.host_key_check.as_str() {
            "tofu" => HostKeyCheck::Tofu,
            "strict" => HostKeyCheck::Strict,
            other => {
                return Err(invalid(
                    "upstream.host_key_check",
                    format!(
                        "must be \"tofu\" or \"strict\", not {other:?} (host keys are always checked)"
                    ),
                ));
            }
        };
        let state = self
            .state
            .validate(abs)
            .map_err(|(key, message)| invalid(key, message))?;
        let recording_store = recording::validate(self.recording.store, self.recording.s3, abs)
            .map_err(|(key, message)| invalid(key, message))?;
        let console = self
            .console
            .validate(abs)
            .map_err(|(key, message)| invalid(key, message))?;
        let oidc = match self.identity.oidc {
            None => None,
            Some(raw) => Some(
                raw.validate(abs)
                    .map_err(|(key, message)| invalid(key, message))?,
            ),
        };
        if console.as_ref().is_some_and(|c| c.auditors_group.is_some()) && oidc.is_none() {
            return Err(invalid(
                "console.auditors_group",
                "signs auditors in at the identity provider of [identity.oidc], which is not set"
                    .into(),
            ));
        }
        Ok(Config {
            listen,
            transparent_listen,
            proxy_protocol_from,
            ciphers,
            cipher_order,
            host_key: abs(&self.server.host_key),
            auth_timeout: self.server.auth_timeout,
            shutdown_grace: self.server.shutdown_grace,
            idle_timeout,
            keepalive,
            admission,
            threads,
            ca_dir: abs(&self.ca.dir),
            cert_validity,
            users_file: abs(&self.identity.users_file),
            oidc,
            policy_dir: abs(&p.dir),
            policy_signatures: p.allowed_signers.as_deref().map(|f| {
                crate::policy::SignaturePolicy {
                    allowed_signers: abs(f),
                    configs: p.sign_configs,
                }
            }),
            policy_limits: Limits {
                timeout: p.timeout,
                memory_bytes: p.memory_limit_mib << 20,
                idle_instances: p.idle_instances,
                ..Limits::default()
            },
            reload_debounce: p.reload_debounce,
            recheck_sessions: p.recheck_sessions,
            host_keys: HostKeyPolicy {
                mode: host_key_check,
                known_hosts: abs(&self.upstream.known_hosts),
                connect_timeout: self.upstream.connect_timeout,
                socket_mark: self.upstream.socket_mark,
                keepalive,
            },
            session_log: abs(&self.session_log.path),
            recording_key: self.recording.public_key.as_deref().map(abs),
            recording_dir: abs(&self.recording.dir),
            recording_store,
            metrics_listen,
            state,
            console,
        })
    }
}

#[cfg(test)]
mod tests;
