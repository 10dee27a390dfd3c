//! The proxy end to end: the real OpenSSH client (`ssh`, `scp`, `sftp`) through the real
//! `portcullis serve` to a real `sshd` on a loopback port that trusts the gateway CA,
//! with real policy components built from source.
//!
//! Needs root (test accounts on this machine) and openssh-server (scripts/setup).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::lab::{Lab, OutputExt, ensure_user};

fn default_lab(users: &[(&str, &[&str])]) -> Lab {
    let mut lab = Lab::new(users);
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    lab.start();
    lab
}

#[test]
fn proxyjump_exec_returns_output_and_exit_status_and_is_logged() {
    ensure_user("jdoe");
    let lab = default_lab(&[("jdoe@example.com", &["sre"])]);
    let out = lab.ssh_jump("jdoe", "jdoe", "echo out-$((6*7)); echo err >&2; exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "out-42\n");
    assert!(out.stderr_text().contains("err"));
    let out = lab
        .ssh_jump("jdoe", "jdoe", "id -un")
        .success_or_panic("id");
    assert_eq!(out.stdout_text(), "jdoe\n");
    // A program that closes its output and runs on: the proxy holds the target's EOF
    // for the exit status only briefly, then the session still ends with the status.
    let out = lab.ssh_jump("jdoe", "jdoe", "echo early; exec >&- 2>&-; sleep 2; exit 5");
    assert_eq!(out.stdout_text(), "early\n");
    assert_eq!(out.status.code(), Some(5), "{}", out.stderr_text());

    let sessions = lab.wait_sessions(3);
    let s = sessions
        .iter()
        .find(|s| s["channels"][0]["exit_status"] == 7)
        .expect("the exit-7 session");
    assert_eq!(s["email"], "jdoe@example.com");
    assert_eq!(s["groups"], serde_json::json!(["sre"]));
    assert_eq!(s["via"], "proxyjump");
    assert_eq!(s["target_host"], "127.0.0.1");
    assert_eq!(s["target_port"], lab.sshd_port);
    assert_eq!(s["login"], "jdoe");
    assert_eq!(s["policy"], "90-default-principal.wasm");
    assert_eq!(s["action"], "allow");
    assert_eq!(s["command_logging"], false);
    assert_eq!(s["channels"][0]["kind"], "exec");
    assert_eq!(s["channels"][0]["exit_status"], 7);
    assert!(s["bytes_to_client"].as_u64().unwrap() >= 7);
    assert!(s["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    let text = std::fs::read_to_string(lab.path().join("sessions.jsonl")).unwrap();
    assert!(
        !text.contains("echo out"),
        "no command text in the session log"
    );

    // The target saw a certificate from the gateway CA, with the session in its key id.
    let log = lab.sshd_log();
    assert!(
        log.contains("Accepted publickey for jdoe") && log.contains("portcullis:jdoe@example.com"),
        "{log}"
    );
}

#[test]
fn the_username_form_works_like_proxyjump() {
    ensure_user("jdoe");
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    let out = lab.ssh_username_form("jdoe", "jdoe", "echo via-username; exit 3");
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "via-username\n");
    assert_eq!(lab.wait_sessions(1)[0]["via"], "username");
}

#[test]
fn an_interactive_pty_session_works() {
    ensure_user("jdoe");
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    let out = lab.ssh_pty("jdoe", "jdoe", "tty; echo answer-$((6*7)); exit 5\n");
    let text = out.stdout_text();
    assert_eq!(out.status.code(), Some(5), "{text}{}", out.stderr_text());
    assert!(
        text.contains("/dev/pts/"),
        "a terminal was allocated: {text}"
    );
    assert!(text.contains("answer-42"), "{text}");
    let s = &lab.wait_sessions(1)[0];
    assert_eq!(s["channels"][0]["kind"], "shell");
}

#[test]
fn scp_and_sftp_move_files_intact() {
    ensure_user("jdoe");
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    let data: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let local = lab.path().join("upload.bin");
    std::fs::write(&local, &data).unwrap();
    let remote = format!("/tmp/portcullis-e2e-{}.bin", lab.sshd_port);
    let dest = format!("jdoe@127.0.0.1:{remote}");
    lab.file_tool("scp", "jdoe", &[local.to_str().unwrap(), &dest], None)
        .success_or_panic("scp upload");
    let back = lab.path().join("download.bin");
    lab.file_tool("scp", "jdoe", &[&dest, back.to_str().unwrap()], None)
        .success_or_panic("scp download");
    assert!(
        std::fs::read(&back).unwrap() == data,
        "scp round trip differs"
    );

    let got = lab.path().join("sftp.bin");
    let script = format!("ls {remote}\nget {remote} {}\nrm {remote}\n", got.display());
    let out = lab
        .file_tool(
            "sftp",
            "jdoe",
            &["-b", "-", "jdoe@127.0.0.1"],
            Some(&script),
        )
        .success_or_panic("sftp");
    assert!(out.stdout_text().contains(&remote), "{}", out.stdout_text());
    assert!(
        std::fs::read(&got).unwrap() == data,
        "sftp download differs"
    );
    let sessions = lab.wait_sessions(3);
    assert!(
        sessions
            .iter()
            .any(|s| s["channels"][0]["kind"] == "subsystem:sftp")
    );
    assert!(
        sessions
            .iter()
            .any(|s| s["bytes_from_client"].as_u64().unwrap() >= 6_000_000)
    );
    assert!(
        sessions
            .iter()
            .any(|s| s["bytes_to_client"].as_u64().unwrap() >= 6_000_000)
    );
}

#[test]
fn username_mapping_cases_work_against_sshd() {
    for u in ["jdoe", "johndoe", "vmuser", "carol"] {
        ensure_user(u);
    }
    let mut lab = Lab::new(&[
        ("jdoe@example.com", &[]),
        ("alice@example.com", &[]),
        ("bob@example.com", &[]),
        ("carol@example.com", &["admins"]),
    ]);
    lab.policies
        .module("30-username-map.wasm", "username_map")
        .file(
            "30-username-map.toml",
            b"[[map]]\nemails = [\"jdoe@example.com\"]\nlogins = [\"johndoe\"]\n\n\
              [[map]]\nemails = [\"alice@example.com\", \"bob@example.com\"]\nlogins = [\"vmuser\"]\n\n\
              [[map]]\ngroups = [\"admins\"]\nlogins = [\"*\"]\n",
        )
        .module("90-default-principal.wasm", "default_principal");
    lab.start();
    let who = |user: &str, login: &str| lab.ssh_jump(user, login, "id -un");
    assert_eq!(
        who("jdoe", "johndoe")
            .success_or_panic("jdoe as johndoe")
            .stdout_text(),
        "johndoe\n"
    );
    let refused = who("jdoe", "jdoe");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused.stderr_text().contains("not permitted"),
        "{}",
        refused.stderr_text()
    );
    assert_eq!(
        who("alice", "vmuser")
            .success_or_panic("alice")
            .stdout_text(),
        "vmuser\n"
    );
    assert_eq!(
        who("bob", "vmuser").success_or_panic("bob").stdout_text(),
        "vmuser\n"
    );
    assert_eq!(
        who("carol", "vmuser")
            .success_or_panic("carol any")
            .stdout_text(),
        "vmuser\n"
    );
    assert_eq!(
        who("carol", "jdoe")
            .success_or_panic("carol any")
            .stdout_text(),
        "jdoe\n"
    );
    let actions: Vec<String> = lab
        .wait_sessions(6)
        .iter()
        .map(|s| s["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "refused").count(),
        1,
        "{actions:?}"
    );
}

#[test]
fn a_blocked_connection_never_reaches_the_target_and_says_why() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.policies
        .module("10-conditions.wasm", "conditions")
        .file(
            "10-conditions.toml",
            b"allowed_sources = [\"10.0.0.0/8\"]\n",
        )
        .module("90-default-principal.wasm", "default_principal");
    lab.start();
    let out = lab.ssh_jump("jdoe", "jdoe", "echo should-not-run");
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stdout_text().contains("should-not-run"));
    let err = out.stderr_text();
    assert!(
        err.contains("blocked by 10-conditions.wasm") && err.contains("127.0.0.1"),
        "{err}"
    );
    assert!(
        !lab.known_targets().exists(),
        "the proxy must not have connected to the target"
    );
    assert!(!lab.sshd_log().contains("Accepted"), "{}", lab.sshd_log());
    let s = &lab.wait_sessions(1)[0];
    assert_eq!(s["action"], "block");
    assert_eq!(s["policy"], "10-conditions.wasm");
}

