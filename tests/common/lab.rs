//! A lab for end-to-end tests: a real OpenSSH `sshd` on a loopback port trusting the
//! gateway CA, the real `portcullis serve` in front of it, and an OpenSSH client
//! configuration for a user with a fresh key. Everything lives in a temporary
//! directory; processes are killed when the lab is dropped.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{PolicyDir, portcullis};

/// A free loopback port (bound, then released).
/// A port nothing listens on now, and that no other lab of this test process was given
/// (the kernel hands the same free port out again, and the tests of one binary run
/// at the same time).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits until `child` writes `listening` (which names its port) to `log`. A port that
/// merely accepts connections proves nothing: ports come from `free_port`, and another
/// test's process may have taken this one first, in which case `child` fails to bind.
fn wait_listening_logged(what: &str, child: &mut Child, log: &Path, listening: &str) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(listening) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before {listening:?}:\n{text}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not log {listening:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes sure a Unix account exists and can log in with a key (locked with `*`, not
/// `!`: sshd without PAM refuses `!`-locked accounts).
pub fn ensure_user(name: &str) {
    let exists = Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    if !exists.success() {
        let out = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", name])
            .output()
            .unwrap();
        // Another test process may have created it meanwhile.
        let again = Command::new("id")
            .arg(name)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(
            again.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Command::new("usermod")
        .args(["-p", "*", name])
        .status()
        .unwrap();
    // A home left by an earlier account of the same name (useradd -m keeps it as it
    // is) would not be writable: sshd's xauth needs to write there.
    let passwd = Command::new("getent")
        .args(["passwd", name])
        .output()
        .unwrap();
    let passwd = String::from_utf8_lossy(&passwd.stdout).into_owned();
    let fields: Vec<&str> = passwd.trim_end().split(':').collect();
    if let (Some(uid), Some(home)) = (fields.get(2), fields.get(5)) {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(home).map(|m| m.uid().to_string());
        if owner.is_ok_and(|owner| owner != *uid) {
            Command::new("chown")
                .args(["-R", &format!("{name}:"), home])
                .status()
                .unwrap();
        }
    }
}

pub fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The lab.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub policies: PolicyDir,
    pub sshd_port: u16,
    pub proxy_port: u16,
    sshd: Option<Child>,
    proxy: Option<Child>,
    /// Added to the target's sshd_config, before its `LogLevel` (sshd takes a
    /// keyword's first value, so this may set another).
    pub sshd_extra: String,
    /// When set, the proxy runs with this open-file limit (soft and hard).
    pub proxy_file_limit: Option<u64>,
    /// Network namespaces (`ip netns`) the target's sshd, the proxy and the clients
    /// run in, when set.
    pub ns_target: Option<String>,
    pub ns_proxy: Option<String>,
    pub ns_client: Option<String>,
}

/// Runs `cmd` to its end, writing `input` (if any) to its stdin.
pub fn output_with_input(mut cmd: Command, input: Option<&str>) -> Output {
    use std::io::Write;
    let Some(input) = input else {
        return cmd.stdin(Stdio::null()).output().unwrap();
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `program`, run in network namespace `ns` when given.
pub fn command_in(ns: &Option<String>, program: &str) -> Command {
    match ns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
    }
}

impl Lab {
    /// Sets up a lab with the given users (`email`, groups) whose keys are
    /// `client/<local part>`; policies are added by the caller, then [`Lab::start`].
    pub fn new(users: &[(&str, &[&str])]) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let policies = PolicyDir::new();
        let (sshd_port, proxy_port) = (free_port(), free_port());
        let p = dir.path().to_path_buf();
        std::fs::create_dir_all(p.join("client")).unwrap();
        std::fs::create_dir_all(p.join("target")).unwrap();
        std::fs::write(
            p.join("portcullis.toml"),
            format!(
                "[server]\nlisten = \"127.0.0.1:{proxy_port}\"\nshutdown_grace = \"10s\"\n\
                 [policy]\ndir = \"{}\"\nreload_debounce = \"100ms\"\n",
                policies.path().display()
            ),
        )
        .unwrap();
        let lab = Lab {
            dir,
            policies,
            sshd_port,
            proxy_port,
            sshd: None,
            proxy: None,
            sshd_extra: String::new(),
            proxy_file_limit: None,
            ns_target: None,
            ns_proxy: None,
            ns_client: None,
        };
        lab.portcullis(&["ca", "init"]).success_or_panic("ca init");
        keygen(&p.join("host_key"), "portcullis-host");
        let mut users_toml = String::new();
        for (email, groups) in users {
            let name = email.split('@').next().unwrap();
            keygen(&p.join(format!("client/{name}")), email);
            let key = std::fs::read_to_string(p.join(format!("client/{name}.pub"))).unwrap();
            users_toml.push_str(&format!(
                "[[user]]\nemail = \"{email}\"\ngroups = {groups:?}\nkeys = [\"{}\"]\n\n",
                key.trim()
            ));
        }
        std::fs::write(p.join("users.toml"), users_toml).unwrap();
        keygen(&p.join("target/ssh_host_ed25519_key"), "target");
        lab.trust_ca();
        lab.write_client_config();
        lab
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes lines into the `[server]` section of portcullis.toml (before the proxy
    /// starts); returns the configuration as it now stands.
    pub fn server_config(&self, lines: &str) -> String {
        let path = self.path().join("portcullis.toml");
        let text = std::fs::read_to_string(&path).unwrap().replacen(
            "[server]\n",
            &format!("[server]\n{lines}"),
            1,
        );
        std::fs::write(&path, &text).unwrap();
        text
    }

    /// Appends to portcullis.toml (before the proxy starts).
    pub fn add_config(&self, text: &str) {
        let path = self.path().join("portcullis.toml");
        let mut config = std::fs::read_to_string(&path).unwrap();
        config.push_str(text);
        std::fs::write(path, config).unwrap();
    }

    /// Sends a signal (`TERM`, `HUP`...) to the proxy without waiting.
    pub fn signal_proxy(&self, signal: &str) {
        let pid = self.proxy.as_ref().expect("proxy running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the proxy to exit on its own; returns whether it did within `within`.
    pub fn wait_proxy_exit(&mut self, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(c) = self.proxy.as_mut()
                && c.try_wait().unwrap().is_some()
            {
                self.proxy = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills the proxy without letting it clean up (kill -9).
    pub fn kill_proxy(&mut self) {
        if let Some(mut c) = self.proxy.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `portcullis SUBCOMMAND... --config portcullis.toml`.
    pub fn portcullis(&self, args: &[&str]) -> Output {
        portcullis()
            .args(args)
            .arg("--config")
            .arg(self.path().join("portcullis.toml"))
            .output()
            .unwrap()
    }

    /// Writes the target's TrustedUserCAKeys from `portcullis ca show`.
    pub fn trust_ca(&self) {
        let out = self.portcullis(&["ca", "show"]).success_or_panic("ca show");
        std::fs::write(self.path().join("target/ca.pub"), out.stdout).unwrap();
    }

    fn write_client_config(&self) {
        let p = self.path();
        let host_pub = std::fs::read_to_string(p.join("host_key.pub")).unwrap();
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let ca_line = self
            .portcullis(&["ca", "show", "--known-hosts"])
            .success_or_panic("ca show --known-hosts");
        std::fs::write(
            p.join("client/known_hosts"),
            format!(
                "[127.0.0.1]:{} {}\n{}",
                self.proxy_port,
                host_pub.join(" "),
                String::from_utf8_lossy(&ca_line.stdout)
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("client/ssh_config"),
            format!(
                "Host portcullis\n  HostName 127.0.0.1\n  Port {}\nHost *\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n  \
                 LogLevel ERROR\n",
                self.proxy_port,
                p.join("client/known_hosts").display()
            ),
        )
        .unwrap();
    }

    /// Starts (or restarts) sshd on the target port.
    pub fn start_sshd(&mut self) {
        self.stop_sshd();
        let p = self.path();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let config = p.join("target/sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nHostKey {}\nTrustedUserCAKeys {}\nAuthorizedKeysFile none\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nSubsystem sftp internal-sftp\nPidFile none\n{}LogLevel VERBOSE\n",
                p.join("target/ssh_host_ed25519_key").display(),
                p.join("target/ca.pub").display(),
                self.sshd_extra
            ),
        )
        .unwrap();
        let log = std::fs::File::create(p.join("target/sshd.log")).unwrap();
        let mut child = command_in(&self.ns_target, "/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .args(["-p", &self.sshd_port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run /usr/sbin/sshd (apt-get install openssh-server)");
        wait_listening_logged(
            "sshd",
            &mut child,
            &p.join("target/sshd.log"),
            &format!("Server listening on 127.0.0.1 port {}.", self.sshd_port),
        );
        self.sshd = Some(child);
    }

    pub fn stop_sshd(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The target's sshd log so far.
    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.path().join("target/sshd.log")).unwrap_or_default()
    }

    /// Starts (or restarts) the proxy.
    pub fn start_proxy(&mut self) {
        self.stop_proxy();
        let log = std::fs::File::create(self.path().join("proxy.log")).unwrap();
        let mut command = match self.proxy_file_limit {
            None => command_in(&self.ns_proxy, env!("CARGO_BIN_EXE_portcullis")),
            Some(n) => {
                let mut c = command_in(&self.ns_proxy, "prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_portcullis"));
                c
            }
        };
        let mut child = command
            .args(["serve", "--config"])
            .arg(self.path().join("portcullis.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_listening_logged(
            "portcullis",
            &mut child,
            &self.path().join("proxy.log"),
            &format!("listen=127.0.0.1:{} ", self.proxy_port),
        );
        self.proxy = Some(child);
    }

    pub fn stop_proxy(&mut self) {
        if let Some(mut c) = self.proxy.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The proxy's process id.
    pub fn proxy_pid(&self) -> u32 {
        self.proxy.as_ref().expect("proxy running").id()
    }

    /// The proxy's log so far.
    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.path().join("proxy.log")).unwrap_or_default()
    }

    /// Starts sshd and the proxy.
    pub fn start(&mut self) {
        self.start_sshd();
        self.start_proxy();
    }

    /// Base arguments of an OpenSSH client run as `user` (the key `client/<user>`). The
    /// key goes in a per-user configuration file, because ProxyJump passes `-F` on to
    /// the jump connection but not `-i`.
    pub fn client_args(&self, user: &str) -> Vec<String> {
        let p = self.path();
        let base = std::fs::read_to_string(p.join("client/ssh_config")).unwrap();
        let config = p.join(format!("client/{user}.config"));
        let key = p.join(format!("client/{user}"));
        std::fs::write(&config, format!("IdentityFile {}\n{base}", key.display())).unwrap();
        vec!["-F".into(), config.display().to_string()]
    }

    /// The arguments that reach the target as LOGIN by ProxyJump through the proxy:
    /// `-J USER@portcullis -p SSHD_PORT LOGIN@127.0.0.1`.
    pub fn jump_args(&self, user: &str, login: &str) -> Vec<String> {
        vec![
            "-J".into(),
            format!("{user}@portcullis"),
            "-p".into(),
            self.sshd_port.to_string(),
            format!("{login}@127.0.0.1"),
        ]
    }

    /// The arguments that reach the target as LOGIN by the username form:
    /// `-p PROXY 'LOGIN%127.0.0.1:SSHD_PORT@127.0.0.1'`.
    pub fn username_form_args(&self, login: &str) -> Vec<String> {
        vec![
            "-p".into(),
            self.proxy_port.to_string(),
            format!("{login}%127.0.0.1:{}@127.0.0.1", self.sshd_port),
        ]
    }

    /// `ssh -J portcullis LOGIN@127.0.0.1 -p SSHD_PORT COMMAND` as `user`.
    pub fn ssh_jump(&self, user: &str, login: &str, command: &str) -> Output {
        let mut args = self.jump_args(user, login);
        args.push(command.into());
        self.ssh(user, &args)
    }

    /// `ssh -p PROXY 'LOGIN%127.0.0.1:SSHD_PORT@127.0.0.1' COMMAND` as `user`.
    pub fn ssh_username_form(&self, user: &str, login: &str, command: &str) -> Output {
        let mut args = self.username_form_args(login);
        args.push(command.into());
        self.ssh(user, &args)
    }

    /// Runs `ssh` with the lab's client configuration as `user` and extra arguments.
    pub fn ssh<S: AsRef<std::ffi::OsStr>>(&self, user: &str, args: &[S]) -> Output {
        command_in(&self.ns_client, "ssh")
            .args(self.client_args(user))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts `ssh -J portcullis LOGIN@127.0.0.1 COMMAND` as `user` in the background and
    /// returns once its output contains `marker` (the session is then established and
    /// data has gone through the proxy). Returns the client (its stderr piped) and the
    /// output so far.
    pub fn spawn_jump_until(
        &self,
        user: &str,
        login: &str,
        command: &str,
        marker: &str,
    ) -> (Child, Vec<u8>) {
        use std::io::Read;
        let mut child = command_in(&self.ns_client, "ssh")
            .args(self.client_args(user))
            .args(self.jump_args(user, login))
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.as_mut().unwrap();
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "the session ended before printing {marker:?}");
            // Only the new bytes and the marker's length before them: a bulk output
            // is not searched again from the start at each read.
            let from = seen.len().saturating_sub(marker.len());
            seen.extend_from_slice(&buf[..n]);
            let fresh = &seen[from..];
            if fresh.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                break;
            }
        }
        (child, seen)
    }

    /// Waits up to `within` for `client` to exit (ended by the proxy) and returns what
    /// it printed on stderr.
    pub fn wait_disconnected(client: &mut Child, within: Duration) -> String {
        use std::io::Read;
        let start = Instant::now();
        while client.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < within, "the client was not disconnected");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut stderr = String::new();
        if let Some(mut e) = client.stderr.take() {
            e.read_to_string(&mut stderr).unwrap();
        }
        stderr
    }

    /// The auditor's key pair (`sshkey`, `sshkey.pub`) in the lab's directory, and
    /// policies that audit every session to 127.0.0.1 (with command logging when
    /// `command_logging`), then the default principal. The `[recording]` section is
    /// the test's to add.
    pub fn audit_loopback(&mut self, command_logging: bool) -> &mut Lab {
        let out = portcullis()
            .args(["keygen", "-o"])
            .arg(self.path().join("sshkey"))
            .output()
            .unwrap();
        out.success_or_panic("keygen");
        self.policies
            .module("20-network-audit.wasm", "network_audit")
            .file(
                "20-network-audit.toml",
                format!(
                    "[[rule]]\ndestinations = [\"127.0.0.1\"]\ncommand_logging = {command_logging}\n"
                )
                .as_bytes(),
            )
            .module("90-default-principal.wasm", "default_principal");
        self
    }

    /// An interactive session with a terminal (`ssh -tt`) by ProxyJump as `user`,
    /// typing `input`.
    pub fn ssh_pty(&self, user: &str, login: &str, input: &str) -> Output {
        self.ssh_pty_with(user, login, &[], input)
    }

    /// [`Lab::ssh_pty`] with extra `ssh` options.
    pub fn ssh_pty_with(&self, user: &str, login: &str, extra: &[&str], input: &str) -> Output {
        let mut cmd = command_in(&self.ns_client, "ssh");
        cmd.args(self.client_args(user))
            .args(extra)
            .args([
                "-tt",
                "-J",
                &format!("{user}@portcullis"),
                "-p",
                &self.sshd_port.to_string(),
            ])
            .arg(format!("{login}@127.0.0.1"));
        output_with_input(cmd, Some(input))
    }

    /// Runs `scp` or `sftp` (`tool`) through the proxy by ProxyJump as `user`.
    pub fn file_tool(&self, tool: &str, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = command_in(&self.ns_client, tool);
        cmd.args(self.client_args(user))
            .args([
                "-J",
                &format!("{user}@portcullis"),
                "-P",
                &self.sshd_port.to_string(),
            ])
            .args(args);
        output_with_input(cmd, stdin)
    }

    /// The ids of the sessions running now (their running records).
    pub fn running_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.path().join("sessions.jsonl.running"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_suffix(".json").map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The session log records so far.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.path().join("sessions.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits for the session log to hold `n` records (a record is written when the
    /// proxy has seen the connection close, just after the client exits).
    pub fn wait_sessions(&self, n: usize) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let s = self.sessions();
            if s.len() >= n || start.elapsed() > Duration::from_secs(10) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn known_targets(&self) -> PathBuf {
        self.path().join("known_targets")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_proxy();
        self.stop_sshd();
    }
}

/// Asserting on command output.
pub trait OutputExt {
    fn success_or_panic(self, what: &str) -> Output;
    fn stdout_text(&self) -> String;
    fn stderr_text(&self) -> String;
}

impl OutputExt for Output {
    fn success_or_panic(self, what: &str) -> Output {
        assert!(
            self.status.success(),
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        );
        self
    }
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}
