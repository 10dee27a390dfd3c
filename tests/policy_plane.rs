//! The policy plane end to end: real policy components built from source, decided
//! through the real `portcullis policy eval|check` binary, and the engine's sandbox and
//! hot reload driven in-process.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{PolicyDir, eval, portcullis};
use portcullis::identity::Authentication;
use portcullis::policy::{Action, DecisionRequest, Limits, PolicyEngine};
use serde_json::Value;

const MONDAY_10_PARIS: &str = "2026-11-23T10:00:00+01:00";
const SATURDAY_10_PARIS: &str = "2026-11-28T10:00:00+01:00";

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// One row of a decision table: user, groups, login asked for; then the expected
/// action, whether the login is permitted, and the deciding module.
type Case<'a> = (&'a str, &'a [&'a str], &'a str, &'a str, bool, &'a str);

fn check_cases(dir: &PolicyDir, cases: &[Case]) {
    for &(user, groups, login, action, permitted, module) in cases {
        let mut args = vec!["--user", user, "--login", login, "--target", "10.0.0.5"];
        for g in groups {
            args.extend(["--group", g]);
        }
        let out = eval(dir.path(), &args);
        let what = format!("{user} {groups:?} as {login}: {out:#}");
        assert_eq!(s(&out["action"]), action, "{what}");
        assert_eq!(out["login_permitted"], permitted, "{what}");
        assert_eq!(s(&out["module"]), module, "{what}");
    }
}

#[test]
fn username_mapping_covers_the_four_principal_recipes() {
    // Rename and shared account, with the default mapping for everyone else.
    let dir = PolicyDir::new();
    dir.module("30-username-map.wasm", "username_map")
        .file(
            "30-username-map.toml",
            br#"
[[map]]
emails = ["jdoe@example.com"]
logins = ["johndoe"]

[[map]]
emails = ["alice@example.com", "bob@example.com"]
logins = ["vmuser"]

[[map]]
groups = ["admins"]
logins = ["*"]
"#,
        )
        .module("90-default-principal.wasm", "default_principal");
    let map = "30-username-map.wasm";
    let default = "90-default-principal.wasm";
    check_cases(
        &dir,
        &[
            ("jdoe@example.com", &[], "johndoe", "allow", true, map),
            ("jdoe@example.com", &[], "jdoe", "allow", false, map),
            ("alice@example.com", &[], "vmuser", "allow", true, map),
            ("bob@example.com", &[], "vmuser", "allow", true, map),
            ("carol@example.com", &[], "carol", "allow", true, default),
            ("carol@example.com", &[], "vmuser", "allow", false, default),
            (
                "ops@example.com",
                &["admins"],
                "postgres",
                "allow",
                true,
                map,
            ),
        ],
    );

    // Any user to one account.
    let one = PolicyDir::new();
    one.module("30-username-map.wasm", "username_map").file(
        "30-username-map.toml",
        b"[[map]]\nemails = [\"*\"]\nlogins = [\"vmuser\"]\n",
    );
    check_cases(
        &one,
        &[
            ("anyone@example.org", &[], "vmuser", "allow", true, map),
            ("anyone@example.org", &[], "anyone", "allow", false, map),
        ],
    );

    // Any user to any account: the certificate carries exactly the login asked for.
    let any = PolicyDir::new();
    any.module("30-username-map.wasm", "username_map").file(
        "30-username-map.toml",
        b"[[map]]\nemails = [\"*\"]\nlogins = [\"*\"]\n",
    );
    let out = eval(
        any.path(),
        &[
            "--user",
            "x@example.org",
            "--login",
            "postgres",
            "--target",
            "db1",
        ],
    );
    assert_eq!(
        out["principals"],
        serde_json::json!(["postgres"]),
        "{out:#}"
    );
    assert_eq!(out["login_permitted"], true);
}

#[test]
fn default_policy_maps_the_email_local_part() {
    let dir = PolicyDir::new();
    dir.module("90-default-principal.wasm", "default_principal");
    let out = eval(
        dir.path(),
        &[
            "--user",
            "jdoe@example.com",
            "--login",
            "jdoe",
            "--target",
            "10.0.0.5:2222",
        ],
    );
    assert_eq!(out["principals"], serde_json::json!(["jdoe"]));
    assert_eq!(out["permissions"], serde_json::json!(["permit-pty"]));
    assert_eq!(out["request"]["target_port"], 2222);
    let out = eval(
        dir.path(),
        &[
            "--user",
            "jdoe@example.com",
            "--login",
            "root",
            "--target",
            "10.0.0.5",
        ],
    );
    assert_eq!(out["login_permitted"], false);
}

