//! The target-facing leg: connect to the target's sshd, verify its host key, log in
//! with a fresh key and a short-lived certificate signed by the gateway CA.

mod bridge;
mod host_ca;
mod relay;

pub use bridge::{ChannelContext, CommandLogTarget, RequestReplies, bridge_session};
pub use relay::{Traffic, join as join_forwarded};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::ssh_key::{Algorithm, Certificate, EcdsaCurve, HashAlg, PublicKey};
use russh::keys::{PrivateKey, PublicKeyOrCertificate};

use crate::config::HostKeyCheck;

/// What the upstream leg needs to log in.
#[derive(Debug, Clone)]
pub struct Login {
    pub host: String,
    pub addr: SocketAddr,
    pub login: String,
    pub key: Arc<PrivateKey>,
    pub certificate: Certificate,
}

/// The client's connection, once it has been allowed something the target opens
/// channels for: remote forwards (`ssh -R`), agent forwarding (`ssh -A`) or X11
/// forwarding (`ssh -X`).
pub type ClientSlot = Arc<Mutex<Option<russh::server::Handle>>>;

/// What the target may open channels back to the client for.
#[derive(Debug, Clone, Default)]
pub struct BackChannels {
    /// Set once a remote forward is allowed.
    pub remote_forwards: ClientSlot,
    /// Set once agent forwarding is allowed.
    pub agent: ClientSlot,
    /// Set once X11 forwarding is allowed.
    pub x11: ClientSlot,
    /// The session's byte totals, which these channels count in too.
    pub traffic: Traffic,
}

/// Accepts a channel the target opened once its counterpart towards the client is open
/// (`to_client`), then joins the two; refuses it if the client declines. Runs off the
/// target connection's task: the client's answer takes a round trip.
fn join_with_client(
    channel: russh::Channel<client::Msg>,
    reply: client::ChannelOpenHandle,
    traffic: Traffic,
    to_client: impl Future<Output = Result<russh::Channel<russh::server::Msg>, russh::Error>>
    + Send
    + 'static,
) {
    tokio::spawn(async move {
        match to_client.await {
            Ok(to_client) => {
                reply.accept().await;
                relay::join(to_client.into_stream(), channel.into_stream(), &traffic).await;
            }
            Err(_) => reply.reject(russh::ChannelOpenFailure::ConnectFailed).await,
        }
    });
}

fn client_in(slot: &ClientSlot) -> Option<russh::server::Handle> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// How to check target host keys.
#[derive(Debug, Clone)]
pub struct HostKeyPolicy {
    pub mode: HostKeyCheck,
    pub known_hosts: PathBuf,
    pub connect_timeout: Duration,
}

/// Checks the target's host key against the known-hosts store: a certificate from a CA
/// listed for the target, or else the pinned key.
#[derive(Debug)]
pub struct TargetHandler {
    host: String,
    port: u16,
    policy: HostKeyPolicy,
    markers: host_ca::Markers,
    problem: Arc<Mutex<Option<String>>>,
    back: BackChannels,
}

/// Host certificate types asked for when a CA is listed for the target.
const CERT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

impl TargetHandler {
    /// Refuses a channel the target opened that the proxy did not ask for.
    async fn refuse_opened(
        &self,
        kind: &str,
        reply: client::ChannelOpenHandle,
    ) -> Result<(), russh::Error> {
        tracing::warn!(host = %self.host, port = self.port, %kind, "the target opened a channel nobody asked for; refused");
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    fn check(&self, key: &PublicKey) -> Result<(), String> {
        let fp = key.fingerprint(HashAlg::Sha256);
        let path = &self.policy.known_hosts;
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
            Ok(true) => Ok(()),
            Ok(false) if self.policy.mode == HostKeyCheck::Tofu => {
                if let Some(parent) = path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                russh::keys::known_hosts::learn_known_hosts_path(&self.host, self.port, key, path)
                    .map_err(|e| format!("cannot pin the host key of {}: {e}", self.host))?;
                tracing::info!(host = %self.host, port = self.port, %fp, "pinned target host key on first use");
                Ok(())
            }
            Ok(false) => Err(format!(
                "the host key of {}:{} ({fp}) is not in {} and host_key_check is strict",
                self.host,
                self.port,
                path.display()
            )),
            Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                "HOST KEY CHANGED for {}:{}: it now presents {fp}, which differs from the key pinned at {}:{line}; \
                 refusing to connect",
                self.host,
                self.port,
                path.display()
            )),
            Err(e) => Err(format!("cannot check the host key of {}: {e}", self.host)),
        }
    }
}

