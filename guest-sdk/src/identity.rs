//! Helpers about who is connecting.

pub use portcullis_wire::local_part;

/// The domain of an email address, lower-cased comparison is left to the caller.
pub fn domain(email: &str) -> Option<&str> {
    email.rsplit_once('@').map(|(_, d)| d)
}

/// An email pattern: an exact address or a glob (`*@example.com`, `*`),
/// case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailPattern(String);

impl EmailPattern {
    /// Whether `email` matches.
    pub fn matches(&self, email: &str) -> bool {
        crate::net::glob(self.0.as_bytes(), email.to_ascii_lowercase().as_bytes())
    }
}

impl std::str::FromStr for EmailPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let p = s.trim();
        if p.is_empty() || p.chars().any(char::is_whitespace) {
            return Err(format!("`{s}` is not an email address or pattern"));
        }
        Ok(EmailPattern(p.to_ascii_lowercase()))
    }
}

impl<'de> serde::Deserialize<'de> for EmailPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authentication, Identity, Target};

    fn id<'a>(email: &'a str, groups: &[&'a str]) -> Identity<'a> {
        Identity {
            email,
            groups: groups.to_vec(),
            authentication: Authentication::PublicKey("SHA256:x"),
        }
    }

    #[test]
    fn local_part_is_what_comes_before_the_last_at() {
        assert_eq!(local_part("jdoe@example.com"), "jdoe");
        assert_eq!(local_part("first.last+ops@example.com"), "first.last+ops");
        assert_eq!(local_part("\"odd@local\"@example.com"), "\"odd@local\"");
        assert_eq!(local_part("nobody"), "nobody");
        assert_eq!(domain("jdoe@example.com"), Some("example.com"));
        assert_eq!(domain("nobody"), None);
    }

    #[test]
    fn email_patterns_match_exact_addresses_and_globs() {
        let p: EmailPattern = "JDoe@Example.com".parse().unwrap();
        assert!(p.matches("jdoe@example.com") && !p.matches("jdoe@example.org"));
        let p: EmailPattern = "*@example.com".parse().unwrap();
        assert!(p.matches("a.b+c@EXAMPLE.com") && !p.matches("a@example.com.evil"));
        assert!("".parse::<EmailPattern>().is_err());
    }

    #[test]
    fn group_membership_is_exact() {
        let i = id("a@b.c", &["sre", "db-admins"]);
        assert!(i.in_group("sre"));
        assert!(!i.in_group("SRE"));
        assert!(i.in_any_group(&["dev", "db-admins"]));
        assert!(!i.in_any_group::<&str>(&[]));
        assert!(i.is("A@B.C"));
    }

    #[test]
    fn target_address_falls_back_to_a_literal_host() {
        let t = Target {
            host: "10.0.0.5",
            ip: None,
            port: 22,
            canonical_name: None,
        };
        assert_eq!(t.ip_addr(), Some("10.0.0.5".parse().unwrap()));
        let t = Target {
            host: "db1",
            ip: None,
            port: 22,
            canonical_name: None,
        };
        assert_eq!(t.ip_addr(), None);
        let t = Target {
            host: "db1",
            ip: Some("::ffff:10.1.2.3"),
            port: 22,
            canonical_name: None,
        };
        assert_eq!(t.ip_addr(), Some("10.1.2.3".parse().unwrap()));
    }
}
