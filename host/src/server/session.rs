//! A decided session: who is connecting, from where and how, where to, what the
//! policies said, and what has happened since. The decision stage builds it; the
//! certificate and upstream stages and the channels read it; the session record is
//! made from it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::Shared;
use super::error::SessionError;
use super::target_login::TargetLink;
use crate::channels::{ChannelContext, CommandLogTarget, Traffic};
use crate::identity::Identity;
use crate::policy::{DecisionRequest, Evaluation, PolicySet};
use crate::recording::ChannelRecord;

/// How the client named the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// `ssh -J USER@PROXY LOGIN@HOST`: an inner connection over a direct-tcpip channel.
    ProxyJump,
    /// `ssh LOGIN%HOST@PROXY`.
    Username,
    /// `ssh LOGIN@HOST`, redirected to the proxy by the kernel.
    Transparent,
}

impl Via {
    /// The name in the session log.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Via::ProxyJump => "proxyjump",
            Via::Username => "username",
            Via::Transparent => "transparent",
        }
    }
}

/// One client connection's facts, known before anything is decided.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    /// The session id (in logs, the session log, the certificate's key id).
    pub id: String,
    pub peer: SocketAddr,
    pub via: Via,
    pub start: SystemTime,
}

impl Connection {
    pub(crate) fn new(peer: SocketAddr, via: Via) -> Self {
        Connection {
            id: format!("{:016x}", rand::random::<u64>()),
            peer,
            via,
            start: SystemTime::now(),
        }
    }
}

/// What the decision stage found: who, where, and what the policies said.
#[derive(Debug)]
pub(crate) struct Decided {
    pub identity: Identity,
    pub host: String,
    pub port: u16,
    /// The address the proxy connects to, when the name resolved.
    pub addr: Option<SocketAddr>,
    pub request: Arc<DecisionRequest>,
    /// The policy set that decided; the session's channel checks ask the same one.
    pub policy: Arc<PolicySet>,
    pub evaluation: Arc<Evaluation>,
}

/// A session's record in the making, filled in by its channels.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub channels: Arc<Mutex<Vec<ChannelRecord>>>,
    pub command_logs: Arc<Mutex<Vec<String>>>,
    /// Why the session was refused on a channel, in full, for the session log.
    pub close_reason: Mutex<Option<String>>,
}

impl Live {
    /// Notes why a channel was refused, for the session log.
    pub(crate) fn closed_because(&self, why: &SessionError) {
        *crate::sync::lock(&self.close_reason) = Some(why.to_string());
    }
}

/// A decided connection.
#[derive(Debug)]
pub(crate) struct Session {
    pub decided: Arc<Decided>,
    /// Why it may not go ahead, if it may not.
    pub refusal: Option<SessionError>,
    /// The connection to the target, made on first use.
    pub target: Arc<TargetLink>,
    pub live: Arc<Live>,
    /// One clone per running channel task: the final record waits for them, so that it
    /// holds their exit status and command logs.
    pub channel_tasks: Arc<()>,
}

impl Session {
    /// What a channel of this session needs.
    pub(crate) fn channel_context(
        &self,
        shared: &Shared,
        conn: &Connection,
        traffic: &Traffic,
    ) -> ChannelContext {
        let d = &self.decided;
        ChannelContext {
            policy: Arc::clone(&d.policy),
            request: Arc::clone(&d.request),
            decision: Arc::clone(&d.evaluation),
            traffic: traffic.clone(),
            channels: Arc::clone(&self.live.channels),
            command_log: match (&shared.recording_key, d.evaluation.command_logging) {
                (Some(key), true) => Some(CommandLogTarget {
                    dir: shared.config.recording_dir.clone(),
                    key: key.clone(),
                    session_id: conn.id.clone(),
                    upload: shared.uploads.as_ref().map(|u| {
                        (
                            Arc::clone(u),
                            crate::recording::store::day_of(unix(conn.start)),
                        )
                    }),
                }),
                _ => None,
            },
            command_logs: Arc::clone(&self.live.command_logs),
            back: self.target.back.clone(),
        }
    }
}

/// Seconds since the Unix epoch.
fn unix(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
