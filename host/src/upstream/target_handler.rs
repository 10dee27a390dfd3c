//! The russh client `Handler` of a target connection: the target's host key checked
//! against `known_targets` (a certificate from a CA listed for the target, or else the
//! pinned key), and the channels the target opens handed on as owned events.

use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::{Algorithm, EcdsaCurve, HashAlg, PublicKey};

use super::known_targets::{self, KnownTarget, PinCheck};
use super::{HostKeyProblem, Opened};
use crate::config::{HostKeyCheck, HostKeyPolicy};
use crate::sync::lock;

/// Host certificate types asked for when a CA is listed for the target.
pub(super) const CERT_ALGORITHMS: &[Algorithm] = &[
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

/// One target connection's handler.
#[derive(Debug)]
pub struct TargetHandler {
    pub(super) host: String,
    pub(super) port: u16,
    /// The names the target is pinned under: its canonical name and its address.
    pub(super) names: Vec<String>,
    pub(super) policy: HostKeyPolicy,
    pub(super) known: KnownTarget,
    /// Why the host key was refused, for the error `connect` returns.
    pub(super) problem: Arc<Mutex<Option<HostKeyProblem>>>,
    /// Set when a key was pinned on first use: what to tell the user.
    pub(super) learned: Arc<Mutex<Option<String>>>,
    /// Where channels the target opens go (see [`Opened`]).
    pub(super) opened: tokio::sync::mpsc::Sender<Opened>,
    /// The shared store, which keeps the pins when configured.
    pub(super) store: Option<Arc<crate::state::Postgres>>,
}

impl TargetHandler {
    async fn check(&self, key: &PublicKey) -> Result<(), HostKeyProblem> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let path = &self.policy.known_hosts;
        let (host, port) = (self.host.clone(), self.port);
        match self.known.pin_check(key.key_data()) {
            PinCheck::Pinned => Ok(()),
            PinCheck::Changed { line } => Err(HostKeyProblem::Changed {
                host,
                port,
                fingerprint: fp,
                pinned_at: match line {
                    0 => "the shared store (PostgreSQL)".into(),
                    line => format!("{}:{line}", path.display()),
                },
            }),
            // A target covered by @cert-authority proves itself with a certificate;
            // a plain key is never learned for it.
            PinCheck::Unknown if self.known.has_ca() => Err(HostKeyProblem::NoCertificate {
                host,
                port,
                fingerprint: fp,
            }),
            PinCheck::Unknown if self.policy.mode == HostKeyCheck::Tofu => {
                match &self.store {
                    Some(store) => self.learn_shared(store, key).await?,
                    None => KnownTarget::learn(path, &self.names, port, key).map_err(|e| {
                        HostKeyProblem::CannotPin {
                            host: host.clone(),
                            port,
                            cause: format!("{}: {e}", path.display()),
                        }
                    })?,
                }
                let names = self.names.join(", ");
                tracing::info!(%host, port, %fp, %names, "pinned target host key on first use");
                *lock(&self.learned) = Some(format!(
                    "learned the host key of {} on first use: {} {fp}",
                    names,
                    key.algorithm()
                ));
                Ok(())
            }
            PinCheck::Unknown => Err(HostKeyProblem::Unknown {
                host,
                port,
                fingerprint: fp,
                file: path.display().to_string(),
            }),
        }
    }

    /// Pins `key` in the shared store, unless another replica pinned another key for
    /// the target first (then it has changed, as far as this connection goes).
    async fn learn_shared(
        &self,
        store: &crate::state::Postgres,
        key: &PublicKey,
    ) -> Result<(), HostKeyProblem> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let names: Vec<String> = self
            .names
            .iter()
            .map(|n| known_targets::lookup_name(n, self.port))
            .collect();
        let line = key.to_openssh().map_err(|e| HostKeyProblem::CannotPin {
            host: self.host.clone(),
            port: self.port,
            cause: e.to_string(),
        })?;
        match store.learn_pin(&names, &line).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(HostKeyProblem::Changed {
                host: self.host.clone(),
                port: self.port,
                fingerprint: fp,
                pinned_at: "the shared store (PostgreSQL), by another replica just now".into(),
            }),
            Err(cause) => Err(HostKeyProblem::CannotPin {
                host: self.host.clone(),
                port: self.port,
                cause,
            }),
        }
    }

    /// Hands a channel the target opened to whoever serves them; refused if nobody does.
    async fn hand_on(&self, opened: Opened) -> Result<(), russh::Error> {
        if let Err(tokio::sync::mpsc::error::SendError(opened)) = self.opened.send(opened).await {
            opened.refuse(&self.host, self.port).await;
        }
        Ok(())
    }
}

// As for the client side's handler (server/handler.rs): the host-key check (which
// may wait on the shared store) is boxed so that the future russh allocates for each
// packet, which awaits these methods inline, stays small.
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
                match self.known.check(cert, &self.host, now) {
                    known_targets::CertCheck::Trusted { line } => {
                        tracing::debug!(host = %self.host, port = self.port, line, "host certificate trusted");
                        Ok(())
                    }
                    known_targets::CertCheck::Refused { why, at } => {
                        Err(HostKeyProblem::CertificateRefused {
                            host: self.host.clone(),
                            port: self.port,
                            why,
                            at,
                        })
                    }
                    known_targets::CertCheck::UnknownCa => {
                        Box::pin(self.check(&PublicKey::from(cert.public_key().clone()))).await
                    }
                }
            }
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                match self.known.revoked(key.key_data()) {
                    Some(line) => Err(HostKeyProblem::Revoked {
                        host: self.host.clone(),
                        port: self.port,
                        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
                        at: format!("{}:{line}", self.policy.known_hosts.display()),
                    }),
                    None => Box::pin(self.check(key)).await,
                }
            }
        };
        match checked {
            Ok(()) => Ok(true),
            Err(problem) => {
                tracing::error!(host = %self.host, port = self.port, "{problem}");
                *lock(&self.problem) = Some(problem);
                Ok(false)
            }
        }
    }

    /// A connection to a port the client forwarded with `ssh -R`.
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
        self.hand_on(Opened::ForwardedTcpip {
            channel,
            reply,
            connected_address: connected_address.to_string(),
            connected_port,
            originator_address: originator_address.to_string(),
            originator_port,
        })
        .await
    }

    /// The target's side of agent forwarding.
    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.hand_on(Opened::Agent { channel, reply }).await
    }

    /// An X client on the target reached the display the target's sshd set up.
    async fn server_channel_open_x11(
        &mut self,
        channel: russh::Channel<client::Msg>,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.hand_on(Opened::X11 {
            channel,
            reply,
            originator_address: originator_address.to_string(),
            originator_port,
        })
        .await
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
        refuse_opened(&self.host, self.port, "forwarded-streamlocal", reply).await;
        Ok(())
    }

    async fn server_channel_open_unknown(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse_opened(&self.host, self.port, "unknown", reply).await;
        Ok(())
    }

    async fn server_channel_open_session(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse_opened(&self.host, self.port, "session", reply).await;
        Ok(())
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
        refuse_opened(&self.host, self.port, "direct-tcpip", reply).await;
        Ok(())
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse_opened(&self.host, self.port, "direct-streamlocal", reply).await;
        Ok(())
    }
}

/// Refuses a channel the target opened that the proxy did not ask for.
pub(crate) async fn refuse_opened(
    host: &str,
    port: u16,
    kind: &str,
    reply: client::ChannelOpenHandle,
) {
    tracing::warn!(%host, port, %kind, "the target opened a channel nobody asked for; refused");
    reply
        .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
        .await;
}
