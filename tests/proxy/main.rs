//! The proxy end to end: the real OpenSSH client (`ssh`, `scp`, `sftp`) through the real
//! `portcullis serve` to a real `sshd` on a loopback port that trusts the gateway CA,
//! with real policy components built from source.
//!
//! Needs root (test accounts on this machine) and openssh-server (scripts/setup). One
//! test binary, split by topic: `sessions`, `forwarding`, `lifecycle`, `host_keys`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../common/mod.rs"]
mod common;

mod balancer;
mod console;
mod console_browser;
mod container;
mod fleet;
mod forwarding;
mod hardening;
mod host_keys;
mod lifecycle;
mod policy_kit;
mod recording_store;
mod sessions;
mod sso;
mod transparent;

use common::lab::{Lab, OutputExt, ensure_user};

fn default_lab(users: &[(&str, &[&str])]) -> Lab {
    let mut lab = Lab::new(users);
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    lab.start();
    lab
}
