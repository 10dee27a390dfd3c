//! Sessions end to end: exec, pty, scp/sftp, login mapping, refusals, environment,
//! multiplexed channels, key re-exchanges under load.

use super::*;

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
    // The same file transfer without the subsystem: sftp-server as a command, and
    // scp's old protocol (scp -O runs `scp -f` on the target).
    let by_command = lab.ssh_jump("jdoe", "jdoe", "/usr/lib/openssh/sftp-server");
    assert_eq!(
        by_command.status.code(),
        Some(1),
        "{}",
        by_command.stderr_text()
    );
    assert!(
        by_command
            .stderr_text()
            .contains("file transfer by command"),
        "{}",
        by_command.stderr_text()
    );
    let scp = lab.file_tool(
        "scp",
        "jdoe",
        &[
            "-O",
            "jdoe@127.0.0.1:/etc/hostname",
            &lab.path().join("copy").display().to_string(),
        ],
        None,
    );
    assert!(!scp.status.success(), "scp -O copied a file");
    assert!(!lab.path().join("copy").exists());
    let sessions = lab.wait_sessions(4);
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
fn environment_the_target_refuses_does_not_fail_the_command() {
    // Debian's ssh_config sends LANG and LC_*; a stock sshd accepts none of them and
    // answers each with a failure, which belongs to the env request, not to exec.
    ensure_user("jdoe");
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    let env = ["-o", "SetEnv=LANG=C.UTF-8 LC_ALL=C"];
    let command = "echo ran; exit 3";
    for way in [
        lab.jump_args("jdoe", "jdoe"),
        lab.username_form_args("jdoe"),
    ] {
        let args: Vec<&str> = env
            .into_iter()
            .chain(way.iter().map(String::as_str))
            .chain([command])
            .collect();
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

#[test]
fn environment_variables_are_asked_of_the_policies() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.policies
        .module("10-conditions.wasm", "conditions")
        .file("10-conditions.toml", b"deny_env = [\"SECRET_*\"]\n")
        .module("90-default-principal.wasm", "default_principal");
    lab.sshd_extra = "AcceptEnv LC_* SECRET_*\n".into();
    lab.start();
    let jump = lab.jump_args("jdoe", "jdoe");
    let args: Vec<&str> = ["-o", "SetEnv=LC_PORTCULLIS=passed SECRET_TOKEN=leaked"]
        .into_iter()
        .chain(jump.iter().map(String::as_str))
        .chain(["echo \"[$LC_PORTCULLIS][$SECRET_TOKEN]\""])
        .collect();
    let out = lab.ssh("jdoe", &args);
    assert_eq!(out.stdout_text(), "[passed][]\n", "{}", out.stderr_text());
    let sessions = lab.wait_sessions(1);
    let refused = sessions[0]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "env:SECRET_TOKEN")
        .unwrap_or_else(|| panic!("no record of the refusal: {sessions:#?}"));
    assert_eq!(refused["allowed"], false);
}

