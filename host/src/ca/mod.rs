//! The gateway CA: the user CA that signs the short-lived certificates Portcullis logs
//! into targets with, and the host CA that signs the host certificates it presents to
//! users on ProxyJump connections.
//!
//! Layout of the CA directory (mode 0700; every key 0600, refused otherwise):
//! `user/<unix-seconds>.key` (one per generation; the newest signs, all are trusted),
//! `host/ca.key`. Private keys never appear in `Debug`, logs or errors.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{
    self, Algorithm, Certificate, EcdsaCurve, LineEnding, PrivateKey, PublicKey,
};

use crate::policy::Permissions;

/// The comment on the user CA's public key lines.
pub const USER_CA_COMMENT: &str = "portcullis-gateway-ca";
/// The comment on the host CA's public key line.
pub const HOST_CA_COMMENT: &str = "portcullis-host-ca";

/// Errors of the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "a CA already exists in {0}; use `portcullis ca show` to print it, or `ca rotate` to add a key"
    )]
    Exists(PathBuf),
    #[error("no CA in {0}; create one with `portcullis ca init`")]
    Missing(PathBuf),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot {what}: {message}")]
    Key { what: &'static str, message: String },
    #[error("{0}")]
    Usage(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> CaError {
    CaError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The key algorithm of a new CA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on NIST P-256 (what the hosted product uses).
    Ecdsa,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    fn algorithm(self) -> Algorithm {
        match self {
            KeyKind::Ecdsa => Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            KeyKind::Ed25519 => Algorithm::Ed25519,
        }
    }
}

/// Generates a private key.
pub fn generate(kind: KeyKind, comment: &str) -> Result<PrivateKey, CaError> {
    let mut key =
        PrivateKey::random(&mut rand::rng(), kind.algorithm()).map_err(|e| CaError::Key {
            what: "generate a key",
            message: e.to_string(),
        })?;
    key.set_comment(comment);
    Ok(key)
}

/// Writes a private key, 0600, refusing to overwrite.
pub fn write_private_key(path: &Path, key: &PrivateKey) -> Result<(), CaError> {
    // A directory created for the key is private; one that exists is left as it is
    // (it may be the configuration's own directory).
    if let Some(parent) = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        fs::create_dir_all(parent).map_err(|e| file_err(parent, e))?;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o700))
            .map_err(|e| file_err(parent, e))?;
    }
    let pem = key.to_openssh(LineEnding::LF).map_err(|e| CaError::Key {
        what: "encode a key",
        message: e.to_string(),
    })?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(path, e))
}

