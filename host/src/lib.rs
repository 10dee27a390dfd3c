//! Portcullis: a self-hosted SSH access proxy. Users connect with any OpenSSH client;
//! WebAssembly policy modules decide whether, and as whom, they reach the target;
//! Portcullis logs in with a short-lived certificate from its own CA and records the
//! session.
//!
//! The crate is the `portcullis` binary's library, so tests and embedders can run the
//! proxy in-process with [`run`]. docs/architecture.md maps the stages a connection
//! goes through to the modules here.

pub mod ca;
pub mod channels;
pub mod cli;
pub mod config;
mod console;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod policy;
mod proxy;
pub mod recording;
mod reload;
pub mod server;
pub mod state;
mod sync;
mod text;
mod threads;
mod transparent;
pub mod upstream;

pub use proxy::run;

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Recording(#[from] recording::cmdlog::CmdLogError),
    #[error("single sign-on: {0}")]
    SignOn(String),
    #[error("shared state: {0}")]
    State(String),
    #[error("console: {0}")]
    Console(String),
    #[error("recording store: {0}")]
    RecordingStore(#[from] recording::store::StoreError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}
