use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/portcullis/portcullis.toml"))
}

#[test]
fn an_empty_file_gives_the_defaults_relative_to_the_file() {
    let c = parse("").unwrap();
    assert_eq!(c.listen, "0.0.0.0:2222".parse().unwrap());
    assert_eq!(c.policy_dir, Path::new("/etc/portcullis/policies"));
    assert_eq!(c.host_keys.mode, HostKeyCheck::Tofu);
    assert_eq!(c.cert_validity, Duration::from_secs(300));
    assert!(c.recheck_sessions);
    assert!(
        !parse("[policy]\nrecheck_sessions = false\n")
            .unwrap()
            .recheck_sessions
    );
}

#[test]
fn a_bare_file_name_anchors_paths_at_the_current_directory() {
    let c = Config::parse("", Path::new("portcullis.toml")).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(c.host_key, cwd.join("host_key"));
    assert_eq!(c.session_log, cwd.join("sessions.jsonl"));
}

#[test]
fn metrics_are_off_by_default_and_a_bad_address_names_the_key() {
    assert_eq!(parse("").unwrap().metrics_listen, None);
    assert_eq!(
        parse("[metrics]\nlisten = \"127.0.0.1:9187\"\n")
            .unwrap()
            .metrics_listen,
        Some("127.0.0.1:9187".parse().unwrap())
    );
    let err = parse("[metrics]\nlisten = \"localhost\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("metrics.listen") && err.contains("localhost"),
        "{err}"
    );
}

#[test]
fn idle_timeout_is_off_by_default_and_at_least_a_second() {
    assert_eq!(parse("").unwrap().idle_timeout, None);
    assert_eq!(
        parse("[server]\nidle_timeout = \"15m\"\n")
            .unwrap()
            .idle_timeout,
        Some(Duration::from_secs(900))
    );
    assert_eq!(
        parse("[server]\nidle_timeout = \"0s\"\n")
            .unwrap()
            .idle_timeout,
        None
    );
    let err = parse("[server]\nidle_timeout = \"500ms\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.idle_timeout"), "{err}");
}

