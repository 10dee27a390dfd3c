//! A connection's watchdogs: no authentication within `server.auth_timeout`, idle for
//! `server.idle_timeout`, no longer allowed after a reload of the policies or the
//! users file. Meanwhile a running session's record is rewritten every minute while
//! anything moves (every ten minutes while it sits idle), so a proxy that dies loses
//! none of what happened.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use russh::keys::ssh_key::PublicKey;

use super::Shared;
use super::decide::policy_refusal;
use super::metrics::Disconnect;
use super::session::Live;
use crate::channels::Traffic;
use crate::policy::DecisionRequest;
use crate::recording::{SessionLog, SessionRecord, timestamp};
use crate::sync::lock;

/// How often a running session's record is rewritten when something moved (traffic,
/// channels, command logs)...
const RUNNING_RECORD_EVERY: Duration = Duration::from_secs(60);
/// ...and when nothing did: a thousand idle sessions rewriting their records every
/// minute kept the proxy busy at rest, for records that only said "still idle".
const RUNNING_RECORD_IDLE_EVERY: Duration = Duration::from_secs(600);

/// A connection's state as its watchdogs see it.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    pub authenticated: AtomicBool,
    /// A single sign-on waiting for the user (or telling them why it failed) holds
    /// the authentication timeout off until then.
    pub sign_on_until: Mutex<Option<tokio::time::Instant>>,
    /// Channel data either way (session and forwarded channels).
    pub traffic: Traffic,
    /// Why the proxy ended the session, for the session log.
    pub ended_by: Mutex<Option<String>>,
    /// Set once a session is allowed: what to decide again after a reload.
    pub recheck: OnceLock<Recheck>,
    /// Notified when `recheck` is set.
    pub allowed: tokio::sync::Notify,
    /// Set once a session is allowed: its record so far, rewritten every minute.
    pub running: OnceLock<Running>,
    /// Set when the connection ends; held while the running record is written, so
    /// that none is written after the final one.
    pub ended: Mutex<bool>,
    /// Why an auditor ended the session (the console), once one has.
    pub end_request: Mutex<Option<String>>,
    /// Notified when `end_request` is set.
    pub end_requested: tokio::sync::Notify,
}

/// A running session's record: what was known at its start, and where the rest is.
#[derive(Debug)]
pub(crate) struct Running {
    pub record: SessionRecord,
    pub live: Arc<Live>,
}

/// What let a user in, checked again on reload.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// A key listed in the users file.
    Key(PublicKey),
    /// A single sign-on login, by id (the key it is bound to, if any, is in it).
    Login(String),
}

/// What an allowed session is decided again with when the policies or the users file
/// are reloaded, and the generations it was decided under: a reload that lands while
/// the session is being decided (its DNS lookup can be slowed down by the user) is
/// caught by comparing them with the generations in force once it is decided.
#[derive(Debug)]
pub(crate) struct Recheck {
    pub credential: Credential,
    pub request: Arc<DecisionRequest>,
    pub command_logging: bool,
    /// The users file in force when the key was identified.
    pub users_generation: u64,
    /// The policy set that decided.
    pub policy_generation: u64,
}

impl Watch {
    /// Asks the session to end with `why` (sent to the client, and in the session log).
    pub(crate) fn request_end(&self, why: String) {
        *lock(&self.end_request) = Some(why);
        self.end_requested.notify_one();
    }

    /// Writes the running session's record as it stands now, unless it has ended.
    pub(crate) fn write_running(&self, log: &SessionLog) {
        let Some(running) = self.running.get() else {
            return;
        };
        let ended = lock(&self.ended);
        if *ended {
            return;
        }
        let now = SystemTime::now();
        let mut record = running.record.clone();
        record.end = timestamp(now);
        record.duration_ms = record.elapsed_at(now).as_millis() as u64;
        record.bytes_from_client = self.traffic.from_client();
        record.bytes_to_client = self.traffic.to_client();
        record.channels = lock(&running.live.channels).clone();
        record.command_logs = lock(&running.live.command_logs).clone();
        // A failure is reported by the log; the previous version of the record stays.
        let _ = log.running(&record);
    }

    /// What a running record would change with: the traffic, the channels and the
    /// command logs so far (None before the session is allowed).
    fn activity(&self) -> Option<(u64, usize, usize)> {
        let running = self.running.get()?;
        Some((
            self.traffic.total(),
            lock(&running.live.channels).len(),
            lock(&running.live.command_logs).len(),
        ))
    }

