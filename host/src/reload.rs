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
    match ca::Ca::open(&shared.config.ca_dir) {
        Ok(ca) => {
            shared.reload_ca(ca);
            tracing::info!("CA reloaded: {:?}", shared.ca.load());
        }
        Err(e) => tracing::error!("CA not reloaded; the previous keys stay in force: {e}"),
    }
}
