//! `[state]`: where replicas share their state (docs/deploy.md). Files are the default;
//! `postgres` puts sessions and host-key pins in PostgreSQL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    /// A libpq connection string (`host=db user=portcullis dbname=portcullis`) or URL
    /// (`postgres://portcullis@db/portcullis`).
    postgres: Option<String>,
    /// A file holding the password, so that the configuration needs none.
    postgres_password_file: Option<PathBuf>,
    /// CA certificates (PEM) for the server's TLS; with it, TLS is required.
    postgres_ca_file: Option<PathBuf>,
    /// This replica's name in the store, the logs and the metrics (default: the host
    /// name).
    replica: Option<String>,
    /// How long a replica may miss its heartbeat before another one marks its running
    /// sessions interrupted.
    #[serde(default, with = "humantime_serde")]
    lease: Option<Duration>,
}

/// The checked `[state]` section, when it names a database.
#[derive(Clone, PartialEq, Eq)]
pub struct StateConfig {
    pub postgres: String,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub replica: String,
    pub lease: Duration,
}

impl std::fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateConfig")
            .field("replica", &self.replica)
            .field("lease", &self.lease)
            .field("tls", &self.ca_file.is_some())
            .finish_non_exhaustive()
    }
}

/// The machine's host name, the default replica name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "portcullis".into())
}

impl RawState {
    pub(super) fn validate(
        self,
        abs: impl Fn(&Path) -> PathBuf,
    ) -> Result<Option<StateConfig>, (&'static str, String)> {
        let Some(postgres) = self.postgres else {
            if self.postgres_ca_file.is_some() || self.postgres_password_file.is_some() {
                return Err((
                    "state.postgres",
                    "is needed by postgres_ca_file and postgres_password_file".into(),
                ));
            }
            return Ok(None);
        };
        postgres
            .parse::<tokio_postgres::Config>()
            .map_err(|e| ("state.postgres", format!("is not a connection string: {e}")))?;
        let password = match &self.postgres_password_file {
            None => None,
            Some(p) => {
                let p = abs(p);
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    (
                        "state.postgres_password_file",
                        format!("{}: {e}", p.display()),
                    )
                })?;
                Some(text.trim_end_matches(['\r', '\n']).to_string())
            }
        };
        let replica = self.replica.unwrap_or_else(host_name);
        if replica.is_empty()
            || replica.len() > 64
            || !replica
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err((
                "state.replica",
                format!("{replica:?}: 1 to 64 letters, digits, '-', '_' or '.'"),
            ));
        }
        let lease = self.lease.unwrap_or(Duration::from_secs(30));
        if lease < Duration::from_secs(2) || lease > Duration::from_secs(3600) {
            return Err(("state.lease", "must be between 2s and 1h".into()));
        }
        Ok(Some(StateConfig {
            postgres,
            password,
            ca_file: self.postgres_ca_file.as_deref().map(abs),
            replica,
            lease,
        }))
    }
}
