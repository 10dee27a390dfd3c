//! The proxy's life: SIGTERM drains, SIGHUP reloads, idle and unauthenticated
//! connections, revocation, running records across a kill, metrics.

use super::*;

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

#[test]
fn idle_sessions_and_connections_that_do_not_authenticate_are_disconnected() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.server_config("idle_timeout = \"2s\"\nauth_timeout = \"2s\"\n");
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
pub(crate) fn http(port: u16, request: &str) -> String {
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
    let ended_to_client = value("portcullis_session_bytes_total{direction=\"to_client\"}");
    assert!(ended_to_client >= 6.0);
    assert_eq!(
        value("portcullis_forwarded_bytes_total{direction=\"to_client\"}"),
        ended_to_client,
        "with no session running, all bytes forwarded are those of ended sessions"
    );
    assert_eq!(value("portcullis_policy_modules"), 1.0);
    assert!(metrics.contains("# TYPE portcullis_sessions_active gauge"));
    // The process metrics of every Prometheus client library, from /proc.
    assert!(value("process_cpu_seconds_total") > 0.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
    assert!(value("process_threads") >= 2.0);
    let (open, max) = (value("process_open_fds"), value("process_max_fds"));
    assert!(open >= 3.0 && open < max, "{open} of {max}");
    let started = value("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > now - 600.0 && started <= now + 1.0,
        "{started} at {now}"
    );
    assert!(metrics.contains("# TYPE process_cpu_seconds_total counter"));

    assert!(get("/nothing").starts_with("HTTP/1.1 404"));
    let post = http(port, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");

    // A running session holds its connection on one of the connection threads (one
    // per CPU by default): the counts add up to that one client once the connections
    // before it have closed.
    // Its bytes count before it ends: 1 MB moved, none of it in the ended sessions'.
    let (mut held, _) = lab.spawn_jump_until(
        "jdoe",
        "jdoe",
        "head -c 1000000 /dev/zero; echo started; sleep 60",
        "started",
    );
    let per_thread = |metrics: &str| -> Vec<f64> {
        metrics
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("portcullis_connection_thread_connections{thread=\"")?;
                rest.split_once("\"} ")?.1.parse().ok()
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (running, counts) = loop {
        let running = get("/metrics");
        let counts = per_thread(&running);
        if counts.iter().sum::<f64>() == 1.0 || std::time::Instant::now() > deadline {
            break (running, counts);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(counts.len(), cpus, "one gauge per thread: {running}");
    assert_eq!(counts.iter().sum::<f64>(), 1.0, "{running}");
    let to_client = |name: &str| read(&running, &format!("{name}{{direction=\"to_client\"}}"));
    assert_eq!(to_client("portcullis_session_bytes_total"), ended_to_client);
    assert!(
        to_client("portcullis_forwarded_bytes_total") >= ended_to_client + 1_000_008.0,
        "{running}"
    );
    let _ = held.kill();
    let _ = held.wait();
}
