//! `[console]`: the auditors' web console (docs/console.md). Off unless `listen` is set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    /// Where to serve the console, e.g. `127.0.0.1:8443`.
    listen: Option<String>,
    /// TLS certificate chain and key (PEM). Without them the console serves plain
    /// HTTP, which is accepted only on a loopback address.
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    /// A file holding the sign-in token (only its owner may read it).
    token_file: Option<PathBuf>,
    /// With `[identity.oidc]`: auditors sign in at the identity provider, and only
    /// members of this group get in.
    auditors_group: Option<String>,
    /// The console's address as browsers reach it (the identity provider sends them
    /// back to PUBLIC_URL/login/oidc/callback); default `http(s)://LISTEN`.
    public_url: Option<String>,
    /// How long a sign-in lasts.
    #[serde(default, with = "humantime_serde")]
    sign_in_ttl: Option<Duration>,
}

/// The checked `[console]` section.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    pub listen: SocketAddr,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The sign-in token, if token sign-in is on.
    pub token: Option<String>,
    /// Sign-in at the identity provider for this group's members, if on.
    pub auditors_group: Option<String>,
    /// `https://console.example.com` (no trailing `/`).
    pub public_url: String,
    pub sign_in_ttl: Duration,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl RawConsole {
    pub(super) fn validate(
        self,
        abs: impl Fn(&Path) -> PathBuf,
    ) -> Result<Option<ConsoleConfig>, (&'static str, String)> {
        let Some(listen) = self.listen else {
            return Ok(None);
        };
        let listen: SocketAddr = listen.parse().map_err(|_| {
            (
                "console.listen",
                format!("{listen:?} is not an IP:PORT address"),
            )
        })?;
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(c), Some(k)) => Some((abs(&c), abs(&k))),
            (None, None) => None,
            _ => {
                return Err((
                    "console.tls_cert",
                    "tls_cert and tls_key go together".into(),
                ));
            }
        };
        if tls.is_none() && !listen.ip().is_loopback() {
            return Err((
                "console.listen",
                format!(
                    "{listen}: without tls_cert and tls_key the console serves plain HTTP, \
                     which is accepted only on a loopback address"
                ),
            ));
        }
        if self.token_file.is_none() && self.auditors_group.is_none() {
            return Err((
                "console.token_file",
                "or console.auditors_group is needed: how auditors sign in".into(),
            ));
        }
        let token = match self.token_file {
            None => None,
            Some(f) => {
                let token =
                    super::oidc::read_secret(&abs(&f)).map_err(|e| ("console.token_file", e))?;
                if token.len() < 16 {
                    return Err((
                        "console.token_file",
                        "the token must be at least 16 characters (e.g. openssl rand -hex 32)"
                            .into(),
                    ));
                }
                Some(token)
            }
        };
        let public_url = match self.public_url {
            Some(u) => {
                let parsed = url::Url::parse(&u)
                    .map_err(|e| ("console.public_url", format!("{u:?}: {e}")))?;
                if !matches!(parsed.scheme(), "https" | "http") {
                    return Err(("console.public_url", format!("{u:?}: not an http(s) URL")));
                }
                u.trim_end_matches('/').to_string()
            }
            None => format!(
                "{}://{listen}",
                if tls.is_some() { "https" } else { "http" }
            ),
        };
        let sign_in_ttl = self.sign_in_ttl.unwrap_or(Duration::from_secs(8 * 3600));
        if sign_in_ttl < Duration::from_secs(60) || sign_in_ttl > Duration::from_secs(7 * 86400) {
            return Err(("console.sign_in_ttl", "must be between 1m and 7d".into()));
        }
        Ok(Some(ConsoleConfig {
            listen,
            tls,
            token,
            auditors_group: self.auditors_group,
            public_url,
            sign_in_ttl,
        }))
    }
}
