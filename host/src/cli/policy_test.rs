//! `portcullis policy test DIR [CASES...]`: tables of requests and the outcomes
//! expected of the real components in DIR, for authors and for CI (docs/policies.md).
//!
//! ```toml
//! [[case]]
//! name = "an SRE reaches production as root"
//! user = "jdoe@example.com"
//! groups = ["sre"]
//! target = "10.0.0.5:22"        # as typed: HOST, HOST:PORT, [IPV6]:PORT
//! login = "root"
//! at = "2026-11-23T09:30:00Z"
//! channels = ["exec:rm -rf /"]  # decided after the connection, in order
//! expect = { action = "allow", module = "30-sre.wasm", principals = ["root"], channels = ["deny"] }
//! ```
//!
//! Every request field has the default `ConnectionRequest::builder()` gives in the SDK;
//! a name target resolves to nothing unless `resolve` gives the address (no DNS here,
//! so a table decides the same everywhere).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::identity::Authentication;
use crate::policy::{Action, DecisionRequest, Limits, PolicyEngine, PolicySet};
use crate::server::username_form::split_host_port;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default = "default_user")]
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default = "default_target")]
    target: String,
    resolve: Option<IpAddr>,
    login: Option<String>,
    #[serde(default = "default_source")]
    source: String,
    at: Option<String>,
    /// `public-key` (default), `sso:ISSUER:AMR,AMR`.
    authentication: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    expect: Expect,
}

fn default_user() -> String {
    "jdoe@example.com".into()
}
fn default_target() -> String {
    "10.0.0.5:22".into()
}
fn default_source() -> String {
    "192.0.2.10".into()
}

#[derive(Debug, Deserialize, Serialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `allow`, `audit` or `block`.
    action: Option<String>,
    /// The deciding module's file name, or `"none"` when no module matched.
    module: Option<String>,
    /// The principals, in any order.
    principals: Option<Vec<String>>,
    command_logging: Option<bool>,
    /// Whether the login asked for is among the principals.
    login_permitted: Option<bool>,
    /// Text the reason contains.
    reason_contains: Option<String>,
    /// `allow` or `deny`, one per channel request, in order.
    channels: Option<Vec<String>>,
}

/// One case's result.
#[derive(Debug, Serialize)]
struct Outcome {
    file: String,
    name: String,
    passed: bool,
    /// What differed: `field: expected X, got Y`.
    failures: Vec<String>,
    got: Got,
}

#[derive(Debug, Serialize)]
struct Got {
    action: String,
    module: Option<String>,
    principals: Vec<String>,
    command_logging: bool,
    reason: String,
    channels: Vec<String>,
}

