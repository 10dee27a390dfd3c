//! Forwarding: -L, -R, agent and X11, each with its permission; channels a target
//! opens unasked.

use super::*;

/// Starts `ssh -N FLAG PORT:127.0.0.1:SSHD_PORT` through the proxy as `user`: `-L`
/// listens on PORT here, `-R` on the target's side (the same machine); either way PORT
/// leads to the target's sshd.
fn ssh_forward(lab: &Lab, user: &str, flag: &str, port: u16) -> std::process::Child {
    std::process::Command::new("ssh")
        .args(lab.client_args(user))
        .args(["-N", "-o", "ExitOnForwardFailure=yes", flag])
        .arg(format!("{port}:127.0.0.1:{}", lab.sshd_port))
        .args(lab.jump_args(user, user))
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
        .arg(flag)
        .args(lab.jump_args(user, user))
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