#[test]
fn keepalives_are_rare_by_default_configurable_and_checked() {
    let c = parse("").unwrap();
    assert_eq!(c.keepalive.interval, Some(Duration::from_secs(300)));
    assert_eq!(c.keepalive.count_max, 3);
    // The target leg uses the same.
    assert_eq!(c.host_keys.keepalive, c.keepalive);
    let c = parse("[server]\nkeepalive_interval = \"30s\"\nkeepalive_count_max = 5\n").unwrap();
    assert_eq!(c.keepalive.interval, Some(Duration::from_secs(30)));
    assert_eq!(c.host_keys.keepalive.count_max, 5);
    let off = parse("[server]\nkeepalive_interval = \"0s\"\n").unwrap();
    assert_eq!(off.keepalive.interval, None);
    for (text, key) in [
        ("keepalive_interval = \"10ms\"", "server.keepalive_interval"),
        ("keepalive_count_max = 0", "server.keepalive_count_max"),
    ] {
        let err = parse(&format!("[server]\n{text}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn connection_threads_default_to_the_cpu_count_and_are_bounded() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(parse("").unwrap().threads, cpus);
    assert_eq!(parse("[server]\nthreads = 0\n").unwrap().threads, cpus);
    assert_eq!(parse("[server]\nthreads = 3\n").unwrap().threads, 3);
    let err = parse("[server]\nthreads = 5000\n").unwrap_err().to_string();
    assert!(
        err.contains("server.threads") && err.contains("5000"),
        "{err}"
    );
}

#[test]
fn a_misspelt_key_is_an_error_naming_it() {
    let err = parse("[policy]\ntimout = \"1s\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("timout") && err.contains("portcullis.toml"),
        "{err}"
    );
}

#[test]
fn human_durations_parse_and_bounds_are_checked() {
    let c = parse("[policy]\ntimeout = \"250ms\"\n[ca]\ncert_validity = \"2m\"\n").unwrap();
    assert_eq!(c.policy_limits.timeout, Duration::from_millis(250));
    assert_eq!(c.cert_validity, Duration::from_secs(120));
    let err = parse("[policy]\ntimeout = \"1m\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`policy.timeout`"), "{err}");
}

#[test]
fn host_key_checking_cannot_be_turned_off() {
    let err = parse("[upstream]\nhost_key_check = \"none\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("always checked"), "{err}");
}

#[test]
fn transparent_listeners_are_one_address_or_a_list() {
    assert!(parse("").unwrap().transparent_listen.is_empty());
    let one = parse("[server]\ntransparent_listen = \"0.0.0.0:2223\"\n").unwrap();
    assert_eq!(one.transparent_listen, ["0.0.0.0:2223".parse().unwrap()]);
    let two =
        parse("[server]\ntransparent_listen = [\"0.0.0.0:2223\", \"[::]:2223\"]\n[upstream]\nsocket_mark = 1234\n")
            .unwrap();
    assert_eq!(two.transparent_listen.len(), 2);
    assert_eq!(two.host_keys.socket_mark, Some(1234));
    let err = parse("[server]\ntransparent_listen = \"2223\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.transparent_listen"), "{err}");
    let err = parse("[server]\nlisten = \"0.0.0.0:2222\"\ntransparent_listen = \"0.0.0.0:2222\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("twice"), "{err}");
}

#[test]
fn ciphers_default_to_gcm_first_and_unknown_or_weak_ones_are_refused() {
    let c = parse("").unwrap();
    assert_eq!(c.ciphers, DEFAULT_CIPHERS);
    assert_eq!(c.ciphers.first(), Some(&"aes128-gcm@openssh.com"));
    assert!(c.ciphers.contains(&"chacha20-poly1305@openssh.com"));
    assert_eq!(c.cipher_order, CipherOrder::Proxy);
    let c = parse(
        "[server]\nciphers = [\"aes128-gcm@openssh.com\", \"chacha20-poly1305@openssh.com\"]\n",
    )
    .unwrap();
    assert_eq!(
        c.ciphers,
        ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"]
    );
    for bad in ["3des-cbc", "none", "aes128-cbc", "rot13"] {
        let err = parse(&format!("[server]\nciphers = [\"{bad}\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.ciphers") && err.contains(bad), "{err}");
    }
    assert!(parse("[server]\nciphers = []\n").is_err());
}

#[test]
fn the_cipher_order_is_the_proxys_or_the_clients() {
    let c = parse("[server]\ncipher_order = \"client\"\n").unwrap();
    assert_eq!(c.cipher_order, CipherOrder::Client);
    let err = parse("[server]\ncipher_order = \"server\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.cipher_order") && err.contains("\"server\""),
        "{err}"
    );
}

#[test]
fn a_bad_listen_address_is_explained() {
    let err = parse("[server]\nlisten = \"2222\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`server.listen`") && err.contains("0.0.0.0:2222"),
        "{err}"
    );
}

#[test]
fn the_recording_store_is_local_by_default_and_s3_settings_are_checked() {
    assert_eq!(parse("").unwrap().recording_store, None);
    let s3 = |body: &str| {
        parse(&format!(
            "[recording]\nstore = \"s3\"\n[recording.s3]\n{body}"
        ))
    };
    let c =
        s3("bucket = \"audit\"\nprefix = \"/portcullis/\"\nendpoint = \"http://127.0.0.1:9000\"\n")
            .unwrap()
            .recording_store
            .unwrap();
    assert_eq!(
        (c.bucket.as_str(), c.prefix.as_str()),
        ("audit", "portcullis")
    );
    assert!(c.path_style && c.allow_http);
    assert_eq!(c.part_size, 16 << 20);
    assert_eq!(c.location(), "s3://audit/portcullis");
    let err = |text: &str| s3(text).unwrap_err().to_string();
    assert!(err("bucket = \"Audit_Logs\"\n").contains("recording.s3.bucket"));
    assert!(err("bucket = \"audit\"\nprefix = \"a/../b\"\n").contains("recording.s3.prefix"));
    assert!(err("bucket = \"audit\"\npart_size_mib = 4\n").contains("recording.s3.part_size_mib"));
    let e = err("bucket = \"audit\"\nendpoint = \"http://minio.internal:9000\"\n");
    assert!(
        e.contains("recording.s3.endpoint") && e.contains("allow_http"),
        "{e}"
    );
    assert!(
        err("bucket = \"audit\"\ncredentials_file = \"/nonexistent\"\n").contains("no such file")
    );
    assert!(err("bucket = \"audit\"\nsecret = \"x\"\n").contains("secret"));
    let e = parse("[recording]\nstore = \"s3\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("recording.store") && e.contains("[recording.s3]"),
        "{e}"
    );
    let e = parse("[recording.s3]\nbucket = \"audit\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("store = \\\"s3\\\"") || e.contains("store = \"s3\""),
        "{e}"
    );
}

#[test]
fn the_console_needs_a_private_token_and_tls_off_loopback() {
    use std::os::unix::fs::PermissionsExt;
    assert!(parse("").unwrap().console.is_none());
    let d = tempfile::tempdir().unwrap();
    let token = d.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = |extra: &str| {
        format!(
            "[console]\nlisten = \"127.0.0.1:8443\"\ntoken_file = \"{}\"\n{extra}",
            token.display()
        )
    };
    let c = parse(&text("")).unwrap().console.unwrap();
    assert_eq!(c.token.as_deref(), Some("0123456789abcdef0123"));
    assert_eq!(c.public_url, "http://127.0.0.1:8443");
    assert!(c.tls.is_none());
    let e = parse(&text("").replace("127.0.0.1:8443", "0.0.0.0:8443"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("console.listen") && e.contains("loopback"),
        "{e}"
    );
    let e = parse(&text("tls_cert = \"c.pem\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls_key"), "{e}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = parse(&text("")).unwrap_err().to_string();
    assert!(
        e.contains("console.token_file") && e.contains("chmod 600"),
        "{e}"
    );
    let e = parse("[console]\nlisten = \"127.0.0.1:8443\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("console.token_file"), "{e}");
    let e = parse("[console]\nlisten = \"127.0.0.1:8443\"\nauditors_group = \"auditors\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("console.auditors_group") && e.contains("[identity.oidc]"),
        "{e}"
    );
}
