//! Single sign-on end to end: a real OpenID Provider (`oidc-provider`, tests/idp), the
//! real OpenSSH client answering the proxy's keyboard-interactive prompt through an
//! askpass program that approves the device login at the provider as a browser would,
//! and the real sshd behind the proxy.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::common::idp::{Askpass, Idp};
use super::common::lab::keygen;
use super::*;

/// A lab whose users file lists only `listed`; `sso_users` have keys nobody knows.
fn sso_lab(idp: &Idp, extra: &str, sso_users: &[&str]) -> Lab {
    let mut lab = Lab::new(&[("ops@example.com", &[])]);
    for user in sso_users {
        keygen(&lab.path().join(format!("client/{user}")), user);
        ensure_user(user);
    }
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    lab.add_config(&idp.config(extra));
    lab.start();
    lab
}

/// The client's options for `user` (its key `client/<user>`), prompts allowed: the
/// configuration file carries them, since ProxyJump passes `-F` to the jump
/// connection but not `-o`.
pub(crate) fn sso_args(lab: &Lab, user: &str) -> Vec<String> {
    let p = lab.path();
    let base = std::fs::read_to_string(p.join("client/ssh_config"))
        .unwrap()
        .replace("BatchMode yes", "BatchMode no")
        // The inner connection of a ProxyJump waits for the outer one's login.
        .replace("ConnectTimeout 10", "ConnectTimeout 20")
        // What OpenSSH shows a user by default, the proxy's disconnection message too.
        .replace("LogLevel ERROR", "LogLevel INFO");
    let config = p.join(format!("client/{user}.sso.config"));
    std::fs::write(
        &config,
        format!(
            "IdentityFile {}\n{base}",
            p.join(format!("client/{user}")).display()
        ),
    )
    .unwrap();
    vec!["-F".into(), config.display().to_string()]
}

