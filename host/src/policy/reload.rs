//! Hot reload: watch the policy directory (the directory, not the files, so that an
//! atomic rename into place is seen), debounce bursts of events, reload off the
//! decision path, and swap the set in only if every module loads.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{PolicyEngine, PolicyError};

/// Keeps the watcher alive; dropping it stops watching.
#[derive(Debug)]
pub struct ReloadHandle {
    trigger: mpsc::Sender<()>,
    task: JoinHandle<()>,
    _watcher: notify::RecommendedWatcher,
}

impl ReloadHandle {
    /// Asks for a reload (as SIGHUP does).
    pub fn trigger(&self) {
        let _ = self.trigger.try_send(());
    }
}

impl Drop for ReloadHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching the engine's directory. Must be called within a tokio runtime.
pub fn watch(engine: Arc<PolicyEngine>, debounce: Duration) -> Result<ReloadHandle, PolicyError> {
    // Capacity 1: a pending reload already covers every event that follows it.
    let (tx, rx) = mpsc::channel::<()>(1);
    let events = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && !event.kind.is_access()
        {
            let _ = events.try_send(());
        }
    })
    .map_err(|e| PolicyError::Watch {
        path: engine.dir().to_path_buf(),
        reason: e.to_string(),
    })?;
    watcher
        .watch(engine.dir(), RecursiveMode::NonRecursive)
        .map_err(|e| PolicyError::Watch {
            path: engine.dir().to_path_buf(),
            reason: e.to_string(),
        })?;
    let task = tokio::spawn(reload_loop(engine, rx, debounce));
    Ok(ReloadHandle {
        trigger: tx,
        task,
        _watcher: watcher,
    })
}

async fn reload_loop(engine: Arc<PolicyEngine>, mut rx: mpsc::Receiver<()>, debounce: Duration) {
    while rx.recv().await.is_some() {
        // Wait until the directory has been quiet for `debounce`.
        while tokio::time::timeout(debounce, rx.recv())
            .await
            .is_ok_and(|r| r.is_some())
        {}
        let engine = Arc::clone(&engine);
        let outcome = tokio::task::spawn_blocking(move || {
            let r = engine.reload();
            (engine, r)
        })
        .await;
        match outcome {
            Ok((engine, Ok(set))) => tracing::info!(
                dir = %engine.dir().display(),
                generation = set.generation(),
                modules = ?set.names(),
                "policy set reloaded"
            ),
            Ok((engine, Err(e))) => tracing::error!(
                dir = %engine.dir().display(),
                "policy reload failed; the previous policy set stays in force: {e}"
            ),
            Err(e) => tracing::error!("policy reload task failed: {e}"),
        }
    }
}