#[test]
fn no_module_means_blocked() {
    let dir = PolicyDir::new();
    let out = eval(
        dir.path(),
        &[
            "--user",
            "jdoe@example.com",
            "--login",
            "jdoe",
            "--target",
            "10.0.0.5",
        ],
    );
    assert_eq!(s(&out["action"]), "block");
    assert_eq!(s(&out["reason"]), "no policy matched");
    assert!(out["module"].is_null());
}

#[test]
fn network_audit_applies_to_its_destinations_only() {
    let dir = PolicyDir::new();
    dir.module("20-network-audit.wasm", "network_audit")
        .file(
            "20-network-audit.toml",
            br#"
[[rule]]
destinations = ["10.0.0.0/8"]
command_logging = true
reason = "production"

[[rule]]
destinations = ["*.staging.example.com:22"]
groups = ["contractors"]
"#,
        )
        .module("90-default-principal.wasm", "default_principal");
    let prod = eval(
        dir.path(),
        &[
            "--user",
            "jdoe@example.com",
            "--login",
            "jdoe",
            "--target",
            "10.20.30.40",
        ],
    );
    assert_eq!(s(&prod["action"]), "audit");
    assert_eq!(prod["command_logging"], true);
    assert!(s(&prod["reason"]).contains("production"));
    assert_eq!(prod["login_permitted"], true);

    let staging = [
        "--login",
        "jdoe",
        "--target",
        "web.staging.example.com",
        "--resolve",
        "192.0.2.10",
    ];
    let mut args = vec!["--user", "jdoe@example.com", "--group", "contractors"];
    args.extend(staging);
    let c = eval(dir.path(), &args);
    assert_eq!(s(&c["action"]), "audit");
    assert_eq!(c["command_logging"], false);

    let mut args = vec!["--user", "jdoe@example.com"];
    args.extend(staging);
    let employee = eval(dir.path(), &args);
    assert_eq!(s(&employee["action"]), "allow");
    assert_eq!(s(&employee["module"]), "90-default-principal.wasm");

    let other_port = eval(
        dir.path(),
        &[
            "--user",
            "a@b.c",
            "--group",
            "contractors",
            "--login",
            "a",
            "--target",
            "web.staging.example.com:2222",
            "--resolve",
            "192.0.2.10",
        ],
    );
    assert_eq!(s(&other_port["action"]), "allow");
}

#[test]
fn conditions_block_by_source_and_time_and_refuse_subsystems() {
    let dir = PolicyDir::new();
    dir.module("10-conditions.wasm", "conditions")
        .file(
            "10-conditions.toml",
            br#"
allowed_sources = ["10.0.0.0/8"]
exempt_groups = ["oncall"]
deny_subsystems = ["sftp"]

[office_hours]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "09:00"
end = "18:00"
utc_offset = "+01:00"
"#,
        )
        .module("90-default-principal.wasm", "default_principal");
    let base = [
        "--user",
        "jdoe@example.com",
        "--login",
        "jdoe",
        "--target",
        "10.0.0.5",
    ];
    let run = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend(extra);
        eval(dir.path(), &a)
    };

    let ok = run(&["--source", "10.1.1.1", "--time", MONDAY_10_PARIS]);
    assert_eq!(s(&ok["action"]), "allow", "{ok:#}");

    let outside = run(&["--source", "192.0.2.7", "--time", MONDAY_10_PARIS]);
    assert_eq!(s(&outside["action"]), "block");
    assert_eq!(s(&outside["module"]), "10-conditions.wasm");
    assert!(s(&outside["reason"]).contains("192.0.2.7"), "{outside:#}");

    let weekend = run(&["--source", "10.1.1.1", "--time", SATURDAY_10_PARIS]);
    assert_eq!(s(&weekend["action"]), "block");
    assert!(
        s(&weekend["reason"]).contains("office hours"),
        "{weekend:#}"
    );

    let oncall = run(&[
        "--source",
        "192.0.2.7",
        "--time",
        SATURDAY_10_PARIS,
        "--group",
        "oncall",
    ]);
    assert_eq!(s(&oncall["action"]), "allow");

    let channels = run(&[
        "--source",
        "10.1.1.1",
        "--time",
        MONDAY_10_PARIS,
        "--channel",
        "subsystem:sftp",
        "--channel",
        "exec:uptime",
        "--channel",
        "direct-tcpip:db:5432",
    ]);
    let ch = channels["channels"].as_array().unwrap();
    assert_eq!(ch[0]["allowed"], false);
    assert_eq!(s(&ch[0]["module"]), "10-conditions.wasm");
    assert!(s(&ch[0]["reason"]).contains("sftp"));
    assert_eq!(ch[1]["allowed"], true);
    assert_eq!(ch[2]["allowed"], false);
    assert!(
        s(&ch[2]["reason"]).contains("port forwarding"),
        "{channels:#}"
    );
}

