//! Behind a load balancer: a real HAProxy with `send-proxy-v2` in front of two replicas
//! of the proxy that share one configuration directory. The PROXY protocol header gives
//! the client's own address to the decisions and the session log; a header from an
//! address that is not a trusted balancer, or none from one that is, is refused.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects from `local` (an address of lo) to `port` on 127.0.0.1.
fn connect_from(local: &str, port: u16) -> std::net::TcpStream {
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
    let config = p.join("portcullis.toml");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[server]\n",
        "[server]\nproxy_protocol_from = [\"127.0.0.1/32\"]\n",
        1,
    );
    std::fs::write(&config, &text).unwrap();
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
    let _b = Killed(
        common::portcullis()
            .args(["serve", "--config"])
            .arg(&config_b)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_b).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("replica B did not start", || {
        std::fs::read_to_string(&log_b)
            .unwrap_or_default()
            .contains("portcullis is serving")
    });
    // HAProxy in front of both, sending PROXY protocol v2.
    let lb_port = common::lab::free_port();
    let cfg = p.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stderr format raw local0 info\ndefaults\n  mode tcp\n  log global\n  \
             timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend ssh\n  bind 127.0.0.1:{lb_port}\n  default_backend replicas\n\
             backend replicas\n  balance roundrobin\n  \
             server a 127.0.0.1:{} send-proxy-v2\n  server b 127.0.0.1:{port_b} send-proxy-v2\n",
            lab.proxy_port
        ),
    )
    .unwrap();
    let _haproxy = Killed(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run haproxy (apt-get install haproxy: scripts/setup)"),
    );
    wait_for("haproxy did not listen", || {
        std::net::TcpStream::connect(("127.0.0.1", lb_port)).is_ok()
    });
    // The client's host key entry for the balancer's port: the replicas' shared key.
    let known = p.join("client/known_hosts");
    let pinned = std::fs::read_to_string(&known).unwrap();
    let first = pinned.lines().next().unwrap().replacen(
        &format!("[127.0.0.1]:{}", lab.proxy_port),
        &format!("[127.0.0.1]:{lb_port}"),
        1,
    );
    std::fs::write(&known, format!("{pinned}{first}\n")).unwrap();

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
