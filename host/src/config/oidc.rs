//! `[identity.oidc]`: single sign-on with an OpenID Connect provider (docs/sso.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    issuer: String,
    client_id: String,
    #[serde(default)]
    client_secret_file: Option<PathBuf>,
    #[serde(default = "default_scopes")]
    scopes: Vec<String>,
    #[serde(default = "default_email_claim")]
    email_claim: String,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default)]
    allowed_domains: Vec<String>,
    #[serde(default = "default_login_ttl", with = "humantime_serde")]
    login_ttl: Duration,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_logins_file")]
    logins_file: PathBuf,
    #[serde(default = "default_max_pending")]
    max_pending: usize,
    #[serde(default = "default_max_pending_per_source")]
    max_pending_per_source: usize,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "groups".into()]
}
fn default_email_claim() -> String {
    "email".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_login_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_logins_file() -> PathBuf {
    "logins.json".into()
}
fn default_max_pending() -> usize {
    100
}
fn default_max_pending_per_source() -> usize {
    3
}

/// The checked `[identity.oidc]` section.
#[derive(Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The issuer URL; its discovery document is `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// Read from `client_secret_file`, which only its owner may read.
    pub client_secret: Option<String>,
    /// Scopes asked for; `openid` is always among them.
    pub scopes: Vec<String>,
    /// The ID token claim holding the user's email address.
    pub email_claim: String,
    /// The ID token claim holding the user's groups (a list of strings).
    pub groups_claim: String,
    /// Email domains allowed to log in, lower case; empty: any.
    pub allowed_domains: Vec<String>,
    /// How long a login stays bound to the key it was made with.
    pub login_ttl: Duration,
    /// Extra CA certificates (PEM) for the issuer's TLS.
    pub ca_file: Option<PathBuf>,
    /// Where logins (key bindings) are kept.
    pub logins_file: PathBuf,
    /// Device logins waiting for approval, in all.
    pub max_pending: usize,
    /// Device logins waiting for approval, per client address.
    pub max_pending_per_source: usize,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("scopes", &self.scopes)
            .field("login_ttl", &self.login_ttl)
            .field("logins_file", &self.logins_file)
            .finish_non_exhaustive()
    }
}

impl RawOidc {
    /// Checks the section; `abs` anchors relative paths. Errors name the key.
    pub(super) fn validate(
        self,
        abs: impl Fn(&Path) -> PathBuf,
    ) -> Result<OidcConfig, (&'static str, String)> {
        check_issuer(&self.issuer).map_err(|m| ("identity.oidc.issuer", m))?;
        if self.client_id.trim().is_empty() {
            return Err(("identity.oidc.client_id", "must not be empty".into()));
        }
        let client_secret = match &self.client_secret_file {
            None => None,
            Some(p) => {
                Some(read_secret(&abs(p)).map_err(|m| ("identity.oidc.client_secret_file", m))?)
            }
        };
        let mut scopes = self.scopes;
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        if let Some(bad) = scopes
            .iter()
            .find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err((
                "identity.oidc.scopes",
                format!("{bad:?} is not a scope (one word each)"),
            ));
        }
        for (key, claim) in [
            ("identity.oidc.email_claim", &self.email_claim),
            ("identity.oidc.groups_claim", &self.groups_claim),
        ] {
            if claim.trim().is_empty() {
                return Err((key, "must name a claim".into()));
            }
        }
        let mut allowed_domains = Vec::new();
        for d in &self.allowed_domains {
            let d = d.trim().trim_start_matches('@').to_ascii_lowercase();
            if d.is_empty() || d.contains(['@', ' ', '/']) {
                return Err((
                    "identity.oidc.allowed_domains",
                    format!("{d:?} is not a domain such as \"example.com\""),
                ));
            }
            allowed_domains.push(d);
        }
        if self.login_ttl < Duration::from_secs(1)
            || self.login_ttl > Duration::from_secs(30 * 86400)
        {
            return Err((
                "identity.oidc.login_ttl",
                "must be between 1s and 30d".into(),
            ));
        }
        if self.max_pending == 0 || self.max_pending_per_source == 0 {
            return Err((
                "identity.oidc.max_pending",
                "max_pending and max_pending_per_source must be at least 1".into(),
            ));
        }
        Ok(OidcConfig {
            issuer: self.issuer.trim_end_matches('/').to_string(),
            client_id: self.client_id,
            client_secret,
            scopes,
            email_claim: self.email_claim,
            groups_claim: self.groups_claim,
            allowed_domains,
            login_ttl: self.login_ttl,
            ca_file: self.ca_file.as_deref().map(&abs),
            logins_file: abs(&self.logins_file),
            max_pending: self.max_pending,
            max_pending_per_source: self.max_pending_per_source,
        })
    }
}

/// An `https://` URL, or `http://` on a loopback address (a provider on this machine,
/// as in the tests); no query or fragment.
fn check_issuer(issuer: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(issuer).map_err(|e| format!("{issuer:?} is not a URL ({e})"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{issuer:?}: an issuer has no query or fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            if is_loopback(&url) {
                Ok(())
            } else {
                Err(format!(
                    "{issuer:?}: http:// is accepted only on a loopback address; use https://"
                ))
            }
        }
        other => Err(format!("{issuer:?}: the scheme must be https, not {other}")),
    }
}

/// Whether the URL's host is a loopback address (or `localhost`).
pub(super) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Reads the client secret, refusing a file that others than its owner may read.
pub(super) fn read_secret(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {mode:o}); chmod 600 it",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_must_be_https_or_loopback_http() {
        assert!(check_issuer("https://idp.example.com").is_ok());
        assert!(check_issuer("https://login.example.com/realms/corp").is_ok());
        assert!(check_issuer("http://127.0.0.1:8080").is_ok());
        assert!(check_issuer("http://[::1]:8080").is_ok());
        assert!(check_issuer("http://localhost:8080").is_ok());
        let err = check_issuer("http://idp.example.com").unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        assert!(check_issuer("ftp://idp.example.com").is_err());
        assert!(check_issuer("idp.example.com").is_err());
        assert!(check_issuer("https://idp.example.com/?a=b").is_err());
    }

    #[test]
    fn a_client_secret_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&path).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&path).unwrap(), "s3cret");
    }
}
