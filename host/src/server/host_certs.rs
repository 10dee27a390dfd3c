//! Host certificates for ProxyJump targets: the proxy's host key certified for the
//! name the user asked for, signed by the host CA, cached per name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use russh::keys::ssh_key::Certificate;

use crate::ca::CaError;
use crate::sync::lock;

/// Host certificates, cached per host name.
#[derive(Debug, Default)]
pub(crate) struct HostCertCache(Mutex<HashMap<String, (Certificate, SystemTime)>>);

impl HostCertCache {
    pub(crate) fn get_or_issue(
        &self,
        host: &str,
        issue: impl FnOnce() -> Result<Certificate, CaError>,
    ) -> Result<Certificate, CaError> {
        const LIFETIME: Duration = Duration::from_secs(12 * 3600);
        let mut map = lock(&self.0);
        if let Some((cert, issued)) = map.get(host)
            && issued.elapsed().unwrap_or(LIFETIME) < LIFETIME
        {
            return Ok(cert.clone());
        }
        let cert = issue()?;
        map.insert(host.to_string(), (cert.clone(), SystemTime::now()));
        Ok(cert)
    }

    /// Forgets every certificate (the CA changed).
    pub(crate) fn clear(&self) {
        lock(&self.0).clear();
    }
}
