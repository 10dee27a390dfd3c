//! The channel stage: what passes on an allowed session. Session channels (shell,
//! exec, subsystems) are bridged to the target with their requests checked by the
//! policies and, when the decision asks, recorded; forwarded channels (`-L`, `-R`,
//! agent, X11) are joined byte for byte. Every byte is counted in the session's
//! [`Traffic`].
//!
//! Files: `session` bridges a session channel (one function per direction),
//! `requests` asks the policies and records their verdicts, `refuse` tells the user,
//! `recorder` feeds the command log, `forwarded` joins forwarded channels, and
//! `back_channels` serves the channels the target opens towards the client.

mod back_channels;
mod forwarded;
mod recorder;
mod refuse;
mod requests;
mod session;

pub use back_channels::{BackChannels, serve_opened};
pub use forwarded::join_forwarded;
pub use recorder::CommandLogTarget;
pub use refuse::{refuse, tell};
pub use requests::check_and_record;
pub use session::{RequestReplies, bridge_session};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::policy::{DecisionRequest, Evaluation, PolicySet};
use crate::recording::ChannelRecord;

/// A session's byte totals, shared by all its channels and its watchdogs.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    pub from_client: Arc<AtomicU64>,
    pub to_client: Arc<AtomicU64>,
}

impl Traffic {
    /// Bytes from the client so far.
    pub fn from_client(&self) -> u64 {
        self.from_client.load(Ordering::Relaxed)
    }

    /// Bytes to the client so far.
    pub fn to_client(&self) -> u64 {
        self.to_client.load(Ordering::Relaxed)
    }

    /// Both directions together.
    pub fn total(&self) -> u64 {
        self.from_client() + self.to_client()
    }
}

/// Channel records one session keeps for the session log. Refused forwarding requests
/// each make one, and a client can make them as fast as it likes: past this many, they
/// are counted in the log line of the warning, not kept.
pub const MAX_CHANNEL_RECORDS: usize = 1024;

/// What a channel needs from its session: the decision it runs under, and where its
/// bytes, records and command logs go.
#[derive(Debug, Clone)]
pub struct ChannelContext {
    pub policy: Arc<PolicySet>,
    pub request: Arc<DecisionRequest>,
    pub decision: Arc<Evaluation>,
    pub traffic: Traffic,
    /// The session's channel records, for the session log.
    pub channels: Arc<Mutex<Vec<ChannelRecord>>>,
    /// Set when the decision turned command logging on.
    pub command_log: Option<CommandLogTarget>,
    /// The command logs written, for the session log.
    pub command_logs: Arc<Mutex<Vec<String>>>,
    /// Where the client's connection is set when agent or X11 forwarding is allowed,
    /// for the channels the target then opens back.
    pub back: BackChannels,
}

impl ChannelContext {
    /// Adds a channel record; returns its index, or `None` past
    /// [`MAX_CHANNEL_RECORDS`].
    pub(crate) fn push_record(&self, record: ChannelRecord) -> Option<usize> {
        let mut channels = crate::sync::lock(&self.channels);
        if channels.len() >= MAX_CHANNEL_RECORDS {
            tracing::warn!(
                kind = %record.kind,
                "channel not recorded: the session has {MAX_CHANNEL_RECORDS} channel records"
            );
            return None;
        }
        channels.push(record);
        Some(channels.len() - 1)
    }
}
