use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::provider::{claims_of, poll};
use super::*;

fn config(dir: &std::path::Path) -> OidcConfig {
    let text = format!(
        "[identity.oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"portcullis\"\n\
         allowed_domains = [\"example.com\"]\nlogins_file = \"{}\"\n\
         max_pending = 3\nmax_pending_per_source = 2\n",
        dir.join("logins.json").display()
    );
    crate::config::Config::parse(&text, &dir.join("portcullis.toml"))
        .unwrap()
        .oidc
        .unwrap()
}

#[test]
fn claims_give_the_identity_and_bad_ones_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let ok = serde_json::json!({
        "iss": "http://127.0.0.1:9", "sub": "jdoe", "email": "JDoe@Example.com",
        "email_verified": true, "groups": ["sre", "db\u{1b}[2Jadmins"],
        "amr": ["pwd", "otp", "a,b"], "acr": "urn:mfa",
    });
    let claims = claims_of(&c, &ok).unwrap();
    assert_eq!(claims.email, "jdoe@example.com");
    assert_eq!(claims.groups, ["sre", "db [2Jadmins"]);
    assert_eq!(claims.amr, ["pwd", "otp"]);
    assert_eq!(claims.acr.as_deref(), Some("urn:mfa"));
    assert_eq!(claims.issuer, "http://127.0.0.1:9");
    // Groups as one space-separated string, as some providers send them.
    let mut v = ok.clone();
    v["groups"] = "sre ops".into();
    assert_eq!(claims_of(&c, &v).unwrap().groups, ["sre", "ops"]);
    let refused = |v: serde_json::Value| match claims_of(&c, &v) {
        Err(SsoError::Rejected { user, .. }) => user,
        other => panic!("{other:?}"),
    };
    let mut v = ok.clone();
    v["email"] = "mallory@evil.test".into();
    assert!(refused(v).contains("not in an allowed domain (example.com)"));
    let mut v = ok.clone();
    v["email"] = "mallory@notexample.com".into();
    assert!(refused(v).contains("not in an allowed domain"));
    let mut v = ok.clone();
    v["email_verified"] = false.into();
    assert!(refused(v).contains("not verified"));
    let mut v = ok.clone();
    v.as_object_mut().unwrap().remove("email");
    assert!(refused(v).contains("no `email` claim"));
    let mut v = ok;
    v["email"] = "nobody".into();
    assert!(refused(v).contains("not an email address"));
}

#[test]
fn the_prompt_puts_the_code_on_its_own_line_and_strips_control_characters() {
    let p = prompt(
        "https://idp.example.com/device?user_code=ABCD-EFGH\u{1b}]52;c;x\u{7}",
        "ABCD-EFGH\r\n",
    );
    assert!(!p.chars().any(|c| c.is_control() && c != '\n'), "{p:?}");
    assert!(p.lines().any(|l| l.trim() == "ABCD-EFGH"), "{p:?}");
    assert!(p.contains("https://idp.example.com/device?user_code=ABCD-EFGH"));
}

#[tokio::test]
async fn waiting_logins_are_bounded_per_source_and_in_all_and_freed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let sso = Arc::new(Sso::new(config(dir.path())).unwrap());
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    let a1 = sso.take_slot(a).unwrap();
    let _a2 = sso.take_slot(a).unwrap();
    assert!(matches!(
        sso.take_slot(a),
        Err(SsoError::Busy("from this address"))
    ));
    let _b1 = sso.take_slot(b).unwrap();
    assert!(matches!(sso.take_slot(b), Err(SsoError::Busy("in all"))));
    // A client that leaves its prompt gives its place back.
    drop(a1);
    assert!(sso.take_slot(b).is_ok());
    let mut text = String::new();
    sso.render_metrics(&mut text);
    assert!(
        text.contains("portcullis_sso_logins_total{outcome=\"busy\"} 2"),
        "{text}"
    );
}

/// A provider that answers `slow_down` makes the proxy poll 5 s slower from then on
/// (RFC 8628, 3.5); `access_denied` ends the login. The provider in the end-to-end
/// tests never says `slow_down`, hence this test of the poll alone, with the
/// provider's answers given in turn.
#[tokio::test]
async fn polling_honours_slow_down_and_stops_on_access_denied() {
    let dir = tempfile::tempdir().unwrap();
    let provider = provider::Provider::new(&config(dir.path())).unwrap();
    let metadata: provider::Metadata = serde_json::from_value(serde_json::json!({
        "issuer": "http://127.0.0.1:9",
        "authorization_endpoint": "http://127.0.0.1:9/auth",
        "token_endpoint": "http://127.0.0.1:9/token",
        "device_authorization_endpoint": "http://127.0.0.1:9/device/auth",
        "jwks_uri": "http://127.0.0.1:9/jwks",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .unwrap();
    let client = provider.client(&metadata).unwrap();
    let details: openidconnect::core::CoreDeviceAuthorizationResponse =
        serde_json::from_value(serde_json::json!({
            "device_code": "d", "user_code": "ABCD-EFGH",
            "verification_uri": "http://127.0.0.1:9/device", "expires_in": 600,
        }))
        .unwrap();
    let answers = Mutex::new(vec!["access_denied", "authorization_pending", "slow_down"]);
    let asked = Mutex::new(0);
    let http = |request: openidconnect::http::Request<Vec<u8>>| {
        let body = String::from_utf8_lossy(request.body()).into_owned();
        assert!(body.contains("device_code=d"), "{body}");
        *asked.lock().unwrap() += 1;
        let error = answers.lock().unwrap().pop().unwrap();
        async move {
            Ok::<_, std::io::Error>(
                openidconnect::http::Response::builder()
                    .status(400)
                    .header("content-type", "application/json")
                    .body(format!("{{\"error\":\"{error}\"}}").into_bytes())
                    .unwrap(),
            )
        }
    };
    let waits = Mutex::new(Vec::new());
    let sleep = |d: Duration| {
        waits.lock().unwrap().push(d);
        async {}
    };
    let outcome = poll(&client, &details, &http, sleep).await;
    assert!(matches!(outcome, Err(SsoError::Denied)), "{outcome:?}");
    assert_eq!(*asked.lock().unwrap(), 3);
    assert_eq!(
        *waits.lock().unwrap(),
        [Duration::from_secs(10), Duration::from_secs(10)]
    );
}
