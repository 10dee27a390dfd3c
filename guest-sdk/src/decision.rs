//! A module's answer to a connection, and constructors for it and for channel verdicts.
//!
//! On the wire the answer is split (`decide` returns the verdict alone, `explain` the
//! rest) so that modules that do not match cost the host one cheap call; authors see
//! one `Decision`.

use crate::{ChannelVerdict, Permissions};

/// The action of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This module has no opinion; the next module in precedence order decides.
    NoMatch,
    /// Let the connection through.
    Allow,
    /// Refuse the connection. The payload is shown to the user and logged.
    Block(String),
    /// Let the connection through under audit ("Audit SSH"). When the payload is true
    /// the session's terminal traffic is recorded in a sealed command log.
    Audit(bool),
}

/// A module's answer to a connection request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do with the connection.
    pub verdict: Verdict,
    /// The Unix usernames the target certificate may carry. The connection is refused
    /// unless the requested login is one of them. Ignored for no-match and block.
    pub principals: Vec<String>,
    /// What the session may do beyond a plain shell or command.
    pub permissions: Permissions,
    /// A short human-readable explanation, recorded in the session log.
    pub reason: String,
}

impl Decision {
    /// No opinion: the next module in precedence order decides.
    pub fn no_match() -> Self {
        Decision {
            verdict: Verdict::NoMatch,
            principals: Vec::new(),
            permissions: Permissions::empty(),
            reason: String::new(),
        }
    }

    /// Allow the connection; the certificate carries `principals` and permits a pty.
    pub fn allow<I, S>(principals: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Decision {
            verdict: Verdict::Allow,
            principals: principals.into_iter().map(Into::into).collect(),
            permissions: Permissions::PTY,
            reason: String::new(),
        }
    }

    /// Allow the connection under audit ("Audit SSH"): the session is in the session
    /// log as audited. Add [`recorded`](Self::recorded) to also record its terminal
    /// traffic, sealed to the auditor's key.
    pub fn audit<I, S>(principals: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Decision {
            verdict: Verdict::Audit(false),
            ..Decision::allow(principals)
        }
    }

    /// Records an audited session's terminal traffic in a sealed command log:
    /// `Decision::audit(["jdoe"]).recorded()`. On any other decision it does nothing.
    #[must_use]
    pub fn recorded(self) -> Self {
        self.recorded_if(true)
    }

    /// [`recorded`](Self::recorded) when `record` is true, for rules that carry the
    /// choice in their configuration.
    #[must_use]
    pub fn recorded_if(mut self, record: bool) -> Self {
        if let Verdict::Audit(_) = self.verdict {
            self.verdict = Verdict::Audit(record);
        }
        self
    }

    /// Block the connection; `reason` is shown to the user and logged.
    pub fn block(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Decision {
            verdict: Verdict::Block(reason.clone()),
            reason,
            ..Decision::no_match()
        }
    }

    /// Sets the human-readable explanation recorded in the session log.
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Replaces the permissions (pty, forwarding...) the certificate grants.
    #[must_use]
    pub fn with_permissions(mut self, permissions: Permissions) -> Self {
        self.permissions = permissions;
        self
    }

    /// Whether this decision lets the next module decide.
    pub fn is_no_match(&self) -> bool {
        matches!(self.verdict, Verdict::NoMatch)
    }
}

/// What a `#[policy]` function may return: a [`Decision`], or a `Result` whose error
/// blocks the connection with the error's text, so that the function can use `?`.
pub trait IntoDecision {
    /// The decision this stands for.
    fn into_decision(self) -> Decision;
}

impl IntoDecision for Decision {
    fn into_decision(self) -> Decision {
        self
    }
}

impl<E: std::fmt::Display> IntoDecision for Result<Decision, E> {
    fn into_decision(self) -> Decision {
        self.unwrap_or_else(|e| Decision::block(e.to_string()))
    }
}

impl ChannelVerdict {
    /// Refuse the channel request with a reason.
    pub fn deny(reason: impl Into<String>) -> Self {
        ChannelVerdict::Deny(reason.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_grants_a_pty_and_the_given_principals() {
        let d = Decision::allow(["jdoe", "deploy"]);
        assert!(matches!(d.verdict, Verdict::Allow));
        assert_eq!(d.principals, vec!["jdoe".to_string(), "deploy".to_string()]);
        assert_eq!(d.permissions, Permissions::PTY);
    }

    #[test]
    fn audit_records_only_when_asked() {
        assert!(matches!(
            Decision::audit(["a"]).recorded().verdict,
            Verdict::Audit(true)
        ));
        assert!(matches!(
            Decision::audit(["a"]).verdict,
            Verdict::Audit(false)
        ));
        assert!(matches!(
            Decision::audit(["a"]).recorded_if(false).verdict,
            Verdict::Audit(false)
        ));
        assert!(matches!(
            Decision::allow(["a"]).recorded().verdict,
            Verdict::Allow
        ));
    }

    #[test]
    fn an_error_from_a_policy_function_blocks_with_its_message() {
        let r: Result<Decision, String> = Err("no such team".into());
        let d = r.into_decision();
        assert!(matches!(&d.verdict, Verdict::Block(m) if m == "no such team"));
        assert!(matches!(
            Ok::<_, String>(Decision::allow(["a"]))
                .into_decision()
                .verdict,
            Verdict::Allow
        ));
    }

    #[test]
    fn block_carries_its_reason_and_no_principals() {
        let d = Decision::block("outside office hours");
        assert!(matches!(&d.verdict, Verdict::Block(r) if r == "outside office hours"));
        assert!(d.principals.is_empty());
        assert_eq!(d.reason, "outside office hours");
    }
}