/// Reads a private key, refusing one that others can read.
pub fn read_private_key(path: &Path) -> Result<PrivateKey, CaError> {
    let meta = fs::metadata(path).map_err(|e| file_err(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    PrivateKey::from_openssh(text)
        .map_err(|e| file_err(path, format!("not an OpenSSH private key ({e})")))
}

fn user_dir(dir: &Path) -> PathBuf {
    dir.join("user")
}

fn host_key_path(dir: &Path) -> PathBuf {
    dir.join("host").join("ca.key")
}

fn user_key_paths(dir: &Path) -> Result<Vec<PathBuf>, CaError> {
    let udir = user_dir(dir);
    if !udir.exists() {
        return Ok(Vec::new());
    }
    let mut paths: Vec<PathBuf> = fs::read_dir(&udir)
        .map_err(|e| file_err(&udir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    // Names are zero-padded generation numbers: lexical order is age order.
    paths.sort();
    Ok(paths)
}

fn next_user_key_path(dir: &Path) -> Result<PathBuf, CaError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let last = user_key_paths(dir)?
        .last()
        .and_then(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(user_dir(dir).join(format!("{:012}.key", now.max(last + 1))))
}

/// Creates the CA (user CA and host CA). Fails if one exists.
pub fn init(dir: &Path, kind: KeyKind) -> Result<Ca, CaError> {
    if !user_key_paths(dir)?.is_empty() || host_key_path(dir).exists() {
        return Err(CaError::Exists(dir.to_path_buf()));
    }
    write_private_key(&next_user_key_path(dir)?, &generate(kind, USER_CA_COMMENT)?)?;
    write_private_key(&host_key_path(dir), &generate(kind, HOST_CA_COMMENT)?)?;
    Ca::open(dir)
}

/// Adds a new user CA key, which signs from now on; older keys stay trusted until
/// retired.
pub fn rotate(dir: &Path, kind: KeyKind) -> Result<Ca, CaError> {
    Ca::open(dir)?;
    write_private_key(&next_user_key_path(dir)?, &generate(kind, USER_CA_COMMENT)?)?;
    Ca::open(dir)
}

/// Removes every user CA key but the newest.
pub fn retire_old(dir: &Path) -> Result<Vec<PublicKey>, CaError> {
    let ca = Ca::open(dir)?;
    let paths = user_key_paths(dir)?;
    let mut retired = Vec::new();
    for (path, key) in paths
        .iter()
        .zip(&ca.user_keys)
        .take(paths.len().saturating_sub(1))
    {
        fs::remove_file(path).map_err(|e| file_err(path, e))?;
        retired.push(key.public_key().clone());
    }
    Ok(retired)
}

/// The loaded CA.
pub struct Ca {
    /// Oldest first; the last one signs.
    user_keys: Vec<PrivateKey>,
    host_key: PrivateKey,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fps: Vec<String> = self
            .user_keys
            .iter()
            .map(|k| {
                k.public_key()
                    .fingerprint(ssh_key::HashAlg::Sha256)
                    .to_string()
            })
            .collect();
        f.debug_struct("Ca")
            .field("user_keys", &fps)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA, checking the permissions of every key.
    pub fn open(dir: &Path) -> Result<Ca, CaError> {
        let paths = user_key_paths(dir)?;
        if paths.is_empty() || !host_key_path(dir).exists() {
            return Err(CaError::Missing(dir.to_path_buf()));
        }
        let user_keys = paths
            .iter()
            .map(|p| read_private_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        let host_key = read_private_key(&host_key_path(dir))?;
        Ok(Ca {
            user_keys,
            host_key,
        })
    }

    fn signing_key(&self) -> Result<&PrivateKey, CaError> {
        self.user_keys
            .last()
            .ok_or_else(|| CaError::Usage("the CA has no user key".into()))
    }

    /// The user CA public keys, one OpenSSH line each, for the targets'
    /// `TrustedUserCAKeys` file.
    pub fn user_ca_lines(&self) -> Vec<String> {
        self.user_keys
            .iter()
            .filter_map(|k| k.public_key().to_openssh().ok())
            .collect()
    }

    /// The `known_hosts` line that makes users trust every host certificate Portcullis
    /// presents.
    pub fn known_hosts_line(&self) -> String {
        let key = self.host_key.public_key().to_openssh().unwrap_or_default();
        format!("@cert-authority * {key}")
    }

    /// Signs a user certificate for `key`: valid from a minute ago for `validity`,
    /// carrying `principals` and the extensions `permissions` grant.
    pub fn issue_user_cert(
        &self,
        key: &PublicKey,
        principals: &[String],
        key_id: &str,
        validity: Duration,
        permissions: &Permissions,
    ) -> Result<Certificate, CaError> {
        let spec = CertSpec {
            cert_type: CertType::User,
            key_id: key_id.to_string(),
            principals,
            backdate: Duration::from_secs(60),
            validity,
            extensions: permissions.extensions(),
        };
        sign(self.signing_key()?, key, spec)
    }

    /// Signs a host certificate for the proxy's host key, valid for `hostnames`.
    pub fn issue_host_cert(
        &self,
        key: &PublicKey,
        hostnames: &[String],
        validity: Duration,
    ) -> Result<Certificate, CaError> {
        let spec = CertSpec {
            cert_type: CertType::Host,
            key_id: format!("portcullis host {}", hostnames.join(",")),
            principals: hostnames,
            backdate: Duration::from_secs(300),
            validity,
            extensions: Vec::new(),
        };
        sign(&self.host_key, key, spec)
    }
}

/// What a certificate says.
struct CertSpec<'a> {
    cert_type: CertType,
    key_id: String,
    principals: &'a [String],
    /// How long before now it becomes valid (clock skew between proxy and targets).
    backdate: Duration,
    validity: Duration,
    extensions: Vec<&'static str>,
}

fn sign(signer: &PrivateKey, key: &PublicKey, spec: CertSpec<'_>) -> Result<Certificate, CaError> {
    let err = |e: ssh_key::Error| CaError::Key {
        what: "sign a certificate",
        message: e.to_string(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut b = Builder::new_with_random_nonce(
        &mut rand::rng(),
        key.key_data().clone(),
        now.saturating_sub(spec.backdate.as_secs()),
        now + spec.validity.as_secs(),
    )
    .map_err(err)?;
    b.serial(rand::random::<u64>()).map_err(err)?;
    b.cert_type(spec.cert_type).map_err(err)?;
    b.key_id(spec.key_id).map_err(err)?;
    for p in spec.principals {
        b.valid_principal(p.as_str()).map_err(err)?;
    }
    for ext in spec.extensions {
        b.extension(ext, "").map_err(err)?;
    }
    b.sign(signer).map_err(err)
}

/// Loads the proxy's own host key, creating it (Ed25519, 0600) on first start.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, CaError> {
    if !path.exists() {
        write_private_key(path, &generate(KeyKind::Ed25519, "portcullis-host")?)?;
        tracing::info!(path = %path.display(), "created the proxy's host key");
    }
    read_private_key(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_twice_fails_saying_a_ca_exists() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), KeyKind::Ecdsa).unwrap();
        let err = init(d.path(), KeyKind::Ecdsa).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
    }

    #[test]
    fn default_user_ca_is_ecdsa_p256_with_the_gateway_comment() {
        let d = tempfile::tempdir().unwrap();
        let ca = init(d.path(), KeyKind::Ecdsa).unwrap();
        let lines = ca.user_ca_lines();
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("ecdsa-sha2-nistp256 AAAA"),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with(" portcullis-gateway-ca"), "{}", lines[0]);
        assert!(
            ca.known_hosts_line()
                .starts_with("@cert-authority * ecdsa-sha2-nistp256 ")
        );
    }

    #[test]
    fn keys_are_private_and_readable_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), KeyKind::Ed25519).unwrap();
        let key = user_key_paths(d.path()).unwrap().remove(0);
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Ca::open(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("readable by others") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("PRIVATE KEY"));
    }

    #[test]
    fn rotation_keeps_old_keys_trusted_and_signs_with_the_new_one() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), KeyKind::Ecdsa).unwrap();
        let ca = rotate(d.path(), KeyKind::Ed25519).unwrap();
        assert_eq!(ca.user_ca_lines().len(), 2);
        let user = generate(KeyKind::Ed25519, "u").unwrap();
        let perms = Permissions {
            pty: true,
            ..Permissions::default()
        };
        let cert = ca
            .issue_user_cert(
                user.public_key(),
                &["jdoe".into()],
                "id",
                Duration::from_secs(60),
                &perms,
            )
            .unwrap();
        let signer = cert.signature_key().fingerprint(ssh_key::HashAlg::Sha256);
        assert_eq!(
            signer,
            ca.signing_key()
                .unwrap()
                .public_key()
                .fingerprint(ssh_key::HashAlg::Sha256)
        );
        assert_eq!(cert.valid_principals(), ["jdoe".to_string()]);
        assert!(cert.extensions().contains_key("permit-pty"));
        assert!(!cert.extensions().contains_key("permit-port-forwarding"));
        let retired = retire_old(d.path()).unwrap();
        assert_eq!(retired.len(), 1);
        assert_eq!(Ca::open(d.path()).unwrap().user_ca_lines().len(), 1);
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let d = tempfile::tempdir().unwrap();
        let ca = init(d.path(), KeyKind::Ed25519).unwrap();
        let text = format!("{ca:?}");
        assert!(
            text.contains("SHA256:") && !text.contains("PRIVATE"),
            "{text}"
        );
    }
}
