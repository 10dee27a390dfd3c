//! Replicas sharing their state in a real PostgreSQL (a throwaway cluster), behind a
//! real HAProxy: sessions of both replicas listed from either, pins learned by one
//! enforced by the other, a replica killed mid-session marked interrupted by the other
//! within the lease, and a database outage that refuses new sessions but loses nothing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::balancer::{Killed, pin_proxy_key_on, start_haproxy, start_replica, wait_until_all_up};
use super::common::postgres::Postgres;
use super::*;

/// Two replicas (`a`: the lab's proxy; `b`: a second process on the same directory but
/// its own session log and known_targets, so that only the database is shared) and
/// HAProxy in front.
struct Fleet {
    lab: Lab,
    b: Option<Killed>,
    b_port: u16,
    lb_port: u16,
    _haproxy: Killed,
}

impl Fleet {
    fn start(pg: &Postgres) -> Fleet {
        Fleet::start_with(pg, "")
    }

    /// With `extra` configuration (sections) on both replicas.
    fn start_with(pg: &Postgres, extra: &str) -> Fleet {
        let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
        ensure_user("jdoe");
        lab.policies
            .module("90-default-principal.wasm", "default_principal");
        let p = lab.path().to_path_buf();
        let config = p.join("portcullis.toml");
        let text = lab.server_config("proxy_protocol_from = [\"127.0.0.1/32\"]\n");
        let state = |replica: &str| {
            format!(
                "[state]\npostgres = \"{}\"\nreplica = \"{replica}\"\nlease = \"3s\"\n{extra}",
                pg.url()
            )
        };
        std::fs::write(&config, format!("{text}{}", state("a"))).unwrap();
        let b_port = common::lab::free_port();
        std::fs::write(
            p.join("portcullis-b.toml"),
            format!(
                "{}{}[session_log]\npath = \"sessions-b.jsonl\"\n[upstream]\nknown_hosts = \"known_targets_b\"\n",
                text.replace(
                    &format!("127.0.0.1:{}", lab.proxy_port),
                    &format!("127.0.0.1:{b_port}")
                ),
                state("b")
            ),
        )
        .unwrap();
        lab.start();
        let lb_port = common::lab::free_port();
        let haproxy = start_haproxy(&p, lb_port, &[lab.proxy_port, b_port], true);
        pin_proxy_key_on(&lab, &[lb_port, b_port]);
        let mut fleet = Fleet {
            lab,
            b: None,
            b_port,
            lb_port,
            _haproxy: haproxy,
        };
        fleet.start_b();
        fleet
    }

    fn start_b(&mut self) {
        let p = self.lab.path();
        self.b = Some(start_replica(
            &p.join("portcullis-b.toml"),
            &p.join("proxy-b.log"),
        ));
        wait_until_all_up(p, self.lb_port);
    }

    /// `ssh` from 127.0.0.2 through the balancer, in the username form.
    fn through_lb(&self, command: &str) -> std::process::Output {
        let dest = format!("jdoe%127.0.0.1:{}@127.0.0.1", self.lab.sshd_port);
        let port = self.lb_port.to_string();
        self.lab
            .ssh("jdoe", &["-b", "127.0.0.2", "-p", &port, &dest, command])
    }

    /// `ssh` from 127.0.0.3 (not a balancer: no header) straight to a replica.
    fn direct(&self, port: u16, command: &str) -> std::process::Output {
        let dest = format!("jdoe%127.0.0.1:{}@127.0.0.1", self.lab.sshd_port);
        let port = port.to_string();
        self.lab
            .ssh("jdoe", &["-b", "127.0.0.3", "-p", &port, &dest, command])
    }

