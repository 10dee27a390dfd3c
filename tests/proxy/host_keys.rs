//! Target host keys and the CA: pinning, changed keys, CA rotation, host certificates.

use super::*;

#[test]
fn a_changed_target_host_key_is_refused() {
    ensure_user("jdoe");
    let mut lab = default_lab(&[("jdoe@example.com", &[])]);
    lab.ssh_jump("jdoe", "jdoe", "true")
        .success_or_panic("first use pins the key");
    assert!(lab.known_targets().exists());
    // The target comes back with another host key.
    let key = lab.path().join("target/ssh_host_ed25519_key");
    std::fs::remove_file(&key).unwrap();
    std::fs::remove_file(key.with_extension("pub")).unwrap();
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    lab.start_sshd();
    let out = lab.ssh_jump("jdoe", "jdoe", "echo should-not-run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr_text().contains("HOST KEY CHANGED"),
        "{}",
        out.stderr_text()
    );
    // The user is told what happened, not where the proxy keeps its pins: the
    // operator's log and the session log have the file and line.
    let pins = lab.known_targets().display().to_string();
    assert!(!out.stderr_text().contains(&pins), "{}", out.stderr_text());
    assert!(lab.proxy_log().contains("HOST KEY CHANGED"));
    assert!(lab.proxy_log().contains(&pins));
    let sessions = lab.wait_sessions(2);
    assert_eq!(sessions[1]["action"], "refused");
    assert!(
        sessions[1]["close_reason"]
            .as_str()
            .unwrap()
            .contains("HOST KEY CHANGED")
    );
}

#[test]
fn sessions_keep_working_through_a_ca_rotation() {
    ensure_user("jdoe");
    let mut lab = default_lab(&[("jdoe@example.com", &[])]);
    lab.ssh_jump("jdoe", "jdoe", "true")
        .success_or_panic("before rotation");
    lab.portcullis(&["ca", "rotate"])
        .success_or_panic("ca rotate");
    lab.trust_ca();
    let trusted = std::fs::read_to_string(lab.path().join("target/ca.pub")).unwrap();
    assert_eq!(
        trusted.lines().count(),
        2,
        "targets trust old and new: {trusted}"
    );
    lab.ssh_jump("jdoe", "jdoe", "true")
        .success_or_panic("old key still signing");
    // A session that runs across what follows.
    let (mut running, _) = lab.spawn_jump_until(
        "jdoe",
        "jdoe",
        "echo started; sleep 3; echo still-here",
        "started",
    );
    // Retired before the proxy is told: it still signs with the old key, which the
    // targets no longer trust.
    lab.portcullis(&["ca", "retire"])
        .success_or_panic("ca retire");
    lab.trust_ca();
    assert!(
        !lab.ssh_jump("jdoe", "jdoe", "true").status.success(),
        "the target refuses the retired key"
    );
    // SIGHUP puts the new key in force without a restart.
    lab.signal_proxy("HUP");
    let start = std::time::Instant::now();
    while !lab.ssh_jump("jdoe", "jdoe", "true").status.success() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "SIGHUP did not reload the CA: {}",
            lab.proxy_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(lab.proxy_log().contains("CA reloaded"));
    let mut rest = String::new();
    std::io::Read::read_to_string(running.stdout.as_mut().unwrap(), &mut rest).unwrap();
    assert!(
        running.wait().unwrap().success() && rest.contains("still-here"),
        "the running session carried on through the reload: {rest}"
    );
    // A proxy restarted on the rotated CA signs with the new key too.
    lab.start_proxy();
    lab.ssh_jump("jdoe", "jdoe", "true")
        .success_or_panic("after a restart");
    let ca_init_again = lab.portcullis(&["ca", "init"]);
    assert!(!ca_init_again.status.success());
    assert!(ca_init_again.stderr_text().contains("already exists"));
}

#[test]
fn targets_with_a_host_certificate_from_a_listed_ca_need_no_pinning() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    lab.add_config("[upstream]\nhost_key_check = \"strict\"\n");
    let p = lab.path().to_path_buf();
    let host_ca = p.join("hostca");
    common::lab::keygen(&host_ca, "host CA");
    let sign_for = |principal: &str| {
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-h", "-I", "target", "-s"])
            .arg(&host_ca)
            .args(["-n", principal])
            .arg(p.join("target/ssh_host_ed25519_key.pub"))
            .output()
            .unwrap()
            .success_or_panic("sign the host key");
    };
    sign_for("127.0.0.1");
    lab.sshd_extra = format!(
        "HostCertificate {}\n",
        p.join("target/ssh_host_ed25519_key-cert.pub").display()
    );
    lab.start();
    let refused_with = |lab: &Lab, reason: &str| {
        let out = lab.ssh_jump("jdoe", "jdoe", "true");
        assert!(!out.status.success(), "accepted, expected: {reason}");
        let err = out.stderr_text();
        assert!(err.contains(reason), "{err}");
    };

    // Strict and nothing pinned: refused.
    refused_with(&lab, "host_key_check is strict");

    // The host CA listed for the target: trusted by its certificate, nothing pinned.
    let ca_pub = std::fs::read_to_string(p.join("hostca.pub")).unwrap();
    let ca_line = format!("@cert-authority [127.0.0.1]:*,127.0.0.1 {}", ca_pub.trim());
    std::fs::write(lab.known_targets(), format!("{ca_line}\n")).unwrap();
    lab.ssh_jump("jdoe", "jdoe", "echo via-cert")
        .success_or_panic("host certificate");
    assert_eq!(
        std::fs::read_to_string(lab.known_targets()).unwrap(),
        format!("{ca_line}\n"),
        "a trusted certificate pins nothing"
    );

    // A certificate for another name is refused, saying why.
    sign_for("db.example.com");
    lab.start_sshd();
    refused_with(&lab, "127.0.0.1 is not among its principals");

    // A revoked CA is refused even with a good certificate.
    sign_for("127.0.0.1");
    lab.start_sshd();
    lab.ssh_jump("jdoe", "jdoe", "true")
        .success_or_panic("good certificate again");
    std::fs::write(
        lab.known_targets(),
        format!("{ca_line}\n@revoked * {}\n", ca_pub.trim()),
    )
    .unwrap();
    refused_with(&lab, "its CA is revoked");
}