#[test]
fn policy_check_accepts_a_good_directory() {
    let dir = PolicyDir::new();
    dir.module("10-conditions.wasm", "conditions")
        .file("10-conditions.toml", b"deny_subsystems = [\"sftp\"]\n")
        .module("90-default-principal.wasm", "default_principal");
    let out = portcullis()
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 module(s) OK"), "{stdout}");
    let conditions = stdout.find("10-conditions.wasm").unwrap();
    let default = stdout.find("90-default-principal.wasm").unwrap();
    assert!(conditions < default, "precedence order: {stdout}");
}

#[test]
fn policy_check_names_every_broken_file_and_why() {
    let dir = PolicyDir::new();
    dir.file("11-junk.wasm", b"this is not wasm")
        .file("12-core.wasm", b"\0asm\x01\0\0\0")
        .module("13-other.wasm", "wrong_world")
        .module("13-old.wasm", "old_world")
        .module("14-audit.wasm", "network_audit")
        .file(
            "14-audit.toml",
            b"[[rule]]\ndestinations = [\"10.0.0.0/99\"]\n",
        )
        .module("15-map.wasm", "username_map")
        .file(
            "15-map.toml",
            b"[[map]]\nemails = [\"a@b.c\"]\nlogin = [\"x\"]\n",
        )
        .file("16-orphan.toml", b"");
    let out = portcullis()
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = |file: &str| {
        err.lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{file} not reported:\n{err}"))
            .to_string()
    };
    assert!(
        line("11-junk.wasm").contains("not a WebAssembly file"),
        "{err}"
    );
    assert!(
        line("12-core.wasm").contains("core WebAssembly module"),
        "{err}"
    );
    assert!(
        line("13-other.wasm").contains("portcullis:policy@0.3.0"),
        "{err}"
    );
    // Built against the previous interface: refused, with what to do about it.
    assert!(line("13-old.wasm").contains("must be rebuilt"), "{err}");
    assert!(line("14-audit.toml").contains("10.0.0.0/99"), "{err}");
    assert!(line("15-map.toml").contains("login"), "{err}");
    assert!(
        line("16-orphan.toml").contains("no 16-orphan.wasm"),
        "{err}"
    );

    let json = portcullis()
        .args(["policy", "check", "--json"])
        .arg(dir.path())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["errors"].as_array().unwrap().len(), 7, "{report:#}");
}

fn request(email: &str) -> DecisionRequest {
    DecisionRequest {
        session_id: "test".into(),
        email: email.into(),
        groups: vec![],
        authentication: Authentication::PublicKey("SHA256:test".into()),
        source: "127.0.0.1:50000".parse::<SocketAddr>().unwrap(),
        target_host: "10.0.0.5".into(),
        target_ip: Some("10.0.0.5".parse().unwrap()),
        target_canonical: None,
        target_port: 22,
        login: email.split('@').next().unwrap().into(),
        now: SystemTime::now(),
        client_version: "SSH-2.0-test".into(),
    }
}

fn hostile_engine() -> (PolicyDir, PolicyEngine) {
    let dir = PolicyDir::new();
    dir.module("10-hostile.wasm", "hostile")
        .module("90-default-principal.wasm", "default_principal");
    let limits = Limits {
        timeout: Duration::from_millis(100),
        memory_bytes: 64 << 20,
        idle_instances: 4,
        ..Limits::default()
    };
    let engine = PolicyEngine::new(dir.path(), limits).unwrap();
    (dir, engine)
}