pub(crate) fn run(tool: &str, lab: &Lab, askpass: &Askpass, user: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(sso_args(lab, user))
        .args(args)
        .envs(askpass.env())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn jump(lab: &Lab, askpass: &Askpass, user: &str, command: &str) -> Output {
    let jump = lab.jump_args(user, user);
    let args: Vec<&str> = jump.iter().map(String::as_str).chain([command]).collect();
    run("ssh", lab, askpass, user, &args)
}

fn username_form(lab: &Lab, askpass: &Askpass, user: &str, command: &str) -> Output {
    let dest = format!("{user}%127.0.0.1:{}@127.0.0.1", lab.sshd_port);
    let port = lab.proxy_port.to_string();
    run("ssh", lab, askpass, user, &["-p", &port, &dest, command])
}

/// Waits until the proxy's log contains `text`.
fn wait_log(lab: &Lab, text: &str) -> String {
    let start = Instant::now();
    loop {
        let log = lab.proxy_log();
        if log.contains(text) || start.elapsed() > Duration::from_secs(10) {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_first_connection_asks_and_the_key_goes_through_silently_afterwards() {
    let idp = Idp::start(&[]);
    let lab = sso_lab(&idp, "", &["jdoe"]);
    let askpass = Askpass::new("jdoe", "approve");
    let out = jump(&lab, &askpass, "jdoe", "echo first-$(whoami)");
    assert_eq!(
        out.stdout_text().trim(),
        "first-jdoe",
        "{}",
        out.stderr_text()
    );
    let prompts = askpass.prompts();
    assert_eq!(prompts.len(), 1, "{prompts:?}");
    // The page with the code in it, and the code alone on its line.
    assert!(prompts[0].contains(&format!("{}/device?user_code=", idp.issuer())));
    assert!(
        prompts[0]
            .lines()
            .any(|l| l.trim().len() == 9 && l.trim().as_bytes()[4] == b'-'),
        "{prompts:?}"
    );
    // The same key, other ways in: no prompt.
    let out = username_form(&lab, &askpass, "jdoe", "echo second-$(whoami)");
    assert_eq!(
        out.stdout_text().trim(),
        "second-jdoe",
        "{}",
        out.stderr_text()
    );
    let file = lab.path().join("upload.txt");
    std::fs::write(&file, "uploaded by sso\n").unwrap();
    let port = lab.sshd_port.to_string();
    let out = run(
        "scp",
        &lab,
        &askpass,
        "jdoe",
        &[
            "-J",
            "jdoe@portcullis",
            "-P",
            &port,
            file.to_str().unwrap(),
            "jdoe@127.0.0.1:/tmp/portcullis-sso-upload.txt",
        ],
    );
    assert!(out.status.success(), "scp: {}", out.stderr_text());
    assert_eq!(
        std::fs::read_to_string("/tmp/portcullis-sso-upload.txt").unwrap(),
        "uploaded by sso\n"
    );
    assert_eq!(askpass.prompts().len(), 1, "asked again");
    // Sessions are the provider's user; the login is listed with its key.
    let sessions = lab.wait_sessions(3);
    assert!(
        sessions.iter().all(|s| s["email"] == "jdoe@example.com"),
        "{sessions:?}"
    );
    let logins = lab.portcullis(&["logins"]).success_or_panic("logins");
    let fp = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(lab.path().join("client/jdoe.pub"))
        .output()
        .unwrap()
        .stdout_text();
    let fp = fp.split_whitespace().nth(1).unwrap().to_string();
    let table = logins.stdout_text();
    let how = format!("sso {} key={fp}", idp.issuer());
    assert!(
        sessions.iter().all(|s| s["authentication"] == how.as_str()),
        "{how}: {sessions:?}"
    );
    assert!(
        table.contains("jdoe@example.com") && table.contains(&fp) && table.contains(&idp.issuer()),
        "{table}"
    );
    // The logins survive a restart of the proxy.
    let mut lab = lab;
    lab.start_proxy();
    let out = jump(&lab, &askpass, "jdoe", "echo third");
    assert_eq!(out.stdout_text().trim(), "third", "{}", out.stderr_text());
    assert_eq!(askpass.prompts().len(), 1, "asked again after a restart");
}

#[test]
fn a_login_refused_at_the_provider_or_left_to_expire_reaches_nothing() {
    let idp = Idp::start(&[]);
    let metrics_port = common::lab::free_port();
    let lab = sso_lab(
        &idp,
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
        &["jdoe"],
    );
    let askpass = Askpass::new("jdoe", "deny");
    let out = jump(&lab, &askpass, "jdoe", "echo should-not-run");
    assert!(!out.status.success());
    assert!(out.stdout_text().is_empty());
    assert!(
        out.stderr_text()
            .contains("refused at the identity provider"),
        "{}",
        out.stderr_text()
    );
    let log = wait_log(&lab, "single sign-on failed");
    assert!(log.contains("refused at the identity provider"), "{log}");
    let metrics = lifecycle::http(metrics_port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    for line in [
        "portcullis_sso_logins_total{outcome=\"started\"} 1",
        "portcullis_sso_logins_total{outcome=\"denied\"} 1",
        "portcullis_sso_logins_total{outcome=\"approved\"} 0",
        "portcullis_sso_waiting 0",
        "portcullis_sso_bindings 0",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
    drop(lab);
    // A code nobody approves expires.
    let idp = Idp::start(&[("IDP_DEVICE_CODE_TTL", "3")]);
    let lab = sso_lab(&idp, "", &["jdoe"]);
    let askpass = Askpass::new("jdoe", "ignore");
    let out = username_form(&lab, &askpass, "jdoe", "echo should-not-run");
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("code expired"),
        "{}",
        out.stderr_text()
    );
    assert!(!lab.sshd_log().contains("Accepted"), "{}", lab.sshd_log());
    let logins = lab
        .portcullis(&["logins", "list", "--all"])
        .success_or_panic("logins");
    assert!(
        !logins.stdout_text().contains("jdoe"),
        "{}",
        logins.stdout_text()
    );
}

#[test]
fn a_login_past_its_ttl_asks_again_and_a_client_without_a_key_is_asked_each_time() {
    let idp = Idp::start(&[]);
    let lab = sso_lab(&idp, "login_ttl = \"3s\"\n", &["jdoe"]);
    let askpass = Askpass::new("jdoe", "approve");
    let out = username_form(&lab, &askpass, "jdoe", "echo one");
    assert_eq!(out.stdout_text().trim(), "one", "{}", out.stderr_text());
    std::thread::sleep(Duration::from_secs(4));
    let out = username_form(&lab, &askpass, "jdoe", "echo two");
    assert_eq!(out.stdout_text().trim(), "two", "{}", out.stderr_text());
    assert_eq!(askpass.prompts().len(), 2);
    // No key at all: keyboard-interactive alone, nothing to bind, asked again.
    let dest = format!("jdoe%127.0.0.1:{}@127.0.0.1", lab.sshd_port);
    let port = lab.proxy_port.to_string();
    for word in ["three", "four"] {
        let out = run(
            "ssh",
            &lab,
            &askpass,
            "jdoe",
            &[
                "-o",
                "PubkeyAuthentication=no",
                "-p",
                &port,
                &dest,
                &format!("echo {word}"),
            ],
        );
        assert_eq!(out.stdout_text().trim(), word, "{}", out.stderr_text());
    }
    assert_eq!(askpass.prompts().len(), 4);
}

#[test]
fn groups_from_the_provider_decide_and_rotated_provider_keys_are_fetched_again() {
    let mut idp = Idp::start(&[]);
    let mut lab = Lab::new(&[("ops@example.com", &[])]);
    for user in ["jdoe", "asmith"] {
        keygen(&lab.path().join(format!("client/{user}")), user);
        ensure_user(user);
    }
    lab.policies
        .file(
            "20-network-audit.toml",
            b"[[rule]]\ndestinations = [\"127.0.0.1\"]\ngroups = [\"sre\"]\nreason = \"sre audit\"\n",
        )
        .module("20-network-audit.wasm", "network_audit")
        .module("90-default-principal.wasm", "default_principal");
    lab.add_config(&idp.config(""));
    lab.start();
    let jdoe = Askpass::new("jdoe", "approve");
    let out = username_form(&lab, &jdoe, "jdoe", "echo sre");
    assert_eq!(out.stdout_text().trim(), "sre", "{}", out.stderr_text());
    // The provider restarts with new signing keys: the proxy fetches them again.
    idp.restart();
    let asmith = Askpass::new("asmith", "approve");
    let out = username_form(&lab, &asmith, "asmith", "echo dev");
    assert_eq!(out.stdout_text().trim(), "dev", "{}", out.stderr_text());
    let sessions = lab.wait_sessions(2);
    let of = |email: &str| {
        sessions
            .iter()
            .find(|s| s["email"] == email)
            .unwrap_or_else(|| panic!("no session of {email}: {sessions:?}"))
            .clone()
    };
    let sre = of("jdoe@example.com");
    assert_eq!(sre["action"], "audit", "{sre}");
    assert_eq!(sre["groups"], serde_json::json!(["sre"]));
    assert_eq!(sre["policy"], "20-network-audit.wasm");
    let dev = of("asmith@example.com");
    assert_eq!(dev["action"], "allow", "{dev}");
    assert_eq!(dev["policy"], "90-default-principal.wasm");
    lab.stop_proxy();
}

#[test]
fn revoking_a_login_ends_its_running_session() {
    let idp = Idp::start(&[]);
    let lab = sso_lab(&idp, "", &["jdoe"]);
    let askpass = Askpass::new("jdoe", "approve");
    let mut child = Command::new("ssh")
        .args(sso_args(&lab, "jdoe"))
        .args(lab.jump_args("jdoe", "jdoe"))
        .arg("echo running; sleep 60; echo not-cut")
        .envs(askpass.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = [0u8; 8];
    std::io::Read::read_exact(&mut stdout, &mut seen).unwrap();
    assert_eq!(&seen, b"running\n");
    let out = lab
        .portcullis(&["logins", "revoke", "jdoe@example.com"])
        .success_or_panic("logins revoke");
    assert!(out.stdout_text().contains("revoked: jdoe@example.com"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the session was not ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(!rest.contains("not-cut"), "{rest}");
    let log = wait_log(&lab, "single sign-on login was revoked");
    assert!(log.contains("single sign-on login was revoked"), "{log}");
    // The key is asked again (and refused here: the provider denies).
    let denied = Askpass::new("jdoe", "deny");
    let out = jump(&lab, &denied, "jdoe", "true");
    assert!(!out.status.success());
    assert_eq!(denied.prompts().len(), 1);
}

#[test]
fn tokens_that_do_not_verify_and_emails_outside_the_domains_are_refused() {
    for (tamper, account, expected) in [
        ("audience", "jdoe", "the ID token is for another audience"),
        (
            "unknown-key",
            "jdoe",
            "signed by a key not in the provider's JWKS",
        ),
        (
            "",
            "mallory",
            "mallory@evil.test is not in an allowed domain (example.com)",
        ),
    ] {
        let env: &[(&str, &str)] = if tamper.is_empty() {
            &[]
        } else {
            &[("IDP_TAMPER", tamper)]
        };
        let idp = Idp::start(env);
        let lab = sso_lab(&idp, "", &["jdoe"]);
        let askpass = Askpass::new(account, "approve");
        let out = username_form(&lab, &askpass, "jdoe", "echo should-not-run");
        assert!(!out.status.success(), "{tamper} {account}");
        assert!(
            out.stderr_text().contains("single sign-on failed"),
            "{tamper} {account}: {}",
            out.stderr_text()
        );
        let log = wait_log(&lab, expected);
        assert!(log.contains(expected), "{tamper} {account}: {log}");
        assert!(!lab.sshd_log().contains("Accepted"));
    }
}
