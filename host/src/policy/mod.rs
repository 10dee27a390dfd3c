//! The policy plane: WebAssembly policy modules that decide every connection.
//!
//! Layout: `engine` loads, compiles and swaps; `set` decides with the set in force;
//! `module` calls one guest under its bounds; `guest` is a guest's store state;
//! `wire` converts between the host's types and the WIT world; `loader` reads the
//! directory; `reload` watches it.
//!
//! Invariants:
//! - Modules are evaluated in file-name order; the first answer other than no-match
//!   wins; when none matches, the connection is blocked.
//! - Every failure of a module (trap, timeout, memory cap, malformed answer) blocks,
//!   naming the module; the host keeps serving.
//! - The loaded set is an immutable snapshot ([`PolicySet`]) swapped atomically; a
//!   session keeps the snapshot that decided it, for its channel checks as well.

mod bindings;
mod engine;
mod guest;
mod limits;
mod loader;
mod module;
mod reload;
mod set;
mod signatures;
mod stats;
mod ticker;
mod types;
mod wire;

pub use engine::PolicyEngine;
pub use limits::Limits;
pub use loader::{LoadError, LoadErrors, ModuleInfo};
pub use reload::{ReloadHandle, watch};
pub use set::{PolicySet, check_channel_off_thread};
pub use signatures::{NAMESPACE as SIGNATURE_NAMESPACE, SignaturePolicy};
pub use stats::{ModuleStats, StatsRegistry};
pub use types::{
    Action, ChannelDecision, ChannelRequest, DecisionRequest, Evaluation, Permissions,
};

use std::path::PathBuf;

/// Errors of the policy plane that are not a decision.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy directory could not be read.
    #[error("cannot read policy directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One or more modules (or their configurations) failed to load.
    #[error("{0}")]
    Load(#[from] LoadErrors),
    /// The WebAssembly engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// The directory watcher could not be started.
    #[error("cannot watch policy directory {path}: {reason}")]
    Watch { path: PathBuf, reason: String },
}
