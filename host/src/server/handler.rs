//! The russh server `Handler`: one per client connection (and one per inner
//! connection of a ProxyJump). Callbacks stay thin: they copy what they need and hand
//! the work to the session's state and to per-channel tasks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use russh::keys::ssh_key::{Certificate, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};

use super::Shared;
use super::metrics::Disconnect;
use super::target::parse_user;
use crate::identity::Identity;
use crate::policy::{Action, ChannelRequest, DecisionRequest, Evaluation, PolicySet};
use crate::recording::{ChannelRecord, SessionRecord, timestamp as session_log_timestamp};
use crate::upstream::{self, ChannelContext, Login, Target};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A decided session: who, where, and what the policies said.
struct Decided {
    identity: Identity,
    host: String,
    port: u16,
    addr: Option<SocketAddr>,
    request: Arc<DecisionRequest>,
    policy: Arc<PolicySet>,
    decision: Arc<Evaluation>,
    /// Why the session cannot go ahead, in words for the user; `None` if it can.
    refusal: Option<String>,
    target: Arc<tokio::sync::Mutex<Option<Arc<Target>>>>,
    /// The client's connection, for channels the target opens back (`-R`, `-A`, `-X`),
    /// and the session's byte totals (`bytes_from_client`, `bytes_to_client` below).
    back: upstream::BackChannels,
    bytes_from_client: Arc<AtomicU64>,
    bytes_to_client: Arc<AtomicU64>,
    channels: Arc<Mutex<Vec<ChannelRecord>>>,
    command_logs: Arc<Mutex<Vec<String>>>,
    close_reason: Arc<Mutex<String>>,
    /// One clone per running channel task: the session record waits for them, so it
    /// holds their exit status and command logs.
    channel_tasks: Arc<()>,
    /// Why the proxy ended an allowed session (idle), if it did.
    watch: Arc<Watch>,
}

/// A connection's state as its watchdogs see it.
#[derive(Debug, Default)]
struct Watch {
    authenticated: std::sync::atomic::AtomicBool,
    /// Channel data either way (session and forwarded channels).
    traffic: upstream::Traffic,
    /// Why the proxy ended the session, for the session log.
    ended_by: Mutex<Option<String>>,
    /// Set once a session is allowed: what to decide again after a reload.
    recheck: std::sync::OnceLock<Recheck>,
    /// Set once a session is allowed: its record so far, rewritten every minute.
    running: std::sync::OnceLock<Running>,
    /// Set when the connection ends; held while the running record is written, so
    /// that none is written after the final one.
    ended: Mutex<bool>,
}

/// A running session's record: what was known at its start, and where the rest is.
#[derive(Debug)]
struct Running {
    record: SessionRecord,
    channels: Arc<Mutex<Vec<ChannelRecord>>>,
    command_logs: Arc<Mutex<Vec<String>>>,
}

/// How often a running session's record is rewritten.
const RUNNING_RECORD_EVERY: Duration = Duration::from_secs(60);

impl Watch {
    /// Writes the running session's record as it stands now, unless it has ended.
    fn write_running(&self, log: &crate::recording::SessionLog) {
        let Some(running) = self.running.get() else {
            return;
        };
        let ended = lock(&self.ended);
        if *ended {
            return;
        }
        let now = SystemTime::now();
        let mut record = running.record.clone();
        record.end = session_log_timestamp(now);
        record.duration_ms = humantime::parse_rfc3339(&record.start)
            .ok()
            .and_then(|start| now.duration_since(start).ok())
            .map_or(0, |d| d.as_millis() as u64);
        record.bytes_from_client = self.traffic.from_client.load(Ordering::Relaxed);
        record.bytes_to_client = self.traffic.to_client.load(Ordering::Relaxed);
        record.channels = lock(&running.channels).clone();
        record.command_logs = lock(&running.command_logs).clone();
        // A failure is reported by the log; the previous version of the record stays.
        let _ = log.running(&record);
    }
}

