//! The policy set in force: an immutable snapshot of the loaded modules that decides
//! connections and channel requests.

use std::sync::Arc;

use super::bindings as wit;
use super::loader::ModuleInfo;
use super::module::LoadedModule;
use super::stats::Outcome;
use super::types::{ChannelDecision, ChannelRequest, DecisionRequest, Evaluation};
use super::wire::{channel_to_wire, evaluation_from, to_wire};
use crate::text::sanitize;

/// An immutable snapshot of the loaded modules, in precedence order.
pub struct PolicySet {
    pub(super) modules: Vec<Arc<LoadedModule>>,
    pub(super) generation: u64,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("generation", &self.generation)
            .field("modules", &self.names())
            .finish()
    }
}

impl PolicySet {
    pub(super) fn empty() -> Self {
        PolicySet {
            modules: Vec::new(),
            generation: 0,
        }
    }

    /// The module names, in precedence order.
    pub fn names(&self) -> Vec<&str> {
        self.modules.iter().map(|m| m.info.name.as_str()).collect()
    }

    /// What was loaded, for `policy check` and the logs.
    pub fn modules(&self) -> Vec<ModuleInfo> {
        self.modules.iter().map(|m| m.info.clone()).collect()
    }

    /// Counts reloads: 1 for the first set loaded.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Keeps the epoch ticking while a decision calls its modules (one guard for all
    /// of them: they share the engine's ticker); `None` when there is no module.
    fn running(&self) -> Option<super::ticker::Running> {
        self.modules.first().map(|m| m.ticker.running())
    }

    /// Decides a connection: the first module whose answer is not no-match decides;
    /// a failing module blocks; when none matches, the connection is blocked.
    pub fn decide(&self, request: &DecisionRequest) -> Evaluation {
        let unmatched = || Evaluation::blocked(None, "no policy matched");
        let Some(running) = self.running() else {
            return unmatched();
        };
        let wire = to_wire(request);
        for module in &self.modules {
            let name = &module.info.name;
            let span = tracing::debug_span!("policy", module = %name);
            let _enter = span.enter();
            // A verdict other than no-match is explained on the same instance, before
            // it goes back to the pool.
            let classify = |a: &Option<(wit::Verdict, wit::Explanation)>| match a {
                None => Outcome::NoMatch,
                Some((wit::Verdict::Allow, _)) => Outcome::Allow,
                Some((wit::Verdict::Block, _)) => Outcome::Block,
                Some(_) => Outcome::Audit,
            };
            let answer = module.call(&running, "decide", classify, |b, s| {
                match b.call_decide(&mut *s, &wire)? {
                    wit::Verdict::NoMatch => Ok(None),
                    verdict => Ok(Some((verdict, b.call_explain(s)?))),
                }
            });
            match answer {
                Ok(None) => continue,
                Ok(Some((verdict, explanation))) => {
                    return evaluation_from(name, verdict, explanation);
                }
                Err(failure) => {
                    tracing::warn!(module = %name, %failure, "policy module failed; blocking");
                    return Evaluation::blocked(
                        Some(name.clone()),
                        format!("policy module {name} failed: {failure}"),
                    );
                }
            }
        }
        unmatched()
    }

    /// Decides a channel request on a connection the set allowed with `decision`.
    /// Modules are asked in order; the first opinion wins; a failing module denies.
    /// With no opinion, the request is allowed if the decision's permissions allow it.
    pub fn check_channel(
        &self,
        request: &DecisionRequest,
        decision: &Evaluation,
        channel: &ChannelRequest,
    ) -> ChannelDecision {
        let deny = |module: Option<String>, reason: String| ChannelDecision {
            allowed: false,
            module,
            reason,
        };
        if !decision.is_allowed() {
            return deny(None, "the connection is not allowed".into());
        }
        if let Some((false, what)) =
            super::types::required_permission(channel, &decision.permissions)
        {
            return deny(
                decision.module.clone(),
                format!("{what} is not permitted by policy"),
            );
        }
        let wire = to_wire(request);
        let wire_channel = channel_to_wire(channel);
        // No module, no opinion: the permissions above decided.
        let no_opinion = || ChannelDecision {
            allowed: true,
            module: None,
            reason: String::new(),
        };
        let Some(running) = self.running() else {
            return no_opinion();
        };
        for module in &self.modules {
            let name = &module.info.name;
            match module.call(
                &running,
                "check-channel",
                |_| Outcome::ChannelCheck,
                |b, s| b.call_check_channel(s, &wire, &wire_channel),
            ) {
                Ok(wit::ChannelVerdict::NoOpinion) => continue,
                Ok(wit::ChannelVerdict::Allow) => {
                    return ChannelDecision {
                        allowed: true,
                        module: Some(name.clone()),
                        reason: String::new(),
                    };
                }
                Ok(wit::ChannelVerdict::Deny(reason)) => {
                    return deny(Some(name.clone()), sanitize(&reason, 500));
                }
                Err(failure) => {
                    tracing::warn!(module = %name, %failure, "policy module failed; denying");
                    return deny(
                        Some(name.clone()),
                        format!("policy module {name} failed: {failure}"),
                    );
                }
            }
        }
        no_opinion()
    }
}

/// Runs [`PolicySet::check_channel`] on the blocking pool, so that a slow module holds
/// a pool thread, never the session's task. A check that cannot run denies.
pub async fn check_channel_off_thread(
    policy: Arc<PolicySet>,
    request: Arc<DecisionRequest>,
    decision: Arc<Evaluation>,
    channel: ChannelRequest,
) -> ChannelDecision {
    tokio::task::spawn_blocking(move || policy.check_channel(&request, &decision, &channel))
        .await
        .unwrap_or_else(|e| ChannelDecision {
            allowed: false,
            module: None,
            reason: format!("policy check failed: {e}"),
        })
}
