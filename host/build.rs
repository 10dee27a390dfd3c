//! Builds the console's replay assets into the binary (docs/console.md):
//!
//! - `decrypt.wasm`: host/console-web (the command-log reader of host/cmdlog) built
//!   for wasm32-unknown-unknown, which decrypts in the auditor's browser;
//! - `player.js` / `player.css`: asciinema-player from npm, pinned in
//!   host/console-web/package-lock.json and installed by scripts/setup.
//!
//! The module is built by a nested cargo in its own target directory
//! (`target/console-web`) so it never waits on the outer build's lock, with the
//! outer build's wrappers and flags (clippy, sanitizers) left out: they are for the
//! host's code, not the page's.

use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env("OUT_DIR"));
    let web = manifest.join("console-web");
    for watched in [
        "console-web/src",
        "console-web/Cargo.toml",
        "cmdlog/src",
        "cmdlog/Cargo.toml",
    ] {
        println!("cargo::rerun-if-changed={watched}");
    }
    println!("cargo::rerun-if-changed=../Cargo.lock");
    build_wasm(&manifest, &out);
    copy_player(&web, &out);
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| fail(&format!("{name} is not set")))
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

/// The outermost target directory: the ancestor of OUT_DIR cargo tagged.
fn target_dir(out: &Path) -> PathBuf {
    out.ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out.to_path_buf())
}

fn build_wasm(manifest: &Path, out: &Path) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if !Path::new(&sysroot)
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .is_dir()
    {
        fail(&format!(
            "the console's replay page is built for {WASM_TARGET}, which this toolchain \
             lacks: run `rustup target add {WASM_TARGET}` (scripts/setup does)"
        ));
    }
    let target_dir = target_dir(out).join("console-web");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .args(["-p", "portcullis-console-web", "--target", WASM_TARGET])
        .arg("--manifest-path")
        .arg(manifest.join("../Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s");
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "building the console's decryptor (host/console-web) for {WASM_TARGET} failed ({s})"
        )),
        Err(e) => fail(&format!("cannot run cargo to build host/console-web: {e}")),
    }
    let wasm = target_dir
        .join(WASM_TARGET)
        .join("release/portcullis_console_web.wasm");
    copy(&wasm, &out.join("decrypt.wasm"));
}

fn copy_player(web: &Path, out: &Path) {
    let bundle = web.join("node_modules/asciinema-player/dist/bundle");
    for (from, to) in [
        ("asciinema-player.min.js", "player.js"),
        ("asciinema-player.css", "player.css"),
    ] {
        let from = bundle.join(from);
        println!("cargo::rerun-if-changed={}", from.display());
        if !from.is_file() {
            fail(&format!(
                "{} is missing: the console bundles the terminal player from npm; run \
                 `npm ci --prefix host/console-web` (scripts/setup does)",
                from.display()
            ));
        }
        copy(&from, &out.join(to));
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        fail(&format!(
            "cannot copy {} to {}: {e}",
            from.display(),
            to.display()
        ));
    }
}
