//! The host's own view of a decision: owned, serializable, and independent of the
//! generated bindings (the engine converts at the boundary).

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::identity::Authentication;

/// Everything a connection decision is based on.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRequest {
    pub session_id: String,
    pub email: String,
    pub groups: Vec<String>,
    pub authentication: Authentication,
    pub source: SocketAddr,
    /// The target as the user typed it.
    pub target_host: String,
    /// The address the proxy will connect to, when the name resolved.
    pub target_ip: Option<IpAddr>,
    /// The name the resolver found for the target (end of a CNAME chain, or a short
    /// name completed by the search domain); none for an address.
    pub target_canonical: Option<String>,
    pub target_port: u16,
    /// The login the user asked for on the target.
    pub login: String,
    #[serde(serialize_with = "rfc3339")]
    pub now: SystemTime,
    pub client_version: String,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
}

/// The action of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Block,
    /// Allowed under audit ("Audit SSH").
    Audit,
}

/// What a session may do beyond a plain shell or command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions {
    pub pty: bool,
    pub port_forwarding: bool,
    pub agent_forwarding: bool,
    pub x11_forwarding: bool,
    pub user_rc: bool,
}

impl Permissions {
    /// The names of the granted permissions, as OpenSSH certificate extensions.
    pub fn extensions(&self) -> Vec<&'static str> {
        [
            (self.pty, "permit-pty"),
            (self.port_forwarding, "permit-port-forwarding"),
            (self.agent_forwarding, "permit-agent-forwarding"),
            (self.x11_forwarding, "permit-X11-forwarding"),
            (self.user_rc, "permit-user-rc"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

impl Serialize for Permissions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.extensions().serialize(s)
    }
}

/// The outcome of asking the policy set about a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    /// The module that decided (its file name), or none when no module matched.
    pub module: Option<String>,
    pub action: Action,
    /// The logins the certificate may carry; empty unless allowed.
    pub principals: Vec<String>,
    pub permissions: Permissions,
    /// Whether the session's terminal traffic is recorded (audit only).
    pub command_logging: bool,
    /// Why: the module's explanation, or what went wrong.
    pub reason: String,
}

impl Evaluation {
    /// A block decided by the host itself (no module matched, or a module failed).
    pub fn blocked(module: Option<String>, reason: impl Into<String>) -> Self {
        Evaluation {
            module,
            action: Action::Block,
            principals: Vec::new(),
            permissions: Permissions::default(),
            command_logging: false,
            reason: reason.into(),
        }
    }

    /// Whether the connection may proceed (allowed or audited).
    pub fn is_allowed(&self) -> bool {
        self.action != Action::Block
    }

    /// Whether the connection may proceed as `login`.
    pub fn permits_login(&self, login: &str) -> bool {
        self.is_allowed() && self.principals.iter().any(|p| p == login)
    }
}

/// A request made on an allowed connection: the wire crate's type, which policy modules
/// see too.
pub use portcullis_wire::ChannelRequest;

/// The permission `request` needs besides the modules' consent, if any.
pub fn required_permission(
    request: &ChannelRequest,
    p: &Permissions,
) -> Option<(bool, &'static str)> {
    match request {
        ChannelRequest::DirectTcpip { .. } | ChannelRequest::TcpipForward { .. } => {
            Some((p.port_forwarding, "port forwarding"))
        }
        ChannelRequest::AgentForwarding => Some((p.agent_forwarding, "agent forwarding")),
        ChannelRequest::X11Forwarding => Some((p.x11_forwarding, "X11 forwarding")),
        ChannelRequest::Shell
        | ChannelRequest::Exec { .. }
        | ChannelRequest::Subsystem { .. }
        | ChannelRequest::Env { .. } => None,
    }
}

/// The outcome of asking the policy set about a channel request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelDecision {
    pub allowed: bool,
    /// The module that decided, or none when the host decided from the permissions.
    pub module: Option<String>,
    pub reason: String,
}
