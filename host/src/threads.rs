//! Connection threads (`server.threads`): each connection lives on one thread, with
//! its own tokio runtime, from accept to close: both legs, the ProxyJump inner
//! connection, the channel bridges and the command log's writer.
//!
//! Why: on a shared work-stealing runtime a forwarded packet crossed threads (the
//! target's reader woke the bridge, which woke the client's writer, each possibly on
//! the other worker), and a wake-up across threads is a write to an eventfd and a
//! context switch. Kept on one thread, a GiB forwarded by the user-name form costs
//! ~15% less CPU, a logged one ~25% less, and both run faster; a ProxyJump download
//! costs the same and runs slower, its three ciphers now on one core
//! (docs/benchmarks.md, "Connection threads"). This is how nginx, HAProxy and Envoy
//! spread connections over cores.
//!
//! A new connection goes to the thread with the fewest connections. The accept
//! loop, the console, the metrics and the reloads stay on the main runtime.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The connection threads. Dropping it stops them (the sessions are drained before).
#[derive(Debug)]
pub(crate) struct ConnectionThreads {
    threads: Vec<Thread>,
}

#[derive(Debug)]
struct Thread {
    runtime: tokio::runtime::Runtime,
    /// Connections on this thread now.
    live: Arc<AtomicUsize>,
}

/// Counts a connection on its thread until dropped.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionThreads {
    /// Starts `n` threads (at least one).
    pub(crate) fn start(n: usize) -> std::io::Result<ConnectionThreads> {
        let threads = (0..n.max(1))
            .map(|i| {
                // A multi-thread runtime with one worker rather than a current-thread
                // one: `block_in_place` (the PostgreSQL login store) works on it.
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("connections-{i}"))
                    .enable_all()
                    .build()?;
                Ok(Thread {
                    runtime,
                    live: Arc::new(AtomicUsize::new(0)),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(ConnectionThreads { threads })
    }

    /// Each thread's count of the connections it holds, for the metrics.
    pub(crate) fn counters(&self) -> Vec<Arc<AtomicUsize>> {
        self.threads.iter().map(|t| Arc::clone(&t.live)).collect()
    }

    /// Runs `serve(socket)` on the thread with the fewest connections, in `set` (which
    /// the shutdown drains). The socket moves to that thread's reactor, so its
    /// readiness wakes that thread only.
    pub(crate) fn spawn<F, Fut>(&self, set: &mut JoinSet<()>, socket: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(thread) = self
            .threads
            .iter()
            .min_by_key(|t| t.live.load(Ordering::Relaxed))
        else {
            return;
        };
        let socket = match socket.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("connection dropped: cannot move it to a connection thread: {e}");
                return;
            }
        };
        thread.live.fetch_add(1, Ordering::Relaxed);
        let live = Live(Arc::clone(&thread.live));
        set.spawn_on(
            async move {
                let _live = live;
                match TcpStream::from_std(socket) {
                    Ok(socket) => serve(socket).await,
                    Err(e) => tracing::warn!("connection dropped: {e}"),
                }
            },
            thread.runtime.handle(),
        );
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        // From inside the main runtime a runtime cannot be dropped by blocking on it;
        // what is left (nothing once the sessions are drained) is stopped in the
        // background.
        for t in std::mem::take(&mut self.threads) {
            t.runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(threads: &ConnectionThreads) -> Vec<usize> {
        threads
            .counters()
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// Connections go to the least loaded thread, run there, and leave the count when
    /// they end.
    #[tokio::test]
    async fn connections_spread_and_run_on_their_thread() {
        let threads = ConnectionThreads::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut set = JoinSet::new();
        let (release, hold) = tokio::sync::watch::channel(false);
        let (names_tx, mut names) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (socket, _) = listener.accept().await.unwrap();
            let (mut hold, names_tx) = (hold.clone(), names_tx.clone());
            threads.spawn(&mut set, socket, move |mut socket| async move {
                use tokio::io::AsyncWriteExt;
                let name = std::thread::current().name().unwrap_or("").to_string();
                names_tx.send(name).unwrap();
                // The socket works on its new reactor.
                socket.write_all(b"x").await.unwrap();
                let _ = hold.wait_for(|r| *r).await;
            });
            // The count is taken at spawn, so the next one sees it.
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(names.recv().await.unwrap());
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "connections-0",
                "connections-0",
                "connections-1",
                "connections-1"
            ]
        );
        assert_eq!(load(&threads), [2, 2]);
        for c in &mut clients {
            use tokio::io::AsyncReadExt;
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"x");
        }
        release.send(true).unwrap();
        while set.join_next().await.is_some() {}
        assert_eq!(load(&threads), [0, 0]);
    }
}
