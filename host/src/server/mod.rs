//! The client-facing leg and the session pipeline it drives: the russh server
//! configuration and the state every connection shares (here), the russh adapter
//! (`handler`), the username form (`username_form`), the decision (`decide`), the
//! certificate and the target connection (`target_login`), the session's record
//! (`session_record`) and its watchdogs (`watchdogs`). docs/architecture.md maps them.

pub(crate) mod admission;
mod decide;
mod error;
mod handler;
mod host_certs;
mod killable;
pub(crate) mod metrics;
mod opens;
pub(crate) mod proxy_protocol;
mod session;
mod session_record;
mod sign_on;
mod target_login;
pub mod target_name;
pub mod username_form;
mod watchdogs;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use russh::MethodKind;
use russh::keys::PrivateKey;

use crate::ca::{Ca, CaError};
use crate::config::Config;
use crate::identity::IdentitySource;
use crate::policy::PolicyEngine;
use crate::recording::SessionLog;

pub(crate) use decide::resolve;
pub(crate) use handler::ConnHandler;
pub(crate) use session::Via;

/// What every connection shares. Immutable but for the identity source, the CA and the
/// policy engine's current set, which are swapped atomically on reload.
pub(crate) struct Shared {
    pub config: Config,
    pub ca: ArcSwap<Ca>,
    pub host_key: PrivateKey,
    pub identities: ArcSwap<Box<dyn IdentitySource>>,
    /// Single sign-on, if configured.
    pub sso: Option<Arc<crate::identity::sso::Sso>>,
    /// The shared store (PostgreSQL), if configured.
    pub state: Option<Arc<crate::state::Postgres>>,
    pub policy: Arc<PolicyEngine>,
    pub session_log: SessionLog,
    /// The auditor's key for sealed command logs, if configured.
    pub recording_key: Option<crate::recording::cmdlog::SealingKey>,
    /// Object storage the command logs are shipped to, if configured.
    pub uploads: Option<Arc<crate::recording::store::Uploads>>,
    host_certs: host_certs::HostCertCache,
    /// Changes whenever a new users file is put in force.
    pub(crate) users_swapped: tokio::sync::watch::Sender<u64>,
    pub metrics: Arc<metrics::Metrics>,
    /// The admission limits' counts.
    pub admission: admission::Admission,
    /// The connections running here, by session id.
    pub live: LiveSessions,
}

/// The connections this proxy runs, by session id: what an auditor may end.
#[derive(Debug, Default)]
pub(crate) struct LiveSessions(
    std::sync::Mutex<std::collections::HashMap<String, Arc<watchdogs::Watch>>>,
);

/// Takes a connection off the list when dropped.
#[derive(Debug)]
pub(crate) struct Listed<'a>(&'a LiveSessions, String);

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        crate::sync::lock(&(self.0).0).remove(&self.1);
    }
}

