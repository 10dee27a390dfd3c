//! Shared harness of the end-to-end tests: builds the real policy components from
//! source (once per test process; cargo makes concurrent builds wait for each other),
//! lays out policy directories, and runs the real `portcullis` binary.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub mod browser;
pub mod idp;
pub mod lab;
pub mod postgres;
pub mod s3;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `portcullis` binary under test.
pub fn portcullis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

/// A cargo for the builds the tests run themselves (policy components, scaffolded
/// crates), without the outer build's compiler wrappers: scripts/test compiles the
/// workspace through clippy's driver, whose lints are for this workspace, not for
/// what the tests build.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for var in ["RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "CLIPPY_ARGS"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Builds the example policies and the hostile test guests for wasm32-wasip2 and
/// returns the directory holding the `.wasm` components.
pub fn wasm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = root();
        let target = root.join("target/wasm");
        for manifest in ["policies/Cargo.toml", "tests/guests/Cargo.toml"] {
            let out = cargo()
                .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
                .arg("--manifest-path")
                .arg(root.join(manifest))
                .arg("--target-dir")
                .arg(&target)
                .output()
                .expect("run cargo");
            assert!(
                out.status.success(),
                "building {manifest} for wasm32-wasip2 failed (is the target installed? \
                 `rustup target add wasm32-wasip2`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        target.join("wasm32-wasip2/release")
    })
}

/// The path of a built component, e.g. `component("default_principal")`.
pub fn component(crate_name: &str) -> PathBuf {
    let p = wasm_dir().join(format!("{crate_name}.wasm"));
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// A policy directory: `(file name, component crate)` pairs, and configurations.
pub struct PolicyDir {
    pub dir: tempfile::TempDir,
}

impl PolicyDir {
    pub fn new() -> Self {
        PolicyDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Installs a component under `file_name`, the way an operator would: written to a
    /// hidden temporary name, then renamed into place.
    pub fn module(&self, file_name: &str, crate_name: &str) -> &Self {
        let tmp = self.path().join(format!(".{file_name}.tmp"));
        std::fs::copy(component(crate_name), &tmp).unwrap();
        std::fs::rename(&tmp, self.path().join(file_name)).unwrap();
        self
    }

    pub fn file(&self, file_name: &str, contents: &[u8]) -> &Self {
        let tmp = self.path().join(format!(".{file_name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.path().join(file_name)).unwrap();
        self
    }

    pub fn remove(&self, file_name: &str) -> &Self {
        std::fs::remove_file(self.path().join(file_name)).unwrap();
        self
    }
}

/// Runs `portcullis policy eval` and returns its JSON output.
pub fn eval(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = portcullis()
        .args(["policy", "eval", "--policies"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "policy eval {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
