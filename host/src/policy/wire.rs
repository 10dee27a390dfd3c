//! The boundary between the host's types and the WIT world: the request encoded once
//! per decision, channel requests, and a module's answer checked and turned into an
//! [`Evaluation`](super::Evaluation).

use std::time::UNIX_EPOCH;

use super::bindings as wit;
use super::types::{Action, ChannelRequest, DecisionRequest, Evaluation, Permissions};
use crate::identity::Authentication;
use crate::text::sanitize;

/// Whether a principal is a plausible Unix login that OpenSSH can carry in a
/// certificate: 1 to 64 characters of letters, digits, `.`, `_`, `-`, `@`, a trailing
/// `$` allowed, not starting with `-`.
fn valid_principal(p: &str) -> bool {
    let body = p.strip_suffix('$').unwrap_or(p);
    !body.is_empty()
        && p.len() <= 64
        && !body.starts_with('-')
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// Encodes the request once for every module (the layout is the guest SDK's, documented
/// in `wit/policy.wit`).
pub(super) fn to_wire(r: &DecisionRequest) -> Vec<u8> {
    use portcullis_wire as sdk;
    let now = r.now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let source_ip = r.source.ip().to_string();
    let target_ip = r.target_ip.map(|ip| ip.to_string());
    sdk::ConnectionRequest {
        session_id: &r.session_id,
        identity: sdk::Identity {
            email: &r.email,
            groups: r.groups.iter().map(String::as_str).collect(),
            authentication: match &r.authentication {
                Authentication::PublicKey(f) => sdk::Authentication::PublicKey(f),
                Authentication::Certificate(f) => sdk::Authentication::Certificate(f),
                Authentication::Other(n) => sdk::Authentication::Other(n),
                Authentication::SingleSignOn(s) => sdk::Authentication::SingleSignOn {
                    issuer: &s.issuer,
                    amr: s.amr.iter().map(String::as_str).collect(),
                    acr: s.acr.as_deref(),
                },
            },
        },
        source: sdk::Endpoint {
            ip: &source_ip,
            port: r.source.port(),
        },
        target: sdk::Target {
            host: &r.target_host,
            ip: target_ip.as_deref(),
            port: r.target_port,
            canonical_name: r.target_canonical.as_deref(),
        },
        login: &r.login,
        now: sdk::Datetime {
            seconds: now.as_secs(),
            nanoseconds: now.subsec_nanos(),
        },
        client_version: &r.client_version,
    }
    .encode()
}

pub(super) fn channel_to_wire(c: &ChannelRequest) -> wit::ChannelRequest {
    match c {
        ChannelRequest::Shell => wit::ChannelRequest::Shell,
        ChannelRequest::Exec { command } => wit::ChannelRequest::Exec(command.clone()),
        ChannelRequest::Subsystem { name } => wit::ChannelRequest::Subsystem(name.clone()),
        ChannelRequest::DirectTcpip { host, port } => {
            wit::ChannelRequest::DirectTcpip((host.clone(), *port))
        }
        ChannelRequest::TcpipForward { address, port } => {
            wit::ChannelRequest::TcpipForward((address.clone(), *port))
        }
        ChannelRequest::AgentForwarding => wit::ChannelRequest::AgentForwarding,
        ChannelRequest::X11Forwarding => wit::ChannelRequest::X11Forwarding,
        ChannelRequest::Env { name, value } => {
            wit::ChannelRequest::Env((name.clone(), value.clone()))
        }
    }
}

/// Logins one decision may grant (the target certificate's principals).
const MAX_PRINCIPALS: usize = 256;

/// Checks a module's answer and turns it into the host's evaluation. A malformed
/// answer blocks, naming the module.
pub(super) fn evaluation_from(
    module: &str,
    verdict: wit::Verdict,
    e: wit::Explanation,
) -> Evaluation {
    let reason = sanitize(&e.reason, 500);
    let (action, command_logging) = match verdict {
        wit::Verdict::NoMatch | wit::Verdict::Allow => (Action::Allow, false),
        wit::Verdict::Audit => (Action::Audit, false),
        wit::Verdict::AuditRecorded => (Action::Audit, true),
        wit::Verdict::Block => {
            let why = if reason.trim().is_empty() {
                format!("blocked by policy module {module}")
            } else {
                reason
            };
            return Evaluation::blocked(Some(module.to_string()), why);
        }
    };
    if e.principals.is_empty() {
        return Evaluation::blocked(
            Some(module.to_string()),
            format!("policy module {module} allowed the connection but granted no login"),
        );
    }
    if e.principals.len() > MAX_PRINCIPALS {
        return Evaluation::blocked(
            Some(module.to_string()),
            format!(
                "policy module {module} returned {} logins (at most {MAX_PRINCIPALS})",
                e.principals.len()
            ),
        );
    }
    if let Some(bad) = e.principals.iter().find(|p| !valid_principal(p)) {
        return Evaluation::blocked(
            Some(module.to_string()),
            format!(
                "policy module {module} returned an invalid login {:?}",
                sanitize(bad, 64)
            ),
        );
    }
    let p = e.permissions;
    Evaluation {
        module: Some(module.to_string()),
        action,
        principals: e.principals,
        permissions: Permissions {
            pty: p.contains(wit::Permissions::PTY),
            port_forwarding: p.contains(wit::Permissions::PORT_FORWARDING),
            agent_forwarding: p.contains(wit::Permissions::AGENT_FORWARDING),
            x11_forwarding: p.contains(wit::Permissions::X11_FORWARDING),
            user_rc: p.contains(wit::Permissions::USER_RC),
        },
        command_logging,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_must_be_plain_logins() {
        for ok in ["jdoe", "john.doe", "svc_deploy", "host$", "a-b", "j@corp"] {
            assert!(valid_principal(ok), "{ok}");
        }
        for bad in [
            "",
            "-oProxyCommand",
            "a,b",
            "a b",
            "root\n",
            "$",
            &"x".repeat(65),
        ] {
            assert!(!valid_principal(bad), "{bad:?}");
        }
    }

    fn explanation(principals: &[&str]) -> wit::Explanation {
        wit::Explanation {
            principals: principals.iter().map(|s| s.to_string()).collect(),
            permissions: wit::Permissions::PTY,
            reason: "r".into(),
        }
    }

    #[test]
    fn an_allow_without_principals_blocks_naming_the_module() {
        let e = evaluation_from("10-x.wasm", wit::Verdict::Allow, explanation(&[]));
        assert_eq!(e.action, Action::Block);
        assert!(
            e.reason.contains("10-x.wasm") && e.reason.contains("no login"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn an_invalid_principal_blocks() {
        let e = evaluation_from(
            "10-x.wasm",
            wit::Verdict::Allow,
            explanation(&["ok", "bad,login"]),
        );
        assert_eq!(e.action, Action::Block);
        assert!(e.reason.contains("invalid login"), "{}", e.reason);
    }

    #[test]
    fn audit_keeps_logging_and_permissions() {
        let e = evaluation_from(
            "20-a.wasm",
            wit::Verdict::AuditRecorded,
            explanation(&["jdoe"]),
        );
        assert_eq!(e.action, Action::Audit);
        assert!(e.command_logging && e.permissions.pty && !e.permissions.port_forwarding);
        assert!(e.permits_login("jdoe") && !e.permits_login("root"));
    }
}
