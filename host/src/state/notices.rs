//! Notices between replicas over PostgreSQL's LISTEN/NOTIFY: a connection of its own
//! per listener, reconnected with a backoff. Used for the logins (`portcullis_logins`:
//! read them again) and for sessions an auditor ends from any replica's console
//! (`portcullis_end`: the replica that holds the session ends it).

use std::sync::Arc;
use std::time::Duration;

use super::{Postgres, error_text};

/// The channel of end requests; the payload is JSON `{"id": ..., "why": ...}`.
const END: &str = "portcullis_end";

impl Postgres {
    /// Listens on `channel` and calls `heard` with each notification's payload, and
    /// with `None` after every (re)connection: a notification may have been missed
    /// while the connection was down.
    pub(super) async fn listen(
        self: Arc<Self>,
        channel: &'static str,
        heard: impl Fn(Option<&str>) + Send + 'static,
    ) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if let Err(e) = self.listen_once(channel, &heard).await {
                tracing::warn!(replica = %self.replica, channel, "listening for notices: {e}")
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn listen_once(
        &self,
        channel: &str,
        heard: &(impl Fn(Option<&str>) + Send),
    ) -> Result<(), String> {
        let (client, mut messages) = self.connect_one().await?;
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .map_err(|e| error_text(&e))?;
        heard(None);
        while let Some(message) = messages.recv().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => heard(Some(n.payload())),
                Ok(_) => {}
                Err(e) => return Err(error_text(&e)),
            }
        }
        Err("the connection closed".into())
    }

    /// Asks every replica to end session `id` for `why`; the one holding it does.
    pub async fn request_end(&self, id: &str, why: &str) -> Result<(), String> {
        let payload = serde_json::json!({ "id": id, "why": why }).to_string();
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        client
            .execute("SELECT pg_notify($1, $2)", &[&END, &payload])
            .await
            .map_err(|e| error_text(&e))?;
        Ok(())
    }

    /// Ends the sessions other replicas' consoles ask to end, with `end(id, why)`.
    pub async fn listen_end_requests(self: Arc<Self>, end: impl Fn(&str, &str) + Send + 'static) {
        self.listen(END, move |payload| {
            let Some(payload) = payload else { return };
            let Ok(request) = serde_json::from_str::<serde_json::Value>(payload) else {
                tracing::warn!("an unreadable end request: {payload}");
                return;
            };
            let field = |name| request.get(name).and_then(serde_json::Value::as_str);
            if let (Some(id), Some(why)) = (field("id"), field("why")) {
                end(id, why);
            }
        })
        .await
    }
}