impl LiveSessions {
    pub(crate) fn list(&self, id: &str, watch: Arc<watchdogs::Watch>) -> Listed<'_> {
        crate::sync::lock(&self.0).insert(id.to_string(), watch);
        Listed(self, id.to_string())
    }

    /// The session `id`'s watch, if it runs here.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<watchdogs::Watch>> {
        crate::sync::lock(&self.0).get(id).cloned()
    }

    /// Ends the session `id` with `why` (sent to the client, and in the session log).
    /// False when no such session runs here.
    pub(crate) fn end(&self, id: &str, why: String) -> bool {
        self.get(id).map(|watch| watch.request_end(why)).is_some()
    }
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        ca: Ca,
        host_key: PrivateKey,
        identities: Box<dyn IdentitySource>,
        policy: Arc<PolicyEngine>,
        session_log: SessionLog,
        recording_key: Option<crate::recording::cmdlog::SealingKey>,
    ) -> Self {
        let admission = admission::Admission::new(config.admission);
        Shared {
            config,
            ca: ArcSwap::from_pointee(ca),
            host_key,
            identities: ArcSwap::from_pointee(identities),
            sso: None,
            state: None,
            policy,
            session_log,
            recording_key,
            uploads: None,
            host_certs: host_certs::HostCertCache::default(),
            users_swapped: tokio::sync::watch::Sender::new(0),
            metrics: Arc::default(),
            admission,
            live: LiveSessions::default(),
        }
    }

    /// Adds the shared store (before the first connection): session records go to it
    /// too, pins are kept in it.
    pub(crate) fn with_uploads(mut self, uploads: Arc<crate::recording::store::Uploads>) -> Self {
        let _ = self.metrics.uploads.set(Arc::clone(&uploads));
        self.uploads = Some(uploads);
        self
    }

    pub(crate) fn with_state(mut self, state: Arc<crate::state::Postgres>) -> Self {
        self.session_log
            .mirror_to(Arc::clone(&state) as Arc<dyn crate::recording::RecordMirror>);
        let _ = self.metrics.replica.set(state.replica.clone());
        self.state = Some(state);
        self
    }

    /// Adds single sign-on (before the first connection).
    pub(crate) fn with_sso(mut self, sso: Arc<crate::identity::sso::Sso>) -> Self {
        let _ = self.metrics.sso.set(Arc::clone(&sso));
        self.sso = Some(sso);
        self
    }

    /// Puts a freshly read users file in force. Running sessions are decided again
    /// (`policy.recheck_sessions`).
    pub(crate) fn reload_identities(&self, identities: Box<dyn IdentitySource>) {
        self.identities.store(Arc::new(identities));
        self.users_swapped.send_modify(|g| *g += 1);
    }

    /// Reads the single sign-on logins again (another process revoked some, or
    /// SIGHUP); if a login is gone, running sessions are decided again, and those it
    /// let in end.
    pub(crate) fn refresh_logins(&self) {
        let Some(sso) = &self.sso else { return };
        match sso.logins().refresh() {
            Ok(true) => {
                tracing::info!(
                    "single sign-on logins were revoked; deciding running sessions again"
                );
                self.users_swapped.send_modify(|g| *g += 1);
            }
            Ok(false) => {}
            Err(e) => tracing::error!("single sign-on logins not reloaded: {e}"),
        }
    }

    /// Puts a freshly read CA in force (SIGHUP after `ca rotate` or `ca retire`):
    /// certificates issued from now on are signed by its newest keys; host
    /// certificates issued by the previous one are issued again.
    pub(crate) fn reload_ca(&self, ca: Ca) {
        self.ca.store(Arc::new(ca));
        self.host_certs.clear();
    }

    /// The server configuration for the proxy's listening socket.
    pub(crate) fn server_config(&self) -> Arc<russh::server::Config> {
        Arc::new(self.base_server_config(Vec::new()))
    }

    fn base_server_config(
        &self,
        certificates: Vec<russh::keys::Certificate>,
    ) -> russh::server::Config {
        russh::server::Config {
            server_id: russh::SshId::Standard(
                format!("SSH-2.0-Portcullis_{}", env!("CARGO_PKG_VERSION")).into(),
            ),
            methods: match self.sso {
                None => russh::MethodSet::from(&[MethodKind::PublicKey][..]),
                Some(_) => russh::MethodSet::from(
                    &[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..],
                ),
            },
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![self.host_key.clone()],
            certificates,
            // OpenSSH's own channel window. With 8 MiB, an OpenSSH client uploading by
            // ProxyJump spent its time growing buffers (page faults, copies) and the
            // upload ran at 0.65x; with 2 MiB the client behaves as with sshd.
            window_size: 2 * 1024 * 1024,
            maximum_packet_size: 65535,
            inactivity_timeout: Some(Duration::from_secs(3600)),
            // Every keepalive wakes the proxy for a round trip on each leg: with
            // thousands of idle sessions that was most of its CPU at rest. The default
            // (5 minutes) leaves dead peers to TCP keepalives (see upstream/socket.rs).
            keepalive_interval: self.config.keepalive.interval,
            keepalive_max: self.config.keepalive.count_max,
            nodelay: true,
            // `server.cipher_order`: with "proxy", the first of `server.ciphers` that
            // the client supports (third_party/README.md, change 8).
            prefer_server_ciphers: self.config.cipher_order == crate::config::CipherOrder::Proxy,
            preferred: russh::Preferred {
                // `server.ciphers` (AES-GCM first: see config::DEFAULT_CIPHERS).
                cipher: std::borrow::Cow::Owned(
                    self.config
                        .ciphers
                        .iter()
                        .filter_map(|c| russh::cipher::Name::try_from(*c).ok())
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The configuration of an inner (ProxyJump) connection to `host`: the proxy's host
    /// key with a host certificate for `host` signed by the host CA.
    ///
    /// `host` is the name as the client sent it, already checked; the certificate names
    /// it (lower-cased) and its canonical form.
    pub(crate) fn inner_server_config(
        &self,
        host: &str,
        canonical: &str,
    ) -> Result<Arc<russh::server::Config>, CaError> {
        let sent = host.to_ascii_lowercase();
        let cert = self.host_certs.get_or_issue(&sent, || {
            let mut principals = vec![sent.clone(), canonical.to_string()];
            principals.dedup();
            self.ca.load().issue_host_cert(
                self.host_key.public_key(),
                &principals,
                Duration::from_secs(24 * 3600),
            )
        })?;
        Ok(Arc::new(self.base_server_config(vec![cert])))
    }
}
