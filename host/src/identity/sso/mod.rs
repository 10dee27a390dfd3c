//! Single sign-on for stock `ssh` clients (docs/sso.md): a key that is neither in the
//! users file nor bound to a live login gets keyboard-interactive, whose prompt shows
//! where to approve a device login at the OpenID provider; once approved, the login's
//! identity is bound to the key the client proved, for `login_ttl`.
//!
//! [`Sso`] holds the provider, the logins and the count of device logins waiting for
//! approval; [`DeviceLogin`] is one of those, its polling task ended and its slot given
//! back when it is dropped (a client that leaves the prompt frees its place).

mod logins;
mod provider;

pub use provider::PendingSignIn;

pub use logins::{
    FileLogins, Login, LoginStore, LoginStoreError, any_gone, by_id, epoch_seconds, live_for_key,
};

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use russh::keys::ssh_key::{HashAlg, PublicKey};

use super::{Authentication, Identity, SingleSignOn};
use crate::config::OidcConfig;
use crate::sync::lock;
use crate::text::sanitize;

/// What a verified ID token says about the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub email: String,
    pub groups: Vec<String>,
    pub issuer: String,
    pub subject: String,
    pub amr: Vec<String>,
    pub acr: Option<String>,
}

/// Why a single sign-on did not give an identity. The display is for the proxy's log;
/// [`SsoError::user_message`] is what the user is told.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("the identity provider cannot be used: {0}")]
    Unavailable(String),
    #[error("the login was refused at the identity provider")]
    Denied,
    #[error("the login code expired before it was approved")]
    Expired,
    #[error("{log}")]
    Rejected { user: String, log: String },
    #[error("too many single sign-on logins are waiting for approval {0}")]
    Busy(&'static str),
    #[error("the login cannot be kept: {0}")]
    Store(String),
}

