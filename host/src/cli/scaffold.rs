//! `portcullis policy new DIR`: a policy crate that builds to a component as it stands,
//! with native unit tests, a test table for `policy test`, a sample configuration and
//! a README saying how to build, test, sign and deploy it (docs/policies.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub(super) struct NewArgs {
    /// The directory to create; its last name is the crate's name.
    dir: PathBuf,
    /// A policy that reads a configuration file (and a sample `NAME.toml`).
    #[arg(long)]
    with_config: bool,
    /// Also decide channel requests (exec, subsystems, forwarding...).
    #[arg(long)]
    channel_checks: bool,
    /// Depend on the SDK at this path (default: this source tree's, when the binary
    /// runs from one; else the published crate).
    #[arg(long, value_name = "PATH")]
    sdk_path: Option<PathBuf>,
}

/// The SDK of the tree this binary was built from, if it is still there.
fn tree_sdk() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join("guest-sdk");
    p.join("Cargo.toml").exists().then_some(p)
}

pub(super) fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    anyhow::ensure!(
        !dir.exists() || std::fs::read_dir(dir)?.next().is_none(),
        "{} exists and is not empty",
        dir.display()
    );
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{}: no crate name in the path", dir.display()))?
        .to_string();
    anyhow::ensure!(
        !name.is_empty()
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
        "{name:?}: a crate name is lower-case letters, digits, '-' and '_', starting with a letter"
    );
    let module = name.replace('-', "_");
    let sdk = match args.sdk_path.clone().or_else(tree_sdk) {
        Some(p) => {
            let p = std::path::absolute(&p)?;
            anyhow::ensure!(
                p.join("Cargo.toml").exists(),
                "{}: no SDK there (expected guest-sdk/Cargo.toml)",
                p.display()
            );
            format!(
                "portcullis-policy = {{ path = {:?} }}",
                p.display().to_string()
            )
        }
        None => format!("portcullis-policy = \"{}\"", env!("CARGO_PKG_VERSION")),
    };
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("tests"))?;
    let write = |rel: &str, text: String| -> anyhow::Result<()> {
        let p = dir.join(rel);
        std::fs::write(&p, text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    write("Cargo.toml", cargo_toml(&name, &sdk, args.with_config))?;
    write(
        "src/lib.rs",
        lib_rs(&name, args.with_config, args.channel_checks),
    )?;
    write(
        "tests/cases.toml",
        cases_toml(&name, args.with_config, args.channel_checks),
    )?;
    if args.with_config {
        write(&format!("{name}.toml"), SAMPLE_CONFIG.to_string())?;
    }
    write("README.md", readme(&name, &module, args.with_config))?;
    write(".gitignore", "/target\n".into())?;
    eprintln!(
        "created {} ({}); next:\n  cd {}\n  cargo test\n  cargo build --target wasm32-wasip2 --release",
        dir.display(),
        sdk,
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn cargo_toml(name: &str, sdk: &str, with_config: bool) -> String {
    let serde = if with_config {
        "serde = { version = \"1\", features = [\"derive\"] }\n"
    } else {
        ""
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# A policy is a WebAssembly component:
#   cargo build --target wasm32-wasip2 --release
# writes target/wasm32-wasip2/release/{module}.wasm.
crate-type = ["cdylib"]

[dependencies]
{sdk}
# Other ways to get the SDK:
#   portcullis-policy = "{version}"                                   # crates.io
#   portcullis-policy = {{ path = "/path/to/portcullis/guest-sdk" }}  # a checkout
#   portcullis-policy = {{ git = "https://github.com/portcullis-ssh/portcullis" }}
{serde}
# This crate is a workspace of its own, wherever it is put.
[workspace]

# Small, fast modules: the proxy loads them on every reload.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true
"#,
        module = name.replace('-', "_"),
        version = env!("CARGO_PKG_VERSION"),
    )
}

const SAMPLE_CONFIG: &str = r#"# Members of these groups may log in as the login they ask for...
groups = ["sre"]
# ...but never as these.
forbidden_logins = ["root"]
"#;

fn lib_rs(name: &str, with_config: bool, channel_checks: bool) -> String {
    let mut s = format!(
        "//! {name}: a Portcullis policy. Members of the allowed groups may log in as the\n\
         //! login they ask for{}; everyone else is left to the next module (no match).\n\n\
         use portcullis_policy::prelude::*;\n\n",
        if with_config {
            ", except the forbidden logins"
        } else {
            ""
        }
    );
    let channel = if channel_checks {
        "No file transfer: the `sftp` subsystem is refused on the sessions this policy allows."
    } else {
        ""
    };
    if with_config {
        s.push_str(
            r#"/// The configuration, read from the module's `NAME.toml` (a sample is beside this crate).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Groups whose members this policy allows.
    groups: Vec<String>,
    /// Logins never granted here, whoever asks.
    #[serde(default)]
    forbidden_logins: Vec<String>,
}

#[policy]
impl Policy for Config {
    fn decide(&self, request: &ConnectionRequest) -> Decision {
        if !request.identity.in_any_group(&self.groups) {
            return Decision::no_match();
        }
        if self.forbidden_logins.iter().any(|l| l == request.login) {
            return Decision::block(format!("{} may not be used here", request.login));
        }
        Decision::allow([request.login]).with_reason("member of an allowed group")
    }
"#,
        );
        if channel_checks {
            s.push_str(&format!(
                r#"
    /// {channel}
    fn check_channel(&self, _request: &ConnectionRequest, channel: &ChannelRequest) -> ChannelVerdict {{
        match channel {{
            ChannelRequest::Subsystem {{ name }} if name == "sftp" => {{
                ChannelVerdict::Deny("file transfer is not allowed".into())
            }}
            _ => ChannelVerdict::NoOpinion,
        }}
    }}
"#
            ));
        }
        s.push_str("}\n");
    } else {
        let attr = if channel_checks {
            "#[policy(check_channel = check)]"
        } else {
            "#[policy]"
        };
        s.push_str(&format!(
            r#"/// The groups this policy allows.
const GROUPS: &[&str] = &["sre"];

{attr}
fn decide(request: &ConnectionRequest) -> Decision {{
    if request.identity.in_any_group(GROUPS) {{
        Decision::allow([request.login]).with_reason("member of an allowed group")
    }} else {{
        Decision::no_match()
    }}
}}
"#
        ));
        if channel_checks {
            s.push_str(&format!(
                r#"
/// {channel}
fn check(_request: &ConnectionRequest, channel: &ChannelRequest) -> ChannelVerdict {{
    match channel {{
        ChannelRequest::Subsystem {{ name }} if name == "sftp" => {{
            ChannelVerdict::Deny("file transfer is not allowed".into())
        }}
        _ => ChannelVerdict::NoOpinion,
    }}
}}
"#
            ));
        }
    }
    // Native unit tests: `cargo test`, no wasm, no proxy.
    let (setup, decide) = if with_config {
        (
            "    fn policy() -> Config {\n        testing::config(include_str!(concat!(\"../\", env!(\"CARGO_PKG_NAME\"), \".toml\")))\n    }\n\n",
            "policy().decide",
        )
    } else {
        ("", "decide")
    };
    s.push_str(&format!(
        r#"
#[cfg(test)]
mod tests {{
    use super::*;
    use portcullis_policy::testing::{{self, ConnectionRequest}};

{setup}    #[test]
    fn a_member_of_an_allowed_group_gets_the_login_asked_for() {{
        let request = ConnectionRequest::builder()
            .user("jdoe@example.com")
            .group("sre")
            .target("10.0.0.5:22")
            .login("jdoe")
            .at("2026-11-23T09:30:00Z")
            .build();
        let decision = {decide}(&request);
        assert_eq!(decision.verdict, Verdict::Allow);
        assert_eq!(decision.principals, ["jdoe"]);
    }}

    #[test]
    fn anyone_else_is_left_to_the_next_module() {{
        let request = ConnectionRequest::builder().user("ann@example.com").build();
        assert_eq!({decide}(&request).verdict, Verdict::NoMatch);
    }}
"#
    ));
    if with_config {
        s.push_str(
            r#"
    #[test]
    fn forbidden_logins_are_blocked_even_for_members() {
        let request = ConnectionRequest::builder().group("sre").login("root").build();
        assert!(matches!(policy().decide(&request).verdict, Verdict::Block(_)));
    }

    #[test]
    fn a_misspelt_configuration_key_is_refused() {
        let err = testing::try_config::<Config>("grops = [\"sre\"]").err().unwrap_or_default();
        assert!(err.contains("grops"), "{err}");
    }
"#,
        );
    }
    if channel_checks {
        let call = if with_config {
            "policy().check_channel(&request, &sftp)"
        } else {
            "check(&request, &sftp)"
        };
        s.push_str(&format!(
            r#"
    #[test]
    fn sftp_is_refused() {{
        let request = ConnectionRequest::builder().group("sre").build();
        let sftp = ChannelRequest::Subsystem {{ name: "sftp".into() }};
        assert!(matches!({call}, ChannelVerdict::Deny(_)));
    }}
"#
        ));
    }
    s.push_str("}\n");
    s
}

fn cases_toml(name: &str, with_config: bool, channel_checks: bool) -> String {
    let module = format!("50-{name}.wasm");
    let mut s = format!(
        "# Requests and the outcomes expected of the built module, run by\n\
         #   portcullis policy test POLICY_DIR tests/cases.toml\n\
         # with the module installed in POLICY_DIR as {module} (see README.md).\n\n\
         [[case]]\n\
         name = \"an SRE logs in as themselves\"\n\
         user = \"jdoe@example.com\"\n\
         groups = [\"sre\"]\n\
         target = \"10.0.0.5:22\"\n\
         login = \"jdoe\"\n\
         at = \"2026-11-23T09:30:00Z\"\n"
    );
    if channel_checks {
        s.push_str("channels = [\"shell\", \"subsystem:sftp\"]\n");
        s.push_str(&format!(
            "expect = {{ action = \"allow\", module = \"{module}\", principals = [\"jdoe\"], channels = [\"allow\", \"deny\"] }}\n"
        ));
    } else {
        s.push_str(&format!(
            "expect = {{ action = \"allow\", module = \"{module}\", principals = [\"jdoe\"] }}\n"
        ));
    }
    s.push_str(
        "\n[[case]]\n\
         name = \"someone outside the groups is not decided here\"\n\
         user = \"ann@example.com\"\n\
         expect = { action = \"block\", module = \"none\" }\n",
    );
    if with_config {
        s.push_str(&format!(
            "\n[[case]]\n\
             name = \"root is never granted\"\n\
             groups = [\"sre\"]\n\
             login = \"root\"\n\
             expect = {{ action = \"block\", module = \"{module}\", reason_contains = \"root\" }}\n"
        ));
    }
    s
}

fn readme(name: &str, module: &str, with_config: bool) -> String {
    let config = if with_config {
        format!("cp {name}.toml \"$POLICIES/50-{name}.toml\"\n")
    } else {
        String::new()
    };
    let config_sig = if with_config {
        format!(
            "ssh-keygen -Y sign -n portcullis-policy -f ~/.ssh/policy_signing_key \"$POLICIES/50-{name}.toml\"\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"# {name}

A Portcullis access policy, compiled to a WebAssembly component.

## Test, build, try

```sh
cargo test                                          # the logic, natively
rustup target add wasm32-wasip2                     # once
cargo build --target wasm32-wasip2 --release        # -> target/wasm32-wasip2/release/{module}.wasm

POLICIES=$(mktemp -d)
cp target/wasm32-wasip2/release/{module}.wasm "$POLICIES/50-{name}.wasm"
{config}portcullis policy check "$POLICIES"
portcullis policy test "$POLICIES" tests/cases.toml   # the built module, in the real engine
```

## Sign and deploy

Where the proxy requires signatures (`[policy] allowed_signers`), sign the module
{and_config}with a key listed in that file, in the `portcullis-policy` namespace:

```sh
ssh-keygen -Y sign -n portcullis-policy -f ~/.ssh/policy_signing_key "$POLICIES/50-{name}.wasm"
{config_sig}portcullis policy check --allowed-signers /etc/portcullis/allowed_signers "$POLICIES"
```

then copy the `.wasm` (and `.toml`) with their `.sig` files into the proxy's policy
directory; it reloads on its own, and keeps the previous set if anything is refused.
"#,
        and_config = if with_config {
            "and its configuration "
        } else {
            ""
        },
    )
}
