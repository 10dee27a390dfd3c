//! Network audit: connections to chosen destinations are allowed under audit
//! ("Audit SSH"), with or without command logging. Other destinations are left to the
//! next module (no match).
//!
//! ```toml
//! # 20-network-audit.toml
//! [[rule]]
//! destinations = ["10.0.0.0/8", "10.20.0.5:22"]  # IPs, CIDRs, ranges, name globs, :ports
//! groups = ["contractors"]        # optional: only users in one of these groups
//! command_logging = true          # record the session, sealed to the auditor's key
//! principals = ["deploy"]         # optional: logins allowed; default the email local part
//! reason = "production network"   # recorded in the session log
//! ```
//!
//! Rules are tried in order; the first that matches decides. Audit rules are written by
//! address: a name pattern matches only names the proxy resolved, and a user who types
//! an address (or another name for the same host) matches none.

use portcullis_policy::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkAudit {
    #[serde(default, rename = "rule")]
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    destinations: Vec<Destination>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    command_logging: bool,
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl Rule {
    fn matches(&self, request: &ConnectionRequest) -> bool {
        (self.groups.is_empty() || request.identity.in_any_group(&self.groups))
            && self.destinations.iter().any(|d| d.matches(&request.target))
    }
}

#[policy]
impl Policy for NetworkAudit {
    fn decide(&self, request: &ConnectionRequest) -> Decision {
        let Some(rule) = self.rules.iter().find(|r| r.matches(request)) else {
            return Decision::no_match();
        };
        let principals = if rule.principals.is_empty() {
            vec![request.identity.local_part().to_string()]
        } else {
            rule.principals.clone()
        };
        let logging = if rule.command_logging { "with" } else { "without" };
        let reason = match &rule.reason {
            Some(r) => format!("audit {logging} command logging: {r}"),
            None => format!("audit {logging} command logging"),
        };
        Decision::audit(principals)
            .recorded_if(rule.command_logging)
            .with_reason(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::testing::{self, ConnectionRequest};

    fn policy() -> NetworkAudit {
        testing::config(
            "[[rule]]\ndestinations = [\"10.0.0.0/8\"]\ncommand_logging = true\nreason = \"production\"\n\
             [[rule]]\ndestinations = [\"192.168.0.0/16\"]\ngroups = [\"contractors\"]\n",
        )
    }

    #[test]
    fn the_first_matching_rule_audits_with_or_without_logging() {
        let d = policy().decide(&ConnectionRequest::builder().target("10.1.2.3:22").build());
        assert_eq!(d.verdict, Verdict::Audit(true));
        assert_eq!(d.principals, ["jdoe"]);
        assert!(d.reason.contains("production"));
        let contractor = ConnectionRequest::builder()
            .group("contractors")
            .target("192.168.1.1")
            .build();
        assert_eq!(policy().decide(&contractor).verdict, Verdict::Audit(false));
    }

    #[test]
    fn other_destinations_and_users_are_left_to_the_next_module() {
        let d = policy().decide(&ConnectionRequest::builder().target("192.168.1.1").build());
        assert_eq!(d.verdict, Verdict::NoMatch);
        // A name matches an address rule only through what it resolved to.
        let named = ConnectionRequest::builder().target("db1.internal").build();
        assert_eq!(policy().decide(&named).verdict, Verdict::NoMatch);
        let resolved = ConnectionRequest::builder()
            .target("db1.internal")
            .resolves_to("10.0.0.7")
            .build();
        assert_eq!(policy().decide(&resolved).verdict, Verdict::Audit(true));
    }
}
