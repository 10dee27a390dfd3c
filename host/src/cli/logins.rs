//! `portcullis logins`: the single sign-on logins (who, groups, key, provider, expiry),
//! and `logins revoke` to end them. A running proxy notices the change to the logins
//! file and ends the sessions the revoked logins let in.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Subcommand;

use crate::identity::sso::{FileLogins, Login, LoginStore};
use crate::text::escape;

#[derive(Debug, Subcommand)]
pub(super) enum LoginsCommand {
    /// List the logins (the default).
    List {
        /// Also the expired ones (kept until the next login replaces or drops them).
        #[arg(long)]
        all: bool,
        /// One JSON object per login.
        #[arg(long)]
        json: bool,
    },
    /// End every login of an email address, or the login bound to a key fingerprint
    /// (`SHA256:...`); the sessions they let in end too.
    Revoke {
        /// An email address or a key fingerprint.
        who: String,
    },
}

fn store(path: &Path) -> anyhow::Result<Box<dyn LoginStore>> {
    let config = crate::config::Config::load(path)?;
    let Some(oidc) = config.oidc else {
        anyhow::bail!(
            "{}: single sign-on is not configured ([identity.oidc])",
            path.display()
        );
    };
    Ok(match &config.state {
        // The shared store: every replica hears of a revocation.
        Some(state) => Box::new(
            crate::state::PgLogins::open_standalone(state)
                .map_err(|e| anyhow::anyhow!("shared state: {e}"))?,
        ),
        None => Box::new(FileLogins::open(&oidc.logins_file)?),
    })
}

pub(super) fn run(config: &Path, command: Option<LoginsCommand>) -> anyhow::Result<ExitCode> {
    let store = store(config)?;
    match command.unwrap_or(LoginsCommand::List {
        all: false,
        json: false,
    }) {
        LoginsCommand::List { all, json } => {
            let now = SystemTime::now();
            let logins: Vec<Login> = store
                .list()
                .into_iter()
                .filter(|l| all || l.is_live(now))
                .collect();
            if json {
                for l in &logins {
                    println!("{}", serde_json::to_string(l)?);
                }
            } else {
                print_logins(&logins, now);
            }
            Ok(ExitCode::SUCCESS)
        }
        LoginsCommand::Revoke { who } => {
            let gone = store.revoke(who.trim())?;
            if gone.is_empty() {
                eprintln!("no login of {}", escape(&who));
                return Ok(ExitCode::from(1));
            }
            for l in &gone {
                println!(
                    "revoked: {} (key {})",
                    escape(&l.email),
                    l.key_fingerprint.as_deref().unwrap_or("none")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The logins as a table; everything the provider chose is escaped.
fn print_logins(logins: &[Login], now: SystemTime) {
    println!(
        "{:<28} {:<20} {:<52} {:<21} ISSUER",
        "EMAIL", "GROUPS", "KEY", "EXPIRES"
    );
    for l in logins {
        let expires = humantime::format_rfc3339_seconds(l.expires_at()).to_string();
        let expires = if l.is_live(now) {
            expires
        } else {
            format!("{expires} (expired)")
        };
        println!(
            "{:<28} {:<20} {:<52} {:<21} {}",
            escape(&l.email),
            escape(&l.groups.join(",")),
            l.key_fingerprint
                .as_deref()
                .unwrap_or("(no key: asked each time)"),
            expires,
            escape(&l.issuer),
        );
    }
}