pub(super) fn run(
    dir: &Path,
    cases: Vec<PathBuf>,
    json: bool,
    allowed_signers: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let files = if cases.is_empty() {
        let tests = dir.join("tests");
        let mut v: Vec<PathBuf> = std::fs::read_dir(&tests)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} (name the case files, or put them there)",
                    tests.display()
                )
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        v.sort();
        v
    } else {
        cases
    };
    anyhow::ensure!(!files.is_empty(), "no case files");
    let limits = Limits::default();
    let engine = match allowed_signers {
        Some(signers) => PolicyEngine::new_signed(dir, limits, signers)?,
        None => PolicyEngine::new(dir, limits)?,
    };
    let set = engine.current();
    let mut outcomes = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let table: Table =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for case in table.cases {
            outcomes.push(run_case(&set, file, case)?);
        }
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "passed": outcomes.len() - failed,
                "failed": failed,
                "cases": outcomes,
            }))?
        );
    } else {
        for o in &outcomes {
            if o.passed {
                println!("ok    {}", o.name);
            } else {
                println!("FAIL  {}  ({})", o.name, o.file);
                for f in &o.failures {
                    println!("        {f}");
                }
                println!(
                    "        decided by {}: {}",
                    o.got
                        .module
                        .as_deref()
                        .unwrap_or("no module (nothing matched)"),
                    o.got.reason
                );
            }
        }
        println!(
            "{} case(s): {} passed, {failed} failed",
            outcomes.len(),
            outcomes.len() - failed
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_case(set: &PolicySet, file: &Path, case: Case) -> anyhow::Result<Outcome> {
    let about = |what: String| anyhow::anyhow!("{}: case {:?}: {what}", file.display(), case.name);
    let (host, port) = split_host_port(&case.target).map_err(|e| about(e.to_string()))?;
    let host = crate::server::target_name::canonical_host(&host)
        .map_err(|e| about(format!("target: {e}")))?;
    let target_ip = case.resolve.or_else(|| host.parse().ok());
    let source = match case.source.parse::<SocketAddr>() {
        Ok(sa) => sa,
        Err(_) => SocketAddr::new(
            case.source
                .parse::<IpAddr>()
                .map_err(|_| about(format!("source {:?} is not an address", case.source)))?,
            50_000,
        ),
    };
    let now = match &case.at {
        Some(t) => super::policy::parse_time(t).map_err(|e| about(e.to_string()))?,
        // A fixed default, as the SDK's builder: 2026-01-05T09:00:00Z, a Monday.
        None => SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_603_600),
    };
    let authentication = match case.authentication.as_deref() {
        None | Some("public-key") => Authentication::PublicKey("SHA256:policy-test".into()),
        Some(s) if s.starts_with("sso:") => {
            let rest = &s[4..];
            // sso:ISSUER[:AMR,AMR]; the issuer is a URL with colons of its own.
            let (issuer, amr) = match rest.rsplit_once(':') {
                Some((i, a)) if !a.starts_with("//") && i.contains("://") => (i, a),
                _ => (rest, ""),
            };
            Authentication::SingleSignOn(crate::identity::SingleSignOn {
                issuer: issuer.into(),
                amr: amr
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(String::from)
                    .collect(),
                acr: None,
                key_fingerprint: Some("SHA256:policy-test".into()),
            })
        }
        Some(other) => {
            return Err(about(format!(
                "authentication {other:?}: expected public-key or sso:ISSUER:AMR,..."
            )));
        }
    };
    let login = case
        .login
        .clone()
        .unwrap_or_else(|| case.user.split('@').next().unwrap_or_default().to_string());
    let channels = case
        .channels
        .iter()
        .map(|c| super::policy::parse_channel(c).map_err(|e| about(e.to_string())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let request = DecisionRequest {
        session_id: "policy-test".into(),
        email: case.user.clone(),
        groups: case.groups.clone(),
        authentication,
        source,
        target_host: host,
        target_ip,
        target_canonical: None,
        target_port: port,
        login,
        now,
        client_version: "SSH-2.0-OpenSSH_9.2p1".into(),
    };
    let decision = set.decide(&request);
    let channel_verdicts: Vec<String> = channels
        .iter()
        .map(|c| {
            if set.check_channel(&request, &decision, c).allowed {
                "allow".to_string()
            } else {
                "deny".to_string()
            }
        })
        .collect();
    let action = match decision.action {
        Action::Allow => "allow",
        Action::Audit => "audit",
        Action::Block => "block",
    };
    let mut failures = Vec::new();
    let e = &case.expect;
    if let Some(r) = &e.reason_contains
        && !decision.reason.contains(r.as_str())
    {
        failures.push(format!(
            "reason: expected it to contain {r:?}, got {:?}",
            decision.reason
        ));
    }
    let mut differs = |field: &str, expected: String, got: String| {
        if expected != got {
            failures.push(format!("{field}: expected {expected}, got {got}"));
        }
    };
    if let Some(a) = &e.action {
        differs("action", a.to_ascii_lowercase(), action.into());
    }
    if let Some(m) = &e.module {
        let got = decision.module.clone().unwrap_or_else(|| "none".into());
        differs("module", m.clone(), got);
    }
    if let Some(p) = &e.principals {
        let (mut want, mut got) = (p.clone(), decision.principals.clone());
        want.sort();
        got.sort();
        differs("principals", format!("{want:?}"), format!("{got:?}"));
    }
    if let Some(c) = e.command_logging {
        differs(
            "command_logging",
            c.to_string(),
            decision.command_logging.to_string(),
        );
    }
    if let Some(l) = e.login_permitted {
        differs(
            "login_permitted",
            l.to_string(),
            decision.permits_login(&request.login).to_string(),
        );
    }
    if let Some(c) = &e.channels {
        differs(
            "channels",
            format!("{c:?}"),
            format!("{channel_verdicts:?}"),
        );
    }
    Ok(Outcome {
        file: file.display().to_string(),
        name: case.name,
        passed: failures.is_empty(),
        failures,
        got: Got {
            action: action.into(),
            module: decision.module.clone(),
            principals: decision.principals.clone(),
            command_logging: decision.command_logging,
            reason: decision.reason.clone(),
            channels: channel_verdicts,
        },
    })
}
