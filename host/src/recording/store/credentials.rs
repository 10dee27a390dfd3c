//! An AWS shared credentials file (`~/.aws/credentials`) as a credential provider,
//! read again whenever it changes, so that rotated keys are picked up without a
//! restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use object_store::CredentialProvider;
use object_store::aws::AwsCredential;

use crate::sync::lock;

#[derive(Debug)]
pub(crate) struct FileCredentials {
    path: PathBuf,
    profile: String,
    /// The credential last read, and the file's modification time then.
    cached: Mutex<Option<(SystemTime, Arc<AwsCredential>)>>,
}

impl FileCredentials {
    pub(crate) fn new(path: &Path, profile: &str) -> Self {
        FileCredentials {
            path: path.to_path_buf(),
            profile: profile.to_string(),
            cached: Mutex::new(None),
        }
    }

    /// The credential, read from the file if it changed since the last time.
    pub(crate) fn read(&self) -> Result<Arc<AwsCredential>, String> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        if let Some((at, c)) = lock(&self.cached).as_ref()
            && *at == modified
        {
            return Ok(Arc::clone(c));
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let c = Arc::new(
            parse(&text, &self.profile).map_err(|e| format!("{}: {e}", self.path.display()))?,
        );
        *lock(&self.cached) = Some((modified, Arc::clone(&c)));
        Ok(c)
    }
}

#[async_trait::async_trait]
impl CredentialProvider for FileCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        self.read().map_err(|e| object_store::Error::Generic {
            store: "S3",
            source: e.into(),
        })
    }
}

/// The keys of `profile` in the INI text of a credentials file.
fn parse(text: &str, profile: &str) -> Result<AwsCredential, String> {
    let mut in_profile = false;
    let mut found = false;
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            found |= in_profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => key_id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    if !found {
        return Err(format!("no [{profile}] profile"));
    }
    match (key_id, secret) {
        (Some(key_id), Some(secret_key)) => Ok(AwsCredential {
            key_id,
            secret_key,
            token,
        }),
        _ => Err(format!(
            "the [{profile}] profile needs aws_access_key_id and aws_secret_access_key"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_named_profile() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n\
                    # comment\n[audit]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token = T\n";
        let c = parse(text, "audit").unwrap();
        assert_eq!((c.key_id.as_str(), c.secret_key.as_str()), ("C", "D"));
        assert_eq!(c.token.as_deref(), Some("T"));
        let c = parse(text, "default").unwrap();
        assert_eq!((c.key_id.as_str(), c.token.is_none()), ("A", true));
        let e = parse(text, "other").unwrap_err();
        assert!(e.contains("no [other] profile"), "{e}");
        let e = parse("[x]\naws_access_key_id = A\n", "x").unwrap_err();
        assert!(e.contains("aws_secret_access_key"), "{e}");
    }
}
