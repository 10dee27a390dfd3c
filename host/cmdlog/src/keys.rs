//! The auditor's key pair: `sshkey` (private, 0600) and `sshkey.pub`, each 32 bytes
//! in standard base64 without a trailing newline.

use std::fs;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::{Deserializable, Kem as _, Serializable};

use super::format::*;

#[cfg(feature = "files")]
/// Generates a key pair: (private, public), each 32 bytes in standard base64.
pub fn generate_keypair() -> (String, String) {
    let (private, public) = Kem::gen_keypair();
    (
        B64.encode(private.to_bytes()),
        B64.encode(public.to_bytes()),
    )
}

fn decode_key(text: &str, path: &Path, what: &str) -> Result<Vec<u8>, CmdLogError> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| file_err(path, format!("not a base64 {what} ({e})")))?;
    if bytes.len() != 32 {
        return Err(file_err(
            path,
            format!("a {what} is 32 bytes, this is {}", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// The public key (standard base64) of a private key given the same way.
pub fn public_key_of(private: &str) -> Option<String> {
    let bytes = B64.decode(private.trim()).ok()?;
    let private = PrivateKey::from_bytes(&bytes).ok()?;
    Some(B64.encode(Kem::sk_to_pk(&private).to_bytes()))
}

/// The auditor's public key, from `sshkey.pub`.
#[derive(Clone)]
pub struct SealingKey(pub(super) PublicKey);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(")?;
        f.write_str(&B64.encode(self.0.to_bytes()))?;
        f.write_str(")")
    }
}

impl SealingKey {
    pub fn read(path: &Path) -> Result<SealingKey, CmdLogError> {
        let text = fs::read_to_string(path).map_err(|e| file_err(path, e))?;
        SealingKey::parse(&text, path)
    }

    /// The key from the text of a `sshkey.pub` file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<SealingKey, CmdLogError> {
        let bytes = decode_key(text, path, "public key")?;
        PublicKey::from_bytes(&bytes)
            .map(SealingKey)
            .map_err(|e| file_err(path, format!("{e:?}")))
    }
}

/// The auditor's private key, from `sshkey`. Never printed.
pub struct OpeningKey(pub(super) PrivateKey);

impl std::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpeningKey(..)")
    }
}

impl OpeningKey {
    pub fn read(path: &Path) -> Result<OpeningKey, CmdLogError> {
        let text = fs::read_to_string(path).map_err(|e| file_err(path, e))?;
        OpeningKey::parse(&text, path)
    }

    /// The key from the text of a `sshkey` file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<OpeningKey, CmdLogError> {
        let bytes = decode_key(text, path, "private key")?;
        PrivateKey::from_bytes(&bytes)
            .map(OpeningKey)
            .map_err(|e| file_err(path, format!("{e:?}")))
    }
}

#[cfg(feature = "files")]
/// Writes `sshkey` (0600) and `sshkey.pub`, without trailing newlines.
pub fn keygen(out: &Path) -> Result<std::path::PathBuf, CmdLogError> {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::PathBuf;
    let public_path = PathBuf::from(format!("{}.pub", out.display()));
    for p in [out, public_path.as_path()] {
        if p.exists() {
            return Err(file_err(p, "exists; refusing to overwrite a key"));
        }
    }
    let (private, public) = generate_keypair();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| file_err(out, e))?;
    f.write_all(private.as_bytes())
        .map_err(|e| file_err(out, e))?;
    fs::write(&public_path, public).map_err(|e| file_err(&public_path, e))?;
    Ok(public_path)
}
