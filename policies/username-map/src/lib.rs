//! Username mapping: which Unix logins a user may use on targets, covering the four
//! cases operators know from sshd's `AuthorizedPrincipalsFile` recipes.
//!
//! ```toml
//! # 30-username-map.toml
//! # 1. One email to a different username: jdoe@example.com logs in as johndoe.
//! [[map]]
//! emails = ["jdoe@example.com"]
//! logins = ["johndoe"]
//!
//! # 2. Several emails to one shared account.
//! [[map]]
//! emails = ["alice@example.com", "bob@example.com"]
//! logins = ["vmuser"]
//!
//! # 3. Any user to one account (emails may be globs: "*", "*@example.com").
//! [[map]]
//! emails = ["*@example.com"]
//! logins = ["vmuser"]
//!
//! # 4. Any user to any account: "*" in logins grants the login the user asks for.
//! [[map]]
//! groups = ["admins"]
//! logins = ["*"]
//! ```
//!
//! An entry matches a user by email (`emails`, exact or glob, case-insensitive) or by
//! group (`groups`); at least one of the two is required. The logins of every matching
//! entry are granted together. `port_forwarding = true` on an entry also permits
//! port forwarding (`ssh -L` and `ssh -R`) to its users, `agent_forwarding = true` agent
//! forwarding (`ssh -A`), `x11_forwarding = true` X11 forwarding (`ssh -X`, `ssh -Y`).
//! `keep_own_login = true` (default false) also grants the email local part to mapped
//! users. Users that no entry matches are left to the next module.

use portcullis_policy::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsernameMap {
    #[serde(default, rename = "map")]
    maps: Vec<Map>,
    #[serde(default)]
    keep_own_login: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Map {
    #[serde(default)]
    emails: Vec<EmailPattern>,
    #[serde(default)]
    groups: Vec<String>,
    logins: Vec<String>,
    #[serde(default)]
    port_forwarding: bool,
    #[serde(default)]
    agent_forwarding: bool,
    #[serde(default)]
    x11_forwarding: bool,
}

impl Map {
    fn matches(&self, identity: &Identity) -> bool {
        self.emails.iter().any(|p| p.matches(identity.email)) || identity.in_any_group(&self.groups)
    }
}

#[policy]
impl Policy for UsernameMap {
    fn decide(&self, request: &ConnectionRequest) -> Decision {
        let identity = &request.identity;
        let mut logins: Vec<String> = Vec::new();
        let mut grant = |login: &str| {
            if !logins.iter().any(|l| l == login) {
                logins.push(login.to_string());
            }
        };
        let mut matched = false;
        let mut permissions = Permissions::PTY;
        for map in self.maps.iter().filter(|m| m.matches(identity)) {
            matched = true;
            if map.port_forwarding {
                permissions |= Permissions::PORT_FORWARDING;
            }
            if map.agent_forwarding {
                permissions |= Permissions::AGENT_FORWARDING;
            }
            if map.x11_forwarding {
                permissions |= Permissions::X11_FORWARDING;
            }
            for login in &map.logins {
                // "*" grants whatever login the user asked for.
                grant(if login == "*" { request.login } else { login });
            }
        }
        if !matched {
            return Decision::no_match();
        }
        if self.keep_own_login {
            grant(identity.local_part());
        }
        let reason = format!("username map: {} may log in as {}", identity.email, logins.join(", "));
        Decision::allow(logins).with_permissions(permissions).with_reason(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::testing::{self, ConnectionRequest};

    /// The four recipes of the module's documentation.
    fn policy() -> UsernameMap {
        testing::config(
            "[[map]]\nemails = [\"jdoe@example.com\"]\nlogins = [\"johndoe\"]\n\
             [[map]]\nemails = [\"alice@example.com\", \"bob@example.com\"]\nlogins = [\"vmuser\"]\n\
             [[map]]\nemails = [\"*@contractors.example.com\"]\nlogins = [\"guest\"]\n\
             [[map]]\ngroups = [\"admins\"]\nlogins = [\"*\"]\nport_forwarding = true\n",
        )
    }

    fn logins(email: &str, groups: &[&str], login: &str) -> (Verdict, Vec<String>) {
        let mut b = ConnectionRequest::builder().user(email).login(login);
        for g in groups {
            b = b.group(g);
        }
        let d = policy().decide(&b.build());
        (d.verdict, d.principals)
    }

    #[test]
    fn the_four_recipes() {
        assert_eq!(logins("jdoe@example.com", &[], "johndoe").1, ["johndoe"]);
        assert_eq!(logins("bob@example.com", &[], "vmuser").1, ["vmuser"]);
        assert_eq!(logins("x@contractors.example.com", &[], "guest").1, ["guest"]);
        let (verdict, admin) = logins("carol@example.com", &["admins"], "postgres");
        assert_eq!((verdict, admin), (Verdict::Allow, vec!["postgres".to_string()]));
        assert_eq!(logins("dave@example.com", &[], "dave").0, Verdict::NoMatch);
    }

    #[test]
    fn a_map_without_logins_is_refused_with_its_key() {
        let err = testing::try_config::<UsernameMap>("[[map]]\nemails = [\"x@example.com\"]\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("logins"), "{err}");
    }
}
