//! Conditions: block connections from outside chosen source networks, or outside a
//! time window (office hours), with a reason the user sees; refuse chosen subsystems
//! (such as sftp) on every session. A connection that meets the conditions is left to
//! the next module (no match), so this module goes first (`10-conditions.wasm`).
//!
//! ```toml
//! # 10-conditions.toml
//! allowed_sources = ["10.0.0.0/8", "192.168.0.0/16"]  # default: any source
//! exempt_groups = ["oncall"]                           # never blocked by these conditions
//! deny_subsystems = ["sftp"]                           # default: none
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
    office_hours: Option<TimeWindow>,
    #[serde(default)]
    exempt_groups: Vec<String>,
    #[serde(default)]
    deny_subsystems: Vec<String>,
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
            _ => ChannelVerdict::NoOpinion,
        }
    }
}