/// What an allowed session is decided again with when the policies or the users file
/// are reloaded.
#[derive(Debug)]
struct Recheck {
    key: PublicKey,
    request: Arc<DecisionRequest>,
    command_logging: bool,
}

/// Why a decision does not let the request go ahead, in words for the user.
fn policy_refusal(decision: &Evaluation, request: &DecisionRequest) -> Option<String> {
    let (host, port, login) = (&request.target_host, request.target_port, &request.login);
    let by = decision.module.as_deref().unwrap_or("no policy");
    if !decision.is_allowed() {
        Some(format!(
            "access to {host}:{port} as {login} blocked by {by}: {}",
            decision.reason
        ))
    } else if !decision.permits_login(login) {
        Some(format!(
            "login {login:?} is not permitted on {host}:{port} ({by} allows: {})",
            decision.principals.join(", ")
        ))
    } else {
        None
    }
}

/// Returns why the proxy must disconnect the connection, when it must: no
/// authentication within `server.auth_timeout`, idle for `server.idle_timeout`, or no
/// longer allowed after a reload. Meanwhile it rewrites the running session's record.
async fn watchdogs(shared: &Shared, watch: &Watch, peer: SocketAddr) -> String {
    let auth_timeout = shared.config.auth_timeout;
    let idle_timeout = shared.config.idle_timeout;
    let authentication = async {
        tokio::time::sleep(auth_timeout).await;
        if watch.authenticated.load(Ordering::Relaxed) {
            std::future::pending().await
        }
        tracing::info!(%peer, "no authentication within {auth_timeout:?}; disconnecting");
        shared.metrics.disconnected(Disconnect::AuthTimeout);
        "authentication timeout".to_string()
    };
    let idleness = async {
        match idle_timeout {
            Some(idle) => {
                watch.idle_for(idle).await;
                shared.metrics.disconnected(Disconnect::Idle);
                let why = format!(
                    "idle for {}: disconnected (server.idle_timeout)",
                    humantime::format_duration(idle)
                );
                tracing::info!(%peer, "{why}");
                why
            }
            None => std::future::pending().await,
        }
    };
    let revocation = async {
        if !shared.config.recheck_sessions {
            return std::future::pending().await;
        }
        let why = revoked(shared, watch).await;
        shared.metrics.disconnected(Disconnect::Revoked);
        tracing::warn!(%peer, "{why}");
        why
    };
    let running_record = async {
        loop {
            tokio::time::sleep(RUNNING_RECORD_EVERY).await;
            watch.write_running(&shared.session_log);
        }
    };
    tokio::select! {
        why = authentication => why,
        why = idleness => why,
        why = revocation => why,
        why = running_record => why,
    }
}

/// Returns why an allowed session must end, once a reload of the policies or the
/// users file no longer allows it: its key is gone, or the policies in force now block
/// it, refuse its login, or want it recorded when it is not.
async fn revoked(shared: &Shared, watch: &Watch) -> String {
    let mut policies = shared.policy.swaps();
    let mut users = shared.users_swapped.subscribe();
    loop {
        tokio::select! {
            changed = policies.changed() => if changed.is_err() { std::future::pending::<()>().await },
            changed = users.changed() => if changed.is_err() { std::future::pending::<()>().await },
        }
        let Some(r) = watch.recheck.get() else {
            continue;
        };
        let Some(identity) = shared.identities.load().identify(&r.key) else {
            return "access revoked: the key is no longer in the users file".into();
        };
        let mut request = (*r.request).clone();
        request.email = identity.email;
        request.groups = identity.groups;
        request.authentication = identity.authentication;
        request.now = SystemTime::now();
        let policy = shared.policy.current();
        let decision = tokio::task::spawn_blocking(move || {
            let decision = policy.decide(&request);
            (decision, request)
        })
        .await;
        let Ok((decision, request)) = decision else {
            return "access revoked: the policies could not be evaluated again".into();
        };
        if let Some(refusal) = policy_refusal(&decision, &request) {
            return format!("access revoked: {refusal}");
        }
        if decision.command_logging && !r.command_logging {
            return "access revoked: the policies now want this session recorded; connect again"
                .into();
        }
    }
}

