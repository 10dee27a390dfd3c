//! The decision stage: an authenticated user and a target in, a [`Session`] out
//! (allowed, or refused with the reason). `policy eval` resolves targets with the same
//! [`resolve`], so it reports the address the proxy would use.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use super::Shared;
use super::error::SessionError;
use super::session::{Connection, Decided, Live, Session};
use super::target_login::TargetLink;
use crate::channels::{BackChannels, Traffic};
use crate::identity::Identity;
use crate::policy::{DecisionRequest, Evaluation};

/// How long a name may take to resolve: a user who controls a slow DNS server must not
/// hold a decision (and a blocking-pool thread) for long.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a target name leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub addr: SocketAddr,
    /// The resolver's canonical name for a name (none for an address).
    pub canonical_name: Option<String>,
}

/// What `host` resolves to: an IP literal as it is, a name through the system resolver
/// (with its canonical name), preferring IPv4 (the address family every target network
/// has). The unspecified addresses (`0.0.0.0`, `::`) reach the proxy's own machine, so
/// they are loopback for policies and for the connection.
pub(crate) async fn resolve(host: &str, port: u16) -> Option<Resolved> {
    let (addr, canonical_name) = match host.parse::<IpAddr>() {
        Ok(ip) => (SocketAddr::new(ip, port), None),
        Err(_) => {
            let name = host.to_string();
            let lookup = tokio::task::spawn_blocking(move || lookup(&name, port));
            tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
                .await
                .ok()?
                .ok()??
        }
    };
    let ip = match portcullis_wire::canonical(addr.ip()) {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Some(Resolved {
        addr: SocketAddr::new(ip, port),
        canonical_name,
    })
}

/// `getaddrinfo` with `AI_CANONNAME`: the addresses of `host` (IPv4 first) and the
/// name the resolver settled on, lower-cased.
fn lookup(host: &str, port: u16) -> Option<(SocketAddr, Option<String>)> {
    /// `AI_CANONNAME` in glibc, musl and the BSDs.
    const AI_CANONNAME: i32 = 2;
    let hints = dns_lookup::AddrInfoHints {
        flags: AI_CANONNAME,
        address: 0,
        socktype: dns_lookup::SockType::Stream.into(),
        protocol: 0,
    };
    let infos: Vec<dns_lookup::AddrInfo> = dns_lookup::getaddrinfo(Some(host), None, Some(hints))
        .ok()?
        .filter_map(Result::ok)
        .collect();
    // The canonical name comes with the first entry.
    let canonical = infos
        .iter()
        .find_map(|i| i.canonname.clone())
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let ip = infos
        .iter()
        .map(|i| i.sockaddr.ip())
        .find(IpAddr::is_ipv4)
        .or_else(|| infos.first().map(|i| i.sockaddr.ip()))?;
    Some((SocketAddr::new(ip, port), canonical))
}

/// Why an evaluation does not let the request go ahead, in words for the user.
pub(crate) fn policy_refusal(decision: &Evaluation, request: &DecisionRequest) -> Option<String> {
    let (host, port, login) = (&request.target_host, request.target_port, &request.login);
    let by = decision.module.as_deref().unwrap_or("no policy");
    if !decision.is_allowed() {
        Some(format!(
            "access to {host}:{port} as {login} blocked by {by}: {}",
            decision.reason
        ))
    } else if !decision.permits_login(login) {
        Some(format!(
            "login {login:?} is not permitted on {host}:{port} ({by} allows: {})",
            decision.principals.join(", ")
        ))
    } else {
        None
    }
}

/// What the user asked for.
#[derive(Debug)]
pub(crate) struct Asked {
    pub login: String,
    pub host: String,
    pub port: u16,
    pub client_version: String,
}

/// Decides a connection: resolves the target, asks the policies (off the runtime's
/// threads), and says why not when it may not go ahead.
pub(crate) async fn decide(
    shared: &Shared,
    conn: &Connection,
    identity: Identity,
    asked: Asked,
    traffic: &Traffic,
) -> Session {
    let Asked {
        login,
        host,
        port,
        client_version,
    } = asked;
    let resolved = resolve(&host, port).await;
    let addr = resolved.as_ref().map(|r| r.addr);
    let request = Arc::new(DecisionRequest {
        session_id: conn.id.clone(),
        email: identity.email.clone(),
        groups: identity.groups.clone(),
        authentication: identity.authentication.clone(),
        source: conn.peer,
        target_host: host.clone(),
        target_ip: addr.map(|a| a.ip()),
        target_canonical: resolved.and_then(|r| r.canonical_name),
        target_port: port,
        login: login.clone(),
        now: SystemTime::now(),
        client_version,
    });
    let policy = shared.policy.current();
    let deciding = std::time::Instant::now();
    let evaluation = {
        let (policy, request) = (Arc::clone(&policy), Arc::clone(&request));
        tokio::task::spawn_blocking(move || policy.decide(&request))
            .await
            .unwrap_or_else(|e| Evaluation::blocked(None, format!("policy evaluation failed: {e}")))
    };
    shared
        .metrics
        .decided(evaluation.action, deciding.elapsed());
    let refusal = if let Some(refusal) = policy_refusal(&evaluation, &request) {
        Some(SessionError::Policy(refusal))
    } else if addr.is_none() {
        Some(SessionError::CannotResolve(host.clone()))
    } else if evaluation.command_logging && shared.recording_key.is_none() {
        tracing::error!("a policy asks for command logging but [recording] public_key is not set");
        Some(SessionError::NoAuditorKey)
    } else {
        None
    };
    tracing::info!(
        session_id = %conn.id, user = %identity.email, target = %format!("{host}:{port}"), %login,
        module = ?evaluation.module, action = ?evaluation.action, reason = %evaluation.reason,
        allowed = refusal.is_none(), "session decided"
    );
    Session {
        decided: Arc::new(Decided {
            identity,
            host,
            port,
            addr,
            request,
            policy,
            evaluation: Arc::new(evaluation),
        }),
        refusal,
        target: Arc::new(TargetLink::new(BackChannels {
            traffic: traffic.clone(),
            ..Default::default()
        })),
        live: Arc::new(Live::default()),
        channel_tasks: Arc::new(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_unspecified_addresses_are_loopback_and_mapped_ones_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let addr = |r: Option<Resolved>| r.map(|r| r.addr);
        assert_eq!(
            addr(resolve("0.0.0.0", 22).await).map(|a| a.ip()),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(
            addr(resolve("::", 22).await).map(|a| a.ip()),
            Some(ip("::1"))
        );
        assert_eq!(
            addr(resolve("::ffff:10.0.0.5", 2200).await),
            Some("10.0.0.5:2200".parse().unwrap())
        );
        let local = resolve("localhost", 22).await.unwrap();
        assert_eq!(local.addr.ip(), ip("127.0.0.1"));
        assert_eq!(local.canonical_name.as_deref(), Some("localhost"));
        assert_eq!(resolve("127.0.0.1", 22).await.unwrap().canonical_name, None);
    }
}