#[test]
fn sftp_can_be_refused_by_a_channel_policy() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.policies
        .module("10-conditions.wasm", "conditions")
        .file("10-conditions.toml", b"deny_subsystems = [\"sftp\"]\n")
        .module("90-default-principal.wasm", "default_principal");
    lab.start();
    let out = lab.file_tool(
        "sftp",
        "jdoe",
        &["-b", "-", "jdoe@127.0.0.1"],
        Some("ls /\n"),
    );
    assert!(!out.status.success());
    lab.ssh_jump("jdoe", "jdoe", "true")
        .success_or_panic("exec still allowed");
    let sessions = lab.wait_sessions(2);
    let sftp = sessions
        .iter()
        .map(|s| &s["channels"][0])
        .find(|c| c["kind"] == "subsystem:sftp")
        .unwrap_or_else(|| panic!("no sftp session: {sessions:#?}\n{}", lab.proxy_log()));
    assert_eq!(sftp["kind"], "subsystem:sftp");
    assert_eq!(sftp["allowed"], false);
    assert!(sftp["denied_reason"].as_str().unwrap().contains("sftp"));
}

#[test]
fn an_unknown_key_is_refused() {
    ensure_user("jdoe");
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    let stranger = lab.path().join("client/stranger");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(status.success());
    let out = lab.ssh(
        "stranger",
        &[
            "-p",
            &lab.proxy_port.to_string(),
            &format!("jdoe%127.0.0.1:{}@127.0.0.1", lab.sshd_port),
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        out.stderr_text().contains("Permission denied"),
        "{}",
        out.stderr_text()
    );
    assert!(
        lab.proxy_log().contains("unknown key"),
        "{}",
        lab.proxy_log()
    );
}

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
    assert!(lab.proxy_log().contains("HOST KEY CHANGED"));
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

#[test]
fn environment_the_target_refuses_does_not_fail_the_command() {
    // Debian's ssh_config sends LANG and LC_*; a stock sshd accepts none of them and
    // answers each with a failure, which belongs to the env request, not to exec.
    ensure_user("jdoe");
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    let env = ["-o", "SetEnv=LANG=C.UTF-8 LC_ALL=C"];
    let (sshd_port, proxy_port) = (lab.sshd_port.to_string(), lab.proxy_port.to_string());
    let user_form = format!("jdoe%127.0.0.1:{sshd_port}@127.0.0.1");
    let command = "echo ran; exit 3";
    let jump = [
        "-J",
        "jdoe@portcullis",
        "-p",
        &sshd_port,
        "jdoe@127.0.0.1",
        command,
    ];
    let direct = ["-p", &proxy_port, &user_form, command];
    for rest in [&jump[..], &direct[..]] {
        let args: Vec<&str> = env.iter().chain(rest).copied().collect();
        let out = lab.ssh("jdoe", &args);
        assert_eq!(out.stdout_text(), "ran\n", "{}", out.stderr_text());
        assert_eq!(out.status.code(), Some(3), "{}", out.stderr_text());
    }
    // And for sftp (env, subsystem).
    let out = lab.file_tool(
        "sftp",
        "jdoe",
        &["-o", "SetEnv=LANG=C.UTF-8", "-b", "-", "jdoe@127.0.0.1"],
        Some("pwd\n"),
    );
    assert!(out.status.success(), "{}", out.stderr_text());
    assert!(
        out.stdout_text().contains("/home/jdoe"),
        "{}",
        out.stdout_text()
    );
    // The same for an interactive shell (pty-req, env, shell).
    let out = lab.ssh_pty_with(
        "jdoe",
        "jdoe",
        &["-o", "SetEnv=LANG=C.UTF-8"],
        "echo shell-$((2+3)); exit 5\n",
    );
    assert!(
        out.stdout_text().contains("shell-5"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(out.status.code(), Some(5), "{}", out.stderr_text());
}

#[test]
fn sigterm_stops_accepting_and_drains_running_sessions() {
    use std::io::Read;
    ensure_user("jdoe");
    let mut lab = default_lab(&[("jdoe@example.com", &[])]);
    let (mut child, mut seen) = lab.spawn_jump_until(
        "jdoe",
        "jdoe",
        "echo started; sleep 2; echo drained",
        "started",
    );
    lab.signal_proxy("TERM");
    // New connections are refused while the running session finishes.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let refused = lab.ssh_jump("jdoe", "jdoe", "true");
    assert!(
        !refused.status.success(),
        "a new session was accepted after SIGTERM"
    );
    child.stdout.take().unwrap().read_to_end(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert!(
        String::from_utf8_lossy(&seen).contains("drained"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert!(status.success());
    assert!(
        lab.wait_proxy_exit(std::time::Duration::from_secs(10)),
        "the proxy exits once drained"
    );
    assert!(lab.proxy_log().contains("draining"), "{}", lab.proxy_log());
}

#[test]
fn sighup_reloads_the_users_file() {
    ensure_user("jdoe");
    ensure_user("carol");
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    // carol's key exists but is not listed yet.
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "carol", "-f"])
        .arg(lab.path().join("client/carol"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!lab.ssh_jump("carol", "carol", "true").status.success());
    let key = std::fs::read_to_string(lab.path().join("client/carol.pub")).unwrap();
    let mut users = std::fs::read_to_string(lab.path().join("users.toml")).unwrap();
    users.push_str(&format!(
        "[[user]]\nemail = \"carol@example.com\"\nkeys = [\"{}\"]\n",
        key.trim()
    ));
    std::fs::write(lab.path().join("users.toml"), users).unwrap();
    lab.signal_proxy("HUP");
    let start = std::time::Instant::now();
    loop {
        let out = lab.ssh_jump("carol", "carol", "id -un");
        if out.status.success() {
            assert_eq!(out.stdout_text(), "carol\n");
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "SIGHUP did not reload the users file"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Starts `ssh -N FLAG PORT:127.0.0.1:SSHD_PORT` through the proxy as `user`: `-L`
/// listens on PORT here, `-R` on the target's side (the same machine); either way PORT
/// leads to the target's sshd.
fn ssh_forward(lab: &Lab, user: &str, flag: &str, port: u16) -> std::process::Child {
    std::process::Command::new("ssh")
        .args(lab.client_args(user))
        .args(["-N", "-o", "ExitOnForwardFailure=yes", flag])
        .arg(format!("{port}:127.0.0.1:{}", lab.sshd_port))
        .args([
            "-J",
            &format!("{user}@portcullis"),
            "-p",
            &lab.sshd_port.to_string(),
        ])
        .arg(format!("{user}@127.0.0.1"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until something listens on `port`.
fn wait_listening(port: u16, what: &str) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "{what} did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// jdoe has `permission` (a username-map key: `port_forwarding`, `agent_forwarding`,
/// `x11_forwarding`), carol does not.
fn forwarding_lab(permission: &str) -> Lab {
    ensure_user("jdoe");
    ensure_user("carol");
    let mut lab = Lab::new(&[("jdoe@example.com", &[]), ("carol@example.com", &[])]);
    // The target offers every kind of forwarding; the proxy decides.
    lab.sshd_extra = "X11Forwarding yes\n".into();
    let config = format!(
        "[[map]]\nemails = [\"jdoe@example.com\"]\nlogins = [\"jdoe\"]\n{permission} = true\n\n\
         [[map]]\nemails = [\"carol@example.com\"]\nlogins = [\"carol\"]\n"
    );
    lab.policies
        .module("30-username-map.wasm", "username_map")
        .file("30-username-map.toml", config.as_bytes());
    lab.start();
    lab
}

/// What the far end of a forwarded port says first (an SSH banner), or "" if closed.
fn first_line_through(lport: u16) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", lport)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[test]
fn local_port_forwarding_needs_the_permission() {
    let lab = forwarding_lab("port_forwarding");
    let lport = common::lab::free_port();
    let mut allowed = ssh_forward(&lab, "jdoe", "-L", lport);
    wait_listening(lport, "ssh -L");
    let banner = first_line_through(lport);
    let _ = allowed.kill();
    let _ = allowed.wait();
    assert!(
        banner.starts_with("SSH-2.0-OpenSSH"),
        "forwarded to the target's sshd: {banner:?}"
    );

    let lport = common::lab::free_port();
    let mut refused = ssh_forward(&lab, "carol", "-L", lport);
    wait_listening(lport, "ssh -L");
    let nothing = first_line_through(lport);
    let _ = refused.kill();
    let _ = refused.wait();
    assert_eq!(
        nothing, "",
        "forwarding without the permission must be refused"
    );
    let sessions = lab.wait_sessions(2);
    // Forwarded bytes count in the session's totals (there is no session channel: -N).
    let jdoe = sessions
        .iter()
        .find(|s| s["email"] == "jdoe@example.com")
        .unwrap();
    let to_client = jdoe["bytes_to_client"].as_u64().unwrap();
    assert!(
        to_client >= banner.len() as u64,
        "{to_client} bytes to the client, the banner alone is {}",
        banner.len()
    );
    let carol = sessions
        .iter()
        .find(|s| s["email"] == "carol@example.com")
        .unwrap();
    let ch = &carol["channels"][0];
    assert_eq!(ch["kind"], "direct-tcpip");
    assert_eq!(ch["allowed"], false);
    assert!(
        ch["denied_reason"]
            .as_str()
            .unwrap()
            .contains("port forwarding")
    );
}

#[test]
fn remote_port_forwarding_needs_the_permission() {
    let lab = forwarding_lab("port_forwarding");
    let rport = common::lab::free_port();
    let mut allowed = ssh_forward(&lab, "jdoe", "-R", rport);
    wait_listening(rport, "the target's side of ssh -R");
    let banner = first_line_through(rport);
    let _ = allowed.kill();
    let _ = allowed.wait();
    assert!(
        banner.starts_with("SSH-2.0-OpenSSH"),
        "forwarded back through the client: {banner:?}"
    );

    let refused = ssh_forward(&lab, "carol", "-R", common::lab::free_port())
        .wait_with_output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("remote port forwarding failed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let sessions = lab.wait_sessions(2);
    let record =
        |email: &str| sessions.iter().find(|s| s["email"] == email).unwrap()["channels"][0].clone();
    assert_eq!(record("jdoe@example.com")["kind"], "tcpip-forward");
    assert_eq!(record("jdoe@example.com")["allowed"], true);
    let carol = record("carol@example.com");
    assert_eq!(carol["allowed"], false);
    assert!(
        carol["denied_reason"]
            .as_str()
            .unwrap()
            .contains("port forwarding")
    );
}

#[test]
fn agent_forwarding_needs_the_permission() {
    let lab = forwarding_lab("agent_forwarding");
    // An agent on the client's side holding jdoe's key.
    let sock = lab.path().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "ssh-agent did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("ssh-add")
        .arg(lab.path().join("client/jdoe"))
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap()
        .success_or_panic("ssh-add");
    let list_keys_on_target = |user: &str| {
        ssh_jump_as_self(&lab, user, "-A", "ssh-add -l")
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .unwrap()
    };
    let fingerprint = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(lab.path().join("client/jdoe.pub"))
        .output()
        .unwrap()
        .stdout_text();
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();

    let out = list_keys_on_target("jdoe");
    assert!(
        out.stdout_text().contains(&fingerprint),
        "the target sees the client's agent: {} {}",
        out.stdout_text(),
        out.stderr_text()
    );
    let out = list_keys_on_target("carol");
    assert!(
        !out.stdout_text().contains(&fingerprint),
        "no agent without the permission: {}",
        out.stdout_text()
    );
    assert_ne!(out.status.code(), Some(0), "ssh-add -l finds no agent");
    let _ = agent.kill();
    let _ = agent.wait();
    assert_forwarding_logged(&lab, "auth-agent", "agent forwarding");
}

/// `ssh FLAG -J USER@portcullis USER@127.0.0.1 COMMAND` as `user`, stdin closed.
fn ssh_jump_as_self(lab: &Lab, user: &str, flag: &str, command: &str) -> std::process::Command {
    let mut ssh = std::process::Command::new("ssh");
    ssh.args(lab.client_args(user))
        .args([
            flag,
            "-J",
            &format!("{user}@portcullis"),
            "-p",
            &lab.sshd_port.to_string(),
        ])
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .stdin(std::process::Stdio::null());
    ssh
}

/// jdoe's and carol's sessions are logged with a `kind` channel, allowed for jdoe and
/// refused for carol with a reason that names `what`.
fn assert_forwarding_logged(lab: &Lab, kind: &str, what: &str) {
    let sessions = lab.wait_sessions(2);
    let record = |email: &str| {
        sessions.iter().find(|s| s["email"] == email).unwrap()["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} channel in {email}'s session"))
    };
    assert_eq!(record("jdoe@example.com")["allowed"], true);
    let carol = record("carol@example.com");
    assert_eq!(carol["allowed"], false);
    assert!(
        carol["denied_reason"].as_str().unwrap().contains(what),
        "{carol}"
    );
}

/// A stand-in X server on the client's side, on display `:N` (TCP port 6000 + N): it
/// answers the first X client with `X11-OK` and hands over the connection setup it read.
fn fake_x_server() -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    use std::io::{Read, Write};
    // Far above the displays the target's sshd hands out (10 and up).
    let (display, listener) = (150..400)
        .find_map(|n: u16| {
            std::net::TcpListener::bind(("127.0.0.1", 6000 + n))
                .ok()
                .map(|l| (n, l))
        })
        .expect("a free X display port");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        // Connection setup: 12 bytes, then the padded auth protocol name and data.
        let mut head = [0u8; 12];
        if conn.read_exact(&mut head).is_err() {
            return;
        }
        let pad4 = |n: u16| usize::from(n).next_multiple_of(4);
        let name_len = u16::from_le_bytes([head[6], head[7]]);
        let data_len = u16::from_le_bytes([head[8], head[9]]);
        let mut rest = vec![0u8; pad4(name_len) + pad4(data_len)];
        if conn.read_exact(&mut rest).is_err() {
            return;
        }
        let _ = conn.write_all(b"X11-OK\n");
        let mut setup = head.to_vec();
        setup.extend_from_slice(&rest);
        let _ = tx.send(setup);
    });
    (display, rx)
}

#[test]
fn x11_forwarding_needs_the_permission() {
    let lab = forwarding_lab("x11_forwarding");
    let (display, setups) = fake_x_server();
    // An X client for the target: finds the display and cookie sshd set up, sends an
    // X11 connection setup with that cookie (the client's ssh checks it), prints the
    // answer. The test users' login shell is sh, so the script runs under bash.
    let script = lab.path().join("x11-client.sh");
    std::fs::write(
        &script,
        r#"set -eu
[ -n "${DISPLAY:-}" ] || { echo "no DISPLAY"; exit 3; }
cookie=$(xauth list "$DISPLAY" | awk 'NR == 1 { print $3 }')
[ -n "$cookie" ] || { echo "no cookie for $DISPLAY"; exit 4; }
n=${DISPLAY#*:}; n=${n%%.*}
exec 3<>"/dev/tcp/127.0.0.1/$((6000 + n))"
printf 'l\000\013\000\000\000\022\000\020\000\000\000MIT-MAGIC-COOKIE-1\000\000' >&3
printf "$(printf %s "$cookie" | sed 's/../\\x&/g')" >&3
head -c 7 <&3
"#,
    )
    .unwrap();
    let readable = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    std::fs::set_permissions(&script, readable).unwrap();
    let x_client_on_target = |user: &str| {
        ssh_jump_as_self(&lab, user, "-Y", &format!("bash {}", script.display()))
            .env("DISPLAY", format!("127.0.0.1:{display}"))
            // No cookie on the client's side: its ssh makes one up.
            .env("XAUTHORITY", lab.path().join("client/no-xauthority"))
            .output()
            .unwrap()
    };

    let out = x_client_on_target("jdoe");
    assert_eq!(
        out.stdout_text(),
        "X11-OK\n",
        "the X client on the target reached the client's X server: {}",
        out.stderr_text()
    );
    let setup = setups
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    assert_eq!(&setup[..3], b"l\0\x0b", "an X11 connection setup");
    assert_eq!(&setup[12..30], b"MIT-MAGIC-COOKIE-1");

    let out = x_client_on_target("carol");
    assert_eq!(out.stdout_text(), "no DISPLAY\n", "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("X11 forwarding request failed"),
        "{}",
        out.stderr_text()
    );
    assert_forwarding_logged(&lab, "x11", "X11 forwarding");
}

#[test]
fn idle_sessions_and_connections_that_do_not_authenticate_are_disconnected() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    let config = lab.path().join("portcullis.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "[server]\n",
        "[server]\nidle_timeout = \"2s\"\nauth_timeout = \"2s\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    lab.start();

    // Output every half second keeps a session going past the timeout.
    let out = lab.ssh_jump(
        "jdoe",
        "jdoe",
        "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.5; done",
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    assert_eq!(out.stdout_text().lines().count(), 10);

    // A command that is quiet for longer is cut off, by both forms, and told why.
    let quiet = "sleep 60; echo not-reached";
    for out in [
        lab.ssh_jump("jdoe", "jdoe", quiet),
        lab.ssh_username_form("jdoe", "jdoe", quiet),
    ] {
        assert_ne!(out.status.code(), Some(0));
        assert!(!out.stdout_text().contains("not-reached"));
        assert!(
            out.stderr_text().contains("idle for 2s"),
            "{}",
            out.stderr_text()
        );
    }
    // A client that stops after the version exchange is dropped (EOF, not a timeout).
    {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", lab.proxy_port)).unwrap();
        raw.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        raw.write_all(b"SSH-2.0-Stalled\r\n").unwrap();
        let mut sink = Vec::new();
        let read = raw.read_to_end(&mut sink);
        let timed_out = read.as_ref().is_err_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        });
        assert!(!timed_out, "the proxy dropped the connection: {read:?}");
        assert!(sink.starts_with(b"SSH-2.0-Portcullis"));
    }

    let sessions = lab.wait_sessions(3);
    let reasons: Vec<&str> = sessions
        .iter()
        .map(|s| s["close_reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons[0], "connection closed", "{reasons:?}");
    for (session, reason) in sessions[1..].iter().zip(&reasons[1..]) {
        assert!(reason.starts_with("idle for 2s"), "{reasons:?}");
        assert_eq!(session["action"], "allow", "an idle session was allowed");
    }
}

/// Waits for a client the proxy should disconnect; returns its stderr.
fn ended_by_the_proxy(mut client: std::process::Child, what: &str) -> String {
    use std::io::Read;
    let start = std::time::Instant::now();
    while client.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(30) {
            let _ = client.kill();
            panic!("{what}: the session was not ended");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut stderr = String::new();
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

#[test]
fn running_sessions_no_longer_allowed_after_a_reload_are_ended() {
    ensure_user("jdoe");
    ensure_user("carol");
    let lab = default_lab(&[("jdoe@example.com", &[]), ("carol@example.com", &[])]);
    let long = "echo started; sleep 60; echo not-reached";
    let (jdoe, _) = lab.spawn_jump_until("jdoe", "jdoe", long, "started");
    let (mut carol, _) = lab.spawn_jump_until("carol", "carol", long, "started");

    // jdoe's key leaves the users file: jdoe's session ends, carol's runs on.
    let users = lab.path().join("users.toml");
    let kept: Vec<String> = std::fs::read_to_string(&users)
        .unwrap()
        .split("[[user]]")
        .filter(|entry| !entry.trim().is_empty() && !entry.contains("jdoe@example.com"))
        .map(|entry| format!("[[user]]{entry}"))
        .collect();
    std::fs::write(&users, kept.concat()).unwrap();
    lab.signal_proxy("HUP");
    let stderr = ended_by_the_proxy(jdoe, "key removed");
    assert!(
        stderr.contains("access revoked: the key is no longer in the users file"),
        "{stderr}"
    );
    assert!(
        carol.try_wait().unwrap().is_none(),
        "carol's session is still allowed"
    );

    // The policy that allowed carol goes: nothing allows her now.
    lab.policies.remove("90-default-principal.wasm");
    let stderr = ended_by_the_proxy(carol, "policy removed");
    assert!(
        stderr.contains("access revoked: access to 127.0.0.1") && stderr.contains("blocked"),
        "{stderr}"
    );

    let sessions = lab.wait_sessions(2);
    for session in &sessions {
        let reason = session["close_reason"].as_str().unwrap();
        assert!(reason.starts_with("access revoked"), "{reason}");
    }
}

#[test]
fn running_sessions_are_listed_and_logged_even_when_the_proxy_is_killed() {
    ensure_user("jdoe");
    let mut lab = default_lab(&[("jdoe@example.com", &[])]);
    let (mut client, _) = lab.spawn_jump_until("jdoe", "jdoe", "echo started; sleep 60", "started");
    let table = lab
        .portcullis(&["sessions", "--running"])
        .success_or_panic("sessions --running")
        .stdout_text();
    let target = format!("127.0.0.1:{}", lab.sshd_port);
    assert!(
        table
            .lines()
            .any(|l| l.contains("jdoe@example.com") && l.contains(&target)),
        "{table}"
    );

    lab.kill_proxy();
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        lab.sessions().is_empty(),
        "no final record from a killed proxy"
    );
    lab.start_proxy();
    let sessions = lab.wait_sessions(1);
    assert_eq!(sessions[0]["email"], "jdoe@example.com");
    assert_eq!(sessions[0]["action"], "allow");
    assert!(
        sessions[0]["close_reason"]
            .as_str()
            .unwrap()
            .starts_with("interrupted"),
        "{}",
        sessions[0]
    );
    let table = lab
        .portcullis(&["sessions", "--running"])
        .success_or_panic("sessions --running")
        .stdout_text();
    assert_eq!(table.lines().count(), 1, "only the heading: {table}");
}

/// Sends `request` to 127.0.0.1:`port` and returns the whole response.
fn http(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn metrics_count_decisions_sessions_and_bytes() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    let port = common::lab::free_port();
    lab.add_config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    lab.start();
    let get = |path: &str| http(port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(get("/healthz").starts_with("HTTP/1.1 200 OK"));
    let read = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    // The lab's own check that the proxy listens is a connection too.
    let connections = read(&get("/metrics"), "portcullis_connections_total");

    lab.ssh_jump("jdoe", "jdoe", "echo hello")
        .success_or_panic("session");
    lab.wait_sessions(1);
    let metrics = get("/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    let value = |name: &str| read(&metrics, name);
    assert_eq!(value("portcullis_connections_total"), connections + 1.0);
    assert_eq!(value("portcullis_decisions_total{action=\"allow\"}"), 1.0);
    assert_eq!(value("portcullis_decisions_total{action=\"block\"}"), 0.0);
    assert_eq!(value("portcullis_decision_seconds_count"), 1.0);
    assert!(value("portcullis_decision_seconds_sum") > 0.0);
    assert_eq!(value("portcullis_sessions_active"), 0.0);
    assert_eq!(value("portcullis_sessions_ended_total"), 1.0);
    assert!(value("portcullis_session_bytes_total{direction=\"to_client\"}") >= 6.0);
    assert_eq!(value("portcullis_policy_modules"), 1.0);
    assert!(metrics.contains("# TYPE portcullis_sessions_active gauge"));

    assert!(get("/nothing").starts_with("HTTP/1.1 404"));
    let post = http(port, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
}

#[test]
fn several_channels_share_one_session_and_one_target_connection() {
    ensure_user("jdoe");
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    let control = lab.path().join("cm.sock");
    let control_opt = format!("ControlPath={}", control.display());
    let port = lab.sshd_port.to_string();
    let base = ["-J", "jdoe@portcullis", "-p", &port, "-o", &control_opt];
    let master = lab.ssh(
        "jdoe",
        &[
            &base[..],
            &[
                "-o",
                "ControlMaster=yes",
                "-o",
                "ControlPersist=30",
                "-fN",
                "jdoe@127.0.0.1",
            ],
        ]
        .concat(),
    );
    assert!(master.status.success(), "{}", master.stderr_text());
    // The master is ready once its control socket answers.
    let start = std::time::Instant::now();
    while !lab
        .ssh(
            "jdoe",
            &[&base[..], &["-O", "check", "jdoe@127.0.0.1"]].concat(),
        )
        .status
        .success()
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the control master never came up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for i in 0..3 {
        // The exit status must reach the multiplexed client: the master closes its
        // channel as soon as it sees EOF, so the proxy delivers the status first.
        let command = format!("echo channel-{i}; exit {}", 40 + i);
        let args = [
            &base[..],
            &["-o", "ControlMaster=no", "jdoe@127.0.0.1", &command],
        ]
        .concat();
        let out = lab.ssh("jdoe", &args);
        assert_eq!(
            out.stdout_text(),
            format!("channel-{i}\n"),
            "{}",
            out.stderr_text()
        );
        assert_eq!(out.status.code(), Some(40 + i), "{}", out.stderr_text());
    }
    lab.ssh(
        "jdoe",
        &[&base[..], &["-O", "exit", "jdoe@127.0.0.1"]].concat(),
    );
    let sessions = lab.wait_sessions(1);
    assert_eq!(sessions.len(), 1, "one connection, one session record");
    let channels = sessions[0]["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 3, "{channels:?}");
    for (i, c) in channels.iter().enumerate() {
        assert!(c["kind"] == "exec" && c["allowed"] == true, "{c}");
        assert_eq!(c["exit_status"], 40 + i as i64, "{c}");
    }
    let accepted = lab.sshd_log().matches("Accepted publickey").count();
    assert_eq!(accepted, 1, "the target saw one login for all channels");
}

/// A target that, once a command starts, opens an agent and an X11 channel towards the
/// proxy (which asked for neither) and reports whether each was refused.
struct HostileTarget {
    seen: std::sync::mpsc::Sender<(&'static str, bool)>,
}

impl russh::server::Handler for HostileTarget {
    type Error = russh::Error;

    async fn auth_openssh_certificate(
        &mut self,
        _user: &str,
        _certificate: &russh::keys::Certificate,
    ) -> Result<russh::server::Auth, Self::Error> {
        Ok(russh::server::Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: russh::Channel<russh::server::Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: russh::ChannelId,
        _command: &[u8],
        session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let handle = session.handle();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let agent = handle.channel_open_agent().await;
            let _ = seen.send(("agent", agent.is_err()));
            let x11 = handle.channel_open_x11("127.0.0.1", 6010).await;
            let _ = seen.send(("x11", x11.is_err()));
            let _ = handle.data(channel, b"done\n".to_vec()).await;
            let _ = handle.exit_status_request(channel, 0).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }
}

#[test]
fn channels_a_target_opens_unasked_are_refused() {
    ensure_user("jdoe");
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (socket, _) = listener.accept().await.unwrap();
            let key =
                portcullis::ca::generate(portcullis::ca::KeyKind::Ed25519, "hostile").unwrap();
            let config = std::sync::Arc::new(russh::server::Config {
                keys: vec![key],
                ..Default::default()
            });
            let handler = HostileTarget { seen: seen_tx };
            if let Ok(session) = russh::server::run_stream(config, socket, handler).await {
                let _ = session.await;
            }
        });
    });
    let dest = format!("jdoe%127.0.0.1:{port}@127.0.0.1");
    let out = lab.ssh(
        "jdoe",
        &["-p", &lab.proxy_port.to_string(), &dest, "anything"],
    );
    assert_eq!(out.stdout_text(), "done\n", "{}", out.stderr_text());
    let mut refused: Vec<(&str, bool)> = seen.iter().take(2).collect();
    refused.sort();
    assert_eq!(refused, [("agent", true), ("x11", true)]);
    assert!(
        lab.proxy_log()
            .contains("opened a channel nobody asked for"),
        "{}",
        lab.proxy_log()
    );
}
