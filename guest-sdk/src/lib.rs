//! The Portcullis policy SDK.
//!
//! A Portcullis policy is an ordinary Rust crate compiled to a WebAssembly component:
//!
//! ```no_run
//! use portcullis_policy::prelude::*;
//!
//! /// Everyone logs in as the local part of their email address.
//! #[policy]
//! fn decide(request: &ConnectionRequest) -> Decision {
//!     Decision::allow([request.identity.local_part()])
//! }
//! ```
//!
//! built with `cargo build --target wasm32-wasip2 --release` (the crate is a `cdylib`).
//! A policy that takes configuration names its type as a second argument, or implements
//! [`Policy`] on a type that deserializes from the operator's `NAME.toml`/`NAME.json`:
//!
//! ```no_run
//! # use portcullis_policy::prelude::*;
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct OfficeHours { window: TimeWindow }
//!
//! #[policy]
//! impl Policy for OfficeHours {
//!     fn decide(&self, request: &ConnectionRequest) -> Decision {
//!         if self.window.contains(&request.now) { Decision::no_match() }
//!         else { Decision::block("outside office hours") }
//!     }
//! }
//! ```
//!
//! Authors never depend on wit-bindgen: the bindings of the `portcullis:policy` world
//! are generated here once and re-exported.

#![doc(test(attr(deny(warnings))))]

extern crate self as portcullis_policy;

/// The Rust snippets of the policy guide (docs/policies.md), compiled as doctests so
/// that the guide never shows code that does not build or warns.
#[cfg(doctest)]
#[doc = include_str!("../../docs/policies.md")]
pub struct PolicyGuide;

mod channel;
mod config;
mod decision;
mod export;
pub mod identity;
pub mod log;
pub mod net;
pub mod testing;
pub mod time;

pub use config::NoConfig;
pub use export::{Export, Policy};
pub use portcullis_policy_macros::policy;

/// Re-exported so that authors (and the code the macro writes) need no direct dependency.
pub use serde;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// The generated bindings of the `portcullis:policy@0.3.0` world.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
// The generator's own doc example (of the export macro) is not ours to hold to the
// warnings the guide's snippets are held to.
#[doc(test(attr(allow(warnings))))]
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_policy",
        default_bindings_module: "::portcullis_policy::bindings",
        runtime_path: "::portcullis_policy::__wit_bindgen::rt",
        bitflags_path: "::portcullis_policy::__wit_bindgen::rt::bitflags",
    });
}

pub use bindings::{ChannelVerdict, ConfigFormat, Permissions};
pub use channel::ChannelRequest;
pub use decision::{Decision, IntoDecision, Verdict};
pub use portcullis_wire::{
    Authentication, ConnectionRequest, Datetime, Endpoint, Identity, Target,
};

/// Everything a policy usually needs, in one `use`.
pub mod prelude {
    pub use crate::identity::EmailPattern;
    pub use crate::net::{Destination, HostPattern, IpNet, IpRange, PortSet, glob_match};
    pub use crate::time::{TimeWindow, Weekday};
    pub use crate::{
        Authentication, ChannelRequest, ChannelVerdict, ConnectionRequest, Datetime, Decision,
        Endpoint, Identity, IntoDecision, NoConfig, Permissions, Policy, Target, Verdict, policy,
    };
    pub use serde::Deserialize;
}
