//! A session's record in the session log: written as "running" when it is allowed (a
//! session whose record cannot be written is refused), rewritten every minute (ten while idle) by the
//! watchdogs, and written in full when the connection ends, after its channels
//! finished.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Shared;
use super::error::SessionError;
use super::session::{Connection, Session};
use super::watchdogs::{Recheck, Running, Watch};
use crate::policy::Action;
use crate::recording::{SessionRecord, timestamp};
use crate::sync::lock;

/// How long the final record waits for the channel tasks' exit status and command logs.
const CHANNELS_WAIT: Duration = Duration::from_secs(30);

/// The record of `session` as of `end`.
/// This replica's name in the shared store, if there is one.
fn replica(shared: &Shared) -> String {
    shared
        .state
        .as_ref()
        .map(|s| s.replica.clone())
        .unwrap_or_default()
}

fn record(session: &Session, conn: &Connection, watch: &Watch, end: SystemTime) -> SessionRecord {
    let d = &session.decided;
    let close_reason = lock(&session.live.close_reason).clone();
    let action = match (
        &d.evaluation.action,
        session.refusal.is_some() || close_reason.is_some(),
    ) {
        (Action::Block, _) => "block",
        (_, true) => "refused",
        (Action::Allow, false) => "allow",
        (Action::Audit, false) => "audit",
    };
    SessionRecord {
        id: conn.id.clone(),
        replica: String::new(),
        email: d.identity.email.clone(),
        groups: d.identity.groups.clone(),
        authentication: d.identity.authentication.to_string(),
        source: conn.peer.to_string(),
        via: conn.via.as_str().to_string(),
        target_host: d.host.clone(),
        target_ip: d.addr.map(|a| a.ip().to_string()),
        target_port: d.port,
        login: d.request.login.clone(),
        policy: d.evaluation.module.clone(),
        action: action.to_string(),
        command_logging: d.evaluation.command_logging,
        reason: d.evaluation.reason.clone(),
        start: timestamp(conn.start),
        end: timestamp(end),
        duration_ms: end
            .duration_since(conn.start)
            .unwrap_or_default()
            .as_millis() as u64,
        bytes_from_client: watch.traffic.from_client(),
        bytes_to_client: watch.traffic.to_client(),
        channels: lock(&session.live.channels).clone(),
        command_logs: lock(&session.live.command_logs).clone(),
        close_reason: close_reason
            .or_else(|| lock(&watch.ended_by).clone())
            .unwrap_or_else(|| "connection closed".into()),
    }
}

/// Starts an allowed session's running record and its re-decision on reload. No
/// session runs unrecorded: if its record cannot be written (a full disk, the shared
/// store unavailable), it is refused.
pub(crate) async fn start(
    shared: &Shared,
    conn: &Connection,
    session: &mut Session,
    watch: &Watch,
    credential: super::watchdogs::Credential,
    users_generation: u64,
) {
    if session.refusal.is_some() {
        return;
    }
    let mut running = record(session, conn, watch, SystemTime::now());
    running.close_reason = "running".into();
    running.replica = replica(shared);
    // With a shared store, the first record goes there directly (no session runs
    // unrecorded), and so not through the log's mirror a second time.
    let written = match &shared.state {
        Some(state) => match state.write_now(&running, true).await {
            Ok(()) => shared.session_log.running_here(&running),
            Err(e) => {
                tracing::error!(session_id = %conn.id, "session refused: its record cannot be written to the shared store: {e}");
                session.refusal = Some(SessionError::SharedStore(e));
                return;
            }
        },
        None => shared.session_log.running(&running),
    };
    match written {
        Ok(()) => {
            shared.metrics.session_started(&watch.traffic);
            let _ = watch.running.set(Running {
                record: running,
                live: Arc::clone(&session.live),
            });
            let _ = watch.recheck.set(Recheck {
                credential,
                request: Arc::clone(&session.decided.request),
                command_logging: session.decided.evaluation.command_logging,
                users_generation,
                policy_generation: session.decided.policy.generation(),
            });
            watch.allowed.notify_one();
        }
        Err(e) => {
            tracing::error!(session_id = %conn.id, "session refused: its record cannot be written: {e}");
            session.refusal = Some(SessionError::SessionLog(e));
        }
    }
}

/// Writes the final record once the connection has ended. Channel tasks finish their
/// exit status and command logs after the connection ends; the record waits for them
/// (bounded).
pub(crate) fn finish(shared: Arc<Shared>, conn: Connection, session: Session, watch: Arc<Watch>) {
    // No running record is written from here on: the final record replaces it.
    *lock(&watch.ended) = true;
    if watch.running.get().is_some() {
        shared.metrics.session_ended(&watch.traffic);
    } else if session.decided.evaluation.is_allowed() {
        shared.metrics.refused();
    }
    let end = SystemTime::now();
    let write = move |session: Session| {
        let mut record = record(&session, &conn, &watch, end);
        record.replica = replica(&shared);
        shared.session_log.append(&record);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                let deadline = tokio::time::Instant::now() + CHANNELS_WAIT;
                while Arc::strong_count(&session.channel_tasks) > 1
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                write(session);
            });
        }
        Err(_) => write(session),
    }
}
