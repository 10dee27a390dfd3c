//! The schema, created and migrated by the binary: each step runs once, in order, in a
//! transaction that holds an advisory lock, so replicas starting together migrate once.

/// The steps; the version of a database is how many have run.
const STEPS: &[&str] = &[
    // 1: sessions, replicas, pins.
    "CREATE TABLE portcullis_sessions (
        id text PRIMARY KEY,
        replica text NOT NULL,
        running boolean NOT NULL,
        record jsonb NOT NULL,
        start_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL
     );
     CREATE INDEX portcullis_sessions_start ON portcullis_sessions (start_at);
     CREATE INDEX portcullis_sessions_running ON portcullis_sessions (replica) WHERE running;
     CREATE TABLE portcullis_replicas (
        name text PRIMARY KEY,
        heartbeat timestamptz NOT NULL,
        started timestamptz NOT NULL
     );
     CREATE TABLE portcullis_pins (
        name text PRIMARY KEY,
        key text NOT NULL,
        replica text NOT NULL,
        learned_at timestamptz NOT NULL DEFAULT now()
     );",
    // 2: single sign-on logins.
    "CREATE TABLE portcullis_logins (
        id text PRIMARY KEY,
        email text NOT NULL,
        key_fingerprint text,
        expires bigint NOT NULL,
        login jsonb NOT NULL
     );
     CREATE INDEX portcullis_logins_key ON portcullis_logins (key_fingerprint);",
];

/// An arbitrary key for the migration's advisory lock.
const LOCK: i64 = 0x706f_7274_6375_6c6c;

/// Brings the schema to the current version; refuses a database from a newer binary.
pub(super) async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), String> {
    let text = |e: tokio_postgres::Error| super::error_text(&e);
    let tx = client.transaction().await.map_err(text)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await
        .map_err(text)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS portcullis_schema (version integer NOT NULL);
         INSERT INTO portcullis_schema (version)
           SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM portcullis_schema);",
    )
    .await
    .map_err(text)?;
    let version: i32 = tx
        .query_one("SELECT version FROM portcullis_schema", &[])
        .await
        .map_err(text)?
        .try_get(0)
        .map_err(text)?;
    let current = STEPS.len() as i32;
    if version > current {
        return Err(format!(
            "the database's schema is version {version}, newer than this binary's {current}: \
             upgrade the proxy"
        ));
    }
    for (i, step) in STEPS.iter().enumerate().skip(version.max(0) as usize) {
        tx.batch_execute(step)
            .await
            .map_err(|e| format!("schema step {}: {}", i + 1, super::error_text(&e)))?;
    }
    tx.execute("UPDATE portcullis_schema SET version = $1", &[&current])
        .await
        .map_err(text)?;
    tx.commit().await.map_err(text)?;
    Ok(())
}