/// The ciphers an OpenSSH client run with `-v` says it negotiated, one per connection
/// (a ProxyJump's outer connection is the `ssh -W` that `-v` is passed on to).
fn negotiated_ciphers(out: &std::process::Output) -> Vec<String> {
    out.stderr_text()
        .lines()
        .filter_map(|l| l.split_once("kex: server->client cipher: "))
        .filter_map(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        .collect()
}

/// A lab for jdoe with `[server]` settings added to the defaults.
fn lab_with_server_config(settings: &str) -> Lab {
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    lab.server_config(settings);
    lab.start();
    lab
}

#[test]
fn the_proxy_picks_the_cipher_from_its_list_and_lets_every_client_in() {
    // The default list, in the proxy's order: OpenSSH's own client lists ChaCha20
    // first and still gets AES-128-GCM, by the user-name form and on both connections
    // of a ProxyJump; clients limited to ChaCha20 or CTR get in with those.
    let lab = default_lab(&[("jdoe@example.com", &[])]);
    ensure_user("jdoe");
    let dest = format!("jdoe%127.0.0.1:{}@127.0.0.1", lab.sshd_port);
    let port = lab.proxy_port.to_string();
    let jump = lab.jump_args("jdoe", "jdoe");
    let jump: Vec<&str> = jump.iter().map(String::as_str).collect();
    let cases: [(&[&str], &[&str], &[&str]); 5] = [
        (&[], &["-p", &port, &dest], &["aes128-gcm@openssh.com"]),
        (
            &[],
            &jump,
            &["aes128-gcm@openssh.com", "aes128-gcm@openssh.com"],
        ),
        (
            &["-c", "chacha20-poly1305@openssh.com"],
            &["-p", &port, &dest],
            &["chacha20-poly1305@openssh.com"],
        ),
        (
            &["-c", "aes256-ctr"],
            &["-p", &port, &dest],
            &["aes256-ctr"],
        ),
        // Of the client's list, the proxy's first: AES-256-GCM before ChaCha20.
        (
            &["-c", "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com"],
            &["-p", &port, &dest],
            &["aes256-gcm@openssh.com"],
        ),
    ];
    for (cipher, to, expected) in cases {
        let args: Vec<&str> = ["-v"]
            .iter()
            .chain(cipher)
            .chain(to)
            .chain(&["echo ok"])
            .copied()
            .collect();
        let out = lab.ssh("jdoe", &args);
        assert_eq!(
            out.stdout_text().trim(),
            "ok",
            "{args:?}: {}",
            out.stderr_text()
        );
        assert_eq!(negotiated_ciphers(&out), expected, "{args:?}");
    }
    drop(lab);

    // A list of one: a client limited to ChaCha20 finds no match, and says so.
    let lab = lab_with_server_config("ciphers = [\"aes256-gcm@openssh.com\"]\n");
    let dest = format!("jdoe%127.0.0.1:{}@127.0.0.1", lab.sshd_port);
    let port = lab.proxy_port.to_string();
    let chacha = ["-c", "chacha20-poly1305@openssh.com"];
    let out = lab.ssh(
        "jdoe",
        &[
            chacha[0],
            chacha[1],
            "-o",
            "LogLevel=INFO",
            "-p",
            &port,
            &dest,
            "echo no",
        ],
    );
    assert!(!out.status.success());
    assert!(
        out.stderr_text().contains("no matching cipher"),
        "{}",
        out.stderr_text()
    );
    drop(lab);

    // The client's order, when configured: OpenSSH's first choice, ChaCha20.
    let lab = lab_with_server_config("cipher_order = \"client\"\n");
    let dest = format!("jdoe%127.0.0.1:{}@127.0.0.1", lab.sshd_port);
    let port = lab.proxy_port.to_string();
    let out = lab.ssh("jdoe", &["-v", "-p", &port, &dest, "echo ok"]);
    assert_eq!(out.stdout_text().trim(), "ok", "{}", out.stderr_text());
    assert_eq!(negotiated_ciphers(&out), ["chacha20-poly1305@openssh.com"]);
}

#[test]
fn transfers_survive_key_re_exchanges_on_both_legs() {
    // The client and the target's sshd both start a new key exchange after every MiB,
    // so each direction of a transfer crosses several on each leg of the proxy: its
    // keys change under a full window of channel data. Toward the client the cipher
    // is AES-256-GCM, sealed from where the data lies (third_party/README.md, change 7).
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    lab.sshd_extra = "RekeyLimit 1M\nLogLevel DEBUG1\n".into();
    lab.server_config("ciphers = [\"aes256-gcm@openssh.com\"]\n");
    lab.start();
    let data: Vec<u8> = (0..8_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let remote = format!("/tmp/portcullis-e2e-rekey-{}.bin", lab.sshd_port);
    std::fs::write(&remote, &data).unwrap();
    std::fs::set_permissions(&remote, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let dest = format!("jdoe%127.0.0.1:{}@127.0.0.1", lab.sshd_port);
    let port = lab.proxy_port.to_string();
    let client = |command: &str, stdin: std::process::Stdio| {
        std::process::Command::new("ssh")
            .args(lab.client_args("jdoe"))
            .args(["-v", "-o", "RekeyLimit=1M", "-p", &port, &dest, command])
            .stdin(stdin)
            .output()
            .unwrap()
    };
    // Each key exchange, the first and the re-exchanges, ends with NEWKEYS.
    let exchanges = |log: &str| log.matches("SSH2_MSG_NEWKEYS received").count();

    let down = client(&format!("cat {remote}"), std::process::Stdio::null());
    std::fs::remove_file(&remote).unwrap();
    assert!(down.status.success(), "{}", down.stderr_text());
    assert!(down.stdout == data, "the download differs");
    assert!(
        exchanges(&down.stderr_text()) >= 4,
        "the client re-keyed too little: {}",
        down.stderr_text()
    );

    let local = lab.path().join("upload.bin");
    std::fs::write(&local, &data).unwrap();
    let up = client(
        &format!("cat > {remote}.up"),
        std::fs::File::open(&local).unwrap().into(),
    );
    let uploaded = std::fs::read(format!("{remote}.up"));
    let _ = std::fs::remove_file(format!("{remote}.up"));
    assert!(up.status.success(), "{}", up.stderr_text());
    assert!(uploaded.unwrap() == data, "the upload differs");
    assert!(exchanges(&up.stderr_text()) >= 4, "{}", up.stderr_text());
    // The target's side of the proxy re-keyed as often (sshd logs each exchange).
    assert!(
        exchanges(&lab.sshd_log()) >= 8,
        "the target re-keyed too little: {}",
        lab.sshd_log()
    );
}
