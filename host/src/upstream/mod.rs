//! The target-facing leg: connect to the target's sshd, verify its host key, and log in
//! with the key and short-lived certificate the certificate stage issued.
//!
//! Channels the target opens back (for `-R`, `-A`, `-X`) are handed on as [`Opened`]
//! events: what to do with them is the channel stage's business, not this one's.

pub(crate) mod known_targets;
pub(crate) mod socket;
mod target_handler;

pub use target_handler::TargetHandler;
pub(crate) use target_handler::refuse_opened;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::Certificate;

use crate::config::HostKeyPolicy;
use crate::sync::lock;

/// What the upstream leg needs to log in.
#[derive(Debug, Clone)]
pub struct Login {
    pub host: String,
    pub addr: SocketAddr,
    pub login: String,
    pub key: Arc<PrivateKey>,
    pub certificate: Certificate,
}

/// A logged-in connection to the target.
pub type Target = client::Handle<TargetHandler>;

/// A channel the target opened towards the proxy, with what it said about it.
#[allow(missing_debug_implementations)] // russh's open handles have no Debug
pub enum Opened {
    /// A connection to a port the client forwarded with `ssh -R`.
    ForwardedTcpip {
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        connected_address: String,
        connected_port: u32,
        originator_address: String,
        originator_port: u32,
    },
    /// The target's side of agent forwarding (`ssh -A`).
    Agent {
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
    },
    /// An X client on the target (`ssh -X`).
    X11 {
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        originator_address: String,
        originator_port: u32,
    },
}

impl Opened {
    /// The channel type's name, as in the SSH protocol.
    pub fn kind(&self) -> &'static str {
        match self {
            Opened::ForwardedTcpip { .. } => "forwarded-tcpip",
            Opened::Agent { .. } => "auth-agent",
            Opened::X11 { .. } => "x11",
        }
    }

    /// Refuses the channel: nobody on this session asked for it.
    pub async fn refuse(self, host: &str, port: u16) {
        let kind = self.kind();
        let reply = match self {
            Opened::ForwardedTcpip { reply, .. }
            | Opened::Agent { reply, .. }
            | Opened::X11 { reply, .. } => reply,
        };
        refuse_opened(host, port, kind, reply).await;
    }
}

/// Why a target's host key was not accepted. The operator's log gets all of it; the
/// user is told what happened, never where the proxy keeps its pins.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostKeyProblem {
    #[error(
        "HOST KEY CHANGED for {host}:{port}: it now presents {fingerprint}, which differs \
         from the key pinned at {pinned_at}; refusing to connect"
    )]
    Changed {
        host: String,
        port: u16,
        fingerprint: String,
        pinned_at: String,
    },
    #[error(
        "the host key of {host}:{port} ({fingerprint}) is not in {file} and host_key_check is strict"
    )]
    Unknown {
        host: String,
        port: u16,
        fingerprint: String,
        file: String,
    },
    #[error("the host key of {host}:{port} ({fingerprint}) is revoked at {at}")]
    Revoked {
        host: String,
        port: u16,
        fingerprint: String,
        at: String,
    },
    #[error(
        "{host}:{port} presented a plain host key ({fingerprint}) although a @cert-authority \
         line covers it: it must present a host certificate"
    )]
    NoCertificate {
        host: String,
        port: u16,
        fingerprint: String,
    },
    #[error("the host certificate of {host}:{port} is refused: {why}{at}")]
    CertificateRefused {
        host: String,
        port: u16,
        why: String,
        /// Where in known_targets: for the operator only.
        at: String,
    },
    #[error("cannot pin the host key of {host}:{port}: {cause}")]
    CannotPin {
        host: String,
        port: u16,
        cause: String,
    },
    #[error("cannot check the host key of {host}:{port}: {cause}")]
    CannotCheck {
        host: String,
        port: u16,
        cause: String,
    },
}

impl HostKeyProblem {
    /// What the user is told.
    pub fn user_message(&self) -> String {
        match self {
            HostKeyProblem::Changed {
                host,
                port,
                fingerprint,
                ..
            } => format!(
                "HOST KEY CHANGED for {host}:{port}: it now presents {fingerprint}, which differs \
                 from the key the proxy pinned; refusing to connect"
            ),
            HostKeyProblem::Unknown {
                host,
                port,
                fingerprint,
                ..
            } => format!(
                "the host key of {host}:{port} ({fingerprint}) is not pinned and \
                 host_key_check is strict: the operator must pin it first"
            ),
            HostKeyProblem::Revoked {
                host,
                port,
                fingerprint,
                ..
            } => format!("the host key of {host}:{port} ({fingerprint}) is revoked"),
            HostKeyProblem::CertificateRefused {
                host, port, why, ..
            } => {
                format!("the host certificate of {host}:{port} is refused: {why}")
            }
            HostKeyProblem::NoCertificate { .. } => self.to_string(),
            HostKeyProblem::CannotPin { host, port, .. }
            | HostKeyProblem::CannotCheck { host, port, .. } => format!(
                "the proxy cannot check the host key of {host}:{port}; the operator's log says why"
            ),
        }
    }
}

