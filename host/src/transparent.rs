//! Transparent mode (docs/transparent.md): listeners for connections the kernel
//! redirected to the proxy, with nftables/iptables `REDIRECT` (the original destination
//! is read with `SO_ORIGINAL_DST`) or `TPROXY` (the listener is `IP_TRANSPARENT`, and
//! the connection's local address is the destination). The target is the original
//! destination; the login is the SSH user name as typed.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::upstream::socket::{is_local, is_own_connection};

/// A connection the kernel redirected, and where its client meant to go.
#[derive(Debug)]
pub(crate) struct Redirected {
    pub stream: tokio::net::TcpStream,
    pub peer: SocketAddr,
    pub destination: SocketAddr,
}

/// Opens the transparent listeners. Each is made `IP_TRANSPARENT` when the proxy may
/// (CAP_NET_ADMIN), for TPROXY; REDIRECT needs nothing.
pub(crate) fn bind(addrs: &[SocketAddr]) -> io::Result<Vec<(SocketAddr, tokio::net::TcpListener)>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut listeners = Vec::new();
    for addr in addrs {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{addr}: {e}"));
        let socket = Socket::new(
            Domain::for_address(*addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(named)?;
        socket.set_reuse_address(true).map_err(named)?;
        let transparent = match addr {
            SocketAddr::V4(_) => socket.set_ip_transparent_v4(true),
            SocketAddr::V6(_) => {
                // `[::]` and `0.0.0.0` may both be listed on one port.
                socket.set_only_v6(true).map_err(named)?;
                socket.set_ip_transparent_v6(true)
            }
        };
        if let Err(e) = transparent {
            tracing::warn!(
                listen = %addr,
                "transparent listener without IP_TRANSPARENT ({e}): REDIRECT works, TPROXY \
                 needs CAP_NET_ADMIN"
            );
        }
        socket.bind(&(*addr).into()).map_err(named)?;
        socket.listen(1024).map_err(named)?;
        socket.set_nonblocking(true).map_err(named)?;
        let listener = tokio::net::TcpListener::from_std(socket.into()).map_err(named)?;
        let local = listener.local_addr().map_err(named)?;
        listeners.push((local, listener));
    }
    if !listeners.is_empty() {
        crate::upstream::socket::watch_for_loops();
    }
    Ok(listeners)
}

/// Where the client meant to go: the destination before a REDIRECT, or the local
/// address a TPROXY rule delivered the connection to.
pub(crate) fn destination(stream: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let socket = socket2::SockRef::from(stream);
    let original = match local {
        SocketAddr::V4(_) => socket.original_dst_v4(),
        SocketAddr::V6(_) => socket.original_dst_v6(),
    };
    let destination = original.ok().and_then(|a| a.as_socket()).unwrap_or(local);
    let ip = portcullis_wire::canonical(destination.ip());
    Ok(SocketAddr::new(ip, destination.port()))
}

/// Why a redirected connection must be refused, if it must: it is the proxy's own
/// connection to a target come back (a redirect rule that does not exempt the proxy),
/// or its destination is one of the proxy's own listeners.
pub(crate) fn refusal(
    peer: SocketAddr,
    destination: SocketAddr,
    own: &[SocketAddr],
) -> Option<String> {
    if is_own_connection(peer) {
        return Some(
            "the proxy's own connection to a target was redirected back to it: exempt the \
             proxy's connections from the redirect rule (socket mark or user id, \
             docs/transparent.md)"
                .into(),
        );
    }
    let is_own_listener = own.iter().any(|l| {
        l.port() == destination.port()
            && (l.ip() == destination.ip()
                || (l.ip().is_unspecified() && is_local(destination.ip())))
    });
    is_own_listener.then(|| format!("its destination {destination} is the proxy itself"))
}

/// The name a reverse lookup of `ip` gives, if that name resolves back to `ip`: the
/// host certificate for the destination carries it beside the address, so that users
/// who type the name find it there. Bounded in time.
pub(crate) async fn reverse_name(ip: IpAddr) -> Option<String> {
    let lookup = tokio::task::spawn_blocking(move || {
        let name = dns_lookup::lookup_addr(&ip).ok()?;
        let forward = dns_lookup::lookup_host(&name).ok()?;
        forward
            .into_iter()
            .any(|a| portcullis_wire::canonical(a) == ip)
            .then_some(name)
    });
    let name = tokio::time::timeout(Duration::from_secs(2), lookup)
        .await
        .ok()?
        .ok()??;
    let name = crate::server::target_name::canonical_host(&name).ok()?;
    (name != ip.to_string()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_that_is_a_listener_of_the_proxy_is_refused() {
        let own: Vec<SocketAddr> = vec![
            "0.0.0.0:2223".parse().unwrap(),
            "127.0.0.1:2222".parse().unwrap(),
        ];
        let peer: SocketAddr = "192.0.2.9:40000".parse().unwrap();
        let refused = |d: &str| refusal(peer, d.parse().unwrap(), &own);
        assert!(
            refused("127.0.0.1:2223")
                .unwrap()
                .contains("the proxy itself")
        );
        assert!(refused("127.0.0.1:2222").is_some());
        // Another machine's port 2223, or this machine's sshd: fine.
        assert!(refused("192.0.2.50:2223").is_none());
        assert!(refused("127.0.0.1:22").is_none());
    }
}
