//! Host certificates for ProxyJump targets: the proxy's host key certified for the
//! name the user asked for, signed by the host CA, cached per name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use russh::keys::ssh_key::Certificate;

use crate::ca::CaError;
use crate::sync::lock;

/// How long a cached certificate is used (it is valid for 24 hours).
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// How many names are cached at most. Every authenticated ProxyJump user can ask for
/// any name, so the cache is bounded: when it is full, expired entries go first, then
/// the oldest.
const CAPACITY: usize = 4096;

/// Host certificates, cached per host name.
#[derive(Debug, Default)]
pub(crate) struct HostCertCache(Mutex<HashMap<String, (Certificate, SystemTime)>>);

impl HostCertCache {
    pub(crate) fn get_or_issue(
        &self,
        host: &str,
        issue: impl FnOnce() -> Result<Certificate, CaError>,
    ) -> Result<Certificate, CaError> {
        let mut map = lock(&self.0);
        let fresh = |issued: &SystemTime| issued.elapsed().unwrap_or(LIFETIME) < LIFETIME;
        if let Some((cert, issued)) = map.get(host)
            && fresh(issued)
        {
            return Ok(cert.clone());
        }
        let cert = issue()?;
        if map.len() >= CAPACITY && !map.contains_key(host) {
            map.retain(|_, (_, issued)| fresh(issued));
            if map.len() >= CAPACITY {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, (_, issued))| *issued)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(host.to_string(), (cert.clone(), SystemTime::now()));
        Ok(cert)
    }

    /// How many names are cached.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// Forgets every certificate (the CA changed).
    pub(crate) fn clear(&self) {
        lock(&self.0).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_bounded_whatever_names_are_asked_for() {
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = crate::ca::init(ca_dir.path(), crate::ca::KeyKind::Ed25519).unwrap();
        let key = crate::ca::generate(crate::ca::KeyKind::Ed25519, "host").unwrap();
        let cache = HostCertCache::default();
        let issue = |name: &str| {
            ca.issue_host_cert(
                key.public_key(),
                &[name.to_string()],
                Duration::from_secs(60),
            )
        };
        for i in 0..CAPACITY + 10 {
            let name = format!("host{i}.example");
            cache.get_or_issue(&name, || issue(&name)).unwrap();
        }
        assert_eq!(cache.len(), CAPACITY);
        // A name asked for again is served from the cache: no new certificate.
        let last = format!("host{}.example", CAPACITY + 9);
        cache
            .get_or_issue(&last, || panic!("issued again"))
            .unwrap();
    }
}