    /// A session held by replica a (`ssh` straight to it, stderr piped), once its
    /// command has started.
    fn hold_on_a(&self) -> std::process::Child {
        let dest = format!("jdoe%127.0.0.1:{}@127.0.0.1", self.lab.sshd_port);
        let port = self.lab.proxy_port.to_string();
        let mut client = Command::new("ssh")
            .args(self.lab.client_args("jdoe"))
            .args([
                "-b",
                "127.0.0.3",
                "-p",
                &port,
                &dest,
                "echo started; sleep 60",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = [0u8; 8];
        std::io::Read::read_exact(client.stdout.as_mut().unwrap(), &mut line).unwrap();
        assert_eq!(&line, b"started\n");
        client
    }

    /// `portcullis sessions --json` with replica `config`'s configuration.
    fn sessions(&self, config: &str, running: bool) -> Vec<serde_json::Value> {
        let mut args = vec!["sessions", "--json", "--limit", "1000", "--config"];
        let path = self.lab.path().join(config);
        let path = path.to_str().unwrap();
        args.push(path);
        if running {
            args.push("--running");
        }
        let out = common::portcullis().args(&args).output().unwrap();
        assert!(out.status.success(), "sessions: {}", out.stderr_text());
        out.stdout_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[test]
fn replicas_list_each_others_sessions_and_enforce_each_others_pins() {
    let pg = Postgres::start();
    let mut fleet = Fleet::start(&pg);
    for i in 0..4 {
        let out = fleet.through_lb(&format!("echo shared-{i}"));
        assert_eq!(
            out.stdout_text().trim(),
            format!("shared-{i}"),
            "{}",
            out.stderr_text()
        );
    }
    // From either replica's configuration: all four, on both replicas, from the client.
    let mut seen = Vec::new();
    for config in ["portcullis.toml", "portcullis-b.toml"] {
        let start = Instant::now();
        let sessions = loop {
            let s = fleet.sessions(config, false);
            if s.len() >= 4 || start.elapsed() > Duration::from_secs(10) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(sessions.len(), 4, "{config}: {sessions:?}");
        assert!(
            sessions
                .iter()
                .all(|s| s["source"].as_str().unwrap().starts_with("127.0.0.2:"))
        );
        let mut replicas: Vec<&str> = sessions
            .iter()
            .map(|s| s["replica"].as_str().unwrap())
            .collect();
        replicas.sort();
        replicas.dedup();
        assert_eq!(replicas, ["a", "b"], "{config}");
        seen.push(sessions.len());
    }
    // Replica B's own files hold only its sessions: the listing came from the store.
    let own_b = std::fs::read_to_string(fleet.lab.path().join("sessions-b.jsonl")).unwrap();
    assert!(own_b.lines().count() < 4);

    // The target changes its key: both replicas refuse it, although only one of them
    // learned the old one, and neither has it in its own known_targets file.
    fleet.lab.stop_sshd();
    let key = fleet.lab.path().join("target/ssh_host_ed25519_key");
    std::fs::remove_file(&key).unwrap();
    std::fs::remove_file(key.with_extension("pub")).unwrap();
    common::lab::keygen(&key, "impostor");
    fleet.lab.start_sshd();
    for port in [fleet.lab.proxy_port, fleet.b_port] {
        let out = fleet.direct(port, "echo impostor");
        assert!(
            !out.status.success(),
            "replica on {port} accepted a changed key"
        );
        assert!(
            out.stderr_text().contains("HOST KEY CHANGED"),
            "{}",
            out.stderr_text()
        );
    }
    let b_pins =
        std::fs::read_to_string(fleet.lab.path().join("known_targets_b")).unwrap_or_default();
    assert!(b_pins.trim().is_empty(), "{b_pins}");
    fleet.lab.stop_proxy();
    fleet.b = None;
}

#[test]
fn a_replica_killed_mid_session_is_marked_interrupted_by_the_other() {
    let pg = Postgres::start();
    let mut fleet = Fleet::start(&pg);
    // A session held by replica a.
    let mut client = fleet.hold_on_a();
    let running = fleet.sessions("portcullis-b.toml", true);
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0]["replica"], "a");
    let id = running[0]["id"].as_str().unwrap().to_string();

    fleet.lab.kill_proxy();
    let _ = client.kill();
    let _ = client.wait();
    // Within the lease (3 s) and a heartbeat of b, it is marked interrupted.
    let start = Instant::now();
    let ended = loop {
        let ended = fleet.sessions("portcullis-b.toml", false);
        if let Some(s) = ended.into_iter().find(|s| s["id"] == id.as_str()) {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not marked interrupted"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let reason = ended["close_reason"].as_str().unwrap();
    assert!(
        reason.contains("interrupted: replica a stopped"),
        "{reason}"
    );
    // What was recorded before the kill is there.
    assert_eq!(ended["email"], "jdoe@example.com");
    assert_eq!(ended["action"], "allow");
    // New connections go through the other replica.
    for i in 0..3 {
        let out = fleet.through_lb(&format!("echo after-{i}"));
        assert_eq!(
            out.stdout_text().trim(),
            format!("after-{i}"),
            "{}",
            out.stderr_text()
        );
    }
    fleet.b = None;
}

#[test]
fn a_database_outage_refuses_new_sessions_and_loses_no_record() {
    let pg = Postgres::start();
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    ensure_user("jdoe");
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    lab.add_config(&format!(
        "[state]\npostgres = \"{}\"\nreplica = \"solo\"\n",
        pg.url()
    ));
    lab.start();
    let (running, _) = lab.spawn_jump_until(
        "jdoe",
        "jdoe",
        "echo started; sleep 6; echo finished",
        "started",
    );

    pg.stop();
    let out = lab.ssh_username_form("jdoe", "jdoe", "echo refused");
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("session store is unavailable"),
        "{}",
        out.stderr_text()
    );
    // The running session goes on to its end.
    let out = running.wait_with_output().unwrap();
    assert!(
        out.stdout_text().contains("finished"),
        "{}",
        out.stderr_text()
    );

    // The database returns: the waiting records are written.
    pg.run();
    let config = lab.path().join("portcullis.toml");
    let start = Instant::now();
    loop {
        let out = common::portcullis()
            .args(["sessions", "--json", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let records: Vec<serde_json::Value> = out
            .stdout_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let allowed = records.iter().filter(|r| r["action"] == "allow").count();
        let refused = records.iter().filter(|r| r["action"] == "refused").count();
        if allowed == 1 && refused == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "records not written after the outage: {records:?}\n{}",
            lab.proxy_log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    lab.stop_proxy();
}

#[test]
fn a_login_revoked_on_one_replica_ends_its_session_on_the_other() {
    use super::common::idp::{Askpass, Idp};
    let pg = Postgres::start();
    let idp = Idp::start(&[]);
    let mut fleet = Fleet::start_with(&pg, &idp.config(""));
    common::lab::keygen(&fleet.lab.path().join("client/carol"), "carol");
    ensure_user("carol");
    let askpass = Askpass::new("carol", "approve");
    let dest = format!("carol%127.0.0.1:{}@127.0.0.1", fleet.lab.sshd_port);
    // Logged in through replica a...
    let a = fleet.lab.proxy_port.to_string();
    let out = super::sso::run(
        "ssh",
        &fleet.lab,
        &askpass,
        "carol",
        &["-b", "127.0.0.3", "-p", &a, &dest, "echo on-a"],
    );
    assert_eq!(out.stdout_text().trim(), "on-a", "{}", out.stderr_text());
    // ...the same key goes through replica b without a prompt, and stays.
    let b = fleet.b_port.to_string();
    let mut session = Command::new("ssh")
        .args(super::sso::sso_args(&fleet.lab, "carol"))
        .args([
            "-b",
            "127.0.0.3",
            "-p",
            &b,
            &dest,
            "echo on-b; sleep 60; echo not-cut",
        ])
        .envs(askpass.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = [0u8; 5];
    std::io::Read::read_exact(session.stdout.as_mut().unwrap(), &mut line).unwrap();
    assert_eq!(&line, b"on-b\n");
    assert_eq!(askpass.prompts().len(), 1, "asked again on replica b");
    // Revoked with replica a's configuration: replica b ends the session.
    let out = fleet
        .lab
        .portcullis(&["logins", "revoke", "carol@example.com"])
        .success_or_panic("logins revoke");
    assert!(out.stdout_text().contains("revoked: carol@example.com"));
    let start = Instant::now();
    while session.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the session on b was not ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log_b = std::fs::read_to_string(fleet.lab.path().join("proxy-b.log")).unwrap();
    assert!(
        log_b.contains("single sign-on login was revoked"),
        "{log_b}"
    );
    fleet.lab.stop_proxy();
    fleet.b = None;
}

#[test]
fn an_auditor_on_one_replica_ends_a_session_held_by_the_other() {
    use super::console::{TOKEN, csrf_of, request, text, token_sign_in};
    use std::os::unix::fs::PermissionsExt;
    let pg = Postgres::start();
    let mut fleet = Fleet::start(&pg);
    // Replica b again, with a console.
    fleet.b = None;
    let p = fleet.lab.path().to_path_buf();
    let token = p.join("console-token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let console = common::lab::free_port();
    let config_b = p.join("portcullis-b.toml");
    let mut text_b = std::fs::read_to_string(&config_b).unwrap();
    text_b.push_str(&format!(
        "[console]\nlisten = \"127.0.0.1:{console}\"\ntoken_file = \"console-token\"\n"
    ));
    std::fs::write(&config_b, text_b).unwrap();
    fleet.start_b();

    // A session held by replica a.
    let mut client = fleet.hold_on_a();
    let running = fleet.sessions("portcullis-b.toml", true);
    assert_eq!(running[0]["replica"], "a", "{running:?}");
    let id = running[0]["id"].as_str().unwrap().to_string();

    // Ended from replica b's console.
    let cookie = token_sign_in(console);
    let live = text(&request(console, "GET", "/live", Some(&cookie), None));
    assert!(live.contains(&id), "{live}");
    let csrf = csrf_of(&live);
    let ended = request(
        console,
        "POST",
        &format!("/live/{id}/end"),
        Some(&cookie),
        Some(&format!("csrf={csrf}&reason=held+elsewhere")),
    );
    assert_eq!(ended.0, 303, "{}", text(&ended));
    let stderr = Lab::wait_disconnected(&mut client, Duration::from_secs(15));
    assert!(
        stderr.contains("ended by an auditor: held elsewhere"),
        "{stderr}"
    );
    assert!(
        fleet
            .lab
            .proxy_log()
            .contains("ending a session at another replica's request"),
        "{}",
        fleet.lab.proxy_log()
    );
    let log_b = std::fs::read_to_string(p.join("proxy-b.log")).unwrap();
    assert!(
        log_b.contains("replica=a") && log_b.contains("auditor ended a session"),
        "{log_b}"
    );
    fleet.lab.stop_proxy();
    fleet.b = None;
}
