//! One connection decision through 1 and through 10 loaded policy modules.
//!
//! The 10-module set is nine network-audit modules whose rules do not match the
//! request (each answers no-match) followed by the default mapping, so every decision
//! calls all ten guests. A third set replaces the nine with a guest that answers
//! no-match at once, to show the cost of a call itself; `1 trivial module` is that guest
//! alone (so the decision ends in "no policy matched"): the fixed cost of a decision
//! (encoding the request once) plus one call. Run with
//! `cargo bench -p portcullis --bench decision`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::identity::Authentication;
use portcullis::policy::{DecisionRequest, Limits, PolicyEngine};

fn request() -> DecisionRequest {
    DecisionRequest {
        session_id: "bench".into(),
        email: "jdoe@example.com".into(),
        groups: vec!["sre".into(), "db-admins".into()],
        authentication: Authentication::PublicKey("SHA256:bench".into()),
        source: "10.1.2.3:50000".parse::<SocketAddr>().unwrap(),
        target_host: "web1.prod.example.com".into(),
        target_ip: Some("192.0.2.10".parse().unwrap()),
        target_canonical: None,
        target_port: 22,
        login: "jdoe".into(),
        now: SystemTime::now(),
        client_version: "SSH-2.0-OpenSSH_9.2p1".into(),
    }
}

fn bench(c: &mut Criterion) {
    let one = common::PolicyDir::new();
    one.module("90-default-principal.wasm", "default_principal");
    let ten = common::PolicyDir::new();
    for i in 0..9 {
        let name = format!("{:02}-audit", 10 + i);
        ten.module(&format!("{name}.wasm"), "network_audit").file(
            &format!("{name}.toml"),
            format!("[[rule]]\ndestinations = [\"10.{i}.0.0/16\", \"*.staging{i}.example.com\"]\ngroups = [\"contractors\"]\ncommand_logging = true\n").as_bytes(),
        );
    }
    ten.module("90-default-principal.wasm", "default_principal");
    // The cost of a call itself: nine modules that answer no-match without looking.
    let trivial = common::PolicyDir::new();
    for i in 0..9 {
        trivial.module(&format!("{:02}-nomatch.wasm", 10 + i), "hostile");
    }
    trivial.module("90-default-principal.wasm", "default_principal");
    let lone = common::PolicyDir::new();
    lone.module("10-nomatch.wasm", "hostile");
    let req = request();
    {
        let engine = PolicyEngine::new(lone.path(), Limits::default()).unwrap();
        let set = engine.current();
        c.bench_function("decision/1 trivial module", |b| b.iter(|| set.decide(&req)));
    }
    for (label, dir) in [
        ("decision/1 module", &one),
        ("decision/10 modules", &ten),
        ("decision/10 modules, 9 trivial", &trivial),
    ] {
        let engine = PolicyEngine::new(dir.path(), Limits::default()).unwrap();
        let set = engine.current();
        assert!(set.decide(&req).permits_login("jdoe"));
        c.bench_function(label, |b| b.iter(|| set.decide(&req)));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
