//! The PROXY protocol (v1 text and v2 binary, as HAProxy's `send-proxy` and
//! `send-proxy-v2` write it) from the load balancers listed in
//! `[server] proxy_protocol_from`: a connection from one of them must start with a
//! header, which gives the client's real address to the decisions, the logs and the
//! per-source limits. A connection from anywhere else that starts with a header is
//! refused (a client cannot choose its own address). Parsing is the `ppp` crate's; the
//! header is read exactly, so not a byte of the SSH stream after it is lost.

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;

/// The v1 header's first bytes, and the v2 signature's.
const V1_START: &[u8; 6] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes; a v2 header's payload is bounded here (addresses
/// and a few TLVs; HAProxy sends 12 or 36 bytes of addresses).
const V1_MAX: usize = 107;
const V2_MAX_PAYLOAD: usize = 1024;

/// Reads the header a trusted balancer sends first; returns the client's address
/// (none for a balancer's own health check: v2 `LOCAL`, v1 `UNKNOWN`).
pub(crate) async fn read_header<S>(stream: &mut S) -> Result<Option<SocketAddr>, String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut header = vec![0u8; 6];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("no PROXY protocol header: {e}"))?;
    if header.as_slice() == V1_START {
        // Byte by byte up to the line's end: nothing of the SSH stream is read.
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err("PROXY protocol v1 header longer than 107 bytes".into());
            }
            let byte = stream
                .read_u8()
                .await
                .map_err(|e| format!("truncated PROXY protocol v1 header: {e}"))?;
            header.push(byte);
        }
        let parsed = ppp::v1::Header::try_from(header.as_slice())
            .map_err(|e| format!("bad PROXY protocol v1 header: {e}"))?;
        return Ok(match parsed.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if Some(header.as_slice()) != V2_SIGNATURE.get(..6) {
        return Err("the balancer's connection does not start with a PROXY protocol header".into());
    }
    header.resize(16, 0);
    stream
        .read_exact(header.get_mut(6..).unwrap_or_default())
        .await
        .map_err(|e| format!("truncated PROXY protocol v2 header: {e}"))?;
    let length = match header.get(14..16) {
        Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
        _ => return Err("truncated PROXY protocol v2 header".into()),
    };
    if length > V2_MAX_PAYLOAD {
        return Err(format!(
            "PROXY protocol v2 header of {length} bytes is too long"
        ));
    }
    header.resize(16 + length, 0);
    stream
        .read_exact(header.get_mut(16..).unwrap_or_default())
        .await
        .map_err(|e| format!("truncated PROXY protocol v2 header: {e}"))?;
    let parsed = ppp::v2::Header::try_from(header.as_slice())
        .map_err(|e| format!("bad PROXY protocol v2 header: {e}"))?;
    if parsed.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

/// Whether the first bytes a client sent are a PROXY protocol header (which only a
/// trusted balancer may send). Looks without reading; waits at most `within` for the
/// first bytes.
pub(crate) async fn starts_with_header(
    stream: &tokio::net::TcpStream,
    within: std::time::Duration,
) -> bool {
    let mut first = [0u8; 6];
    for _ in 0..10 {
        let n = match tokio::time::timeout(within, stream.peek(&mut first)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        let seen = first.get(..n).unwrap_or_default();
        let could_be = V1_START.starts_with(seen) || V2_SIGNATURE.starts_with(seen);
        if n == 0 || !could_be {
            return false;
        }
        if n == first.len() {
            return true;
        }
        // Part of a header so far: look again shortly.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, String>, Vec<u8>) {
        let mut stream = bytes;
        let header = read_header(&mut stream).await;
        (header, stream.to_vec())
    }

    #[tokio::test]
    async fn v1_and_v2_give_the_client_address_and_leave_the_ssh_stream_whole() {
        let (addr, rest) =
            read(b"PROXY TCP4 192.0.2.7 10.0.0.1 50000 2222\r\nSSH-2.0-OpenSSH_9.2\r\n").await;
        assert_eq!(addr, Ok(Some("192.0.2.7:50000".parse().unwrap())));
        assert_eq!(rest, b"SSH-2.0-OpenSSH_9.2\r\n");
        let (addr, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 2222\r\n").await;
        assert_eq!(addr, Ok(Some("[2001:db8::7]:50000".parse().unwrap())));
        let (addr, _) = read(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(addr, Ok(None));

        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 7, 10, 0, 0, 1, 0xc3, 0x50, 0x08, 0xae,
        ]);
        v2.extend_from_slice(b"SSH-2.0-x\r\n");
        let (addr, rest) = read(&v2).await;
        assert_eq!(addr, Ok(Some("192.0.2.7:50000".parse().unwrap())));
        assert_eq!(rest, b"SSH-2.0-x\r\n");
        // LOCAL: a health check of the balancer's own.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(read(&local).await.0, Ok(None));
    }

    #[tokio::test]
    async fn a_missing_broken_or_oversized_header_is_an_error() {
        assert!(read(b"SSH-2.0-OpenSSH_9.2\r\n").await.0.is_err());
        assert!(read(b"PROXY TCP4 nonsense\r\n").await.0.is_err());
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(
            read(long.as_bytes())
                .await
                .0
                .unwrap_err()
                .contains("longer")
        );
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(read(&v2).await.0.unwrap_err().contains("too long"));
        let mut cut = V2_SIGNATURE.to_vec();
        cut.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0]);
        assert!(read(&cut).await.0.is_err());
    }
}
