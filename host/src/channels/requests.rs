//! Requests made on an allowed session, asked of the policies and recorded with their
//! verdict in the session log.

use std::sync::Arc;

use super::ChannelContext;
use crate::policy::{ChannelDecision, ChannelRequest};
use crate::recording::ChannelRecord;
use crate::sync::lock;

/// Where a request's verdict goes in the session's channel records.
#[derive(Debug, Clone, Copy)]
pub(super) enum RecordAt {
    /// A new record of its own (forwarding requests).
    New,
    /// The record of the session channel it was made on.
    Channel(usize),
    /// A new record only when refused (requests a session makes many of, such as
    /// environment variables).
    IfRefused,
}

impl ChannelContext {
    /// Asks the policies about `request` (off the session's task) and records the
    /// verdict as `kind`.
    pub(super) async fn check(
        &self,
        request: ChannelRequest,
        kind: &str,
        at: RecordAt,
    ) -> ChannelDecision {
        let verdict = crate::policy::check_channel_off_thread(
            Arc::clone(&self.policy),
            Arc::clone(&self.request),
            Arc::clone(&self.decision),
            request,
        )
        .await;
        let denied_reason = (!verdict.allowed).then(|| verdict.reason.clone());
        match at {
            RecordAt::New => {
                self.push_record(ChannelRecord {
                    kind: kind.to_string(),
                    allowed: verdict.allowed,
                    denied_reason,
                    ..Default::default()
                });
            }
            RecordAt::Channel(index) => self.record(index, |r| {
                r.kind = kind.to_string();
                r.allowed = verdict.allowed;
                r.denied_reason = denied_reason;
            }),
            RecordAt::IfRefused if !verdict.allowed => {
                self.push_record(ChannelRecord {
                    kind: kind.to_string(),
                    allowed: false,
                    denied_reason,
                    ..Default::default()
                });
            }
            RecordAt::IfRefused => {}
        }
        if !verdict.allowed {
            tracing::warn!(%kind, module = ?verdict.module, reason = %verdict.reason, "request refused");
        }
        verdict
    }

    /// Updates the record of session channel `index`.
    pub(super) fn record(&self, index: usize, f: impl FnOnce(&mut ChannelRecord)) {
        if let Some(r) = lock(&self.channels).get_mut(index) {
            f(r);
        }
    }
}

/// Asks the policies about a forwarding request (`-L`, `-R`) and records the verdict
/// in the session log as a channel of its own.
pub async fn check_and_record(ctx: &ChannelContext, request: ChannelRequest, kind: &str) -> bool {
    ctx.check(request, kind, RecordAt::New).await.allowed
}
