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

/// The address the proxy connects to for `host`: an IP literal as it is, a name
/// through the system resolver, preferring IPv4 (the address family every target
/// network has). The unspecified addresses (`0.0.0.0`, `::`) reach the proxy's own
/// machine, so they are loopback for policies and for the connection.
pub(crate) async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    let addr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => {
            let lookup = tokio::net::lookup_host((host, port));
            let addrs: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
                .await
                .ok()?
                .ok()?
                .collect();
            addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(addrs.first())
                .copied()?
        }
    };
    let ip = match super::target_name::canonical_ip(addr.ip()) {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Some(SocketAddr::new(ip, port))
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
    let addr = resolve(&host, port).await;
    let request = Arc::new(DecisionRequest {
        session_id: conn.id.clone(),
        email: identity.email.clone(),
        groups: identity.groups.clone(),
        authentication: identity.authentication.clone(),
        source: conn.peer,
        target_host: host.clone(),
        target_ip: addr.map(|a| a.ip()),
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
        assert_eq!(
            resolve("0.0.0.0", 22).await.map(|a| a.ip()),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(resolve("::", 22).await.map(|a| a.ip()), Some(ip("::1")));
        assert_eq!(
            resolve("::ffff:10.0.0.5", 2200).await,
            Some("10.0.0.5:2200".parse().unwrap())
        );
        assert_eq!(
            resolve("localhost", 22).await.map(|a| a.ip()),
            Some(ip("127.0.0.1"))
        );
    }
}
