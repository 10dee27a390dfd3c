//! The known-targets file, read as OpenSSH reads `known_hosts`: pinned host keys, and
//! the `@cert-authority` and `@revoked` marker lines.
//!
//! Names: a target is looked up by its canonical name (lower case; an address in its
//! canonical form) and by the address it resolved to, each as `host` on port 22 and
//! `[host]:port` otherwise; a key learned on first use is pinned under both. So `DB1`,
//! `db1` and `10.0.0.5` (what db1 resolves to) find the same pin.
//!
//! Pins: a key presented by a target is accepted when a line matching one of its names
//! pins that very key. When lines match and none pins it, the key has changed, whatever
//! its type: a machine in the middle cannot get past a pinned Ed25519 key by offering
//! ECDSA. Hashed names (`|1|salt|hash`, `ssh-keygen -H`) are understood.
//!
//! A line is `@cert-authority PATTERNS KEYTYPE BASE64 [COMMENT]` (or `@revoked`).
//! PATTERNS is a comma-separated list matched against the target's name as dialled,
//! `host` on port 22 and `[host]:port` otherwise; `*` and `?` are wildcards and a
//! pattern starting with `!` excludes. A certificate is trusted when a CA listed for
//! the target signed it, it is a host certificate, names the target among its
//! principals, is within its validity window and has no critical options. A target
//! presenting a certificate from a CA not listed for it is checked by its plain key
//! (pinning), as OpenSSH does. A malformed marker line refuses the connection: skipping
//! an `@revoked` line would trust what it revokes.

use std::io::{Seek, Write};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
// `*` and `?` wildcards, in linear time whatever the pattern.
use portcullis_wire::glob;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Certificate, HashAlg, PublicKey};

/// What the known-targets file says about one target.
#[derive(Debug, Default)]
pub(crate) struct KnownTarget {
    /// (line number, CA key)
    cas: Vec<(usize, KeyData)>,
    /// (line number, revoked key)
    revoked: Vec<(usize, KeyData)>,
    /// (line number, pinned key)
    pins: Vec<(usize, KeyData)>,
    path: String,
}

/// What the pins say of a presented key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PinCheck {
    /// A line for this target pins this key.
    Pinned,
    /// No line names this target.
    Unknown,
    /// Lines name this target, and none pins this key: the first of them.
    Changed { line: usize },
}

/// What a presented certificate is worth.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CertCheck {
    /// Signed by a CA listed for this target, and valid for it.
    Trusted { line: usize },
    /// No CA listed for this target signed it: check the plain key instead.
    UnknownCa,
    /// Refused: why (for the user), and where in the file (for the operator).
    Refused { why: String, at: String },
}

impl CertCheck {
    /// A refusal's whole text, with where it was decided.
    #[cfg(test)]
    fn text(&self) -> String {
        match self {
            CertCheck::Refused { why, at } => format!("{why}{at}"),
            other => format!("{other:?}"),
        }
    }
}

/// The name a target is looked up by: `host`, or `[host]:port` off port 22.
pub(crate) fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// A hashed name (`|1|BASE64 SALT|BASE64 HMAC-SHA1`): whether it is `name`'s.
fn hashed_match(entry: &str, name: &str) -> bool {
    let mut parts = entry.split('|').skip(2);
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (B64.decode(salt), B64.decode(hash)) else {
        return false;
    };
    Hmac::<sha1::Sha1>::new_from_slice(&salt).is_ok_and(|mac| {
        mac.chain_update(name.as_bytes())
            .verify_slice(&hash)
            .is_ok()
    })
}

/// OpenSSH's host pattern lists: an excluding match wins, then any match.
fn matches(patterns: &str, name: &str) -> bool {
    let mut hit = false;
    for pattern in patterns.split(',') {
        if pattern.starts_with("|1|") {
            hit |= hashed_match(pattern, name);
            continue;
        }
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix('!') {
            Some(excluded) if glob(excluded.as_bytes(), name.as_bytes()) => return false,
            Some(_) => {}
            None => hit |= glob(pattern.as_bytes(), name.as_bytes()),
        }
    }
    hit
}

