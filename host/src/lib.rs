//! Portcullis: a self-hosted SSH access proxy. Users connect with any OpenSSH client;
//! WebAssembly policy modules decide whether, and as whom, they reach the target.
//!
//! The crate is the `portcullis` binary's library, so tests and embedders can drive
//! every part of it in-process.

pub mod cli;
pub mod policy;
