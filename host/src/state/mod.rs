//! Shared state in PostgreSQL (`[state] postgres`, docs/deploy.md): the session records
//! (running and ended, with the replica that holds each) and the target host-key pins,
//! so that any replica behind a balancer sees the same sessions and enforces the same
//! pins. Replicas heartbeat; a replica that misses its heartbeat for the lease has its
//! running sessions marked interrupted by another.
//!
//! Writes of records go through a queue that retries until the database takes them: a
//! database outage refuses new sessions (no record, no session: the first record of a
//! session is written directly and must succeed) and lets running ones go on; their
//! records are written when it is back.

mod logins;
mod notices;
mod schema;

pub use logins::PgLogins;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use crate::config::StateConfig;
use crate::recording::SessionRecord;
use crate::sync::lock;
use crate::text::error_chain as error_text;

/// Bound on one database operation on a session's path.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared store.
pub struct Postgres {
    pool: Pool,
    /// For connections of their own (LISTEN), outside the pool.
    pg_config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// This replica's name.
    pub replica: String,
    lease: Duration,
    /// Records waiting to be written: the latest of each session.
    pending: Mutex<HashMap<String, (SessionRecord, bool)>>,
    wake: tokio::sync::Notify,
    /// Whether the last write failed (the outage is logged once).
    failing: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

fn tls(config: &StateConfig) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, String> {
    let Some(path) = &config.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls)))
}