impl KnownTarget {
    /// Reads what `path` says about the target called `names` (its canonical name and
    /// the address it resolved to) on `port`. A missing file says nothing.
    pub(crate) fn read(path: &Path, names: &[String], port: u16) -> Result<KnownTarget, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        KnownTarget::parse(&text, &path.display().to_string(), names, port)
    }

    pub(crate) fn parse(
        text: &str,
        path: &str,
        names: &[String],
        port: u16,
    ) -> Result<KnownTarget, String> {
        let names: Vec<String> = names.iter().map(|n| lookup_name(n, port)).collect();
        let mut known = KnownTarget {
            path: path.to_string(),
            ..KnownTarget::default()
        };
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let list = match fields.next() {
                Some("@cert-authority") => &mut known.cas,
                Some("@revoked") => &mut known.revoked,
                Some(other) if other.starts_with('@') => {
                    return Err(format!(
                        "{path}:{line_no}: unknown marker {other:?} (known: @cert-authority, @revoked)"
                    ));
                }
                Some(patterns) => {
                    if !names.iter().any(|n| matches(patterns, n)) {
                        continue;
                    }
                    // A pin for this target that does not read could be the one that
                    // pins its real key: refuse rather than guess.
                    let (Some(kind), Some(base64)) = (fields.next(), fields.next()) else {
                        return Err(format!(
                            "{path}:{line_no}: a pin needs host patterns, a key type and a key"
                        ));
                    };
                    let key = PublicKey::from_openssh(&format!("{kind} {base64}"))
                        .map_err(|e| format!("{path}:{line_no}: the key does not parse: {e}"))?;
                    known.pins.push((line_no, key.key_data().clone()));
                    continue;
                }
                None => continue,
            };
            let (Some(patterns), Some(kind), Some(base64)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!(
                    "{path}:{line_no}: a marker line needs host patterns, a key type and a key"
                ));
            };
            let key = PublicKey::from_openssh(&format!("{kind} {base64}"))
                .map_err(|e| format!("{path}:{line_no}: the key does not parse: {e}"))?;
            if names.iter().any(|n| matches(patterns, n)) {
                list.push((line_no, key.key_data().clone()));
            }
        }
        Ok(known)
    }

    /// Adds a pin kept in the shared store (reported as line 0).
    pub(crate) fn add_shared_pin(&mut self, key: KeyData) {
        self.pins.push((0, key));
    }

    /// What the pins say of `key`.
    pub(crate) fn pin_check(&self, key: &KeyData) -> PinCheck {
        if self.pins.iter().any(|(_, k)| k == key) {
            return PinCheck::Pinned;
        }
        match self.pins.first() {
            Some((line, _)) => PinCheck::Changed { line: *line },
            None => PinCheck::Unknown,
        }
    }

    /// Pins `key` for the target called `names` on `port`: one line naming them all.
    pub(crate) fn learn(
        path: &Path,
        names: &[String],
        port: u16,
        key: &PublicKey,
    ) -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut patterns: Vec<String> = names.iter().map(|n| lookup_name(n, port)).collect();
        patterns.dedup();
        let key = key
            .to_openssh()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        // A file that does not end its last line gets one first (its last byte is all
        // that needs reading).
        let mut last = [b'\n'];
        if file.seek(std::io::SeekFrom::End(-1)).is_ok() {
            std::io::Read::read_exact(&mut file, &mut last)?;
        }
        let ends_in_newline = last == [b'\n'];
        let line = format!(
            "{}{} {key}\n",
            if ends_in_newline { "" } else { "\n" },
            patterns.join(",")
        );
        file.write_all(line.as_bytes())?;
        file.sync_data()
    }

    /// Whether any CA is listed for this target (then the proxy asks for certificates).
    pub(crate) fn has_ca(&self) -> bool {
        !self.cas.is_empty()
    }

    /// The line revoking `key`, if any.
    pub(crate) fn revoked(&self, key: &KeyData) -> Option<usize> {
        self.revoked
            .iter()
            .find(|(_, k)| k == key)
            .map(|(line, _)| *line)
    }

    /// Checks a certificate presented by `host` at `now` (Unix seconds).
    pub(crate) fn check(&self, cert: &Certificate, host: &str, now: u64) -> CertCheck {
        let path = &self.path;
        for (what, key) in [
            ("its key", cert.public_key()),
            ("its CA", cert.signature_key()),
        ] {
            if let Some(line) = self.revoked(key) {
                return CertCheck::Refused {
                    why: format!("{what} is revoked"),
                    at: format!(" at {path}:{line}"),
                };
            }
        }
        let Some(line) = self
            .cas
            .iter()
            .find(|(_, k)| k == cert.signature_key())
            .map(|(line, _)| *line)
        else {
            return CertCheck::UnknownCa;
        };
        let ca = cert.signature_key().fingerprint(HashAlg::Sha256);
        let refused = |why: String| CertCheck::Refused {
            why,
            at: format!(" (CA {ca}, {path}:{line})"),
        };
        if cert.cert_type() != CertType::Host {
            return refused("it is not a host certificate".into());
        }
        if !cert.critical_options().is_empty() {
            return refused("it has critical options, which host certificates must not".into());
        }
        let host = host.to_ascii_lowercase();
        if !cert
            .valid_principals()
            .iter()
            .any(|p| p.to_ascii_lowercase() == host)
        {
            return refused(format!(
                "{host} is not among its principals {:?}",
                cert.valid_principals()
            ));
        }
        if now < cert.valid_after() || now >= cert.valid_before() {
            return refused(format!(
                "it is valid only from {} to {} (Unix time), not now ({now})",
                cert.valid_after(),
                cert.valid_before()
            ));
        }
        match cert.validate_at(now, [&ca]) {
            Ok(()) => CertCheck::Trusted { line },
            Err(_) => refused("its signature does not verify".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{Ca, KeyKind};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn names(host: &str) -> Vec<String> {
        vec![host.to_string()]
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A CA, a host key and a certificate for `principals`.
    fn setup(principals: &[&str]) -> (tempfile::TempDir, Ca, Certificate) {
        let d = tempfile::tempdir().unwrap();
        let ca = crate::ca::init(d.path(), KeyKind::Ed25519).unwrap();
        let host = crate::ca::generate(KeyKind::Ed25519, "host").unwrap();
        let principals: Vec<String> = principals.iter().map(|p| p.to_string()).collect();
        let cert = ca
            .issue_host_cert(host.public_key(), &principals, Duration::from_secs(3600))
            .unwrap();
        (d, ca, cert)
    }

    fn ca_line(ca: &Ca, patterns: &str) -> String {
        let key = ca.known_hosts_line();
        let key = key.split_once(" * ").unwrap().1;
        format!("@cert-authority {patterns} {key}\n")
    }

    #[test]
    fn patterns_follow_openssh() {
        assert!(matches("*", "[db1]:2200"));
        assert!(matches("*.example.com", "db1.example.com"));
        assert!(!matches("*.example.com", "[db1.example.com]:2200"));
        assert!(matches("[*.example.com]:*", "[db1.example.com]:2200"));
        assert!(matches("db?,web", "db1"));
        assert!(!matches(
            "*.example.com,!db9.example.com",
            "db9.example.com"
        ));
        assert!(matches("*.Example.COM", "db1.example.com"));
        assert!(!matches("db1", "db10"));
        assert_eq!(lookup_name("DB1", 22), "db1");
        assert_eq!(lookup_name("db1", 2200), "[db1]:2200");
    }

    #[test]
    fn a_certificate_from_a_listed_ca_for_this_host_is_trusted() {
        let (_d, ca, cert) = setup(&["db1.example.com"]);
        let text = format!("# pins\n{}", ca_line(&ca, "*.example.com"));
        let m = KnownTarget::parse(&text, "kt", &names("db1.example.com"), 22).unwrap();
        assert!(m.has_ca());
        assert_eq!(
            m.check(&cert, "db1.example.com", now()),
            CertCheck::Trusted { line: 2 }
        );
        // Listed for other hosts only: the plain key decides.
        let m = KnownTarget::parse(&text, "kt", &names("db1.other.org"), 22).unwrap();
        assert!(!m.has_ca());
        assert_eq!(m.check(&cert, "db1.other.org", now()), CertCheck::UnknownCa);
    }

    #[test]
    fn wrong_principal_expiry_and_revocation_are_refused_with_the_reason() {
        let (_d, ca, cert) = setup(&["db1"]);
        let m = KnownTarget::parse(&ca_line(&ca, "*"), "kt", &names("db2"), 22).unwrap();
        let check = m.check(&cert, "db2", now());
        let CertCheck::Refused { .. } = check else {
            panic!("a certificate for db1 presented by db2");
        };
        let why = check.text();
        assert!(
            why.contains("db2 is not among its principals") && why.contains("kt:1"),
            "{why}"
        );
        let m = KnownTarget::parse(&ca_line(&ca, "*"), "kt", &names("db1"), 22).unwrap();
        let check = m.check(&cert, "db1", now() + 7200);
        let CertCheck::Refused { .. } = check else {
            panic!("an expired certificate");
        };
        let why = check.text();
        assert!(why.contains("valid only from"), "{why}");
        let revoked = format!(
            "{}@revoked * {}\n",
            ca_line(&ca, "*"),
            PublicKey::from(cert.public_key().clone())
                .to_openssh()
                .unwrap()
        );
        let m = KnownTarget::parse(&revoked, "kt", &names("db1"), 22).unwrap();
        assert_eq!(
            m.check(&cert, "db1", now()).text(),
            "its key is revoked at kt:2"
        );
    }

    #[test]
    fn a_user_certificate_is_not_a_host_certificate() {
        let (_d, ca, _) = setup(&["db1"]);
        let key = crate::ca::generate(KeyKind::Ed25519, "user").unwrap();
        let cert = ca
            .issue_user_cert(
                key.public_key(),
                &["db1".to_string()],
                "id",
                Duration::from_secs(3600),
                &Default::default(),
            )
            .unwrap();
        let m = KnownTarget::parse(&ca_line(&ca, "*"), "kt", &names("db1"), 22).unwrap();
        // The user CA is not the host CA: list the user CA to reach the type check.
        let user_ca = PublicKey::from(cert.signature_key().clone())
            .to_openssh()
            .unwrap();
        let m2 = KnownTarget::parse(
            &format!("@cert-authority * {user_ca}\n"),
            "kt",
            &names("db1"),
            22,
        )
        .unwrap();
        assert_eq!(m.check(&cert, "db1", now()), CertCheck::UnknownCa);
        let check = m2.check(&cert, "db1", now());
        let CertCheck::Refused { .. } = check else {
            panic!("a user certificate");
        };
        let why = check.text();
        assert!(why.contains("not a host certificate"), "{why}");
    }

    #[test]
    fn malformed_marker_lines_are_errors_naming_the_line() {
        for (text, needle) in [
            ("@cert-authority *\n", "needs host patterns"),
            (
                "@cert-authority * ssh-ed25519 AAAAnotakey\n",
                "does not parse",
            ),
            ("@trusted * ssh-ed25519 AAAA\n", "unknown marker"),
        ] {
            let err = KnownTarget::parse(
                &format!("db9 ssh-ed25519 AAAA\n{text}"),
                "kt",
                &names("db1"),
                22,
            )
            .unwrap_err();
            assert!(err.starts_with("kt:2: ") && err.contains(needle), "{err}");
        }
    }
}
