//! Single sign-on logins: an identity from the provider bound to the key the client
//! proved, until it expires or is revoked. Kept behind [`LoginStore`] so that a shared
//! store can replace the file; [`FileLogins`] is the embedded one.
//!
//! The file is JSON, written whole to a temporary file and renamed over the old one
//! (mode 0600), under an advisory lock on `FILE.lock` so that the proxy (adding a login)
//! and `portcullis logins revoke` (removing one) never lose each other's change.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::sync::lock;

/// One login: who the provider said the user is, and the key it is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// A random id, unique per login.
    pub id: String,
    pub email: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The provider that vouched for the user, and its subject (`sub`) there.
    pub issuer: String,
    pub subject: String,
    /// How the user authenticated at the provider (`amr`, `acr`), when it says.
    #[serde(default)]
    pub amr: Vec<String>,
    #[serde(default)]
    pub acr: Option<String>,
    /// The `SHA256:` fingerprint of the key the client proved, if it had one (a client
    /// with no key is asked at each connection: its login binds nothing).
    pub key_fingerprint: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
    pub expires: u64,
}

impl Login {
    /// Whether the login still lets its key in at `now`.
    pub fn is_live(&self, now: SystemTime) -> bool {
        epoch_seconds(now) < self.expires
    }

    /// When the login expires.
    pub fn expires_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.expires)
    }
}

/// Seconds since the epoch.
pub fn epoch_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Errors of a login store.
#[derive(Debug, thiserror::Error)]
pub enum LoginStoreError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// Where logins are kept.
pub trait LoginStore: Send + Sync + std::fmt::Debug {
    /// The live login bound to a key fingerprint.
    fn for_key(&self, fingerprint: &str, now: SystemTime) -> Option<Login>;
    /// A login by id, live or expired, unless it was revoked (or dropped once expired).
    fn get(&self, id: &str) -> Option<Login>;
    /// Keeps a new login; one bound to the same key replaces the older one. Expired
    /// logins are dropped on the way.
    fn add(&self, login: Login) -> Result<(), LoginStoreError>;
    /// Every login kept, oldest first.
    fn list(&self) -> Vec<Login>;
    /// Removes the logins of an email address (any case) or of a key fingerprint, and
    /// returns them.
    fn revoke(&self, who: &str) -> Result<Vec<Login>, LoginStoreError>;
    /// Reads the backing store again (another process may have changed it); returns
    /// whether a login that was there is gone.
    fn refresh(&self) -> Result<bool, LoginStoreError>;
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LoginsDocument {
    version: u32,
    logins: Vec<Login>,
}

/// Logins in a JSON file (see the module's documentation).
#[derive(Debug)]
pub struct FileLogins {
    path: PathBuf,
    logins: Mutex<Vec<Login>>,
}

impl FileLogins {
    /// Opens the file, which need not exist yet.
    pub fn open(path: &Path) -> Result<FileLogins, LoginStoreError> {
        let logins = read(path)?;
        Ok(FileLogins {
            path: path.to_path_buf(),
            logins: Mutex::new(logins),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, message: String) -> LoginStoreError {
        LoginStoreError::File {
            path: self.path.clone(),
            message,
        }
    }

    /// Reads the file under its lock, lets `change` edit the logins, writes them back,
    /// and keeps them in memory.
    fn update<R>(&self, change: impl FnOnce(&mut Vec<Login>) -> R) -> Result<R, LoginStoreError> {
        let lock_path = self.path.with_extension("json.lock");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| self.error(format!("cannot open {}: {e}", lock_path.display())))?;
        lock_file
            .lock()
            .map_err(|e| self.error(format!("cannot lock {}: {e}", lock_path.display())))?;
        let mut logins = read(&self.path)?;
        let result = change(&mut logins);
        write(&self.path, &logins).map_err(|e| self.error(e))?;
        *lock(&self.logins) = logins;
        Ok(result)
    }
}

/// The newest live login bound to a key fingerprint, among `logins`.
pub fn live_for_key(logins: &[Login], fingerprint: &str, now: SystemTime) -> Option<Login> {
    logins
        .iter()
        .rev()
        .find(|l| l.key_fingerprint.as_deref() == Some(fingerprint) && l.is_live(now))
        .cloned()
}

/// A login by id, among `logins`.
pub fn by_id(logins: &[Login], id: &str) -> Option<Login> {
    logins.iter().find(|l| l.id == id).cloned()
}

/// Whether a login of `old` is missing from `new` (one was revoked or dropped).
pub fn any_gone(old: &[Login], new: &[Login]) -> bool {
    old.iter().any(|o| !new.iter().any(|n| n.id == o.id))
}

impl LoginStore for FileLogins {
    fn for_key(&self, fingerprint: &str, now: SystemTime) -> Option<Login> {
        live_for_key(&lock(&self.logins), fingerprint, now)
    }

    fn get(&self, id: &str) -> Option<Login> {
        by_id(&lock(&self.logins), id)
    }