/// `ssh -p PROXY 'LOGIN%HOST:SSHD_PORT@127.0.0.1' COMMAND`: the username form with the
/// target spelled as `host`.
fn ssh_to(lab: &Lab, host: &str, command: &str) -> std::process::Output {
    let dest = format!("jdoe%{host}:{}@127.0.0.1", lab.sshd_port);
    lab.ssh("jdoe", &["-p", &lab.proxy_port.to_string(), &dest, command])
}

/// Replaces the target's host key with a new key of type `kind` and restarts sshd.
fn new_target_key(lab: &mut Lab, kind: &str) {
    let key = lab.path().join("target/ssh_host_ed25519_key");
    std::fs::remove_file(&key).unwrap();
    std::fs::remove_file(key.with_extension("pub")).unwrap();
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    lab.start_sshd();
}

#[test]
fn a_key_of_another_type_is_a_changed_key_under_every_spelling_of_the_target() {
    ensure_user("jdoe");
    let mut lab = default_lab(&[("jdoe@example.com", &[])]);
    // First use by name: the user is told, and the key is pinned under the name and
    // the address it resolved to.
    let first = ssh_to(&lab, "LocalHost", "echo first");
    assert_eq!(first.stdout_text(), "first\n", "{}", first.stderr_text());
    assert!(
        first
            .stderr_text()
            .contains("learned the host key of localhost, 127.0.0.1"),
        "{}",
        first.stderr_text()
    );
    let pins = std::fs::read_to_string(lab.known_targets()).unwrap();
    let port = lab.sshd_port;
    assert!(
        pins.starts_with(&format!(
            "[localhost]:{port},[127.0.0.1]:{port} ssh-ed25519 "
        )),
        "{pins}"
    );
    // Known now: nothing is learned again, by the address either.
    let again = ssh_to(&lab, "127.0.0.1", "echo again");
    assert_eq!(again.stdout_text(), "again\n", "{}", again.stderr_text());
    assert!(
        !again.stderr_text().contains("learned"),
        "{}",
        again.stderr_text()
    );

    // A machine in the middle answers with an ECDSA key where Ed25519 is pinned.
    new_target_key(&mut lab, "ecdsa");
    for spelling in ["127.0.0.1", "localhost", "LOCALHOST", "[::ffff:127.0.0.1]"] {
        let out = ssh_to(&lab, spelling, "echo should-not-run");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{spelling}: {}",
            out.stderr_text()
        );
        assert!(
            out.stderr_text().contains("HOST KEY CHANGED"),
            "{spelling}: {}",
            out.stderr_text()
        );
    }
    assert_eq!(
        std::fs::read_to_string(lab.known_targets()).unwrap(),
        pins,
        "nothing was learned"
    );
}

#[test]
fn other_spellings_of_an_address_and_names_that_could_plant_lines_are_refused() {
    ensure_user("jdoe");
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    for (spelling, why) in [
        ("127.1", "is not an IP address: write it in full"),
        ("2130706433", "is not an IP address: write it in full"),
        ("0x7f000001", "is not an IP address: write it in full"),
        (
            "127.0.0.1,evil.example",
            "is not a host name or an IP address",
        ),
        ("db_1", "is not a host name or an IP address"),
    ] {
        let out = ssh_to(&lab, spelling, "echo should-not-run");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{spelling}: {}",
            out.stderr_text()
        );
        assert!(
            out.stderr_text().contains(why),
            "{spelling}: {}",
            out.stderr_text()
        );
    }
    assert!(!lab.known_targets().exists(), "nothing was pinned");
    assert!(!lab.sshd_log().contains("Accepted"), "{}", lab.sshd_log());
}

#[test]
fn a_target_covered_by_a_host_ca_never_has_a_plain_key_learned() {
    ensure_user("jdoe");
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    // The operator lists a host CA for every target; this one has no certificate.
    let p = lab.path();
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "hostca", "-f"])
        .arg(p.join("hostca"))
        .status()
        .unwrap();
    assert!(status.success());
    let ca_pub = std::fs::read_to_string(p.join("hostca.pub")).unwrap();
    let line = format!("@cert-authority * {}\n", ca_pub.trim());
    std::fs::write(lab.known_targets(), &line).unwrap();
    let out = lab.ssh_jump("jdoe", "jdoe", "echo should-not-run");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr_text());
    assert_eq!(
        std::fs::read_to_string(lab.known_targets()).unwrap(),
        line,
        "no plain key was learned"
    );
    assert!(!lab.sshd_log().contains("Accepted"), "{}", lab.sshd_log());
}
