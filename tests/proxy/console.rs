//! The auditors' web console over real HTTP: sign-in with the token, the session
//! table and its filters, a session's record and its sealed command log (byte for byte
//! the file the proxy wrote, no plaintext), and a live session ended from the console
//! with the real ssh client disconnected.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use super::common;
use super::common::idp::{Idp, idp_dir};
use super::{Lab, OutputExt, ensure_user};

pub(super) const TOKEN: &str = "a-console-token-for-the-tests-0123456789";

/// Sends one request (with `Connection: close`) and returns the status, the headers
/// (lower-case names) and the body.
pub(super) fn request(
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        // A bare value is the console's session cookie.
        if c.contains('=') {
            req.push_str(&format!("Cookie: {c}\r\n"));
        } else {
            req.push_str(&format!("Cookie: portcullis_console={c}\r\n"));
        }
    }
    let body = form.unwrap_or("");
    if form.is_some() {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

pub(super) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub(super) fn text(r: &(u16, Vec<(String, String)>, Vec<u8>)) -> String {
    String::from_utf8_lossy(&r.2).to_string()
}

#[test]
fn auditors_sign_in_see_sessions_download_sealed_logs_and_end_a_live_session() {
    ensure_user("jdoe");
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.audit_loopback(true);
    let token_file = lab.path().join("console-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = common::lab::free_port();
    lab.add_config(&format!(
        "[recording]\npublic_key = \"sshkey.pub\"\ndir = \"command-logs\"\n\
         [console]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"console-token\"\n"
    ));
    lab.start();

    // Signed out: every page sends to the sign-in; a wrong token is refused.
    let r = request(port, "GET", "/sessions", None, None);
    assert_eq!((r.0, header(&r.1, "location")), (303, Some("/login")));
    let r = request(port, "POST", "/login", None, Some("token=wrong"));
    assert_eq!(r.0, 401);
    let r = request(
        port,
        "POST",
        "/login",
        None,
        Some(&format!("token={TOKEN}")),
    );
    assert_eq!(r.0, 303, "{}", text(&r));
    let set_cookie = header(&r.1, "set-cookie").unwrap().to_string();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = session_cookie(&r.1);
    let csp = header(&r.1, "content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    // A recorded session shows in the table, filters find it or not.
    lab.ssh_jump("jdoe", "jdoe", "echo the-console-must-not-see-this")
        .success_or_panic("recorded session");
    let record = lab.wait_sessions(1)[0].clone();
    let id = record["id"].as_str().unwrap().to_string();
    let page = text(&request(port, "GET", "/sessions", Some(&cookie), None));
    assert!(
        page.contains(&id) && page.contains("jdoe@example.com"),
        "{page}"
    );
    assert!(page.contains("<svg class=\"chart\""));
    let none = text(&request(
        port,
        "GET",
        "/sessions?user=nobody",
        Some(&cookie),
        None,
    ));
    assert!(
        !none.contains(&id) && none.contains("0 of 1 session(s) match"),
        "{none}"
    );
    let recorded = text(&request(
        port,
        "GET",
        "/sessions?recorded=yes&action=audit",
        Some(&cookie),
        None,
    ));
    assert!(recorded.contains(&id));
    let json: serde_json::Value = serde_json::from_slice(
        &request(port, "GET", "/sessions.json?user=jdoe", Some(&cookie), None).2,
    )
    .unwrap();
    assert_eq!(json["total"], 1);

    // The session's page, and its sealed log: the very bytes on the disk, sealed.
    let detail = text(&request(
        port,
        "GET",
        &format!("/session/{id}"),
        Some(&cookie),
        None,
    ));
    assert!(
        detail.contains("20-network-audit.wasm") && detail.contains("Download"),
        "{detail}"
    );
    let sealed = request(
        port,
        "GET",
        &format!("/session/{id}/log/0"),
        Some(&cookie),
        None,
    );
    assert_eq!(sealed.0, 200);
    let on_disk = std::fs::read(record["command_logs"][0].as_str().unwrap()).unwrap();
    assert_eq!(sealed.2, on_disk);
    assert!(!String::from_utf8_lossy(&sealed.2).contains("the-console-must-not-see-this"));

    // A live session, ended from the console: the real client is disconnected with
    // the auditor's reason, which the session log keeps.
    let (mut ssh, _) = lab.spawn_jump_until("jdoe", "jdoe", "echo started; sleep 60", "started");
    let live_id = {
        let start = Instant::now();
        loop {
            let running = lab.running_ids();
            if let Some(id) = running.into_iter().find(|r| *r != id) {
                break id;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no running session"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let live = text(&request(port, "GET", "/live", Some(&cookie), None));
    assert!(live.contains(&live_id), "{live}");
    let csrf = csrf_of(&live);
    // Without the sign-in's CSRF token, the form is refused.
    let forged = request(
        port,
        "POST",
        &format!("/live/{live_id}/end"),
        Some(&cookie),
        Some("csrf=guess&reason=x"),
    );
    assert_eq!(forged.0, 403);
    assert!(
        ssh.try_wait().unwrap().is_none(),
        "a forged form ended the session"
    );
    let ended = request(
        port,
        "POST",
        &format!("/live/{live_id}/end"),
        Some(&cookie),
        Some(&format!("csrf={csrf}&reason=suspicious+activity")),
    );
    assert_eq!(ended.0, 303, "{}", text(&ended));
    let stderr = Lab::wait_disconnected(&mut ssh, Duration::from_secs(15));
    assert!(
        stderr.contains("ended by an auditor: suspicious activity"),
        "{stderr}"
    );
    let records = lab.wait_sessions(2);
    let closed = records
        .iter()
        .find(|r| r["id"] == live_id.as_str())
        .unwrap();
    assert!(
        closed["close_reason"]
            .as_str()
            .unwrap()
            .contains("ended by an auditor: suspicious activity"),
        "{closed}"
    );
    // Every action is in the proxy's log, with the sign-in.
    let log = lab.proxy_log();
    assert!(log.contains("auditor signed in to the console"));
    assert!(log.contains("downloaded a sealed command log"));
    assert!(log.contains("auditor ended a session"));
    // Signed out, the cookie opens nothing.
    let out = request(
        port,
        "POST",
        "/logout",
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
    );
    assert_eq!(out.0, 303);
    let r = request(port, "GET", "/sessions", Some(&cookie), None);
    assert_eq!((r.0, header(&r.1, "location")), (303, Some("/login")));
}

/// The CSRF token in a page's first form.
pub(super) fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

/// Signs in to the console on `port` with [`TOKEN`]; returns the session cookie's value.
pub(super) fn token_sign_in(port: u16) -> String {
    let r = request(
        port,
        "POST",
        "/login",
        None,
        Some(&format!("token={TOKEN}")),
    );
    assert_eq!(r.0, 303, "{}", text(&r));
    session_cookie(&r.1)
}

/// The value of the console's session cookie a response sets.
fn session_cookie(headers: &[(String, String)]) -> String {
    set_cookie(headers, "portcullis_console")
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string()
}

/// The cookie `name` a response sets, as `name=value`.
fn set_cookie(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

#[test]
fn auditors_sign_in_at_the_identity_provider_and_others_are_refused() {
    ensure_user("jdoe");
    let port = common::lab::free_port();
    let back = format!("http://127.0.0.1:{port}/login/oidc/callback");
    let idp = Idp::start(&[("IDP_REDIRECT_URIS", back.as_str())]);
    let mut lab = Lab::new(&[("jdoe@example.com", &[])]);
    lab.add_config(&idp.config(""));
    // Members of "sre" at the provider are the auditors here (jdoe is; asmith is not).
    lab.add_config(&format!(
        "[console]\nlisten = \"127.0.0.1:{port}\"\nauditors_group = \"sre\"\n"
    ));
    lab.policies
        .module("90-default-principal.wasm", "default_principal");
    lab.start();
    let page = text(&request(port, "GET", "/login", None, None));
    assert!(
        page.contains("/login/oidc") && !page.contains("name=\"token\""),
        "{page}"
    );

    let sign_in = |account: &str| -> (u16, Option<String>, String) {
        let start = request(port, "GET", "/login/oidc", None, None);
        assert_eq!(start.0, 303, "{}", text(&start));
        let pending = set_cookie(&start.1, "portcullis_console_pending").unwrap();
        let to_provider = header(&start.1, "location").unwrap().to_string();
        assert!(
            to_provider.starts_with(&idp.issuer()) && to_provider.contains("code_challenge="),
            "{to_provider}"
        );
        // The user at the provider's pages, as a browser.
        let out = std::process::Command::new("node")
            .arg(idp_dir().join("signin.mjs"))
            .args([&to_provider, &back, account])
            .output()
            .unwrap()
            .success_or_panic("signin.mjs");
        let returned = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let path = returned
            .strip_prefix(&format!("http://127.0.0.1:{port}"))
            .unwrap()
            .to_string();
        let r = request(port, "GET", &path, Some(&pending), None);
        (r.0, set_cookie(&r.1, "portcullis_console"), text(&r))
    };
    let (status, cookie, page) = sign_in("jdoe");
    assert_eq!(status, 200, "{page}");
    let cookie = cookie.unwrap();
    let sessions = request(port, "GET", "/sessions", Some(&cookie), None);
    assert_eq!(sessions.0, 200);
    assert!(
        lab.proxy_log().contains("auditor=jdoe@example.com"),
        "{}",
        lab.proxy_log()
    );
    // Not in the auditors group: refused, and no sign-in.
    let (status, cookie, page) = sign_in("asmith");
    assert_eq!(status, 403);
    assert!(
        cookie.is_none() && page.contains("not in the auditors group"),
        "{page}"
    );
    // A callback this console did not start is refused.
    let forged = request(
        port,
        "GET",
        "/login/oidc/callback?code=x&state=y",
        None,
        None,
    );
    assert_eq!(forged.0, 400);
}
