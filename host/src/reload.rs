//! SIGHUP: the users file, the CA and the policies reloaded in one place. Whatever
//! fails to load is reported and the previous one stays in force.

use crate::policy::ReloadHandle;
use crate::server::Shared;
use crate::{ca, identity};

/// Reloads the policies (on their watcher's thread), the users file and the CA.
pub(crate) fn on_hangup(shared: &Shared, policies: &ReloadHandle) {
    tracing::info!("SIGHUP: reloading policies, users and the CA");
    policies.trigger();
    match identity::UsersFile::load(&shared.config.users_file) {
        Ok(users) => shared.reload_identities(Box::new(users)),
        Err(e) => {
            // Loud: keys the operator just removed stay valid until the file is fixed.
            shared.metrics.users_reload_failed();
            tracing::error!(
                "USERS FILE NOT RELOADED: the previous one stays in force, with every key it \
                 lists (removed keys too) until the file is fixed: {e}"
            )
        }
    }
    shared.refresh_logins();
    match ca::Ca::open(&shared.config.ca_dir) {
        Ok(ca) => {
            shared.reload_ca(ca);
            tracing::info!("CA reloaded: {:?}", shared.ca.load());
        }
        Err(e) => tracing::error!("CA not reloaded; the previous keys stay in force: {e}"),
    }
}

/// Watches the single sign-on logins file: when another process changes it
/// (`portcullis logins revoke`), the proxy reads it again and ends the sessions of
/// revoked logins. The watcher runs as long as the returned value is kept.
pub(crate) fn watch_logins(
    shared: std::sync::Arc<Shared>,
) -> Result<notify::RecommendedWatcher, String> {
    use notify::Watcher;
    let Some(sso) = &shared.sso else {
        return Err("single sign-on is not configured".into());
    };
    let path = sso.config().logins_file.clone();
    let dir = path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| ".".into());
    let name = path.file_name().map(|n| n.to_os_string());
    let (changed, mut changes) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            let _ = changed.try_send(());
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            // A rename lands as several events: read once they settle.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            while changes.try_recv().is_ok() {}
            shared.refresh_logins();
        }
    });
    Ok(watcher)
}
