//! Who is connecting. The session asks an [`IdentitySource`] (the users file) to turn
//! an authenticated public key into an identity, then single sign-on ([`sso`]) for a
//! key bound to a live login; a key neither knows may log in through the provider.

pub mod sso;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{HashAlg, PublicKey};
use serde::{Deserialize, Serialize};

/// How the user authenticated to the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "method", content = "id")]
pub enum Authentication {
    /// A listed public key, by its `SHA256:` fingerprint.
    PublicKey(String),
    /// A user certificate, by its CA's fingerprint.
    Certificate(String),
    /// Another identity source, by name.
    Other(String),
    /// Single sign-on at an OpenID provider.
    SingleSignOn(SingleSignOn),
}

impl std::fmt::Display for Authentication {
    /// One line for the session log: `publickey SHA256:...`,
    /// `sso https://idp.example.com amr=pwd,otp key=SHA256:...`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authentication::PublicKey(fp) => write!(f, "publickey {fp}"),
            Authentication::Certificate(ca) => write!(f, "certificate {ca}"),
            Authentication::Other(name) => write!(f, "other {name}"),
            Authentication::SingleSignOn(s) => {
                write!(f, "sso {}", s.issuer)?;
                if !s.amr.is_empty() {
                    write!(f, " amr={}", s.amr.join(","))?;
                }
                if let Some(acr) = &s.acr {
                    write!(f, " acr={acr}")?;
                }
                match &s.key_fingerprint {
                    Some(fp) => write!(f, " key={fp}"),
                    None => write!(f, " key=none"),
                }
            }
        }
    }
}

/// How a single sign-on user authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SingleSignOn {
    /// The provider (the ID token's `iss`).
    pub issuer: String,
    /// Authentication methods the provider reports (`amr`: `pwd`, `otp`, `mfa`, `hwk`...).
    pub amr: Vec<String>,
    /// The authentication context class (`acr`), when the provider reports one.
    pub acr: Option<String>,
    /// The key the login is bound to (none for a client that had no key).
    pub key_fingerprint: Option<String>,
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub email: String,
    pub groups: Vec<String>,
    pub authentication: Authentication,
}

/// A source of identities.
pub trait IdentitySource: Send + Sync + std::fmt::Debug {
    /// The identity a public key belongs to, or `None` to reject the key.
    fn identify(&self, key: &PublicKey) -> Option<Identity>;
}

/// Errors of the users file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read users file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsers {
    #[serde(default, rename = "user")]
    users: Vec<RawUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    email: String,
    #[serde(default)]
    groups: Vec<String>,
    keys: Vec<String>,
}

/// The embedded identity source: a TOML file listing users and their public keys.
///
/// ```toml
/// [[user]]
/// email = "jdoe@example.com"
/// groups = ["sre"]
/// keys = ["ssh-ed25519 AAAA... jdoe@laptop"]
/// ```
#[derive(Debug)]
pub struct UsersFile {
    by_fingerprint: HashMap<String, (String, Vec<String>)>,
}

impl UsersFile {
    /// Loads and checks the file: every key parses, no key belongs to two users.
    pub fn load(path: &Path) -> Result<UsersFile, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks the text of a users file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<UsersFile, IdentityError> {
        let invalid = |message: String| IdentityError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawUsers =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim().to_string()))?;
        let mut by_fingerprint = HashMap::new();
        for user in raw.users {
            if !user.email.contains('@') {
                return Err(invalid(format!(
                    "user {:?}: email must be an address",
                    user.email
                )));
            }
            if user.keys.is_empty() {
                return Err(invalid(format!("user {}: no keys", user.email)));
            }
            for (i, line) in user.keys.iter().enumerate() {
                let key = PublicKey::from_openssh(line.trim()).map_err(|e| {
                    invalid(format!(
                        "user {}: key {} is not an OpenSSH public key ({e})",
                        user.email,
                        i + 1
                    ))
                })?;
                let fp = key.fingerprint(HashAlg::Sha256).to_string();
                if let Some((other, _)) = by_fingerprint.get(&fp) {
                    return Err(invalid(format!(
                        "key {fp} is listed for both {other} and {}",
                        user.email
                    )));
                }
                by_fingerprint.insert(fp, (user.email.clone(), user.groups.clone()));
            }
        }
        Ok(UsersFile { by_fingerprint })
    }

    /// The number of keys listed.
    pub fn key_count(&self) -> usize {
        self.by_fingerprint.len()
    }
}

impl IdentitySource for UsersFile {
    fn identify(&self, key: &PublicKey) -> Option<Identity> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let (email, groups) = self.by_fingerprint.get(&fp)?;
        Some(Identity {
            email: email.clone(),
            groups: groups.clone(),
            authentication: Authentication::PublicKey(fp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{KeyKind, generate};

    #[test]
    fn listed_keys_identify_their_user_and_others_are_rejected() {
        let k1 = generate(KeyKind::Ed25519, "a").unwrap();
        let k2 = generate(KeyKind::Ed25519, "b").unwrap();
        let text = format!(
            "[[user]]\nemail = \"jdoe@example.com\"\ngroups = [\"sre\"]\nkeys = [\"{}\"]\n",
            k1.public_key().to_openssh().unwrap()
        );
        let users = UsersFile::parse(&text, Path::new("users.toml")).unwrap();
        let id = users.identify(k1.public_key()).unwrap();
        assert_eq!(id.email, "jdoe@example.com");
        assert_eq!(id.groups, ["sre"]);
        assert!(
            matches!(id.authentication, Authentication::PublicKey(ref f) if f.starts_with("SHA256:"))
        );
        assert!(users.identify(k2.public_key()).is_none());
    }

    #[test]
    fn bad_entries_are_errors_naming_the_user() {
        let err = UsersFile::parse(
            "[[user]]\nemail = \"a@b.c\"\nkeys = [\"ssh-ed25519 nope\"]\n",
            Path::new("u.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("a@b.c") && err.contains("key 1"), "{err}");
        let err = UsersFile::parse(
            "[[user]]\nemail = \"a@b.c\"\nkey = []\n",
            Path::new("u.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("key"), "{err}");
    }
}
