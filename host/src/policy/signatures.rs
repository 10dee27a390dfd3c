//! Signed policy modules (`[policy] allowed_signers`), in OpenSSH's own signature format
//! so that no new tool is needed: a module is signed with
//!
//! ```sh
//! ssh-keygen -Y sign -n portcullis-policy -f KEY 20-network-audit.wasm   # writes .wasm.sig
//! ```
//!
//! and verified against an OpenSSH `allowed_signers` file (`ssh-keygen(1)`, ALLOWED
//! SIGNERS): `PRINCIPALS [OPTIONS] KEYTYPE BASE64 [COMMENT]`, with the options
//! `namespaces="..."`, `valid-after=` and `valid-before=` honoured. With
//! `sign_configs` (the default) a module's configuration needs its own signature too
//! (`20-network-audit.toml.sig`): a configuration decides as much as the code.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{PublicKey, SshSig};

/// The namespace every module signature must be made for (`ssh-keygen -Y sign -n`).
pub const NAMESPACE: &str = "portcullis-policy";

/// What signatures the loader requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignaturePolicy {
    /// The OpenSSH allowed_signers file, read again at every load.
    pub allowed_signers: PathBuf,
    /// Whether configurations must be signed too.
    pub configs: bool,
}

/// One line of an allowed_signers file.
#[derive(Debug)]
struct Signer {
    principals: String,
    key: PublicKey,
    namespaces: Option<Vec<String>>,
    valid_after: Option<u64>,
    valid_before: Option<u64>,
}

/// The signers of a file, or why it cannot be used.
fn read_signers(path: &Path) -> Result<Vec<Signer>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("allowed signers {}: {e}", path.display()))?;
    let mut signers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("allowed signers {}:{}: {why}", path.display(), n + 1);
        let (principals, rest) = split_field(line).ok_or_else(|| bad("no key"))?;
        let mut rest = rest;
        let mut options = None;
        // Options come before the key type, which is a known algorithm name.
        if !looks_like_key_type(rest) {
            let (opts, after) = split_field(rest).ok_or_else(|| bad("no key"))?;
            options = Some(opts);
            rest = after;
        }
        let key = PublicKey::from_openssh(rest).map_err(|e| bad(&format!("bad key: {e}")))?;
        let mut signer = Signer {
            principals: principals.trim_matches('"').to_string(),
            key,
            namespaces: None,
            valid_after: None,
            valid_before: None,
        };
        for opt in options.map(split_options).unwrap_or_default() {
            let (name, value) = opt.split_once('=').unwrap_or((opt.as_str(), ""));
            let value = value.trim_matches('"');
            match name.to_ascii_lowercase().as_str() {
                "namespaces" => {
                    signer.namespaces =
                        Some(value.split(',').map(|s| s.trim().to_string()).collect())
                }
                "valid-after" => {
                    signer.valid_after =
                        Some(parse_stamp(value).ok_or_else(|| bad("bad valid-after"))?)
                }
                "valid-before" => {
                    signer.valid_before =
                        Some(parse_stamp(value).ok_or_else(|| bad("bad valid-before"))?)
                }
                "cert-authority" => {
                    return Err(bad(
                        "cert-authority signers are not supported; list the signing keys",
                    ));
                }
                other => return Err(bad(&format!("unknown option {other:?}"))),
            }
        }
        signers.push(signer);
    }
    if signers.is_empty() {
        return Err(format!(
            "allowed signers {}: no signers listed",
            path.display()
        ));
    }
    Ok(signers)
}

/// The first whitespace-separated field (quotes keep spaces) and the rest.
fn split_field(s: &str) -> Option<(&str, &str)> {
    let mut in_quotes = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => {
                return Some((&s[..i], s[i..].trim_start()));
            }
            _ => {}
        }
    }
    None
}

/// `a,b="x,y",c` split at the commas outside quotes.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    for c in s.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                cur.push(c);
            }
            ',' if !in_quotes => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn looks_like_key_type(s: &str) -> bool {
    ["ssh-", "ecdsa-", "sk-"].iter().any(|p| s.starts_with(p))
}

