//! Why a session does not go ahead, or ends. Each error knows two texts: the whole
//! cause for the operator's log and the session log (`Display`), and what the user
//! may be told on their terminal ([`SessionError::user_message`]): never a file path,
//! a line number or the proxy's internals.

use crate::upstream::UpstreamError;

/// Why the proxy refused or ended a session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The SSH user name could not be read as `LOGIN%HOST[:PORT]`.
    #[error("bad user name: {0}")]
    BadUserName(String),
    /// The target's name is neither a valid host name nor an IP address.
    #[error("bad target: {0}")]
    BadTarget(#[from] super::target_name::BadName),
    /// The user holds `server.max_connections_per_user` connections already.
    #[error("too many connections of this user (server.max_connections_per_user = {limit})")]
    TooManyConnections { limit: usize },
    /// Single sign-on did not give an identity; the text is meant for the user.
    #[error("{0}")]
    SignOn(String),
    /// A session channel on a connection that names no target.
    #[error("no target given: use `ssh -J USER@PROXY LOGIN@HOST` or `ssh 'LOGIN{sep}HOST@PROXY'`", sep = super::username_form::SEPARATOR)]
    NoTarget,
    /// The policies blocked the connection or did not grant the login; the text is
    /// meant for the user (it names the deciding module and its reason).
    #[error("{0}")]
    Policy(String),
    /// The target's name did not resolve.
    #[error("cannot resolve {0}")]
    CannotResolve(String),
    /// A policy asks for command logging and no auditor key is configured.
    #[error(
        "this session must be recorded, and the proxy has no auditor key configured \
         ([recording] public_key)"
    )]
    NoAuditorKey,
    /// The session's record cannot be written (a full disk): no session runs unrecorded.
    #[error("the proxy cannot write the session log ({0}); sessions are refused until it can")]
    SessionLog(std::io::Error),
    /// The shared store (PostgreSQL) cannot take the session's record: no session runs
    /// unrecorded.
    #[error("the shared session store is unavailable ({0}); sessions are refused until it is back")]
    SharedStore(String),
    /// The certificate for the target could not be issued.
    #[error("cannot issue a certificate: {0}")]
    Certificate(#[from] crate::ca::CaError),
    /// The proxy could not log in to the target (boxed: russh's errors are large).
    #[error(transparent)]
    Target(Box<UpstreamError>),
    /// The target refused a session channel.
    #[error("the target refused a session channel: {0}")]
    TargetChannel(russh::Error),
}

impl From<UpstreamError> for SessionError {
    fn from(e: UpstreamError) -> Self {
        SessionError::Target(Box::new(e))
    }
}

impl SessionError {
    /// What the user may be told.
    pub(crate) fn user_message(&self) -> String {
        match self {
            SessionError::NoAuditorKey => {
                "this session must be recorded, and the proxy has no auditor key configured".into()
            }
            SessionError::SessionLog(_) => {
                "the proxy cannot write the session log; sessions are refused until it can".into()
            }
            SessionError::SharedStore(_) => {
                "the proxy's session store is unavailable; sessions are refused until it is back"
                    .into()
            }
            SessionError::Certificate(_) => {
                "the proxy cannot issue a certificate for the target; the operator's log says why"
                    .into()
            }
            SessionError::Target(e) => e.user_message(),
            other => other.to_string(),
        }
    }
}
