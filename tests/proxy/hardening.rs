//! Holes found by reading the proxy as an attacker would, each proven closed: floods
//! of unauthenticated connections, clients that never speak, forged log lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 of `rest`.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_unauthenticated_flood_is_capped_and_a_real_user_still_logs_in() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    // A long authentication timeout: the flood's connections are held all along.
    lab.server_config("auth_timeout = \"60s\"\n");
    let metrics_port = common::lab::free_port();
    lab.add_config(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    ));
    // Far fewer file descriptors than the flood has connections.
    lab.proxy_file_limit = Some(128);
    lab.start();
    rlimit::increase_nofile_limit(8192).unwrap();

    // 1,500 connections from one address: half silent, half stalled in the key
    // exchange (a version line and a piece of KEXINIT, then nothing).
    let proxy: SocketAddr = format!("127.0.0.1:{}", lab.proxy_port).parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let flood = runtime.block_on(async {
        let mut held = Vec::new();
        for i in 0..1500 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let Ok(mut stream) = socket.connect(proxy).await else {
                continue;
            };
            if i % 2 == 0 {
                let _ = stream
                    .write_all(b"SSH-2.0-flood\r\n\x00\x00\x01\x00\x0a\x14")
                    .await;
            }
            held.push(stream);
        }
        held
    });
    assert!(
        flood.len() > 1000,
        "the flood connected {} times",
        flood.len()
    );

    // The proxy does not spin: over two seconds of flood it uses well under a core.
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(lab.proxy_pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(lab.proxy_pid()) - before;
    assert!(
        used < 100,
        "the proxy used {used} ticks in 2 s under the flood"
    );

    // A real user, from another address, logs in.
    let started = Instant::now();
    let out = lab.ssh_jump("jdoe", "jdoe", "echo through-the-flood");
    assert_eq!(
        out.stdout_text(),
        "through-the-flood\n",
        "{}",
        out.stderr_text()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let metrics = lifecycle::http(metrics_port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("portcullis_connections_refused_total{limit=\"per_source_max_startups\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(refused >= 1400, "refused {refused}:\n{metrics}");
    drop(flood);
}

#[test]
fn a_client_that_never_sends_its_version_is_cut_at_the_authentication_timeout() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.server_config("auth_timeout = \"1s\"\n");
    lab.start();
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", lab.proxy_port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The proxy's version line, then the end of the connection.
    let read = std::io::Read::read_to_end(&mut silent, &mut buf);
    assert!(
        read.is_ok() && started.elapsed() < Duration::from_secs(10),
        "still connected after {:?}: {read:?}",
        started.elapsed()
    );
    assert!(String::from_utf8_lossy(&buf).starts_with("SSH-2.0-Portcullis"));
}

/// An SSH client that trusts any server: enough to reach the proxy's authentication.
struct AnyServer;

impl russh::client::Handler for AnyServer {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

#[test]
fn a_user_name_cannot_forge_lines_in_the_proxy_log() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.start();
    let key_path = lab.path().join("stranger");
    common::lab::keygen(&key_path, "stranger");
    let key = russh::keys::load_secret_key(&key_path, None).unwrap();
    let forged = "x\n2026-11-30T00:00:00.000000Z  INFO portcullis: FORGED admin@example.com logged in\x1b[2J";
    let port = lab.proxy_port;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = Arc::new(russh::client::Config::default());
        let mut handle = russh::client::connect(config, ("127.0.0.1", port), AnyServer)
            .await
            .unwrap();
        let key = russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None);
        let auth = handle.authenticate_publickey(forged, key).await.unwrap();
        assert!(!auth.success(), "an unlisted key was accepted");
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = stream.write_all(b"SSH-2.0-probe\r\n").await;
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.proxy_log().contains("unknown key") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = lab.proxy_log();
    assert!(log.contains("unknown key"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("FORGED") && !l.contains("unknown key")),
        "a forged line:\n{log}"
    );
    assert!(
        !log.contains('\x1b'),
        "an escape sequence reached the log:\n{log}"
    );
    assert!(log.contains("x\\n2026-11-30"), "{log}");
}

#[test]
fn one_connection_cannot_open_more_than_64_channels() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.start();
    let key = russh::keys::load_secret_key(lab.path().join("client/jdoe"), None).unwrap();
    let (port, sshd_port) = (lab.proxy_port, lab.sshd_port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (opened, refused) = runtime.block_on(async {
        let config = Arc::new(russh::client::Config::default());
        let mut handle = russh::client::connect(config, ("127.0.0.1", port), AnyServer)
            .await
            .unwrap();
        let key = russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None);
        let auth = handle.authenticate_publickey("jdoe", key).await.unwrap();
        assert!(auth.success());
        // A ProxyJump outer connection: each direct-tcpip channel is an inner
        // connection that holds its place until it ends.
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..70 {
            match handle
                .channel_open_direct_tcpip("127.0.0.1", u32::from(sshd_port), "127.0.0.1", 0)
                .await
            {
                Ok(channel) => held.push(channel),
                Err(_) => refused += 1,
            }
        }
        (held.len(), refused)
    });
    assert_eq!((opened, refused), (64, 6));
    assert!(lab.proxy_log().contains("64 are open on this connection"));
}
