//! A real OpenID Provider for the single sign-on tests: `oidc-provider` (npm, pinned
//! in `tests/idp/package-lock.json`) run by `tests/idp/server.mjs` on a loopback port,
//! and the askpass program (`tests/idp/askpass.mjs`) that approves device logins at it
//! as a user would in a browser.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::lab::free_port;
use super::root;

/// The provider's directory, its npm packages installed (once per test process).
pub fn idp_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("tests/idp");
        if !dir.join("node_modules/oidc-provider/package.json").exists() {
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .output()
                .expect("run npm (node 20 and npm are needed: scripts/setup)");
            assert!(
                out.status.success(),
                "npm ci in tests/idp failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
}

/// The provider, killed on drop.
pub struct Idp {
    pub port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl Idp {
    /// Starts a provider with `env` (`IDP_DEVICE_CODE_TTL`, `IDP_TAMPER`: see
    /// server.mjs).
    pub fn start(env: &[(&str, &str)]) -> Idp {
        let mut idp = Idp {
            port: free_port(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            log: tempfile::NamedTempFile::new().unwrap(),
        };
        idp.run();
        idp
    }

    fn run(&mut self) {
        let dir = idp_dir();
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .arg(self.port.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(self.log.reopen().unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("run node");
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            if text.contains("listening") {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the test provider exited with {status}: {text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the test provider did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Restarts the provider on the same port: it comes back with new signing keys.
    pub fn restart(&mut self) {
        self.stop();
        std::fs::write(self.log.path(), "").unwrap();
        self.run();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `[identity.oidc]` section for this provider, with `extra` lines.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[identity.oidc]\nissuer = \"{}\"\nclient_id = \"portcullis\"\n\
             allowed_domains = [\"example.com\"]\n{extra}",
            self.issuer()
        )
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The askpass program and what it is told to do: approve as `account`, `deny`, or
/// `ignore`. Its calls are counted in a file.
pub struct Askpass {
    pub account: String,
    pub action: String,
    log: tempfile::NamedTempFile,
}

impl Askpass {
    pub fn new(account: &str, action: &str) -> Askpass {
        Askpass {
            account: account.into(),
            action: action.into(),
            log: tempfile::NamedTempFile::new().unwrap(),
        }
    }

    /// The environment that makes `ssh` ask it (and never a terminal).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "SSH_ASKPASS".into(),
                idp_dir().join("askpass.mjs").display().to_string(),
            ),
            ("SSH_ASKPASS_REQUIRE".into(), "force".into()),
            ("DISPLAY".into(), ":0".into()),
            ("ASKPASS_LOG".into(), self.log.path().display().to_string()),
            ("ASKPASS_ACCOUNT".into(), self.account.clone()),
            ("ASKPASS_DO".into(), self.action.clone()),
        ]
    }

    /// The prompts it was shown so far.
    pub fn prompts(&self) -> Vec<String> {
        std::fs::read_to_string(self.log.path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