#[test]
fn hostile_guests_block_with_a_reason_naming_the_module() {
    let (_dir, engine) = hostile_engine();
    let set = engine.current();
    let cases = [
        ("loop@example.com", "ran past the time limit of 100ms"),
        ("alloc@example.com", "exceeded the memory limit of 64 MiB"),
        ("trap@example.com", "panicked at hostile/src/lib.rs"),
        ("files@example.com", "which policies may not use"),
        ("badlogin@example.com", "invalid login"),
        ("nologin@example.com", "granted no login"),
        ("bigreason@example.com", "more than 64 KiB at once"),
        ("manylogins@example.com", "more than 64 KiB at once"),
        ("biglog@example.com", "more than 64 KiB at once"),
        ("toomany@example.com", "300 logins (at most 256)"),
    ];
    for (email, expected) in cases {
        let e = set.decide(&request(email));
        assert_eq!(e.action, Action::Block, "{email}: {e:?}");
        assert_eq!(
            e.module.as_deref(),
            Some("10-hostile.wasm"),
            "{email}: {e:?}"
        );
        assert!(
            e.reason.contains(expected),
            "{email}: {:?} lacks {expected:?}",
            e.reason
        );
        // The host keeps serving: the same set decides a normal user right after.
        let ok = set.decide(&request("jdoe@example.com"));
        assert!(ok.permits_login("jdoe"), "after {email}: {ok:?}");
    }
    let e = set.decide(&request("escape@example.com"));
    assert_eq!(e.action, Action::Block);
    assert!(!e.reason.chars().any(char::is_control), "{:?}", e.reason);
    assert!(e.reason.contains("gotcha"));
}

#[test]
fn a_looping_guest_does_not_stall_other_decisions() {
    let (_dir, engine) = hostile_engine();
    let set = engine.current();
    let looping = {
        let set = Arc::clone(&set);
        std::thread::spawn(move || {
            (0..3)
                .map(|_| set.decide(&request("loop@example.com")).action)
                .collect::<Vec<_>>()
        })
    };
    let mut decided = 0;
    while !looping.is_finished() || decided < 100 {
        assert!(
            set.decide(&request("jdoe@example.com"))
                .permits_login("jdoe")
        );
        decided += 1;
    }
    assert_eq!(looping.join().unwrap(), vec![Action::Block; 3]);
}

