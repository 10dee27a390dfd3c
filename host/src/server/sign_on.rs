//! Single sign-on on the connection (see `crate::identity::sso`): a key neither the
//! users file nor a live login knows is proved, then answered with partial success and
//! keyboard-interactive, whose one prompt shows where to approve a device login. The
//! client's answer (Enter) waits for the provider's verdict; an approved login is bound
//! to the proved key, and the connection goes on as any authenticated one.
//!
//! A login that fails is accepted as an authentication and refused on the session
//! channel, as a decision is, so that the user reads why (denied, expired, not an
//! allowed domain); such a connection is not authenticated for the watchdogs and is cut
//! shortly after.

use std::sync::atomic::Ordering;
use std::time::Duration;

use russh::keys::ssh_key::{HashAlg, PublicKey};
use russh::server::{Auth, Response};
use russh::{MethodKind, MethodSet};

use super::error::SessionError;
use super::handler::{ConnHandler, Stage};
use super::watchdogs::Credential;
use crate::identity::sso::DeviceLogin;
use crate::sync::lock;

/// How long a connection whose single sign-on failed stays, to tell the user why.
const TELL_AND_GO: Duration = Duration::from_secs(10);

/// A connection's single sign-on so far.
#[derive(Debug, Default)]
pub(crate) struct SignOn {
    /// The first key the client proved that nothing knew: the login is bound to it.
    proven_key: Option<PublicKey>,
    /// The device login whose prompt the client was shown.
    waiting: Option<DeviceLogin>,
}

impl ConnHandler {
    /// Whether a key nothing knows may still get in by single sign-on.
    pub(super) fn signs_on(&self) -> bool {
        self.shared.sso.is_some()
    }

    /// A proved key nothing knows: remember it, and answer partial success with
    /// keyboard-interactive as the one method left. (Leaving publickey in the list
    /// would loop: OpenSSH starts its keys over after a partial success.)
    pub(super) fn key_for_sign_on(&mut self, key: &PublicKey) -> Auth {
        let fp = key.fingerprint(HashAlg::Sha256);
        tracing::info!(peer = %self.conn.peer, %fp, "key not known; single sign-on offered");
        if self.sign_on.proven_key.is_none() {
            self.sign_on.proven_key = Some(key.clone());
        }
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::KeyboardInteractive][..])),
            partial_success: true,
        }
    }

    /// keyboard-interactive: the first round starts a device login and shows where to
    /// approve it; the answer waits for the provider.
    pub(super) async fn sign_on(&mut self, user: &str, response: Option<Response<'_>>) -> Auth {
        let Some(sso) = self.shared.sso.clone() else {
            return Auth::reject();
        };
        let waiting = self.sign_on.waiting.take();
        match (response, waiting) {
            (Some(_), Some(login)) => {
                let outcome = login.outcome().await;
                let key = self.sign_on.proven_key.clone();
                match outcome.and_then(|claims| sso.bind(claims, key.as_ref())) {
                    Ok((identity, login_id)) => {
                        tracing::info!(
                            peer = %self.conn.peer,
                            user = %identity.email,
                            key = ?key.as_ref().map(|k| k.fingerprint(HashAlg::Sha256).to_string()),
                            "single sign-on approved"
                        );
                        let users_generation = *self.shared.users_swapped.borrow();
                        self.authenticated(
                            user,
                            identity,
                            Credential::Login(login_id),
                            users_generation,
                        );
                        Auth::Accept
                    }
                    Err(e) => self.sign_on_failed(user, e),
                }
            }
            // A new round (or an answer to a prompt this connection never showed).
            _ => match sso.begin(self.conn.peer.ip()).await {
                Ok(login) => {
                    *lock(&self.watch.sign_on_until) =
                        Some(login.expires_at + Duration::from_secs(10));
                    let prompt = login.prompt.clone();
                    self.sign_on.waiting = Some(login);
                    Auth::Partial {
                        name: "Portcullis single sign-on".into(),
                        instructions: "".into(),
                        prompts: vec![(prompt.into(), true)].into(),
                    }
                }
                Err(e) => self.sign_on_failed(user, e),
            },
        }
    }

    fn sign_on_failed(&mut self, user: &str, e: crate::identity::sso::SsoError) -> Auth {
        tracing::warn!(peer = %self.conn.peer, "single sign-on failed: {e}");
        self.user = user.to_string();
        self.stage = Stage::Refused(SessionError::SignOn(e.user_message()));
        *lock(&self.watch.sign_on_until) = Some(tokio::time::Instant::now() + TELL_AND_GO);
        // Not authenticated for the watchdogs: the connection is cut once told.
        self.watch.authenticated.store(false, Ordering::Relaxed);
        Auth::Accept
    }
}