impl Postgres {
    /// Connects, creates or migrates the schema, and records this replica.
    pub async fn connect(config: &StateConfig) -> Result<Arc<Postgres>, String> {
        let mut pg: tokio_postgres::Config = config
            .postgres
            .parse()
            .map_err(|e| format!("state.postgres: {e}"))?;
        if let Some(password) = &config.password {
            pg.password(password);
        }
        pg.connect_timeout(OP_TIMEOUT);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let tls = tls(config)?;
        if tls.is_some() {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let manager = match &tls {
            Some(tls) => Manager::from_config(pg.clone(), tls.clone(), manager_config),
            None => Manager::from_config(pg.clone(), tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(16)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(OP_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| e.to_string())?;
        let store = Arc::new(Postgres {
            pool,
            pg_config: pg,
            tls,
            replica: config.replica.clone(),
            lease: config.lease,
            pending: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            failing: Default::default(),
        });
        let mut client = store.client().await?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, String> {
        self.pool
            .get()
            .await
            .map_err(|e| format!("the database is unavailable: {}", error_text(&e)))
    }

    /// A connection of its own, its messages (notifications) on the receiver.
    async fn connect_one(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::mpsc::UnboundedReceiver<
                Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>,
            >,
        ),
        String,
    > {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let client = match &self.tls {
            None => {
                let (client, connection) = self
                    .pg_config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| error_text(&e))?;
                tokio::spawn(drive(connection, tx));
                client
            }
            Some(tls) => {
                let (client, connection) = self
                    .pg_config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| error_text(&e))?;
                tokio::spawn(drive(connection, tx));
                client
            }
        };
        Ok((client, rx))
    }

    /// Writes a session's record now (the first one of a session: it must succeed).
    pub async fn write_now(&self, record: &SessionRecord, running: bool) -> Result<(), String> {
        let write = async {
            let client = self.client().await?;
            upsert(&client, &self.replica, record, running).await
        };
        tokio::time::timeout(OP_TIMEOUT, write)
            .await
            .map_err(|_| "the database did not answer in time".to_string())?
    }

    /// Queues a session's record; the writer retries until the database takes it.
    pub fn queue(&self, record: &SessionRecord, running: bool) {
        let mut pending = lock(&self.pending);
        // An ended record is never replaced by a running one.
        if !running || pending.get(&record.id).is_none_or(|(_, r)| *r) {
            pending.insert(record.id.clone(), (record.clone(), running));
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Writes queued records until the process ends; an outage is retried with
    /// back-off and logged once.
    pub async fn writer(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let batch: Vec<(SessionRecord, bool)> =
                lock(&self.pending).drain().map(|(_, v)| v).collect();
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            let mut failed = Vec::new();
            for (record, running) in batch {
                if let Err(e) = self.write_now(&record, running).await {
                    if !self
                        .failing
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::error!(replica = %self.replica, "session records wait for the database: {e}");
                    }
                    failed.push((record, running));
                }
            }
            if failed.is_empty() {
                if self
                    .failing
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::info!(replica = %self.replica, "the database is back; waiting session records written");
                }
                backoff = Duration::from_millis(200);
                continue;
            }
            {
                let mut pending = lock(&self.pending);
                for (record, running) in failed {
                    // A newer record of the session, queued meanwhile, wins.
                    pending
                        .entry(record.id.clone())
                        .or_insert((record, running));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Records this replica's heartbeat, then marks interrupted the running sessions of
    /// replicas whose heartbeat is older than the lease; returns how many.
    pub async fn heartbeat(&self) -> Result<u64, String> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO portcullis_replicas (name, heartbeat, started) VALUES ($1, now(), now()) \
                 ON CONFLICT (name) DO UPDATE SET heartbeat = now()",
                &[&self.replica],
            )
            .await
            .map_err(|e| error_text(&e))?;
        let lease = format!("{} milliseconds", self.lease.as_millis());
        let reaped = client
            .execute(
                "UPDATE portcullis_sessions s SET running = false, updated_at = now(), \
                 record = jsonb_set(s.record, '{close_reason}', \
                   to_jsonb('interrupted: replica ' || s.replica || ' stopped (no heartbeat for ' || $2 || ')')) \
                 WHERE s.running AND s.replica <> $1 AND s.replica IN \
                   (SELECT name FROM portcullis_replicas WHERE heartbeat < now() - $3::text::interval)",
                &[&self.replica, &humantime::format_duration(self.lease).to_string(), &lease],
            )
            .await
            .map_err(|e| error_text(&e))?;
        Ok(reaped)
    }

    /// Marks this replica's own running sessions interrupted (at start: they are
    /// leftovers of a previous run).
    pub async fn recover_own(&self) -> Result<u64, String> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE portcullis_sessions SET running = false, updated_at = now(), \
                 record = jsonb_set(record, '{close_reason}', \
                   to_jsonb('interrupted: replica ' || replica || ' restarted'::text)) \
                 WHERE running AND replica = $1",
                &[&self.replica],
            )
            .await
            .map_err(|e| error_text(&e))
    }

    /// Runs the heartbeat every third of the lease until the process ends.
    pub async fn heartbeats(self: Arc<Self>) {
        loop {
            match self.heartbeat().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    replica = %self.replica,
                    count = n,
                    "sessions of a replica that stopped heartbeating marked interrupted"
                ),
                Err(e) => tracing::warn!(replica = %self.replica, "heartbeat failed: {e}"),
            }
            tokio::time::sleep(self.lease / 3).await;
        }
    }

    /// Session records, running or ended, newest last.
    pub async fn sessions(&self, running: bool) -> Result<Vec<SessionRecord>, String> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT record::text FROM portcullis_sessions WHERE running = $1 \
                 ORDER BY start_at, id",
                &[&running],
            )
            .await
            .map_err(|e| error_text(&e))?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get::<_, String>(0).ok())
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect())
    }

    /// The keys pinned for these names (`name` or `[name]:port`, as in known_targets).
    pub async fn pins(&self, names: &[String]) -> Result<Vec<(String, String)>, String> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT key, replica FROM portcullis_pins WHERE name = ANY($1) ORDER BY learned_at",
                &[&names],
            )
            .await
            .map_err(|e| error_text(&e))?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
            .collect())
    }

    /// Pins `key` (an OpenSSH public key line) for these names unless a key is pinned
    /// for one of them already; returns the key pinned first when it is another.
    pub async fn learn_pin(&self, names: &[String], key: &str) -> Result<Option<String>, String> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| error_text(&e))?;
        for name in names {
            tx.execute(
                "INSERT INTO portcullis_pins (name, key, replica) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
                &[name, &key, &self.replica],
            )
            .await
            .map_err(|e| error_text(&e))?;
        }
        let rows = tx
            .query(
                "SELECT key FROM portcullis_pins WHERE name = ANY($1) AND key <> $2",
                &[&names, &key],
            )
            .await
            .map_err(|e| error_text(&e))?;
        tx.commit().await.map_err(|e| error_text(&e))?;
        Ok(rows.first().and_then(|r| r.try_get(0).ok()))
    }
}

/// Drives a connection of its own, handing on its messages.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    to: tokio::sync::mpsc::UnboundedSender<
        Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>,
    >,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        if to.send(message).is_err() {
            return;
        }
    }
}

impl crate::recording::RecordMirror for Postgres {
    fn queue(&self, record: &SessionRecord, running: bool) {
        Postgres::queue(self, record, running);
    }
}

async fn upsert(
    client: &deadpool_postgres::Object,
    replica: &str,
    record: &SessionRecord,
    running: bool,
) -> Result<(), String> {
    let json = serde_json::to_string(record).map_err(|e| e.to_string())?;
    let start = if record.start.is_empty() {
        crate::recording::timestamp(std::time::SystemTime::now())
    } else {
        record.start.clone()
    };
    client
        .execute(
            "INSERT INTO portcullis_sessions (id, replica, running, record, start_at, updated_at) \
             VALUES ($1, $2, $3, $4::text::jsonb, $5::text::timestamptz, now()) \
             ON CONFLICT (id) DO UPDATE SET replica = EXCLUDED.replica, running = EXCLUDED.running, \
               record = EXCLUDED.record, updated_at = now() \
             WHERE portcullis_sessions.running",
            &[&record.id, &replica, &running, &json, &start],
        )
        .await
        .map_err(|e| error_text(&e))?;
    Ok(())
}