async fn wait_for(
    engine: &PolicyEngine,
    within: Duration,
    what: &str,
    pred: impl Fn(&portcullis::policy::Evaluation) -> bool,
) {
    let start = Instant::now();
    loop {
        let e = engine.current().decide(&request("carol@example.com"));
        if pred(&e) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{what} did not happen within {within:?}; last decision {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_adds_rejects_and_removes_modules() {
    let dir = PolicyDir::new();
    dir.module("90-default-principal.wasm", "default_principal");
    let engine = Arc::new(PolicyEngine::new(dir.path(), Limits::default()).unwrap());
    let _watch =
        portcullis::policy::watch(Arc::clone(&engine), Duration::from_millis(100)).unwrap();
    assert!(
        engine
            .current()
            .decide(&request("carol@example.com"))
            .permits_login("carol")
    );

    // A new module takes effect.
    dir.file(
        "10-conditions.toml",
        b"allowed_sources = [\"10.0.0.0/8\"]\n",
    )
    .module("10-conditions.wasm", "conditions");
    wait_for(
        &engine,
        Duration::from_secs(2),
        "adding 10-conditions.wasm",
        |e| e.action == Action::Block && e.module.as_deref() == Some("10-conditions.wasm"),
    )
    .await;
    let generation = engine.current().generation();

    // A broken module is rejected and the previous set stays in force.
    dir.file("15-broken.wasm", b"\0asm garbage");
    let err = engine.reload().unwrap_err().to_string();
    assert!(err.contains("15-broken.wasm"), "{err}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let set = engine.current();
    assert_eq!(
        set.generation(),
        generation,
        "the watcher must not swap in a broken set"
    );
    assert_eq!(
        set.names(),
        ["10-conditions.wasm", "90-default-principal.wasm"]
    );
    assert_eq!(
        set.decide(&request("carol@example.com")).action,
        Action::Block
    );

    // Deleting modules stops them deciding.
    dir.remove("15-broken.wasm")
        .remove("10-conditions.wasm")
        .remove("10-conditions.toml");
    wait_for(
        &engine,
        Duration::from_secs(2),
        "removing 10-conditions.wasm",
        |e| e.permits_login("carol"),
    )
    .await;
    assert_eq!(engine.current().names(), ["90-default-principal.wasm"]);
}

#[test]
fn a_running_session_keeps_the_set_that_decided_it() {
    let dir = PolicyDir::new();
    dir.module("90-default-principal.wasm", "default_principal");
    let engine = PolicyEngine::new(dir.path(), Limits::default()).unwrap();
    let session_set = engine.current();
    dir.file("10-conditions.toml", b"deny_subsystems = [\"sftp\"]\n")
        .module("10-conditions.wasm", "conditions");
    engine.reload().unwrap();
    let req = request("carol@example.com");
    let decision = session_set.decide(&req);
    let sftp = portcullis::policy::ChannelRequest::Subsystem {
        name: "sftp".into(),
    };
    assert!(
        session_set.check_channel(&req, &decision, &sftp).allowed,
        "old snapshot"
    );
    assert!(
        !engine
            .current()
            .check_channel(&req, &decision, &sftp)
            .allowed,
        "new snapshot"
    );
}

#[test]
fn policy_macro_misuse_says_what_to_write() {
    let root = common::root();
    let out = common::cargo()
        .args([
            "check",
            "--quiet",
            "--message-format",
            "short",
            "--manifest-path",
        ])
        .arg(root.join("tests/macro-misuse/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target/misuse"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the misuse crate must not compile");
    let err = String::from_utf8_lossy(&out.stderr);
    for (line, expected) in [
        (
            7,
            "`#[policy]` goes on `fn decide(request: &ConnectionRequest) -> Decision`",
        ),
        (14, "a policy function cannot be `async`; remove `async`"),
        (23, "add `-> Decision`"),
        (
            32,
            "must be taken by shared reference, e.g. `&ConnectionRequest`",
        ),
        (40, "`#[policy]` takes no arguments"),
        (52, "needs `impl Policy for MyPolicy { ... }`"),
        (63, "`#[policy]` goes on"),
    ] {
        let at = format!("src/lib.rs:{line}:");
        assert!(
            err.lines().any(|l| l.contains(&at) && l.contains(expected)),
            "no error at {at} saying {expected:?}:\n{err}"
        );
    }
}

/// The example set as scripts/build-policies installs it decides what its shipped test
/// table says (examples/policies/tests/examples.toml: the username recipes among them).
#[test]
fn the_example_policies_pass_their_shipped_test_table() {
    let dir = PolicyDir::new();
    dir.module("10-conditions.wasm", "conditions")
        .module("20-network-audit.wasm", "network_audit")
        .module("30-username-map.wasm", "username_map")
        .module("90-default-principal.wasm", "default_principal");
    for name in [
        "10-conditions.toml",
        "20-network-audit.toml",
        "30-username-map.toml",
    ] {
        dir.file(
            name,
            &std::fs::read(common::root().join("examples/policies").join(name)).unwrap(),
        );
    }
    let out = portcullis()
        .args(["policy", "test", "--json"])
        .arg(dir.path())
        .arg(common::root().join("examples/policies/tests/examples.toml"))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["failed"], 0);
    assert_eq!(report["passed"], 10);
    // A case that fails says what was expected, what came and which module decided,
    // and the command exits non-zero.
    let elsewhere = tempfile::tempdir().unwrap();
    let bad = elsewhere.path().join("bad-cases.toml");
    std::fs::write(
        &bad,
        "[[case]]\nname = \"wrong on purpose\"\nsource = \"10.1.1.1\"\ntarget = \"172.16.0.5\"\n\
         login = \"johndoe\"\nexpect = { action = \"block\", principals = [\"root\"] }\n",
    )
    .unwrap();
    let out = portcullis()
        .args(["policy", "test"])
        .arg(dir.path())
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL  wrong on purpose"), "{text}");
    assert!(text.contains("action: expected block, got allow"), "{text}");
    assert!(
        text.contains("principals: expected [\"root\"], got [\"johndoe\"]"),
        "{text}"
    );
    assert!(text.contains("decided by 30-username-map.wasm"), "{text}");
}
