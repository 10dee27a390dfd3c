//! The glue between an author's [`Policy`] and the exports of the world.
//!
//! Invariants: `configure` runs once per instance before any other call (the host
//! guarantees it); a call made before a successful `configure` blocks, and so does a
//! request that does not decode: both fail closed.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::bindings::{self as wire, Guest};
use crate::{ChannelRequest, ChannelVerdict, ConfigFormat, ConnectionRequest, Decision, Verdict};

/// A policy: a type built from the module's configuration that decides connections.
///
/// Mark the impl with [`#[policy]`](crate::policy) to export it. The type itself is the
/// configuration: it is deserialized from the operator's `NAME.toml` (or `NAME.json`)
/// when the module is loaded. Use [`NoConfig`](crate::NoConfig)-like empty structs or
/// `#[serde(default)]` fields when no file is needed.
pub trait Policy: DeserializeOwned + 'static {
    /// Decide a connection. Return [`Decision::no_match`] to let the next module decide.
    fn decide(&self, request: &ConnectionRequest<'_>) -> Decision;

    /// Decide a request made on an allowed connection (a shell, a command, a subsystem
    /// such as sftp, port forwarding). The default has no opinion.
    fn check_channel(
        &self,
        _request: &ConnectionRequest<'_>,
        _channel: &ChannelRequest,
    ) -> ChannelVerdict {
        ChannelVerdict::NoOpinion
    }
}

thread_local! {
    static CONFIGURED: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    /// The last decision other than no-match, until `explain` takes it.
    static LAST: RefCell<Option<Decision>> = const { RefCell::new(None) };
}

fn with_policy<P: Policy, R>(f: impl FnOnce(&P) -> R, unconfigured: R) -> R {
    CONFIGURED.with(
        |slot| match slot.borrow().as_ref().and_then(|b| b.downcast_ref::<P>()) {
            Some(policy) => f(policy),
            None => unconfigured,
        },
    )
}

/// Exports a [`Policy`] as the component's implementation of the world. Written by the
/// [`#[policy]`](crate::policy) macro; authors do not name it.
#[derive(Debug)]
pub struct Export<P>(PhantomData<P>);

impl<P: Policy> Guest for Export<P> {
    fn configure(format: ConfigFormat, text: String) -> Result<(), String> {
        crate::log::install_panic_hook();
        let policy: P = crate::config::parse(format, &text)?;
        CONFIGURED.with(|slot| *slot.borrow_mut() = Some(Box::new(policy)));
        Ok(())
    }

    fn decide(request: Vec<u8>) -> wire::Verdict {
        let decision = match ConnectionRequest::decode(&request) {
            Ok(request) => with_policy::<P, _>(
                |p| p.decide(&request),
                Decision::block("policy module was called before it was configured"),
            ),
            Err(e) => Decision::block(e),
        };
        let verdict = match decision.verdict {
            Verdict::NoMatch => wire::Verdict::NoMatch,
            Verdict::Allow => wire::Verdict::Allow,
            Verdict::Block(_) => wire::Verdict::Block,
            Verdict::Audit(false) => wire::Verdict::Audit,
            Verdict::Audit(true) => wire::Verdict::AuditRecorded,
        };
        let keep = (verdict != wire::Verdict::NoMatch).then_some(decision);
        LAST.with(|last| *last.borrow_mut() = keep);
        verdict
    }

    fn explain() -> wire::Explanation {
        let Some(d) = LAST.with(|last| last.borrow_mut().take()) else {
            // Nothing decided: no logins, which the host refuses.
            return wire::Explanation {
                principals: Vec::new(),
                permissions: crate::Permissions::empty(),
                reason: String::new(),
            };
        };
        let reason = match d.verdict {
            Verdict::Block(message) if !message.trim().is_empty() => message,
            _ => d.reason,
        };
        wire::Explanation {
            principals: d.principals,
            permissions: d.permissions,
            reason,
        }
    }

    fn check_channel(request: Vec<u8>, channel: wire::ChannelRequest) -> ChannelVerdict {
        let channel = ChannelRequest::from(channel);
        let request = match ConnectionRequest::decode(&request) {
            Ok(r) => r,
            Err(e) => return ChannelVerdict::Deny(e),
        };
        with_policy::<P, _>(
            |p| p.check_channel(&request, &channel),
            ChannelVerdict::Deny("policy module was called before it was configured".into()),
        )
    }
}
