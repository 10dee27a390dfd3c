//! The policy author's kit end to end: `policy new` -> `cargo test` (native) -> build
//! -> `policy test` -> a running proxy decides a real ssh connection with it; signed
//! modules (OpenSSH signatures) loaded, and every bad signature refused while the
//! previous set keeps deciding; per-module metrics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::common;
use super::{Lab, OutputExt, ensure_user};
use crate::lifecycle::http;

/// Where scaffolded crates build (shared between runs, so their dependencies build once).
fn scaffold_target() -> PathBuf {
    common::root().join("target/scaffold")
}

fn cargo_in(dir: &Path, args: &[&str]) -> std::process::Output {
    common::cargo()
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", scaffold_target())
        .output()
        .unwrap()
}

/// Waits until the proxy's log contains `text`.
fn wait_log(lab: &Lab, text: &str) {
    let start = Instant::now();
    while !lab.proxy_log().contains(text) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the proxy never logged {text:?}:\n{}",
            lab.proxy_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_scaffolded_policy_goes_from_new_to_deciding_a_real_session() {
    let work = tempfile::tempdir().unwrap();
    let krate = work.path().join("sre-access");
    common::portcullis()
        .args(["policy", "new"])
        .arg(&krate)
        .args(["--with-config", "--channel-checks"])
        .output()
        .unwrap()
        .success_or_panic("policy new");
    // The author's native unit tests pass as generated.
    let tested = cargo_in(&krate, &["test"]).success_or_panic("cargo test of the scaffold");
    let text = String::from_utf8_lossy(&tested.stdout);
    assert!(text.contains("5 passed"), "{text}");
    // It builds to a component as it stands.
    cargo_in(&krate, &["build", "--target", "wasm32-wasip2", "--release"])
        .success_or_panic("cargo build of the scaffold");
    let wasm =
        std::fs::read(scaffold_target().join("wasm32-wasip2/release/sre_access.wasm")).unwrap();

    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &["sre"])]);
    let metrics = common::lab::free_port();
    lab.add_config(&format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"));
    lab.policies.file("50-sre-access.wasm", &wasm).file(
        "50-sre-access.toml",
        &std::fs::read(krate.join("sre-access.toml")).unwrap(),
    );
    // Its test table passes against the built module, in the real engine.
    let report = common::portcullis()
        .args(["policy", "test", "--json"])
        .arg(lab.policies.path())
        .arg(krate.join("tests/cases.toml"))
        .output()
        .unwrap()
        .success_or_panic("policy test");
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        (report["passed"].as_u64(), report["failed"].as_u64()),
        (Some(3), Some(0)),
        "{report}"
    );

    // A running proxy decides real connections with it.
    lab.start();
    lab.ssh_jump("jdoe", "jdoe", "echo decided-by-the-scaffold")
        .success_or_panic("ssh as jdoe");
    let root = lab.ssh_jump("jdoe", "root", "true");
    assert!(!root.status.success());
    let sftp = lab.file_tool("sftp", "jdoe", &["-b", "-", "jdoe@127.0.0.1"], Some("ls\n"));
    assert!(!sftp.status.success(), "sftp went through");
    let decisions: Vec<serde_json::Value> = lab.wait_sessions(2);
    assert!(
        decisions
            .iter()
            .any(|s| s["policy"] == "50-sre-access.wasm" && s["action"] == "allow")
    );
    // Its figures, per module.
    let text = http(metrics, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let count = |outcome: &str| -> f64 {
        let key = format!(
            "portcullis_policy_module_calls_total{{module=\"50-sre-access.wasm\",outcome=\"{outcome}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
    };
    assert!(count("allow") >= 2.0, "{text}");
    assert!(count("block") >= 1.0, "{text}");
    assert!(count("channel_check") >= 1.0, "{text}");
    assert!(
        text.contains("portcullis_policy_module_call_seconds_count{module=\"50-sre-access.wasm\"}")
    );
    assert!(text.contains(
        "portcullis_policy_module_memory_high_water_bytes{module=\"50-sre-access.wasm\"}"
    ));
}

/// Signs `file` (writing `file.sig`) with `key` in `namespace`.
fn sign(key: &Path, namespace: &str, file: &Path) {
    let _ = std::fs::remove_file(format!("{}.sig", file.display()));
    Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", namespace, "-f"])
        .arg(key)
        .arg(file)
        .output()
        .unwrap()
        .success_or_panic("ssh-keygen -Y sign");
}

#[test]
fn signed_modules_load_and_every_bad_signature_is_refused_while_the_old_set_decides() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    let keys = lab.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    common::lab::keygen(&keys.join("ops"), "ops");
    common::lab::keygen(&keys.join("stranger"), "stranger");
    let ops_pub = std::fs::read_to_string(keys.join("ops.pub")).unwrap();
    let ops_pub: Vec<&str> = ops_pub.split_whitespace().take(2).collect();
    std::fs::write(
        lab.path().join("allowed_signers"),
        format!(
            "ops@example.com namespaces=\"portcullis-policy\" {}\n",
            ops_pub.join(" ")
        ),
    )
    .unwrap();
    let config = lab.path().join("portcullis.toml");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[policy]\n",
        "[policy]\nallowed_signers = \"allowed_signers\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();

    // A module signed by an allowed signer loads, and decides.
    let staging = lab.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let wasm_dir = common::wasm_dir();
    let stage = |name: &str, crate_name: &str| -> PathBuf {
        let p = staging.join(name);
        std::fs::copy(wasm_dir.join(format!("{crate_name}.wasm")), &p).unwrap();
        p
    };
    let principal = stage("90-default-principal.wasm", "default_principal");
    sign(&keys.join("ops"), "portcullis-policy", &principal);
    let dir = lab.policies.path().to_path_buf();
    std::fs::copy(
        format!("{}.sig", principal.display()),
        dir.join("90-default-principal.wasm.sig"),
    )
    .unwrap();
    std::fs::copy(&principal, dir.join("90-default-principal.wasm")).unwrap();
    lab.start();
    lab.ssh_jump("jdoe", "jdoe", "true")
        .success_or_panic("signed set");

    // Each bad module is refused with its reason; the old set keeps deciding. The
    // module would audit every session with command logging, which this proxy (no
    // recording key) refuses: sessions going through prove it is not in force.
    let audit_config = b"[[rule]]\ndestinations = [\"127.0.0.1\"]\ncommand_logging = true\n";
    let net = stage("10-net.wasm", "network_audit");
    let net_config = staging.join("10-net.toml");
    std::fs::write(&net_config, audit_config).unwrap();
    let install = |with_sigs: bool| {
        for f in [
            "10-net.wasm",
            "10-net.toml",
            "10-net.wasm.sig",
            "10-net.toml.sig",
        ] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        if with_sigs {
            for f in ["10-net.wasm.sig", "10-net.toml.sig"] {
                if staging.join(f).exists() {
                    std::fs::copy(staging.join(f), dir.join(f)).unwrap();
                }
            }
        }
        std::fs::copy(&net_config, dir.join("10-net.toml")).unwrap();
        std::fs::copy(&net, dir.join("10-net.wasm")).unwrap();
    };
    let refused = |lab: &Lab, reason: &str| {
        wait_log(lab, reason);
        lab.ssh_jump("jdoe", "jdoe", "true")
            .success_or_panic("the old set after a refused module");
    };
    // Unsigned.
    install(false);
    refused(&lab, "10-net.wasm: refused: not signed");
    // Tampered: one byte changed after signing.
    sign(&keys.join("ops"), "portcullis-policy", &net);
    sign(&keys.join("ops"), "portcullis-policy", &net_config);
    let mut bytes = std::fs::read(&net).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&net, &bytes).unwrap();
    install(true);
    refused(&lab, "10-net.wasm: refused: the signature of");
    bytes[last] ^= 1;
    std::fs::write(&net, &bytes).unwrap();
    // Signed for another namespace.
    sign(&keys.join("ops"), "file", &net);
    install(true);
    refused(&lab, "signed for the namespace");
    // Signed by a key that is not an allowed signer.
    sign(&keys.join("stranger"), "portcullis-policy", &net);
    install(true);
    refused(&lab, "signed by a key not in");
    // A signed module whose configuration changed after signing.
    sign(&keys.join("ops"), "portcullis-policy", &net);
    std::fs::write(
        &net_config,
        [audit_config.as_slice(), b"reason = \"changed\"\n"].concat(),
    )
    .unwrap();
    install(true);
    refused(&lab, "10-net.toml: refused: the signature of");
    let log = lab.proxy_log();
    assert!(
        log.matches("the previous policy set stays in force")
            .count()
            >= 5,
        "{log}"
    );

    // Signed properly, it is put in force: sessions are now audited with command
    // logging, which this proxy cannot record, so they are refused.
    sign(&keys.join("ops"), "portcullis-policy", &net_config);
    install(true);
    let start = Instant::now();
    loop {
        if !lab.ssh_jump("jdoe", "jdoe", "true").status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the signed module was never loaded:\n{}",
            lab.proxy_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // `policy check --allowed-signers` says the same offline.
    common::portcullis()
        .args(["policy", "check", "--allowed-signers"])
        .arg(lab.path().join("allowed_signers"))
        .arg(&dir)
        .output()
        .unwrap()
        .success_or_panic("policy check --allowed-signers");
    std::fs::remove_file(dir.join("10-net.wasm.sig")).unwrap();
    let out = common::portcullis()
        .args(["policy", "check", "--allowed-signers"])
        .arg(lab.path().join("allowed_signers"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed"));
}