impl client::Handler for TargetHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let checked = match key {
            PublicKeyOrCertificate::Certificate(cert) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                match self.markers.check(cert, &self.host, now) {
                    host_ca::CertCheck::Trusted { line } => {
                        tracing::debug!(host = %self.host, port = self.port, line, "host certificate trusted");
                        Ok(())
                    }
                    host_ca::CertCheck::Refused(why) => Err(format!(
                        "the host certificate of {}:{} is refused: {why}",
                        self.host, self.port
                    )),
                    host_ca::CertCheck::UnknownCa => {
                        self.check(&PublicKey::from(cert.public_key().clone()))
                    }
                }
            }
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                match self.markers.revoked(key.key_data()) {
                    Some(line) => Err(format!(
                        "the host key of {}:{} ({}) is revoked at {}:{line}",
                        self.host,
                        self.port,
                        key.fingerprint(HashAlg::Sha256),
                        self.policy.known_hosts.display()
                    )),
                    None => self.check(key),
                }
            }
        };
        match checked {
            Ok(()) => Ok(true),
            Err(problem) => {
                tracing::error!(host = %self.host, port = self.port, "{problem}");
                *self
                    .problem
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(problem);
                Ok(false)
            }
        }
    }

    /// A connection to a port the client forwarded with `ssh -R`: opened to the client
    /// and joined, or refused when no remote forward of this session was allowed.
    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let Some(client) = client_in(&self.back.remote_forwards) else {
            return self.refuse_opened("forwarded-tcpip", reply).await;
        };
        let (connected, originator) = (
            connected_address.to_string(),
            originator_address.to_string(),
        );
        join_with_client(channel, reply, self.back.traffic.clone(), async move {
            client
                .channel_open_forwarded_tcpip(
                    connected,
                    connected_port,
                    originator,
                    originator_port,
                )
                .await
        });
        Ok(())
    }

    // Every other channel a target may open towards the proxy is refused: the proxy
    // asks for none of them (russh's defaults would accept and drop them).

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse_opened("forwarded-streamlocal", reply).await
    }

    /// The target's side of agent forwarding: joined to an agent channel opened to the
    /// client, when agent forwarding was allowed on this session.
    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let Some(client) = client_in(&self.back.agent) else {
            return self.refuse_opened("auth-agent", reply).await;
        };
        join_with_client(channel, reply, self.back.traffic.clone(), async move {
            client.channel_open_agent().await
        });
        Ok(())
    }

    async fn server_channel_open_unknown(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse_opened("unknown", reply).await
    }

    async fn server_channel_open_session(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse_opened("session", reply).await
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse_opened("direct-tcpip", reply).await
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.refuse_opened("direct-streamlocal", reply).await
    }

    /// An X client on the target reached the display the target's sshd set up: joined
    /// to an x11 channel opened to the client, whose ssh passes it to its X server.
    async fn server_channel_open_x11(
        &mut self,
        channel: russh::Channel<client::Msg>,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let Some(client) = client_in(&self.back.x11) else {
            return self.refuse_opened("x11", reply).await;
        };
        let originator = originator_address.to_string();
        join_with_client(channel, reply, self.back.traffic.clone(), async move {
            client.channel_open_x11(originator, originator_port).await
        });
        Ok(())
    }
}

/// A logged-in connection to the target.
pub type Target = client::Handle<TargetHandler>;

/// The client configuration for targets: fast ciphers first, large windows, nodelay.
fn client_config() -> client::Config {
    client::Config {
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 65535,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
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

/// Connects and logs in, or says why not in words for the user.
pub async fn connect(
    login: &Login,
    policy: &HostKeyPolicy,
    back: BackChannels,
) -> Result<Target, String> {
    let markers = host_ca::Markers::read(&policy.known_hosts, &login.host, login.addr.port())?;
    let mut config = client_config();
    if markers.has_ca() {
        config.preferred.host_key_certificates = std::borrow::Cow::Borrowed(CERT_ALGORITHMS);
    }
    let problem = Arc::new(Mutex::new(None));
    let handler = TargetHandler {
        host: login.host.clone(),
        port: login.addr.port(),
        policy: policy.clone(),
        markers,
        problem: Arc::clone(&problem),
        back,
    };
    let config = Arc::new(config);
    let connecting = client::connect(config, login.addr, handler);
    let mut handle = match tokio::time::timeout(policy.connect_timeout, connecting).await {
        Err(_) => return Err(format!("timed out connecting to {}", login.addr)),
        Ok(Err(e)) => {
            let why = problem
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            return Err(why.unwrap_or_else(|| format!("cannot connect to {}: {e}", login.addr)));
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
        .map_err(|e| format!("login to {} failed: {e}", login.addr))?;
    if !auth.success() {
        return Err(format!(
            "{} refused the gateway certificate for login {:?}: does the account exist, and does the \
             target trust the gateway CA (TrustedUserCAKeys)?",
            login.addr, login.login
        ));
    }
    Ok(handle)
}