/// `YYYYMMDD[HHMM[SS]]` (UTC, optionally ending in `Z`) as Unix seconds.
fn parse_stamp(s: &str) -> Option<u64> {
    let s = s.trim_end_matches(['Z', 'z']);
    let digits = |a: usize, b: usize| s.get(a..b).and_then(|x| x.parse::<u32>().ok());
    let (y, m, d) = (digits(0, 4)?, digits(4, 6)?, digits(6, 8)?);
    let (hh, mm, ss) = match s.len() {
        8 => (0, 0, 0),
        12 => (digits(8, 10)?, digits(10, 12)?, 0),
        14 => (digits(8, 10)?, digits(10, 12)?, digits(12, 14)?),
        _ => return None,
    };
    let date =
        time::Date::from_calendar_date(y as i32, time::Month::try_from(m as u8).ok()?, d as u8)
            .ok()?;
    let t = date
        .with_hms(hh as u8, mm as u8, ss as u8)
        .ok()?
        .assume_utc();
    u64::try_from(t.unix_timestamp()).ok()
}

impl SignaturePolicy {
    /// Checks the signature `FILE.sig` of `file` (whose bytes are `bytes`): made in the
    /// `portcullis-policy` namespace by a listed signer, over exactly these bytes.
    /// Returns the signer's principals.
    pub fn verify(&self, file: &Path, bytes: &[u8]) -> Result<String, String> {
        let signers = read_signers(&self.allowed_signers)?;
        let sig_path = PathBuf::from(format!("{}.sig", file.display()));
        let armored = match std::fs::read(&sig_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "not signed: {} is missing (sign with ssh-keygen -Y sign -n {NAMESPACE} -f KEY {})",
                    sig_path.display(),
                    file.display()
                ));
            }
            Err(e) => return Err(format!("{}: {e}", sig_path.display())),
        };
        let sig = SshSig::from_pem(&armored)
            .map_err(|e| format!("{}: not an OpenSSH signature ({e})", sig_path.display()))?;
        if sig.namespace() != NAMESPACE {
            return Err(format!(
                "signed for the namespace {:?}, not {NAMESPACE:?} (ssh-keygen -Y sign -n {NAMESPACE})",
                sig.namespace()
            ));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signer = signers
            .iter()
            .find(|s| s.key.key_data() == sig.public_key())
            .ok_or_else(|| {
                format!(
                    "signed by a key not in {} ({})",
                    self.allowed_signers.display(),
                    PublicKey::from(sig.public_key().clone()).fingerprint(Default::default())
                )
            })?;
        if let Some(ns) = &signer.namespaces
            && !ns.iter().any(|n| n == NAMESPACE)
        {
            return Err(format!(
                "the signer {} may not sign in the namespace {NAMESPACE:?} (namespaces=\"{}\")",
                signer.principals,
                ns.join(",")
            ));
        }
        if signer.valid_after.is_some_and(|t| now < t)
            || signer.valid_before.is_some_and(|t| now >= t)
        {
            return Err(format!(
                "the signer {}'s key is not valid now",
                signer.principals
            ));
        }
        signer.key.verify(NAMESPACE, bytes, &sig).map_err(|_| {
            format!(
                "the signature of {} does not match its contents (changed after signing?)",
                file.display()
            )
        })?;
        Ok(signer.principals.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_signers_lines_parse_with_options() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("allowed_signers");
        std::fs::write(
            &p,
            "# who may sign policies\n\
             alice@example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGDJ2vM8DLqmmFrEDTfjLZ8GoTOY36XJ4g4zZ1yX4Qi8 alice\n\
             bob@example.com,ci namespaces=\"portcullis-policy,file\",valid-before=\"20991231\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGDJ2vM8DLqmmFrEDTfjLZ8GoTOY36XJ4g4zZ1yX4Qi8\n",
        )
        .unwrap();
        let s = read_signers(&p).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].principals, "bob@example.com,ci");
        assert_eq!(
            s[1].namespaces.as_deref().unwrap(),
            ["portcullis-policy", "file"]
        );
        assert!(s[1].valid_before.unwrap() > 4_000_000_000);
        std::fs::write(&p, "x cert-authority ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGDJ2vM8DLqmmFrEDTfjLZ8GoTOY36XJ4g4zZ1yX4Qi8\n").unwrap();
        assert!(read_signers(&p).unwrap_err().contains("cert-authority"));
        assert_eq!(parse_stamp("20260101"), Some(1_767_225_600));
        assert_eq!(
            parse_stamp("202601010930Z"),
            Some(1_767_225_600 + 9 * 3600 + 30 * 60)
        );
    }
}
