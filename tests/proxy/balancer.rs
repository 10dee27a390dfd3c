//! Behind a load balancer: a real HAProxy with `send-proxy-v2` in front of two replicas
//! of the proxy that share one configuration directory. The PROXY protocol header gives
//! the client's own address to the decisions and the session log; a header from an
//! address that is not a trusted balancer, or none from one that is, is refused.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A process killed on drop.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn wait_for(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts another replica of the proxy with `config`, logging to `log`.
pub(crate) fn start_replica(config: &std::path::Path, log: &std::path::Path) -> Killed {
    let replica = Killed(
        common::portcullis()
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the replica did not start", || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("portcullis is serving")
    });
    replica
}

/// Starts HAProxy on `port` in front of the replicas on `backends`, sending PROXY
/// protocol v2 (and checking the replicas, with `checks`).
pub(crate) fn start_haproxy(
    dir: &std::path::Path,
    port: u16,
    backends: &[u16],
    checks: bool,
) -> Killed {
    let check = if checks {
        " check check-send-proxy inter 300ms fall 1 rise 1"
    } else {
        ""
    };
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server r{i} 127.0.0.1:{b} send-proxy-v2{check}\n"))
        .collect();
    let cfg = dir.join(format!("haproxy-{port}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "global\n  stats socket {}\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
             frontend ssh\n  bind 127.0.0.1:{port}\n  default_backend replicas\n\
             backend replicas\n  balance roundrobin\n{servers}",
            haproxy_stats(dir, port).display()
        ),
    )
    .unwrap();
    let haproxy = Killed(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run haproxy (apt-get install haproxy: scripts/setup)"),
    );
    wait_for("haproxy did not listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    haproxy
}

/// The stats socket of the HAProxy on `port`.
fn haproxy_stats(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    dir.join(format!("haproxy-{port}.sock"))
}

/// Waits until the HAProxy on `port` (started with checks) counts every replica as up:
/// a replica started after it is down until a check succeeds, and until then the
/// balancer sends every connection to the others.
pub(crate) fn wait_until_all_up(dir: &std::path::Path, port: u16) {
    use std::io::{Read, Write};
    let socket = haproxy_stats(dir, port);
    let statuses = || {
        let mut stats = std::os::unix::net::UnixStream::connect(&socket).ok()?;
        stats.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        stats.read_to_string(&mut csv).ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let (name, status) = (
            header.iter().position(|h| *h == "svname")?,
            header.iter().position(|h| *h == "status")?,
        );
        Some(
            lines
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|row| row.get(name).is_some_and(|n| n.starts_with('r')))
                .map(|row| row.get(status).unwrap_or(&"").to_string())
                .collect::<Vec<_>>(),
        )
    };
    wait_for("haproxy did not see every replica up", || {
        statuses().is_some_and(|s| !s.is_empty() && s.iter().all(|s| s == "UP"))
    });
}

/// Lets the lab's client trust the proxy's host key on `ports` too (the balancer's,
/// another replica's): every replica has the same key.
pub(crate) fn pin_proxy_key_on(lab: &Lab, ports: &[u16]) {
    let known = lab.path().join("client/known_hosts");
    let mut text = std::fs::read_to_string(&known).unwrap();
    let first = text.lines().next().unwrap().to_string();
    for port in ports {
        text.push_str(&first.replacen(
            &format!("[127.0.0.1]:{}", lab.proxy_port),
            &format!("[127.0.0.1]:{port}"),
            1,
        ));
        text.push('\n');
    }
    std::fs::write(&known, text).unwrap();
}

/// Connects from `local` (an address of lo) to `port` on 127.0.0.1.
pub(crate) fn connect_from(local: &str, port: u16) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{local}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    let remote: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&remote.into()).unwrap();
    socket.into()
}

#[test]
fn through_haproxy_both_replicas_serve_and_see_the_clients_address() {
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    ensure_user("jdoe");
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    let p = lab.path().to_path_buf();
    let text = lab.server_config("proxy_protocol_from = [\"127.0.0.1/32\"]\n");
    // Replica B: the same directory (keys, CA, users, policies, logs), its own port.
    let port_b = common::lab::free_port();
    let config_b = p.join("portcullis-b.toml");
    std::fs::write(
        &config_b,
        text.replace(
            &format!("127.0.0.1:{}", lab.proxy_port),
            &format!("127.0.0.1:{port_b}"),
        ),
    )
    .unwrap();
    lab.start();
    let log_b = p.join("proxy-b.log");
    let _b = start_replica(&config_b, &log_b);
    // HAProxy in front of both, sending PROXY protocol v2.
    let lb_port = common::lab::free_port();
    let _haproxy = start_haproxy(&p, lb_port, &[lab.proxy_port, port_b], false);
    pin_proxy_key_on(&lab, &[lb_port]);

    // Four sessions from 127.0.0.2, through the balancer.
    let dest = format!("jdoe%127.0.0.1:{}@127.0.0.1", lab.sshd_port);
    for i in 0..4 {
        let out = lab.ssh(
            "jdoe",
            &[
                "-b",
                "127.0.0.2",
                "-p",
                &lb_port.to_string(),
                &dest,
                &format!("echo via-lb-{i}"),
            ],
        );
        assert_eq!(
            out.stdout_text().trim(),
            format!("via-lb-{i}"),
            "{}",
            out.stderr_text()
        );
    }
    let sessions = lab.wait_sessions(4);
    assert_eq!(sessions.len(), 4, "{sessions:?}");
    for s in &sessions {
        let source = s["source"].as_str().unwrap();
        assert!(
            source.starts_with("127.0.0.2:"),
            "recorded {source}, not the client's address"
        );
    }
    // Round robin: both replicas served.
    let served = |log: &str| log.matches("session decided").count();
    let log_a = lab.proxy_log();
    let log_b_text = std::fs::read_to_string(&log_b).unwrap();
    assert!(
        served(&log_a) > 0 && served(&log_b_text) > 0,
        "A:\n{log_a}\nB:\n{log_b_text}"
    );

    // A trusted balancer's address without a header: refused.
    let out = lab.ssh_username_form("jdoe", "jdoe", "echo direct");
    assert!(!out.status.success(), "{}", out.stdout_text());
    // A header from an address that is not a balancer: refused, whatever it claims.
    let mut forged = connect_from("127.0.0.2", lab.proxy_port);
    forged
        .write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 22\r\nSSH-2.0-OpenSSH_9.2\r\n")
        .unwrap();
    forged
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = forged.read_to_end(&mut reply);
    assert!(
        !String::from_utf8_lossy(&reply).contains("SSH-2.0"),
        "served a forged header"
    );
    wait_for("the forged header was not logged", || {
        let log = lab.proxy_log();
        log.contains("a PROXY protocol header from an address not in server.proxy_protocol_from")
            && log.contains("connection from a balancer refused")
    });
    lab.stop_proxy();
}