    fn add(&self, login: Login) -> Result<(), LoginStoreError> {
        let now = SystemTime::now();
        self.update(|logins| {
            logins.retain(|l| {
                l.is_live(now)
                    && (login.key_fingerprint.is_none()
                        || l.key_fingerprint != login.key_fingerprint)
            });
            logins.push(login);
        })
    }

    fn list(&self) -> Vec<Login> {
        lock(&self.logins).clone()
    }

    fn revoke(&self, who: &str) -> Result<Vec<Login>, LoginStoreError> {
        self.update(|logins| {
            let (gone, kept): (Vec<Login>, Vec<Login>) =
                std::mem::take(logins).into_iter().partition(|l| {
                    l.email.eq_ignore_ascii_case(who) || l.key_fingerprint.as_deref() == Some(who)
                });
            *logins = kept;
            gone
        })
    }

    fn refresh(&self) -> Result<bool, LoginStoreError> {
        let fresh = read(&self.path)?;
        let mut logins = lock(&self.logins);
        let lost = any_gone(&logins, &fresh);
        *logins = fresh;
        Ok(lost)
    }
}

fn read(path: &Path) -> Result<Vec<Login>, LoginStoreError> {
    let error = |message: String| LoginStoreError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(error(format!("cannot read: {e}"))),
    };
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc: LoginsDocument =
        serde_json::from_str(&text).map_err(|e| error(format!("not a logins file: {e}")))?;
    if doc.version != 1 {
        return Err(error(format!(
            "version {} of the logins file is not known to this proxy",
            doc.version
        )));
    }
    Ok(doc.logins)
}

fn write(path: &Path, logins: &[Login]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let doc = LoginsDocument {
        version: 1,
        logins: logins.to_vec(),
    };
    let mut text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    text.push('\n');
    let tmp = path.with_extension("json.tmp");
    let result = (|| {
        let mut f = File::options()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok::<(), std::io::Error>(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(id: &str, email: &str, key: Option<&str>, expires_in: i64) -> Login {
        let now = epoch_seconds(SystemTime::now()) as i64;
        Login {
            id: id.into(),
            email: email.into(),
            groups: vec!["sre".into()],
            issuer: "https://idp.example.com".into(),
            subject: id.into(),
            amr: vec![],
            acr: None,
            key_fingerprint: key.map(String::from),
            created: now as u64,
            expires: (now + expires_in) as u64,
        }
    }

    #[test]
    fn logins_survive_a_restart_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logins.json");
        let store = FileLogins::open(&path).unwrap();
        store
            .add(login("a", "jdoe@example.com", Some("SHA256:k1"), 3600))
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = FileLogins::open(&path).unwrap();
        let found = again.for_key("SHA256:k1", SystemTime::now()).unwrap();
        assert_eq!(found.email, "jdoe@example.com");
        assert!(again.for_key("SHA256:other", SystemTime::now()).is_none());
    }

    #[test]
    fn an_expired_login_lets_nothing_in_and_a_new_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogins::open(&dir.path().join("logins.json")).unwrap();
        store
            .add(login("old", "jdoe@example.com", Some("SHA256:k1"), -5))
            .unwrap();
        assert!(store.for_key("SHA256:k1", SystemTime::now()).is_none());
        store
            .add(login("new", "jdoe@example.com", Some("SHA256:k1"), 60))
            .unwrap();
        assert_eq!(store.list().len(), 1);
        assert_eq!(
            store.for_key("SHA256:k1", SystemTime::now()).unwrap().id,
            "new"
        );
    }

    #[test]
    fn revoking_by_email_or_fingerprint_is_seen_by_another_store_on_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logins.json");
        let proxy = FileLogins::open(&path).unwrap();
        proxy
            .add(login("a", "jdoe@example.com", Some("SHA256:k1"), 60))
            .unwrap();
        proxy
            .add(login("b", "carol@example.com", Some("SHA256:k2"), 60))
            .unwrap();
        proxy.add(login("c", "JDoe@Example.com", None, 60)).unwrap();
        // The CLI, another process, revokes.
        let cli = FileLogins::open(&path).unwrap();
        let gone = cli.revoke("jdoe@example.com").unwrap();
        assert_eq!(gone.len(), 2);
        assert!(proxy.refresh().unwrap(), "a login is gone");
        assert!(proxy.get("a").is_none() && proxy.get("c").is_none());
        assert!(proxy.get("b").is_some());
        assert!(!proxy.refresh().unwrap(), "nothing more is gone");
        assert_eq!(cli.revoke("SHA256:k2").unwrap().len(), 1);
        assert!(proxy.refresh().unwrap());
        assert!(proxy.list().is_empty());
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logins.json");
        std::fs::write(&path, "{ not json").unwrap();
        let err = FileLogins::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("logins.json") && err.contains("not a logins file"),
            "{err}"
        );
    }
}