impl Watch {
    /// Returns once a running (allowed) session has moved no channel data for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let every = (idle / 4).min(Duration::from_secs(15));
        let total = || {
            self.traffic.from_client.load(Ordering::Relaxed)
                + self.traffic.to_client.load(Ordering::Relaxed)
        };
        let (mut seen, mut since) = (total(), tokio::time::Instant::now());
        loop {
            tokio::time::sleep(every).await;
            let now = total();
            if now != seen || self.running.get().is_none() {
                (seen, since) = (now, tokio::time::Instant::now());
            } else if since.elapsed() >= idle {
                return;
            }
        }
    }
}

/// One client connection.
pub(crate) struct ConnHandler {
    shared: Arc<Shared>,
    id: String,
    peer: SocketAddr,
    via: &'static str,
    /// The target of an inner ProxyJump connection.
    forced_target: Option<(String, u16)>,
    start: SystemTime,
    user: Option<(Identity, String)>,
    /// The key the user authenticated with.
    key: Option<PublicKey>,
    decided: Option<Decided>,
    /// A refusal found before the decision (a malformed user name).
    early_refusal: Option<String>,
    /// What the connection's watchdogs read (see [`ConnHandler::serve`]).
    watch: Arc<Watch>,
    /// Per session channel, the target's answers to its requests, in order.
    replies: HashMap<ChannelId, tokio::sync::mpsc::UnboundedReceiver<bool>>,
}

/// How long a channel request waits for the target's answer before it is refused.
const REPLY_WAIT: Duration = Duration::from_secs(60);

/// How long a connection the proxy disconnects has to close before it is cut.
const DISCONNECT_GRACE: Duration = Duration::from_secs(5);