impl SsoError {
    /// What the user is told (on the session channel).
    pub fn user_message(&self) -> String {
        match self {
            SsoError::Unavailable(_) | SsoError::Store(_) => {
                "single sign-on is unavailable right now; try again later".into()
            }
            SsoError::Denied => {
                "single sign-on: the login was refused at the identity provider".into()
            }
            SsoError::Expired => {
                "single sign-on: the code expired before it was approved; connect again".into()
            }
            SsoError::Rejected { user, .. } => format!("single sign-on failed: {user}"),
            SsoError::Busy(_) => {
                "single sign-on: too many logins are waiting for approval; try again later".into()
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    started: AtomicU64,
    approved: AtomicU64,
    denied: AtomicU64,
    expired: AtomicU64,
    failed: AtomicU64,
    busy: AtomicU64,
}

/// Device logins waiting for approval, in all and per client address.
#[derive(Debug, Default)]
struct Waiting {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Single sign-on: the provider, the logins, the waiting device logins.
#[derive(Debug)]
pub struct Sso {
    config: OidcConfig,
    provider: provider::Provider,
    logins: Box<dyn LoginStore>,
    waiting: Mutex<Waiting>,
    counters: Counters,
}

impl Sso {
    /// Where to send a browser to sign in (the console), returning to `redirect`.
    pub async fn sign_in_url(
        &self,
        redirect: &str,
    ) -> Result<(String, provider::PendingSignIn), SsoError> {
        self.provider.sign_in_url(redirect).await
    }

    /// The identity a browser sign-in gives, once the code it came back with is
    /// exchanged and the ID token checked (the same claims checks as device logins).
    pub async fn finish_sign_in(
        &self,
        redirect: &str,
        code: &str,
        pending: provider::PendingSignIn,
    ) -> Result<Claims, SsoError> {
        let claims = self
            .provider
            .finish_sign_in(redirect, code, pending)
            .await?;
        provider::claims_of(&self.config, &claims)
    }

    /// Sets up single sign-on with the logins kept in `config.logins_file`.
    pub fn new(config: OidcConfig) -> Result<Sso, String> {
        let logins = FileLogins::open(&config.logins_file).map_err(|e| e.to_string())?;
        Sso::with_store(config, Box::new(logins))
    }

    /// Sets up single sign-on with the logins kept in `logins`.
    pub fn with_store(config: OidcConfig, logins: Box<dyn LoginStore>) -> Result<Sso, String> {
        Ok(Sso {
            provider: provider::Provider::new(&config)?,
            config,
            logins,
            waiting: Mutex::default(),
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    pub fn logins(&self) -> &dyn LoginStore {
        self.logins.as_ref()
    }

    /// Checks that the provider answers and offers the device grant.
    pub async fn check_provider(&self) -> Result<(), SsoError> {
        self.provider.check().await
    }

    /// The identity of a key bound to a live login, and the login's id.
    pub fn identify(&self, key: &PublicKey) -> Option<(Identity, String)> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let login = self.logins.for_key(&fp, SystemTime::now())?;
        Some((identity_of(&login), login.id))
    }

    /// Starts a device login for a client at `source`: the prompt to show, and the
    /// provider polled in the background until the user approves or refuses or the
    /// code expires.
    pub async fn begin(self: &Arc<Self>, source: IpAddr) -> Result<DeviceLogin, SsoError> {
        let slot = self.take_slot(source)?;
        let start = self.provider.start().await?;
        bump(&self.counters.started);
        let details = &start.details;
        let url = details
            .verification_uri_complete()
            .map(|u| u.secret().to_string())
            .unwrap_or_else(|| details.verification_uri().to_string());
        let prompt = prompt(&url, details.user_code().secret());
        let lives = details.expires_in().min(Duration::from_secs(30 * 60));
        let expires_at = tokio::time::Instant::now() + lives;
        let sso = Arc::clone(self);
        let outcome = tokio::spawn(async move {
            let outcome = match sso.provider.finish(&start).await {
                Ok(claims) => provider::claims_of(&sso.config, &claims),
                Err(e) => Err(e),
            };
            sso.count(&outcome);
            outcome
        });
        Ok(DeviceLogin {
            prompt,
            expires_at,
            outcome,
            _slot: slot,
        })
    }

    fn count(&self, outcome: &Result<Claims, SsoError>) {
        bump(match outcome {
            Ok(_) => &self.counters.approved,
            Err(SsoError::Denied) => &self.counters.denied,
            Err(SsoError::Expired) => &self.counters.expired,
            Err(_) => &self.counters.failed,
        });
    }

    fn take_slot(self: &Arc<Self>, source: IpAddr) -> Result<Slot, SsoError> {
        let mut w = lock(&self.waiting);
        if w.total >= self.config.max_pending {
            bump(&self.counters.busy);
            return Err(SsoError::Busy("in all"));
        }
        let here = w.by_source.entry(source).or_default();
        if *here >= self.config.max_pending_per_source {
            bump(&self.counters.busy);
            return Err(SsoError::Busy("from this address"));
        }
        *here += 1;
        w.total += 1;
        Ok(Slot {
            sso: Arc::clone(self),
            source,
        })
    }

    /// Keeps an approved login, bound to `key` when the client proved one, for
    /// `login_ttl`; returns the identity and the login's id.
    pub fn bind(
        &self,
        claims: Claims,
        key: Option<&PublicKey>,
    ) -> Result<(Identity, String), SsoError> {
        let now = SystemTime::now();
        let login = Login {
            id: random_id(),
            email: claims.email,
            groups: claims.groups,
            issuer: claims.issuer,
            subject: claims.subject,
            amr: claims.amr,
            acr: claims.acr,
            key_fingerprint: key.map(|k| k.fingerprint(HashAlg::Sha256).to_string()),
            created: epoch_seconds(now),
            expires: epoch_seconds(now + self.config.login_ttl),
        };
        self.logins
            .add(login.clone())
            .map_err(|e| SsoError::Store(e.to_string()))?;
        Ok((identity_of(&login), login.id))
    }

    /// The single sign-on metrics, in the text exposition format.
    pub fn render_metrics(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        let _ = writeln!(
            out,
            "# HELP portcullis_sso_logins_total Single sign-on device logins, by outcome \
             (started; then approved, denied, expired or failed; busy: refused, too many waiting).\n\
             # TYPE portcullis_sso_logins_total counter"
        );
        for (outcome, n) in [
            ("started", get(&c.started)),
            ("approved", get(&c.approved)),
            ("denied", get(&c.denied)),
            ("expired", get(&c.expired)),
            ("failed", get(&c.failed)),
            ("busy", get(&c.busy)),
        ] {
            let _ = writeln!(
                out,
                "portcullis_sso_logins_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        let now = SystemTime::now();
        let live = self
            .logins
            .list()
            .iter()
            .filter(|l| l.key_fingerprint.is_some() && l.is_live(now))
            .count();
        let waiting = lock(&self.waiting).total;
        let _ = writeln!(
            out,
            "# HELP portcullis_sso_bindings Live single sign-on logins bound to a key.\n\
             # TYPE portcullis_sso_bindings gauge\nportcullis_sso_bindings {live}\n\
             # HELP portcullis_sso_waiting Device logins waiting for approval.\n\
             # TYPE portcullis_sso_waiting gauge\nportcullis_sso_waiting {waiting}"
        );
    }
}

/// The identity a login gives.
pub fn identity_of(login: &Login) -> Identity {
    Identity {
        email: login.email.clone(),
        groups: login.groups.clone(),
        authentication: Authentication::SingleSignOn(SingleSignOn {
            issuer: login.issuer.clone(),
            amr: login.amr.clone(),
            acr: login.acr.clone(),
            key_fingerprint: login.key_fingerprint.clone(),
        }),
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn random_id() -> String {
    let bytes: [u8; 12] = rand::random();
    hex::encode(bytes)
}

/// The keyboard-interactive prompt: the page with the code in it, and the code on a
/// line of its own for providers whose page asks for it. Both come from the provider
/// and are stripped of control characters before they reach a terminal.
fn prompt(url: &str, code: &str) -> String {
    format!(
        "Single sign-on: open this page and approve the login\n  {}\n\
         If the page asks for a code, enter\n  {}\n\
         Press Enter once you have approved it: ",
        sanitize(url, 1000),
        sanitize(code, 64)
    )
}

/// A place among the waiting device logins, given back on drop.
#[derive(Debug)]
struct Slot {
    sso: Arc<Sso>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut w = lock(&self.sso.waiting);
        w.total = w.total.saturating_sub(1);
        if let Some(n) = w.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.by_source.remove(&self.source);
            }
        }
    }
}

/// A device login waiting for the user's approval.
#[derive(Debug)]
pub struct DeviceLogin {
    /// What the user is asked.
    pub prompt: String,
    /// When the provider's code expires.
    pub expires_at: tokio::time::Instant,
    outcome: tokio::task::JoinHandle<Result<Claims, SsoError>>,
    _slot: Slot,
}

impl DeviceLogin {
    /// Waits for the provider's answer (at most until the code expires).
    pub async fn outcome(mut self) -> Result<Claims, SsoError> {
        let deadline = self.expires_at + Duration::from_secs(5);
        match tokio::time::timeout_at(deadline, &mut self.outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Err(SsoError::Unavailable(format!("the login task failed: {e}"))),
            Err(_) => Err(SsoError::Expired),
        }
    }
}

impl Drop for DeviceLogin {
    fn drop(&mut self) {
        self.outcome.abort();
    }
}

#[cfg(test)]
mod tests;
