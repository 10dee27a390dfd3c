//! The configuration file as written: the serde types of its sections, with one
//! `Default` for all of them. `super` checks them into the `Config` the proxy uses.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{DEFAULT_CIPHERS, oidc, state};
use crate::policy::Limits;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) ca: RawCa,
    pub(super) identity: RawIdentity,
    pub(super) policy: RawPolicy,
    pub(super) upstream: RawUpstream,
    pub(super) session_log: RawSessionLog,
    pub(super) recording: RawRecording,
    pub(super) metrics: RawMetrics,
    pub(super) state: state::RawState,
    pub(super) console: super::console::RawConsole,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMetrics {
    /// Where to serve Prometheus metrics; off when unset.
    pub(super) listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) listen: String,
    /// Listeners for connections the kernel redirected (docs/transparent.md).
    #[serde(deserialize_with = "one_or_many")]
    pub(super) transparent_listen: Vec<String>,
    /// Load balancers whose connections start with a PROXY protocol header.
    pub(super) proxy_protocol_from: Vec<String>,
    /// The ciphers clients may use, in the proxy's order of preference.
    pub(super) ciphers: Vec<String>,
    /// `proxy` (its order of `ciphers` decides) or `client`.
    pub(super) cipher_order: String,
    pub(super) host_key: PathBuf,
    #[serde(with = "humantime_serde")]
    pub(super) auth_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) idle_timeout: Duration,
    /// SSH keepalives on both legs (0: off); dead peers are also found by TCP
    /// keepalives, which cost the proxy nothing.
    #[serde(with = "humantime_serde")]
    pub(super) keepalive_interval: Duration,
    pub(super) keepalive_count_max: usize,
    pub(super) max_startups: String,
    pub(super) per_source_max_startups: usize,
    pub(super) max_connections_per_user: usize,
    /// Threads that serve connections, each connection on one; 0: one per CPU.
    pub(super) threads: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCa {
    pub(super) dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub(super) cert_validity: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawIdentity {
    pub(super) users_file: PathBuf,
    /// Single sign-on; off when the section is absent.
    pub(super) oidc: Option<oidc::RawOidc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPolicy {
    pub(super) dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub(super) timeout: Duration,
    pub(super) memory_limit_mib: u64,
    pub(super) idle_instances: usize,
    #[serde(with = "humantime_serde")]
    pub(super) reload_debounce: Duration,
    pub(super) recheck_sessions: bool,
    /// An OpenSSH allowed_signers file: every module must then carry a signature
    /// (`NAME.wasm.sig`, `ssh-keygen -Y sign -n portcullis-policy`) by one of them.
    pub(super) allowed_signers: Option<PathBuf>,
    /// With `allowed_signers`: configurations must be signed too.
    pub(super) sign_configs: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    pub(super) host_key_check: String,
    pub(super) known_hosts: PathBuf,
    #[serde(with = "humantime_serde")]
    pub(super) connect_timeout: Duration,
    /// A firewall mark (SO_MARK) set on connections to targets, so that a redirect
    /// rule can exempt them (docs/transparent.md).
    pub(super) socket_mark: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSessionLog {
    pub(super) path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRecording {
    /// The auditor's public key (`portcullis keygen -o sshkey` writes `sshkey.pub`).
    /// Without it, sessions a policy wants recorded are refused.
    pub(super) public_key: Option<PathBuf>,
    pub(super) dir: PathBuf,
    /// `local` (the default) or `s3` (then `[recording.s3]`).
    pub(super) store: super::recording::StoreKind,
    pub(super) s3: Option<super::recording::RawS3>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            server: RawServer {
                listen: "0.0.0.0:2222".into(),
                transparent_listen: Vec::new(),
                proxy_protocol_from: Vec::new(),
                ciphers: DEFAULT_CIPHERS.iter().map(|c| c.to_string()).collect(),
                cipher_order: "proxy".into(),
                host_key: "host_key".into(),
                auth_timeout: Duration::from_secs(60),
                shutdown_grace: Duration::from_secs(30),
                idle_timeout: Duration::ZERO,
                keepalive_interval: Duration::from_secs(300),
                keepalive_count_max: 3,
                max_startups: "10:30:100".into(),
                per_source_max_startups: 8,
                max_connections_per_user: 64,
                threads: 0,
            },
            ca: RawCa {
                dir: "ca".into(),
                cert_validity: Duration::from_secs(300),
            },
            identity: RawIdentity {
                users_file: "users.toml".into(),
                oidc: None,
            },
            policy: RawPolicy {
                dir: "policies".into(),
                timeout: Limits::default().timeout,
                memory_limit_mib: Limits::default().memory_bytes >> 20,
                idle_instances: Limits::default().idle_instances,
                reload_debounce: Duration::from_millis(250),
                recheck_sessions: true,
                allowed_signers: None,
                sign_configs: true,
            },
            upstream: RawUpstream {
                host_key_check: "tofu".into(),
                known_hosts: "known_targets".into(),
                connect_timeout: Duration::from_secs(10),
                socket_mark: None,
            },
            session_log: RawSessionLog {
                path: "sessions.jsonl".into(),
            },
            recording: RawRecording {
                public_key: None,
                dir: "command-logs".into(),
                store: super::recording::StoreKind::Local,
                s3: None,
            },
            metrics: RawMetrics { listen: None },
            state: state::RawState::default(),
            console: super::console::RawConsole::default(),
        }
    }
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

// Each section's default is its part of the one `RawConfig::default()`, so that a
// section left out, or a key left out of a section, gets the same value.
macro_rules! section_defaults {
    ($($ty:ident => $field:ident),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                RawConfig::default().$field
            }
        }
    )*};
}

section_defaults!(
    RawServer => server,
    RawCa => ca,
    RawIdentity => identity,
    RawPolicy => policy,
    RawUpstream => upstream,
    RawSessionLog => session_log,
    RawRecording => recording,
    RawMetrics => metrics
);