/// Why the proxy could not log in to the target.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("timed out connecting to {0}")]
    Timeout(SocketAddr),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: russh::Error,
    },
    #[error(transparent)]
    HostKey(#[from] HostKeyProblem),
    #[error("the known targets file is unusable: {0}")]
    KnownTargets(String),
    #[error("login to {addr} failed: {source}")]
    Login {
        addr: SocketAddr,
        #[source]
        source: russh::Error,
    },
    #[error(
        "{addr} refused the gateway certificate for login {login:?}: does the account exist, and \
         does the target trust the gateway CA (TrustedUserCAKeys)?"
    )]
    CertificateRefused { addr: SocketAddr, login: String },
}

impl UpstreamError {
    /// What the user is told: what went wrong with the target, without the proxy's
    /// files or internals.
    pub fn user_message(&self) -> String {
        match self {
            UpstreamError::HostKey(p) => p.user_message(),
            UpstreamError::KnownTargets(_) => {
                "the proxy cannot check target host keys; the operator's log says why".into()
            }
            other => other.to_string(),
        }
    }
}

/// The client configuration for targets: fast ciphers first, large windows, nodelay.
fn client_config() -> client::Config {
    client::Config {
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 65535,
        inactivity_timeout: None,
        // `server.keepalive_interval`, set by `connect`.
        keepalive_interval: None,
        preferred: russh::Preferred {
            // AES-GCM first (AES-NI); the rest as fallbacks for older targets.
            cipher: std::borrow::Cow::Borrowed(&[
                russh::cipher::AES_128_GCM,
                russh::cipher::AES_256_GCM,
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_256_CTR,
                russh::cipher::AES_128_CTR,
            ]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A logged-in target, and what the user should be told about it (a host key
/// learned on first use).
#[allow(missing_debug_implementations)] // russh's Handle has no Debug
pub struct Connected {
    pub target: Target,
    pub notice: Option<String>,
}

/// The names a target is known by: its canonical name and the address it resolved
/// to (once if they are the same).
fn target_names(login: &Login) -> Vec<String> {
    let address = login.addr.ip().to_string();
    if login.host == address {
        vec![address]
    } else {
        vec![login.host.clone(), address]
    }
}

/// Connects and logs in. Channels the target opens later go to `opened`.
pub async fn connect(
    login: &Login,
    policy: &HostKeyPolicy,
    store: Option<Arc<crate::state::Postgres>>,
    opened: tokio::sync::mpsc::Sender<Opened>,
) -> Result<Connected, UpstreamError> {
    let names = target_names(login);
    let port = login.addr.port();
    let mut known = known_targets::KnownTarget::read(&policy.known_hosts, &names, port)
        .map_err(UpstreamError::KnownTargets)?;
    // The shared store's pins join the file's (which keeps the operator's markers).
    if let Some(store) = &store {
        let lookup: Vec<String> = names
            .iter()
            .map(|n| known_targets::lookup_name(n, port))
            .collect();
        let pins = store
            .pins(&lookup)
            .await
            .map_err(|e| UpstreamError::KnownTargets(format!("the shared pin store: {e}")))?;
        for (line, _replica) in pins {
            let key = russh::keys::ssh_key::PublicKey::from_openssh(&line).map_err(|e| {
                UpstreamError::KnownTargets(format!(
                    "a pin in the shared store does not parse: {e}"
                ))
            })?;
            known.add_shared_pin(key.key_data().clone());
        }
    }
    let mut config = client_config();
    config.keepalive_interval = policy.keepalive.interval;
    config.keepalive_max = policy.keepalive.count_max;
    if known.has_ca() {
        // Certificates only: a target covered by @cert-authority never gets to offer a
        // plain key that could be taken for it.
        config.preferred.host_key_certificates =
            std::borrow::Cow::Borrowed(target_handler::CERT_ALGORITHMS);
        config.preferred.key = std::borrow::Cow::Borrowed(&[]);
    }
    let problem = Arc::new(Mutex::new(None));
    let learned = Arc::new(Mutex::new(None));
    let handler = TargetHandler {
        host: login.host.clone(),
        port: login.addr.port(),
        names,
        policy: policy.clone(),
        known,
        problem: Arc::clone(&problem),
        learned: Arc::clone(&learned),
        opened,
        store,
    };
    let config = Arc::new(config);
    let connecting = async {
        let (stream, outgoing) = socket::connect(login.addr, policy.socket_mark)
            .await
            .map_err(russh::Error::from)?;
        let stream = socket::QuickAck::new(stream);
        let handle = client::connect_stream(config, stream, handler).await?;
        Ok::<_, russh::Error>((handle, outgoing))
    };
    // The outgoing connection stays known until the login is over (see `socket`).
    let (mut handle, outgoing) =
        match tokio::time::timeout(policy.connect_timeout, connecting).await {
            Err(_) => return Err(UpstreamError::Timeout(login.addr)),
            Ok(Err(source)) => {
                return Err(match lock(&problem).take() {
                    Some(p) => p.into(),
                    None => UpstreamError::Connect {
                        addr: login.addr,
                        source,
                    },
                });
            }
            Ok(Ok(h)) => h,
        };
    let auth = handle
        .authenticate_openssh_cert(
            login.login.clone(),
            Arc::clone(&login.key),
            login.certificate.clone(),
        )
        .await
        .map_err(|source| UpstreamError::Login {
            addr: login.addr,
            source,
        })?;
    if !auth.success() {
        return Err(UpstreamError::CertificateRefused {
            addr: login.addr,
            login: login.login.clone(),
        });
    }
    drop(outgoing);
    let notice = lock(&learned).take();
    Ok(Connected {
        target: handle,
        notice,
    })
}
