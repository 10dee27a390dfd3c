//! The certificate stage and the session's one connection to the target: a fresh key,
//! a short-lived certificate for the decided login signed by the gateway CA, and the
//! login with them, made on the first channel and shared by the rest.

use std::sync::Arc;

use super::Shared;
use super::error::SessionError;
use super::session::{Connection, Decided};
use crate::channels::BackChannels;
use crate::upstream::{self, Login, Target};

/// How many channels the target may have opened towards the client and not yet had
/// served; more wait (the target's connection task waits with them).
const OPENED_BACKLOG: usize = 16;

/// A session's link to its target.
pub(crate) struct TargetLink {
    slot: tokio::sync::Mutex<Option<Arc<Target>>>,
    /// Where the target's channels towards the client go, once allowed.
    pub back: BackChannels,
}

impl std::fmt::Debug for TargetLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetLink")
            .field("back", &self.back)
            .finish_non_exhaustive()
    }
}

impl TargetLink {
    pub(crate) fn new(back: BackChannels) -> Self {
        TargetLink {
            slot: tokio::sync::Mutex::new(None),
            back,
        }
    }

    /// The connection, if it was made.
    pub(crate) async fn current(&self) -> Option<Arc<Target>> {
        self.slot.lock().await.clone()
    }

    /// The session's connection to the target, made on first use, with what the user
    /// should be told about it when it was made now (a host key learned).
    pub(crate) async fn connect(
        &self,
        shared: &Shared,
        conn: &Connection,
        decided: &Decided,
    ) -> Result<(Arc<Target>, Option<String>), SessionError> {
        let mut slot = self.slot.lock().await;
        if let Some(t) = slot.as_ref() {
            return Ok((Arc::clone(t), None));
        }
        let login = issue_login(shared, conn, decided)?;
        let (opened_tx, opened_rx) = tokio::sync::mpsc::channel(OPENED_BACKLOG);
        let connected = upstream::connect(
            &login,
            &shared.config.host_keys,
            shared.state.clone(),
            opened_tx,
        )
        .await
        .inspect_err(|_| shared.metrics.target_failure())?;
        tokio::spawn(crate::channels::serve_opened(
            opened_rx,
            self.back.clone(),
            login.host,
            login.addr.port(),
        ));
        let target = Arc::new(connected.target);
        *slot = Some(Arc::clone(&target));
        Ok((target, connected.notice))
    }
}

/// A fresh Ed25519 key and a certificate for the decided login, valid for
/// `ca.cert_validity`, with the decision's permissions as extensions.
fn issue_login(
    shared: &Shared,
    conn: &Connection,
    decided: &Decided,
) -> Result<Login, SessionError> {
    let addr = decided
        .addr
        .ok_or_else(|| SessionError::CannotResolve(decided.host.clone()))?;
    let key = crate::ca::generate(crate::ca::KeyKind::Ed25519, "portcullis-session")?;
    let key_id = format!("portcullis:{}:{}", decided.identity.email, conn.id);
    let certificate = shared.ca.load().issue_user_cert(
        key.public_key(),
        std::slice::from_ref(&decided.request.login),
        &key_id,
        shared.config.cert_validity,
        &decided.evaluation.permissions,
    )?;
    Ok(Login {
        host: decided.host.clone(),
        addr,
        login: decided.request.login.clone(),
        key: Arc::new(key),
        certificate,
    })
}
