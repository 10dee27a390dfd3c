//! Single sign-on logins in the shared store: a [`LoginStore`] whose reads come from a
//! copy in memory (a connection's key lookup never waits for the database) and whose
//! writes go to the database, then `NOTIFY portcullis_logins`; every replica `LISTEN`s
//! and reads the logins again, so a revocation made on one replica ends the sessions on
//! whichever replica runs them.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{Postgres, error_text};
use crate::identity::sso::{
    Login, LoginStore, LoginStoreError, any_gone, by_id, epoch_seconds, live_for_key,
};
use crate::sync::lock;

/// The notification channel.
const CHANNEL: &str = "portcullis_logins";

/// Logins kept in PostgreSQL.
#[derive(Debug)]
pub struct PgLogins {
    store: Arc<Postgres>,
    logins: Mutex<Vec<Login>>,
    /// The command line's runtime, which the store's connections live on.
    runtime: Option<tokio::runtime::Runtime>,
}

impl PgLogins {
    /// Runs `f` to its end from synchronous code: on the proxy's runtime without
    /// blocking its other tasks, or on the command line's own.
    fn blocking<F: std::future::Future>(&self, f: F) -> Result<F::Output, LoginStoreError> {
        match (&self.runtime, tokio::runtime::Handle::try_current()) {
            (Some(runtime), _) => Ok(runtime.block_on(f)),
            (None, Ok(handle)) => Ok(tokio::task::block_in_place(|| handle.block_on(f))),
            (None, Err(e)) => Err(error(e.to_string())),
        }
    }

    /// The logins of the store `config` names, for the command line (outside any
    /// runtime).
    pub fn open_standalone(config: &crate::config::StateConfig) -> Result<PgLogins, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut logins = runtime.block_on(async {
            let store = Postgres::connect(config).await?;
            PgLogins::open(store).await
        })?;
        logins.runtime = Some(runtime);
        Ok(logins)
    }
}

fn error(message: String) -> LoginStoreError {
    LoginStoreError::File {
        path: "postgres".into(),
        message,
    }
}

impl PgLogins {
    /// Reads the logins from the store.
    pub async fn open(store: Arc<Postgres>) -> Result<PgLogins, String> {
        let logins = store.all_logins().await?;
        Ok(PgLogins {
            store,
            logins: Mutex::new(logins),
            runtime: None,
        })
    }
}

impl LoginStore for PgLogins {
    fn for_key(&self, fingerprint: &str, now: SystemTime) -> Option<Login> {
        live_for_key(&lock(&self.logins), fingerprint, now)
    }

    fn get(&self, id: &str) -> Option<Login> {
        by_id(&lock(&self.logins), id)
    }

    fn add(&self, login: Login) -> Result<(), LoginStoreError> {
        let fresh = self
            .blocking(async {
                self.store.add_login(&login).await?;
                self.store.all_logins().await
            })?
            .map_err(error)?;
        *lock(&self.logins) = fresh;
        Ok(())
    }

    fn list(&self) -> Vec<Login> {
        lock(&self.logins).clone()
    }

    fn revoke(&self, who: &str) -> Result<Vec<Login>, LoginStoreError> {
        let gone = self
            .blocking(self.store.revoke_logins(who))?
            .map_err(error)?;
        let gone_ids: Vec<&str> = gone.iter().map(|l| l.id.as_str()).collect();
        lock(&self.logins).retain(|l| !gone_ids.contains(&l.id.as_str()));
        Ok(gone)
    }

    fn refresh(&self) -> Result<bool, LoginStoreError> {
        let fresh = self.blocking(self.store.all_logins())?.map_err(error)?;
        let mut logins = lock(&self.logins);
        let lost = any_gone(&logins, &fresh);
        *logins = fresh;
        Ok(lost)
    }
}

impl Postgres {
    async fn all_logins(&self) -> Result<Vec<Login>, String> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT login::text FROM portcullis_logins ORDER BY expires",
                &[],
            )
            .await
            .map_err(|e| error_text(&e))?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect())
    }

    /// Keeps a login: one bound to the same key replaces the older one; expired ones go.
    async fn add_login(&self, login: &Login) -> Result<(), String> {
        let mut client = self.client().await?;
        let json = serde_json::to_string(login).map_err(|e| e.to_string())?;
        let now = i64::try_from(epoch_seconds(SystemTime::now())).unwrap_or(i64::MAX);
        let expires = i64::try_from(login.expires).unwrap_or(i64::MAX);
        let tx = client.transaction().await.map_err(|e| error_text(&e))?;
        tx.execute("DELETE FROM portcullis_logins WHERE expires <= $1", &[&now])
            .await
            .map_err(|e| error_text(&e))?;
        if let Some(fp) = &login.key_fingerprint {
            tx.execute(
                "DELETE FROM portcullis_logins WHERE key_fingerprint = $1",
                &[fp],
            )
            .await
            .map_err(|e| error_text(&e))?;
        }
        tx.execute(
            "INSERT INTO portcullis_logins (id, email, key_fingerprint, expires, login) \
             VALUES ($1, $2, $3, $4, $5::text::jsonb)",
            &[
                &login.id,
                &login.email,
                &login.key_fingerprint,
                &expires,
                &json,
            ],
        )
        .await
        .map_err(|e| error_text(&e))?;
        tx.execute(&format!("NOTIFY {CHANNEL}"), &[])
            .await
            .map_err(|e| error_text(&e))?;
        tx.commit().await.map_err(|e| error_text(&e))
    }

    /// Removes the logins of an email (any case) or a key fingerprint; tells every
    /// replica.
    async fn revoke_logins(&self, who: &str) -> Result<Vec<Login>, String> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| error_text(&e))?;
        let rows = tx
            .query(
                "DELETE FROM portcullis_logins WHERE lower(email) = lower($1) OR key_fingerprint = $1 \
                 RETURNING login::text",
                &[&who],
            )
            .await
            .map_err(|e| error_text(&e))?;
        tx.execute(&format!("NOTIFY {CHANNEL}"), &[])
            .await
            .map_err(|e| error_text(&e))?;
        tx.commit().await.map_err(|e| error_text(&e))?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect())
    }

    /// Listens for changes to the logins made by any replica (or the command line) and
    /// calls `changed` for each, and after every reconnection (a notification may have
    /// been missed).
    pub async fn listen_logins(self: Arc<Self>, changed: impl Fn() + Send + 'static) {
        self.listen(CHANNEL, move |_| changed()).await
    }
}