    /// Returns once a running (allowed) session has moved no channel data for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let every = (idle / 4).min(Duration::from_secs(15));
        let (mut seen, mut since) = (self.traffic.total(), tokio::time::Instant::now());
        loop {
            tokio::time::sleep(every).await;
            let now = self.traffic.total();
            if now != seen || self.running.get().is_none() {
                (seen, since) = (now, tokio::time::Instant::now());
            } else if since.elapsed() >= idle {
                return;
            }
        }
    }
}

impl super::handler::ConnHandler {
    /// Runs the connection to its end. It is disconnected if it does not authenticate
    /// within `server.auth_timeout`, and, once a session is decided, when no channel
    /// data has passed either way for `server.idle_timeout` (if set).
    pub(crate) async fn serve<S>(self, config: Arc<russh::server::Config>, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (peer, watch) = (self.conn.peer, Arc::clone(&self.watch));
        let shared = Arc::clone(&self.shared);
        // Listed while it runs, so that an auditor can end it (the console).
        let _listed = shared.live.list(&self.conn.id, Arc::clone(&watch));
        let switch = Arc::new(super::killable::KillSwitch::default());
        let stream = super::killable::Killable::new(stream, Arc::clone(&switch));
        // russh reads the client's version line before it returns: a client that sends
        // nothing is bounded by auth_timeout from the accept, like one that stalls later.
        let auth_deadline = self.accepted + shared.config.auth_timeout;
        // Boxed: the handshake's state (russh's session before it is spawned) is freed
        // once it is done instead of staying in this future for the connection's life.
        let running = Box::pin(russh::server::run_stream(config, stream, self));
        let session = match tokio::time::timeout_at(auth_deadline, running).await {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "no SSH version line before the authentication timeout; disconnecting");
                shared
                    .metrics
                    .disconnected(super::metrics::Disconnect::AuthTimeout);
                return;
            }
        };
        let handle = session.handle();
        let watchdogs = async {
            let why = watchdogs(&shared, &watch, peer, auth_deadline).await;
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
                let _ = tokio::time::timeout(super::handler::DISCONNECT_GRACE, disconnect).await;
                match tokio::time::timeout(super::handler::DISCONNECT_GRACE, &mut session).await {
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
}

/// Returns why the proxy must disconnect the connection, when it must.
pub(crate) async fn watchdogs(
    shared: &Shared,
    watch: &Watch,
    peer: SocketAddr,
    auth_deadline: tokio::time::Instant,
) -> String {
    let auth_timeout = shared.config.auth_timeout;
    let idle_timeout = shared.config.idle_timeout;
    let authentication = async {
        let mut deadline = auth_deadline;
        loop {
            tokio::time::sleep_until(deadline).await;
            if watch.authenticated.load(Ordering::Relaxed) {
                std::future::pending::<()>().await
            }
            match *lock(&watch.sign_on_until) {
                Some(later) if later > deadline => deadline = later,
                _ => break,
            }
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
    let ended_by_auditor = async {
        loop {
            let notified = watch.end_requested.notified();
            if let Some(why) = lock(&watch.end_request).clone() {
                shared.metrics.disconnected(Disconnect::Revoked);
                tracing::warn!(%peer, "{why}");
                return why;
            }
            notified.await;
        }
    };
    let running_record = async {
        let (mut written, mut quiet) = (None, Duration::ZERO);
        loop {
            tokio::time::sleep(RUNNING_RECORD_EVERY).await;
            let now = watch.activity();
            if now != written || quiet >= RUNNING_RECORD_IDLE_EVERY {
                watch.write_running(&shared.session_log);
                (written, quiet) = (now, Duration::ZERO);
            } else {
                quiet += RUNNING_RECORD_EVERY;
            }
        }
    };
    tokio::select! {
        why = authentication => why,
        why = idleness => why,
        why = revocation => why,
        why = ended_by_auditor => why,
        why = running_record => why,
    }
}

/// Returns why an allowed session must end, once a reload of the policies or the
/// users file no longer allows it: its key is gone, or the policies in force now block
/// it, refuse its login, or want it recorded when it is not.
async fn revoked(shared: &Shared, watch: &Watch) -> String {
    let mut policies = shared.policy.swaps();
    let mut users = shared.users_swapped.subscribe();
    let r = loop {
        if let Some(r) = watch.recheck.get() {
            break r;
        }
        watch.allowed.notified().await;
    };
    let mut seen = (r.users_generation, r.policy_generation);
    loop {
        let now = (*users.borrow_and_update(), *policies.borrow_and_update());
        if now == seen {
            tokio::select! {
                changed = policies.changed() => if changed.is_err() { std::future::pending::<()>().await },
                changed = users.changed() => if changed.is_err() { std::future::pending::<()>().await },
            }
            continue;
        }
        seen = now;
        let identity = match &r.credential {
            Credential::Key(key) => match shared.identities.load().identify(key) {
                Some(identity) => identity,
                None => return "access revoked: the key is no longer in the users file".into(),
            },
            // An expired login lets no new connection in, but ends none: only a
            // revoked one does.
            Credential::Login(id) => match shared.sso.as_ref().and_then(|s| s.logins().get(id)) {
                Some(login) => crate::identity::sso::identity_of(&login),
                None => return "access revoked: the single sign-on login was revoked".into(),
            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Authentication, UsersFile};

    /// What every connection shares, in a temporary directory, with one user.
    fn shared(dir: &std::path::Path, key: &PublicKey) -> Shared {
        let config = crate::config::Config::parse("", &dir.join("portcullis.toml")).unwrap();
        std::fs::create_dir_all(&config.policy_dir).unwrap();
        let users = dir.join("users.toml");
        std::fs::write(
            &users,
            format!(
                "[[user]]\nemail = \"jdoe@example.com\"\nkeys = [\"{}\"]\n",
                key.to_openssh().unwrap()
            ),
        )
        .unwrap();
        let ca = crate::ca::init(&config.ca_dir, crate::ca::KeyKind::Ed25519).unwrap();
        let host_key = crate::ca::generate(crate::ca::KeyKind::Ed25519, "host").unwrap();
        let policy =
            crate::policy::PolicyEngine::new(&config.policy_dir, crate::policy::Limits::default())
                .unwrap();
        let log = SessionLog::open(&config.session_log).unwrap();
        Shared::new(
            config,
            ca,
            host_key,
            Box::new(UsersFile::load(&users).unwrap()),
            Arc::new(policy),
            log,
            None,
        )
    }

    #[tokio::test]
    async fn a_reload_that_lands_while_the_session_is_decided_is_not_missed() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::ca::generate(crate::ca::KeyKind::Ed25519, "jdoe").unwrap();
        let shared = Arc::new(shared(dir.path(), key.public_key()));
        let watch = Arc::new(Watch::default());
        // The watchdog starts with the connection, before the decision.
        let revoked = {
            let (shared, watch) = (Arc::clone(&shared), Arc::clone(&watch));
            tokio::spawn(async move { revoked(&shared, &watch).await })
        };
        tokio::task::yield_now().await;
        // The key was identified under users file 0; while the session is being
        // decided, a reload takes the key away.
        let users_generation = *shared.users_swapped.borrow();
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "").unwrap();
        shared.reload_identities(Box::new(UsersFile::load(&empty).unwrap()));
        tokio::task::yield_now().await;
        // Then the decision ends, allowing the session.
        let request = DecisionRequest {
            session_id: "s".into(),
            email: "jdoe@example.com".into(),
            groups: vec![],
            authentication: Authentication::PublicKey("SHA256:x".into()),
            source: "127.0.0.1:50000".parse().unwrap(),
            target_host: "db1".into(),
            target_ip: None,
            target_canonical: None,
            target_port: 22,
            login: "jdoe".into(),
            now: SystemTime::now(),
            client_version: "SSH-2.0-test".into(),
        };
        let _ = watch.recheck.set(Recheck {
            credential: Credential::Key(key.public_key().clone()),
            request: Arc::new(request),
            command_logging: false,
            users_generation,
            policy_generation: shared.policy.current().generation(),
        });
        watch.allowed.notify_one();
        let why = tokio::time::timeout(Duration::from_secs(5), revoked)
            .await
            .expect("the reload was missed: the session was not decided again")
            .unwrap();
        assert_eq!(
            why,
            "access revoked: the key is no longer in the users file"
        );
    }
}
