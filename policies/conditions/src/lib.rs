//! Conditions: block connections from outside chosen source networks, to chosen
//! destinations, or outside a time window (office hours), with a reason the user sees; refuse chosen subsystems
//! (such as sftp) and commands on every session. A connection that meets the conditions
//! is left to the next module (no match), so this module goes first
//! (`10-conditions.wasm`).
//!
//! Refusing the `sftp` subsystem also refuses the commands that move files the same
//! way without it: `sftp-server` run as a command, and `scp -O` (which runs `scp -t`
//! or `scp -f` on the target). `deny_commands` refuses other commands by glob.
//!
//! ```toml
//! # 10-conditions.toml
//! allowed_sources = ["10.0.0.0/8", "192.168.0.0/16"]  # default: any source
//! blocked_destinations = ["10.9.0.0/16", "10.0.0.5:22"] # by address, as audit rules are
//! exempt_groups = ["oncall"]                           # never blocked by these conditions
//! deny_subsystems = ["sftp"]                           # default: none
//! deny_commands = ["rsync *", "* | nc *"]               # globs over the command line
//! deny_env = ["LD_*", "BASH_ENV"]                       # environment variables (globs)
//!
//! [office_hours]                                       # default: any time
//! days = ["mon", "tue", "wed", "thu", "fri"]
//! start = "08:00"
//! end = "18:00"
//! utc_offset = "+01:00"
//! ```

use portcullis_policy::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conditions {
    #[serde(default)]
    allowed_sources: Vec<IpNet>,
    #[serde(default)]
    blocked_destinations: Vec<Destination>,
    #[serde(default)]
    office_hours: Option<TimeWindow>,
    #[serde(default)]
    exempt_groups: Vec<String>,
    #[serde(default)]
    deny_subsystems: Vec<String>,
    #[serde(default)]
    deny_commands: Vec<String>,
    #[serde(default)]
    deny_env: Vec<String>,
}

/// The program a command line runs, without its directory: `sftp-server` for
/// `/usr/lib/openssh/sftp-server -l INFO`.
fn program(command: &str) -> &str {
    let first = command.split_whitespace().next().unwrap_or_default();
    first.rsplit('/').next().unwrap_or(first)
}

/// Whether a command moves files as the sftp subsystem would.
fn is_file_transfer(command: &str) -> bool {
    match program(command) {
        "sftp-server" | "internal-sftp" => true,
        // scp -O runs `scp -t` (upload) or `scp -f` (download) on the target.
        "scp" => command
            .split_whitespace()
            .any(|a| a.starts_with('-') && (a.contains('t') || a.contains('f'))),
        _ => false,
    }
}

#[policy]
impl Policy for Conditions {
    fn decide(&self, request: &ConnectionRequest) -> Decision {
        if request.identity.in_any_group(&self.exempt_groups) {
            return Decision::no_match();
        }
        if !self.allowed_sources.is_empty() {
            let inside = request
                .source_ip()
                .is_some_and(|ip| self.allowed_sources.iter().any(|n| n.contains(&ip)));
            if !inside {
                return Decision::block(format!(
                    "connections from {} are not allowed; allowed source networks: {}",
                    request.source.ip,
                    self.allowed_sources.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if self.blocked_destinations.iter().any(|d| d.matches(&request.target)) {
            return Decision::block(format!(
                "connections to {}:{} are not allowed",
                request.target.host, request.target.port
            ));
        }
        if let Some(window) = &self.office_hours
            && !window.contains(&request.now)
        {
            return Decision::block(format!("outside office hours ({window})"));
        }
        Decision::no_match()
    }

    fn check_channel(&self, _request: &ConnectionRequest, channel: &ChannelRequest) -> ChannelVerdict {
        match channel {
            ChannelRequest::Subsystem { name } if self.deny_subsystems.iter().any(|s| s == name) => {
                ChannelVerdict::deny(format!("the {name} subsystem is not allowed"))
            }
            ChannelRequest::Exec { command }
                if self.deny_subsystems.iter().any(|s| s == "sftp") && is_file_transfer(command) =>
            {
                ChannelVerdict::deny(format!(
                    "file transfer by command ({}) is not allowed: the sftp subsystem is refused",
                    program(command)
                ))
            }
            ChannelRequest::Exec { command }
                if self.deny_commands.iter().any(|p| glob_match(p, command)) =>
            {
                ChannelVerdict::deny("this command is not allowed")
            }
            ChannelRequest::Env { name, .. } if self.deny_env.iter().any(|p| glob_match(p, name)) => {
                ChannelVerdict::deny(format!("the environment variable {name} is not allowed"))
            }
            _ => ChannelVerdict::NoOpinion,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::testing::{self, ConnectionRequest};

    fn policy() -> Conditions {
        testing::config(
            "allowed_sources = [\"10.0.0.0/8\"]\nexempt_groups = [\"oncall\"]\n\
             deny_env = [\"LD_*\"]\ndeny_subsystems = [\"sftp\"]\n\
             [office_hours]\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\nstart = \"08:00\"\nend = \"18:00\"\n",
        )
    }

    #[test]
    fn sources_and_office_hours_block_unless_exempt() {
        // 2026-11-23 is a Monday.
        let inside = ConnectionRequest::builder()
            .source("10.1.1.1")
            .at("2026-11-23T09:30:00Z")
            .build();
        assert_eq!(policy().decide(&inside).verdict, Verdict::NoMatch);
        let outside = ConnectionRequest::builder()
            .source("203.0.113.9")
            .at("2026-11-23T09:30:00Z")
            .build();
        assert!(matches!(policy().decide(&outside).verdict, Verdict::Block(_)));
        let sunday = ConnectionRequest::builder()
            .source("10.1.1.1")
            .at("2026-11-22T09:30:00Z")
            .build();
        assert!(matches!(policy().decide(&sunday).verdict, Verdict::Block(_)));
        let oncall = ConnectionRequest::builder()
            .group("oncall")
            .source("203.0.113.9")
            .at("2026-11-22T03:00:00Z")
            .build();
        assert_eq!(policy().decide(&oncall).verdict, Verdict::NoMatch);
    }

    #[test]
    fn denied_variables_and_subsystems_are_refused() {
        let r = ConnectionRequest::builder().build();
        let env = |name: &str| ChannelRequest::Env {
            name: name.into(),
            value: "x".into(),
        };
        assert!(matches!(policy().check_channel(&r, &env("LD_PRELOAD")), ChannelVerdict::Deny(_)));
        assert!(matches!(policy().check_channel(&r, &env("LANG")), ChannelVerdict::NoOpinion));
        let sftp = ChannelRequest::Subsystem { name: "sftp".into() };
        assert!(matches!(policy().check_channel(&r, &sftp), ChannelVerdict::Deny(_)));
    }
}
