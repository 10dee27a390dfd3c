//! What happens when the client opens a channel on an allowed connection: a session
//! channel bridged to its counterpart on the target, `-L` and `-R` forwards asked of
//! the policies, and the inner connection of a ProxyJump.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use russh::Channel;
use russh::server::{ChannelOpenHandle, Msg};

use super::error::SessionError;
use super::handler::{ConnHandler, Stage};
use super::session as decided;
use crate::policy::ChannelRequest;
use crate::upstream::Target;

/// Channels one connection may have open at once (session channels, `-L` forwards and
/// ProxyJump connections together). OpenSSH's sshd allows 10 sessions per connection;
/// this bound is looser, and there so that one authenticated client cannot make the
/// proxy hold unbounded state (host certificates, target connections, records).
pub(super) const MAX_CHANNELS: usize = 64;

/// One open channel's place under [`MAX_CHANNELS`], given back when dropped.
#[derive(Debug)]
pub(super) struct ChannelPlace(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ChannelPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnHandler {
    /// A place for a new channel, if the connection has fewer than [`MAX_CHANNELS`].
    pub(super) fn channel_place(&self) -> Option<ChannelPlace> {
        let before = self.open_channels.fetch_add(1, Ordering::Relaxed);
        let place = ChannelPlace(Arc::clone(&self.open_channels));
        if before >= MAX_CHANNELS {
            tracing::warn!(session_id = %self.conn.id, "channel refused: {MAX_CHANNELS} are open on this connection");
            return None;
        }
        Some(place)
    }

    /// Opens the session channel's counterpart on the target and bridges the two, or
    /// tells the user why not.
    pub(super) fn start_session_channel(
        &self,
        s: &decided::Session,
        channel: Channel<Msg>,
        handle: russh::server::Handle,
        replies: crate::channels::RequestReplies,
    ) {
        let ctx = s.channel_context(&self.shared, &self.conn, &self.watch.traffic);
        let (shared, conn) = (Arc::clone(&self.shared), self.conn.clone());
        let (target, live) = (Arc::clone(&s.target), Arc::clone(&s.live));
        let running = Arc::clone(&s.channel_tasks);
        let decided = Arc::clone(&s.decided);
        tokio::spawn(async move {
            let id = channel.id();
            // Boxed: connecting (the target's handshake and login) is the largest
            // future here, and only the bridge that follows lasts the session's life.
            let opened = match Box::pin(target.connect(&shared, &conn, &decided)).await {
                Ok((t, notice)) => {
                    if let Some(notice) = notice {
                        crate::channels::tell(&handle, id, &notice).await;
                    }
                    t.channel_open_session()
                        .await
                        .map_err(SessionError::TargetChannel)
                }
                Err(e) => Err(e),
            };
            match opened {
                Ok(tc) => {
                    crate::channels::bridge_session(channel, handle, tc, ctx, replies).await;
                    drop(running);
                }
                Err(why) => {
                    live.closed_because(&why);
                    crate::channels::refuse(&handle, id, &why.user_message()).await;
                }
            }
        });
    }

    /// A forwarding request (`-L` or `-R`) on an allowed session: asks the policies,
    /// records the request in the session log, and returns the target connection when
    /// it may go ahead.
    pub(super) async fn forwarding_target(
        &self,
        kind: &str,
        request: ChannelRequest,
    ) -> Option<Arc<Target>> {
        let Stage::Decided(s) = &self.stage else {
            return None;
        };
        let ctx = s.channel_context(&self.shared, &self.conn, &self.watch.traffic);
        if !crate::channels::check_and_record(&ctx, request, kind).await || s.refusal.is_some() {
            return None;
        }
        s.target
            .connect(&self.shared, &self.conn, &s.decided)
            .await
            .inspect_err(|e| tracing::warn!(session_id = %self.conn.id, %kind, "forwarding: {e}"))
            .ok()
            .map(|(target, _)| target)
    }

    /// `ssh -L`: a connection to `host:port` from the target's side, if allowed.
    pub(super) async fn forward_local(
        &self,
        channel: Channel<Msg>,
        host: &str,
        port: u16,
        reply: ChannelOpenHandle,
        place: ChannelPlace,
    ) {
        let request = ChannelRequest::DirectTcpip {
            host: host.to_string(),
            port,
        };
        let Some(target) = self.forwarding_target("direct-tcpip", request).await else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        };
        match target
            .channel_open_direct_tcpip(host.to_string(), u32::from(port), "127.0.0.1", 0)
            .await
        {
            Ok(tc) => {
                reply.accept().await;
                let traffic = self.watch.traffic.clone();
                tokio::spawn(async move {
                    let _place = place;
                    crate::channels::join_forwarded(
                        channel.into_stream(),
                        tc.into_stream(),
                        &traffic,
                    )
                    .await;
                });
            }
            Err(_) => reply.reject(russh::ChannelOpenFailure::ConnectFailed).await,
        }
    }

    /// ProxyJump: serves the inner SSH connection on the channel, presenting a host
    /// certificate for the requested host.
    pub(super) async fn jump(
        &self,
        channel: Channel<Msg>,
        host: &str,
        port: u16,
        reply: ChannelOpenHandle,
        place: ChannelPlace,
    ) {
        // The name is checked before anything is done with it (a certificate, a cache
        // entry, a pin).
        let canonical = match super::target_name::canonical_host(host) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(peer = %self.conn.peer, "ProxyJump refused: {e}");
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return;
            }
        };
        let config = match self.shared.inner_server_config(host, &canonical) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot issue a host certificate for {host}: {e}");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                return;
            }
        };
        reply.accept().await;
        let inner = ConnHandler::new(
            Arc::clone(&self.shared),
            self.conn.peer,
            Some((host.to_string(), port)),
            super::session::Via::ProxyJump,
        );
        tokio::spawn(async move {
            let _place = place;
            inner.serve(config, channel.into_stream()).await;
        });
    }
}
