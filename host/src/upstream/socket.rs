//! The TCP connection to a target. With transparent listeners configured, the proxy's
//! own connections could be redirected back to it by a rule that does not exempt them
//! (docs/transparent.md): such a connection is bound to a source port first and that
//! port is remembered until the target login is over, so that the transparent listener
//! recognises it ([`is_own_connection`]) and refuses it instead of looping. A firewall
//! mark (`[upstream] socket_mark`) lets the rule exempt the connections in the first
//! place.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sync::lock;

/// Source ports of target connections being made, with how many use each.
static CONNECTING: Mutex<Option<HashMap<u16, usize>>> = Mutex::new(None);

/// Whether target connections are bound and remembered (transparent listeners exist).
static WATCH_LOOPS: AtomicBool = AtomicBool::new(false);

/// Called once transparent listeners are open: from then on target connections are
/// remembered while they are made.
pub(crate) fn watch_for_loops() {
    WATCH_LOOPS.store(true, Ordering::Relaxed);
}

/// Whether a connection from `peer` is one of the proxy's own target connections.
pub(crate) fn is_own_connection(peer: SocketAddr) -> bool {
    let known = lock(&CONNECTING)
        .as_ref()
        .is_some_and(|ports| ports.contains_key(&peer.port()));
    known && is_local(peer.ip())
}

/// Whether `ip` is an address of this machine (of this network namespace).
pub(crate) fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// A remembered source port, forgotten on drop.
#[derive(Debug)]
pub(crate) struct Outgoing {
    port: Option<u16>,
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let Some(port) = self.port else { return };
        let mut guard = lock(&CONNECTING);
        if let Some(ports) = guard.as_mut()
            && let Some(n) = ports.get_mut(&port)
        {
            *n -= 1;
            if *n == 0 {
                ports.remove(&port);
            }
        }
    }
}

/// TCP keepalives: a probe after a minute without traffic, then every 15 s, the
/// connection dropped after 4 unanswered (about two minutes). The kernel sends them,
/// so a dead peer is found without waking the proxy; SSH keepalives
/// (`server.keepalive_interval`) can then be rare.
pub(crate) fn tcp_keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(15))
        .with_retries(4)
}

/// Sets [`tcp_keepalive`] and nodelay on an accepted connection.
pub(crate) fn tune_accepted(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&tcp_keepalive());
}

/// Connects to `addr`, marked with `mark` when set; keep the [`Outgoing`] until the
/// login on the connection is over.
pub(crate) async fn connect(
    addr: SocketAddr,
    mark: Option<u32>,
) -> io::Result<(tokio::net::TcpStream, Outgoing)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(mark) = mark {
        socket.set_mark(mark).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot set the socket mark {mark} (it needs CAP_NET_ADMIN): {e}"),
            )
        })?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_keepalive(&tcp_keepalive())?;
    let mut outgoing = Outgoing { port: None };
    if WATCH_LOOPS.load(Ordering::Relaxed) {
        let any: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        socket.bind(&any.into())?;
        if let Some(port) = socket.local_addr()?.as_socket().map(|a| a.port()) {
            *lock(&CONNECTING)
                .get_or_insert_with(HashMap::new)
                .entry(port)
                .or_default() += 1;
            outgoing.port = Some(port);
        }
    }
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    let stream = socket.connect(addr).await?;
    Ok((stream, outgoing))
}

/// How many reads of a connection have what they received acknowledged at once: the
/// key exchange, the login and the first channel's requests.
const QUICK_ACK_READS: u8 = 64;

/// A connection (to a client or a target) whose first [`QUICK_ACK_READS`] reads have
/// what they received acknowledged at once (`TCP_QUICKACK`), then a plain one.
///
/// OpenSSH's ssh and sshd leave Nagle's algorithm on until a session turns
/// interactive, so during a login they hold a small packet while an earlier one is
/// unacknowledged; and Linux delays an acknowledgement by up to 40 ms once the
/// exchange looks like request and reply. Twice per connection the peer sends two
/// messages in a row and the second waited: a client's key exchange message behind its
/// KEXINIT (unless the proxy's KEXINIT answers it, `cipher_order = "proxy"`), and the
/// confirmation of the proxy's first channel behind the host keys sshd announces after
/// the login (a message the proxy does not answer): 42 ms each of a 100 ms connection
/// on loopback (docs/benchmarks.md, session 18). The kernel leaves quick
/// acknowledgements by itself, hence one request per read.
#[derive(Debug)]
pub(crate) struct QuickAck {
    stream: tokio::net::TcpStream,
    reads_left: u8,
}

impl QuickAck {
    pub(crate) fn new(stream: tokio::net::TcpStream) -> QuickAck {
        QuickAck {
            stream,
            reads_left: QUICK_ACK_READS,
        }
    }
}

impl tokio::io::AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let read = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        if read.is_ready() && self.reads_left > 0 {
            self.reads_left -= 1;
            // Only a request: a failure leaves the usual delayed acknowledgements.
            let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(true);
        }
        read
    }
}

impl tokio::io::AsyncWrite for QuickAck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Bytes go through both ways, and the quick acknowledgements stop after
    /// [`QUICK_ACK_READS`] reads.
    #[tokio::test]
    async fn a_quick_ack_connection_carries_bytes_and_asks_for_a_bounded_number_of_reads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let mut peer = client.unwrap();
        let mut ours = QuickAck::new(accepted.unwrap().0);
        let mut byte = [0u8; 1];
        for i in 0..=QUICK_ACK_READS {
            peer.write_all(&[i]).await.unwrap();
            ours.read_exact(&mut byte).await.unwrap();
            assert_eq!(byte, [i]);
            ours.write_all(&[i ^ 0xff]).await.unwrap();
            peer.read_exact(&mut byte).await.unwrap();
            assert_eq!(byte, [i ^ 0xff]);
        }
        assert_eq!(ours.reads_left, 0);
    }
}
