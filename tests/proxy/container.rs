//! The container image (Containerfile, built by scripts/image from the binary under
//! test, no base image pulled), run by podman with a read-only root file system, as an
//! unprivileged user, with the configuration read-only and the state on a volume: a
//! session goes through it to the target, /healthz answers, SIGTERM drains.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .env(
            "CONTAINERS_CONF",
            common::root().join("tests/container/containers.conf"),
        )
        .args(args)
        .output()
        .expect("run podman (apt-get install podman runc: scripts/setup)")
}

/// Copies a directory tree (files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Removes the container and the image however the test ends.
struct Cleanup {
    name: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", &self.name]);
        let _ = podman(&["rmi", "-f", &self.image]);
    }
}

#[test]
fn the_image_serves_a_session_read_only_and_drains_on_sigterm() {
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    ensure_user("jdoe");
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    lab.start_sshd();
    let p = lab.path().to_path_buf();

    // /etc/portcullis: the lab's keys, CA, users and policies; /var/lib/portcullis: state.
    let etc = p.join("container-etc");
    copy_tree(&p.join("ca"), &etc.join("ca"));
    copy_tree(lab.policies.path(), &etc.join("policies"));
    std::fs::copy(p.join("host_key"), etc.join("host_key")).unwrap();
    std::fs::copy(p.join("users.toml"), etc.join("users.toml")).unwrap();
    let metrics_port = common::lab::free_port();
    let config = std::fs::read_to_string(common::root().join("examples/container/portcullis.toml"))
        .unwrap()
        .replace("0.0.0.0:2222", &format!("127.0.0.1:{}", lab.proxy_port))
        .replace("0.0.0.0:9187", &format!("127.0.0.1:{metrics_port}"));
    std::fs::write(etc.join("portcullis.toml"), config).unwrap();
    let state = p.join("container-state");
    std::fs::create_dir_all(&state).unwrap();
    for dir in [&etc, &state] {
        let ok = Command::new("chown")
            .args(["-R", "10001:10001"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    let name = format!("portcullis-test-{}", std::process::id());
    let image = format!("localhost/portcullis-test:{}", std::process::id());
    let _cleanup = Cleanup {
        name: name.clone(),
        image: image.clone(),
    };
    let built = Command::new(common::root().join("scripts/image"))
        .env(
            "CONTAINERS_CONF",
            common::root().join("tests/container/containers.conf"),
        )
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_portcullis"),
            "--tag",
            &image,
        ])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "scripts/image: {}",
        built.stderr_text()
    );

    let etc_mount = format!("{}:/etc/portcullis:ro", etc.display());
    let state_mount = format!("{}:/var/lib/portcullis", state.display());
    let run = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--read-only",
        "--network",
        "host",
        "-v",
        &etc_mount,
        "-v",
        &state_mount,
        &image,
    ]);
    assert!(run.status.success(), "podman run: {}", run.stderr_text());
    let inspect = podman(&[
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}}",
        &name,
    ]);
    assert_eq!(inspect.stdout_text().trim(), "true 10001:10001");

    // /healthz, then a session through the container to the target.
    let start = Instant::now();
    loop {
        let healthy = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_ok()
            && lifecycle::http(metrics_port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .ends_with("ok\n");
        if healthy {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no /healthz: {}",
            podman(&["logs", &name]).stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = lab.ssh_username_form("jdoe", "jdoe", "echo from-the-container");
    assert_eq!(
        out.stdout_text().trim(),
        "from-the-container",
        "{}\n{}",
        out.stderr_text(),
        podman(&["logs", &name]).stderr_text()
    );
    // The record is written once the proxy has seen the connection close.
    let start = Instant::now();
    loop {
        let records = std::fs::read_to_string(state.join("sessions.jsonl")).unwrap_or_default();
        if records.contains("\"action\":\"allow\"") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no session record in the state volume: {records:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGTERM: it stops accepting, drains, and exits cleanly.
    assert!(
        podman(&["kill", "--signal", "TERM", &name])
            .status
            .success()
    );
    let start = Instant::now();
    loop {
        let state = podman(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &name,
        ]);
        let state = state.stdout_text();
        if state.starts_with("exited") {
            assert_eq!(state.trim(), "exited 0");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "still {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = podman(&["logs", &name]).stderr_text();
    assert!(
        logs.contains("SIGTERM received") && logs.contains("shutting down"),
        "{logs}"
    );
}
