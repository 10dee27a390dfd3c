//! Forwarded channels (`-L`, `-R`, agent, X11): the two ends joined byte for byte, the
//! bytes counted in the session's totals as they pass.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Traffic;

/// Joins the client's end of a forwarded channel to the target's until both are done.
pub async fn join_forwarded<C, T>(client: C, mut target: T, traffic: &Traffic)
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = Counted {
        inner: client,
        traffic,
    };
    // An error ends the channel; what passed until then is counted already.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut target).await;
}

/// The client's end: what is read from it came from the client, what is written to it
/// goes to the client.
struct Counted<'a, S> {
    inner: S,
    traffic: &'a Traffic,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = (buf.filled().len() - before) as u64;
            self.traffic.from_client.fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            self.traffic
                .to_client
                .fetch_add(written as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn both_directions_are_counted() {
        let (client, mut client_far) = tokio::io::duplex(64);
        let (target, mut target_far) = tokio::io::duplex(64);
        let traffic = Traffic::default();
        let joined = {
            let traffic = traffic.clone();
            tokio::spawn(async move { join_forwarded(client, target, &traffic).await })
        };
        client_far.write_all(b"hello target").await.unwrap();
        let mut got = [0u8; 12];
        target_far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello target");
        target_far.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        client_far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
        drop((client_far, target_far));
        joined.await.unwrap();
        assert_eq!(traffic.from_client.load(Ordering::Relaxed), 12);
        assert_eq!(traffic.to_client.load(Ordering::Relaxed), 2);
    }
}
