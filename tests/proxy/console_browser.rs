//! The console in a real browser (headless Debian chromium through chromedriver):
//! sign-in at the real identity provider (a non-auditor refused), a session made by a
//! real `ssh` found in the table, its command log replayed in the page (the key picked
//! in the page, the log decrypted by the WebAssembly reader, the output found in the
//! player's terminal and by the search), and a live session ended from the page with
//! the `ssh` client disconnected. Screenshots land in target/test-artifacts/console.

use std::time::{Duration, Instant};

use super::common;
use super::common::browser::Browser;
use super::common::idp::Idp;
use super::{Lab, OutputExt, ensure_user};

/// Signs in at the provider's pages as `account`, from the console's sign-in page, and
/// returns when the browser is back at the console.
fn sign_in(browser: &Browser, console: &str, account: &str) {
    browser.goto(&format!("{console}/login"));
    browser.click_link("Sign in with the identity provider");
    let start = Instant::now();
    while !browser.url().starts_with(console) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stuck at the provider: {} {}",
            browser.url(),
            browser.body()
        );
        if browser.exists("input[name=login]") {
            browser.fill("input[name=login]", account);
            browser.fill("input[name=password]", "secret");
        }
        if browser.exists("button[type=submit]") {
            let before = browser.url();
            browser.click("button[type=submit]");
            let clicked = Instant::now();
            while browser.url() == before && clicked.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn an_auditor_replays_a_session_in_the_browser_and_ends_a_live_one() {
    ensure_user("jdoe");
    let port = common::lab::free_port();
    let console = format!("http://127.0.0.1:{port}");
    let back = format!("{console}/login/oidc/callback");
    let idp = Idp::start(&[("IDP_REDIRECT_URIS", back.as_str())]);
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.audit_loopback(true);
    lab.add_config(&idp.config(""));
    lab.add_config(&format!(
        "[recording]\npublic_key = \"sshkey.pub\"\ndir = \"command-logs\"\n\
         [console]\nlisten = \"127.0.0.1:{port}\"\nauditors_group = \"sre\"\n"
    ));
    lab.start();

    // A recorded terminal session. The shell prints 42 where the user typed $((6*7)),
    // so the marker is the target's output, not the echo of what was typed.
    lab.ssh_pty("jdoe", "jdoe", "echo replay-$((6*7))-marker\nexit\n")
        .success_or_panic("recorded session");
    let record = lab.wait_sessions(1)[0].clone();
    let id = record["id"].as_str().unwrap().to_string();
    let on_disk = std::fs::read(record["command_logs"][0].as_str().unwrap()).unwrap();
    assert!(!String::from_utf8_lossy(&on_disk).contains("replay-42-marker"));

    let browser = Browser::start();
    // Not in the auditors group: refused.
    sign_in(&browser, &console, "asmith");
    browser.wait_text("body", "not in the auditors group", Duration::from_secs(10));
    browser.screenshot("refused-non-auditor");
    browser.goto(&format!("{console}/sessions"));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());
    browser.clear_cookies();

    // An auditor: the session is in the table.
    sign_in(&browser, &console, "jdoe");
    browser.wait_text("main", "jdoe@example.com", Duration::from_secs(10));
    browser.screenshot("sessions");
    browser.click(&format!("a[href='/session/{id}']"));
    browser.wait_text("main", "20-network-audit.wasm", Duration::from_secs(10));
    browser.click_link("Replay");

    // The key is picked in the page; the page decrypts and plays.
    browser.fill("#key", &lab.path().join("sshkey").display().to_string());
    let status = browser.wait_text("#status", "Decrypted in this page", Duration::from_secs(20));
    assert!(status.contains("exit status 0"), "{status}");
    browser.fill("#query", "replay-42-marker");
    browser.click("#search button");
    let hits = browser.wait_text("#hits", "replay-42-marker", Duration::from_secs(5));
    assert!(!hits.contains("Not in the output"), "{hits}");
    browser.click("#hits button");
    let terminal = browser.wait_text(".ap-term", "replay-42-marker", Duration::from_secs(10));
    assert!(
        terminal.contains("echo replay-$((6*7))-marker"),
        "{terminal}"
    );
    browser.screenshot("replay");
    // Every request the page made: the page, its assets and the sealed bytes, all
    // fetched; nothing sent. The plaintext never went through the console.
    let requests = browser.run(
        "return performance.getEntriesByType('resource').map(e => e.name + ' ' + e.initiatorType)",
    );
    let requests: Vec<String> = requests
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for r in &requests {
        let path = r.strip_prefix(&console).unwrap_or(r);
        assert!(
            path.starts_with("/assets/")
                || path.starts_with("/console.css")
                || path.starts_with(&format!("/session/{id}/log/0 ")),
            "the page requested {r}"
        );
    }
    assert!(
        requests
            .iter()
            .any(|r| r.contains(&format!("/session/{id}/log/0 fetch"))),
        "{requests:?}"
    );
    let served = lab.proxy_log();
    assert!(served.contains("opened a command log's replay"), "{served}");

    // A live session appears on the open live page by itself, and is ended from it.
    browser.goto(&format!("{console}/live"));
    browser.wait_text("main", "0 session(s) running", Duration::from_secs(10));
    let (mut ssh, _) = lab.spawn_jump_until("jdoe", "jdoe", "echo started; sleep 60", "started");
    browser.wait_text("main", "1 session(s) running", Duration::from_secs(15));
    let live_id = lab
        .running_ids()
        .into_iter()
        .find(|r| *r != id)
        .expect("the running session");
    assert!(browser.exists(&format!("a[href='/session/{live_id}']")));
    browser.fill("input[name=reason]", "left a root shell open");
    browser.screenshot("live");
    browser.click("form[action$='/end'] button");
    let stderr = Lab::wait_disconnected(&mut ssh, Duration::from_secs(15));
    assert!(
        stderr.contains("ended by an auditor: left a root shell open"),
        "{stderr}"
    );
    browser.wait_text("main", "0 session(s) running", Duration::from_secs(10));
}