impl ConnHandler {
    pub(crate) fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        forced_target: Option<(String, u16)>,
    ) -> Self {
        let id = format!("{:016x}", rand::random::<u64>());
        let via = if forced_target.is_some() {
            "proxyjump"
        } else {
            "username"
        };
        ConnHandler {
            shared,
            id,
            peer,
            via,
            forced_target,
            start: SystemTime::now(),
            user: None,
            key: None,
            decided: None,
            early_refusal: None,
            watch: Arc::default(),
            replies: HashMap::new(),
        }
    }

    /// Runs the connection to its end. It is disconnected if it does not authenticate
    /// within `server.auth_timeout`, and, once a session is decided, when no channel
    /// data has passed either way for `server.idle_timeout` (if set).
    pub(crate) async fn serve<S>(self, config: Arc<russh::server::Config>, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (peer, watch) = (self.peer, Arc::clone(&self.watch));
        let shared = Arc::clone(&self.shared);
        let switch = Arc::new(super::killable::KillSwitch::default());
        let stream = super::killable::Killable::new(stream, Arc::clone(&switch));
        let session = match russh::server::run_stream(config, stream, self).await {
            Ok(session) => session,
            Err(e) => {
                tracing::debug!(%peer, "handshake failed: {e}");
                return;
            }
        };
        let handle = session.handle();
        let watchdogs = async {
            let why = watchdogs(&shared, &watch, peer).await;
            *lock(&watch.ended_by) = Some(why.clone());
            why
        };
        tokio::pin!(session);
        let ended = tokio::select! {
            ended = &mut session => ended,
            why = watchdogs => {
                // The session runs on to send the message and close. russh holds the
                // message back during a key exchange: a client stalled there is cut.
                let disconnect = handle.disconnect(russh::Disconnect::ByApplication, why, "en".into());
                let _ = tokio::time::timeout(DISCONNECT_GRACE, disconnect).await;
                match tokio::time::timeout(DISCONNECT_GRACE, &mut session).await {
                    Ok(ended) => ended,
                    Err(_) => {
                        switch.kill();
                        session.await
                    }
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(%peer, "connection ended: {e}");
        }
    }

    /// A forwarding request (`-L` or `-R`) on a decided session: asks the policies,
    /// records the request in the session log, and returns the target connection when
    /// it may go ahead.
    async fn forwarding_target(&self, kind: &str, request: ChannelRequest) -> Option<Arc<Target>> {
        let d = self.decided.as_ref()?;
        let verdict = crate::policy::check_channel_off_thread(
            Arc::clone(&d.policy),
            Arc::clone(&d.request),
            Arc::clone(&d.decision),
            request,
        )
        .await;
        lock(&d.channels).push(ChannelRecord {
            kind: kind.to_string(),
            allowed: verdict.allowed,
            denied_reason: (!verdict.allowed).then(|| verdict.reason.clone()),
            ..Default::default()
        });
        if !verdict.allowed {
            tracing::warn!(session_id = %self.id, %kind, reason = %verdict.reason, "forwarding refused");
            return None;
        }
        let login = match (d.refusal.is_none(), d.addr) {
            (true, Some(addr)) => self.upstream_login(d, addr).ok()?,
            _ => return None,
        };
        let shared = &self.shared;
        target_connection(
            &d.target,
            &d.back,
            &login,
            &shared.host_key_policy,
            &shared.metrics,
        )
        .await
        .inspect_err(|e| tracing::warn!(session_id = %self.id, %kind, "forwarding: {e}"))
        .ok()
    }

    /// Answers the client's request on `channel` with the target's answer.
    ///
    /// russh knows whether the client wanted a reply only while this handler runs for
    /// the request (its flag is the last request's), so the answer is given here and
    /// not from the bridge: the connection waits for the target meanwhile, which keeps
    /// every reply with its own request. When the proxy itself refuses (policy, target
    /// unreachable), it says why on the channel (message, exit status 1, close) and the
    /// request is answered yes, so that the client reads that before it exits; so is a
    /// channel whose bridge ended without an answer. A target that does not answer in
    /// time gets a no.
    async fn relay_reply(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        if self.next_reply(channel).await {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    /// The bridge's answer to the channel's next request (see [`Self::relay_reply`]).
    async fn next_reply(&mut self, channel: ChannelId) -> bool {
        match self.replies.get_mut(&channel) {
            Some(rx) => match tokio::time::timeout(REPLY_WAIT, rx.recv()).await {
                Ok(answer) => answer.unwrap_or(true),
                Err(_) => false,
            },
            None => false,
        }
    }

    fn identify(&self, key: &russh::keys::ssh_key::PublicKey) -> Option<Identity> {
        self.shared.identities.load().identify(key)
    }

    /// Decides the session once authentication succeeded.
    async fn decide(&mut self, client_version: String) {
        let Some((identity, user)) = self.user.clone() else {
            return;
        };
        let (login, target) = match &self.forced_target {
            Some(t) => (user.clone(), Some(t.clone())),
            None => match parse_user(&user) {
                Ok(u) => (u.login, u.target),
                Err(e) => {
                    self.early_refusal = Some(format!("bad user name: {e}"));
                    return;
                }
            },
        };
        let Some((host, port)) = target else {
            // An outer ProxyJump connection: it only carries direct-tcpip channels.
            return;
        };
        let addr = resolve(&host, port).await;
        let request = Arc::new(DecisionRequest {
            session_id: self.id.clone(),
            email: identity.email.clone(),
            groups: identity.groups.clone(),
            authentication: identity.authentication.clone(),
            source: self.peer,
            target_host: host.clone(),
            target_ip: addr.map(|a| a.ip()),
            target_port: port,
            login: login.clone(),
            now: SystemTime::now(),
            client_version,
        });
        let policy = self.shared.policy.current();
        let deciding = std::time::Instant::now();
        let decision = {
            let (policy, request) = (Arc::clone(&policy), Arc::clone(&request));
            tokio::task::spawn_blocking(move || policy.decide(&request))
                .await
                .unwrap_or_else(|e| {
                    Evaluation::blocked(None, format!("policy evaluation failed: {e}"))
                })
        };
        self.shared
            .metrics
            .decided(decision.action, deciding.elapsed());
        let refusal = if let Some(refusal) = policy_refusal(&decision, &request) {
            Some(refusal)
        } else if addr.is_none() {
            Some(format!("cannot resolve {host}"))
        } else if decision.command_logging && self.shared.recording_key.is_none() {
            tracing::error!(
                "a policy asks for command logging but [recording] public_key is not set"
            );
            Some(
                "this session must be recorded, and the proxy has no auditor key configured"
                    .to_string(),
            )
        } else {
            None
        };
        tracing::info!(
            session_id = %self.id, user = %identity.email, target = %format!("{host}:{port}"), %login,
            module = ?decision.module, action = ?decision.action, reason = %decision.reason,
            allowed = refusal.is_none(), "session decided"
        );
        let traffic = self.watch.traffic.clone();
        if let (None, Some(key)) = (&refusal, &self.key) {
            let _ = self.watch.recheck.set(Recheck {
                key: key.clone(),
                request: Arc::clone(&request),
                command_logging: decision.command_logging,
            });
        }
        self.decided = Some(Decided {
            identity,
            host,
            port,
            addr,
            request,
            policy,
            decision: Arc::new(decision),
            refusal,
            target: Arc::new(tokio::sync::Mutex::new(None)),
            bytes_from_client: Arc::clone(&traffic.from_client),
            bytes_to_client: Arc::clone(&traffic.to_client),
            back: upstream::BackChannels {
                traffic,
                ..Default::default()
            },
            channels: Arc::new(Mutex::new(Vec::new())),
            command_logs: Arc::new(Mutex::new(Vec::new())),
            channel_tasks: Arc::new(()),
            close_reason: Arc::new(Mutex::new(String::new())),
            watch: Arc::clone(&self.watch),
        });
        if let Some(d) = self.decided.as_mut().filter(|d| d.refusal.is_none()) {
            // No session runs unrecorded: if its record cannot be written (a full
            // disk), it is refused.
            let mut record = session_record(
                d,
                self.id.clone(),
                self.peer,
                self.via,
                self.start,
                SystemTime::now(),
            );
            record.close_reason = "running".into();
            match self.shared.session_log.running(&record) {
                Ok(()) => {
                    self.shared.metrics.session_started();
                    let _ = self.watch.running.set(Running {
                        record,
                        channels: Arc::clone(&d.channels),
                        command_logs: Arc::clone(&d.command_logs),
                    });
                }
                Err(e) => {
                    tracing::error!(session_id = %self.id, "session refused: its record cannot be written: {e}");
                    d.refusal = Some(format!(
                        "the proxy cannot write the session log ({e}); sessions are refused until it can"
                    ));
                }
            }
        }
    }

    fn upstream_login(&self, d: &Decided, addr: SocketAddr) -> Result<Login, String> {
        let key = crate::ca::generate(crate::ca::KeyKind::Ed25519, "portcullis-session")
            .map_err(|e| e.to_string())?;
        let key_id = format!("portcullis:{}:{}", d.identity.email, self.id);
        let certificate = self
            .shared
            .ca
            .load()
            .issue_user_cert(
                key.public_key(),
                std::slice::from_ref(&d.request.login),
                &key_id,
                self.shared.config.cert_validity,
                &d.decision.permissions,
            )
            .map_err(|e| e.to_string())?;
        Ok(Login {
            host: d.host.clone(),
            addr,
            login: d.request.login.clone(),
            key: Arc::new(key),
            certificate,
        })
    }
}

async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await.ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
}

/// The session's connection to the target, made on first use and shared by its
/// channels.
async fn target_connection(
    slot: &tokio::sync::Mutex<Option<Arc<Target>>>,
    back: &upstream::BackChannels,
    login: &Login,
    host_keys: &upstream::HostKeyPolicy,
    metrics: &super::metrics::Metrics,
) -> Result<Arc<Target>, String> {
    let mut slot = slot.lock().await;
    if let Some(t) = slot.as_ref() {
        return Ok(Arc::clone(t));
    }
    let t = upstream::connect(login, host_keys, back.clone())
        .await
        .inspect_err(|_| metrics.target_failure())?;
    let t = Arc::new(t);
    *slot = Some(Arc::clone(&t));
    Ok(t)
}

/// Tells the user why, on stderr, and ends the channel with exit status 1.
async fn refuse_channel(handle: russh::server::Handle, id: ChannelId, message: String) {
    let text = format!("portcullis: {message}\r\n");
    let _ = handle.extended_data(id, 1, text.into_bytes()).await;
    let _ = handle.exit_status_request(id, 1).await;
    let _ = handle.eof(id).await;
    let _ = handle.close(id).await;
}

impl russh::server::Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.identify(offer.public_key) {
            Some(_) => Auth::Accept,
            None => {
                let fp = offer
                    .public_key
                    .fingerprint(russh::keys::ssh_key::HashAlg::Sha256);
                tracing::info!(peer = %self.peer, %user, %fp, "unknown key offered; refused");
                self.shared.metrics.unknown_key();
                Auth::reject()
            }
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.identify(key.public_key) {
            Some(identity) => {
                self.user = Some((identity, user.to_string()));
                self.key = Some(key.public_key.clone());
                Ok(Auth::Accept)
            }
            None => {
                tracing::warn!(peer = %self.peer, %user, "unknown key refused");
                self.shared.metrics.unknown_key();
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.watch.authenticated.store(true, Ordering::Relaxed);
        let version = String::from_utf8_lossy(session.remote_sshid()).into_owned();
        self.decide(version).await;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let handle = session.handle();
        let id = channel.id();
        reply.accept().await;
        let (replies, replies_rx) = tokio::sync::mpsc::unbounded_channel();
        self.replies.insert(id, replies_rx);
        let refusal = match &self.decided {
            None => Some(self.early_refusal.clone().unwrap_or_else(|| {
                format!(
                    "no target given: use `ssh -J USER@PROXY LOGIN@HOST` or `ssh 'LOGIN{}HOST@PROXY'`",
                    super::target::SEPARATOR
                )
            })),
            Some(d) => d.refusal.clone(),
        };
        if let Some(message) = refusal {
            if let Some(d) = &self.decided {
                *lock(&d.close_reason) = message.clone();
            }
            tokio::spawn(refuse_channel(handle, id, message));
            return Ok(());
        }
        let Some(d) = &self.decided else {
            return Ok(());
        };
        let Some(addr) = d.addr else { return Ok(()) };
        let login = match self.upstream_login(d, addr) {
            Ok(l) => l,
            Err(e) => {
                tokio::spawn(refuse_channel(
                    handle,
                    id,
                    format!("cannot issue a certificate: {e}"),
                ));
                return Ok(());
            }
        };
        let ctx = ChannelContext {
            policy: Arc::clone(&d.policy),
            request: Arc::clone(&d.request),
            decision: Arc::clone(&d.decision),
            bytes_from_client: Arc::clone(&d.bytes_from_client),
            bytes_to_client: Arc::clone(&d.bytes_to_client),
            channels: Arc::clone(&d.channels),
            command_log: match (&self.shared.recording_key, d.decision.command_logging) {
                (Some(key), true) => Some(upstream::CommandLogTarget {
                    dir: self.shared.config.recording_dir.clone(),
                    key: key.clone(),
                    session_id: self.id.clone(),
                }),
                _ => None,
            },
            command_logs: Arc::clone(&d.command_logs),
            back: d.back.clone(),
        };
        let target_slot = Arc::clone(&d.target);
        let back = d.back.clone();
        let running = Arc::clone(&d.channel_tasks);
        let close_reason = Arc::clone(&d.close_reason);
        let host_keys = self.shared.host_key_policy.clone();
        let metrics = Arc::clone(&self.shared.metrics);
        tokio::spawn(async move {
            let target = target_connection(&target_slot, &back, &login, &host_keys, &metrics).await;
            let channel_on_target = match target {
                Ok(t) => t
                    .channel_open_session()
                    .await
                    .map_err(|e| format!("the target refused a session channel: {e}")),
                Err(e) => Err(e),
            };
            match channel_on_target {
                Ok(tc) => {
                    upstream::bridge_session(channel, handle, tc, ctx, replies).await;
                    drop(running);
                }
                Err(message) => {
                    *lock(&close_reason) = message.clone();
                    refuse_channel(handle, id, message).await;
                }
            }
        });
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.replies.remove(&channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    /// Agent forwarding, if the decision permits it and the policies consent (the
    /// bridge asks them and the target); russh replies with the answer.
    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.next_reply(channel).await)
    }

    /// X11 forwarding, if the decision permits it and the policies consent (the bridge
    /// asks them and the target).
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    /// `ssh -R`: a port on the target's side forwarded back to the client, if the
    /// decision permits port forwarding and the policies consent.
    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Ok(port16) = u16::try_from(*port) else {
            return Ok(false);
        };
        let request = ChannelRequest::TcpipForward {
            address: address.to_string(),
            port: port16,
        };
        let (Some(target), Some(d)) = (
            self.forwarding_target("tcpip-forward", request).await,
            &self.decided,
        ) else {
            return Ok(false);
        };
        *lock(&d.back.remote_forwards) = Some(session.handle());
        match target.tcpip_forward(address.to_string(), *port).await {
            Ok(bound) => {
                if *port == 0 {
                    *port = bound;
                }
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(session_id = %self.id, %address, port, "the target refused the remote forward: {e}");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let target = match &self.decided {
            Some(d) => d.target.lock().await.clone(),
            None => None,
        };
        Ok(match target {
            Some(t) => t
                .cancel_tcpip_forward(address.to_string(), port)
                .await
                .is_ok(),
            None => false,
        })
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(port) = u16::try_from(port_to_connect) else {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        if self.decided.is_some() {
            // Port forwarding on a decided session: to the target's side, if allowed.
            let request = ChannelRequest::DirectTcpip {
                host: host_to_connect.to_string(),
                port,
            };
            let target = self.forwarding_target("direct-tcpip", request).await;
            match target {
                Some(t) => {
                    let host = host_to_connect.to_string();
                    match t
                        .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
                        .await
                    {
                        Ok(tc) => {
                            reply.accept().await;
                            let traffic = self.decided.as_ref().map(|d| d.back.traffic.clone());
                            let traffic = traffic.unwrap_or_default();
                            tokio::spawn(async move {
                                upstream::join_forwarded(
                                    channel.into_stream(),
                                    tc.into_stream(),
                                    &traffic,
                                )
                                .await;
                            });
                        }
                        Err(_) => reply.reject(russh::ChannelOpenFailure::ConnectFailed).await,
                    }
                }
                None => {
                    reply
                        .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                        .await
                }
            }
            return Ok(());
        }
        if self.forced_target.is_some() || self.user.is_none() {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        // ProxyJump: terminate the inner SSH connection here, presenting a host
        // certificate for the requested host.
        let host = host_to_connect.to_string();
        let config = match self.shared.inner_server_config(&host) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot issue a host certificate for {host}: {e}");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        reply.accept().await;
        let inner = ConnHandler::new(Arc::clone(&self.shared), self.peer, Some((host, port)));
        let stream = channel.into_stream();
        tokio::spawn(inner.serve(config, stream));
        Ok(())
    }
}

impl Drop for ConnHandler {
    fn drop(&mut self) {
        let Some(d) = self.decided.take() else { return };
        // No running record is written from here on: the final record replaces it.
        *lock(&self.watch.ended) = true;
        if self.watch.running.get().is_some() {
            self.shared.metrics.session_ended(
                d.bytes_from_client.load(Ordering::Relaxed),
                d.bytes_to_client.load(Ordering::Relaxed),
            );
        } else if d.decision.is_allowed() {
            self.shared.metrics.refused();
        }
        let end = SystemTime::now();
        let shared = Arc::clone(&self.shared);
        let (id, peer, via, start) = (self.id.clone(), self.peer, self.via, self.start);
        let write = move |d: Decided| {
            shared
                .session_log
                .append(&session_record(&d, id, peer, via, start, end))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    // Channel tasks finish their exit status and command logs after the
                    // connection ends; the record waits for them (bounded).
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                    while Arc::strong_count(&d.channel_tasks) > 1
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    write(d);
                });
            }
            Err(_) => write(d),
        }
    }
}

fn session_record(
    d: &Decided,
    id: String,
    peer: SocketAddr,
    via: &'static str,
    start: SystemTime,
    end: SystemTime,
) -> SessionRecord {
    let close_reason = lock(&d.close_reason).clone();
    let action = match (
        &d.decision.action,
        d.refusal.is_some() || !close_reason.is_empty(),
    ) {
        (Action::Block, _) => "block",
        (_, true) => "refused",
        (Action::Allow, false) => "allow",
        (Action::Audit, false) => "audit",
    };
    SessionRecord {
        id,
        email: d.identity.email.clone(),
        groups: d.identity.groups.clone(),
        source: peer.to_string(),
        via: via.to_string(),
        target_host: d.host.clone(),
        target_ip: d.addr.map(|a| a.ip().to_string()),
        target_port: d.port,
        login: d.request.login.clone(),
        policy: d.decision.module.clone(),
        action: action.to_string(),
        command_logging: d.decision.command_logging,
        reason: d.decision.reason.clone(),
        start: session_log_timestamp(start),
        end: session_log_timestamp(end),
        duration_ms: end.duration_since(start).unwrap_or_default().as_millis() as u64,
        bytes_from_client: d.bytes_from_client.load(Ordering::Relaxed),
        bytes_to_client: d.bytes_to_client.load(Ordering::Relaxed),
        channels: lock(&d.channels).clone(),
        command_logs: lock(&d.command_logs).clone(),
        close_reason: if !close_reason.is_empty() {
            close_reason
        } else if let Some(why) = lock(&d.watch.ended_by).clone() {
            why
        } else {
            "connection closed".into()
        },
    }
}

/// Host certificates for ProxyJump targets, cached per host name.
#[derive(Debug, Default)]
pub(crate) struct HostCertCache(Mutex<HashMap<String, (Certificate, SystemTime)>>);

impl HostCertCache {
    pub(crate) fn get_or_issue(
        &self,
        host: &str,
        issue: impl FnOnce() -> Result<Certificate, crate::ca::CaError>,
    ) -> Result<Certificate, crate::ca::CaError> {
        const LIFETIME: Duration = Duration::from_secs(12 * 3600);
        let mut map = lock(&self.0);
        if let Some((cert, issued)) = map.get(host)
            && issued.elapsed().unwrap_or(LIFETIME) < LIFETIME
        {
            return Ok(cert.clone());
        }
        let cert = issue()?;
        map.insert(host.to_string(), (cert.clone(), SystemTime::now()));
        Ok(cert)
    }

    /// Forgets every certificate (the CA changed).
    pub(crate) fn clear(&self) {
        lock(&self.0).clear();
    }
}
