//! Channels the target opens towards the client: connections to a port the client
//! forwarded (`ssh -R`), agent forwarding (`ssh -A`) and X11 (`ssh -X`). Each is
//! served only once the session was allowed that kind of forwarding; any other is
//! refused and logged.

use std::future::Future;
use std::sync::{Arc, Mutex};

use russh::client;

use super::Traffic;
use super::forwarded::join_forwarded;
use crate::sync::lock;
use crate::upstream::Opened;

/// The client's connection, once it has been allowed something the target opens
/// channels for.
pub type ClientSlot = Arc<Mutex<Option<russh::server::Handle>>>;

/// What the target may open channels back to the client for.
#[derive(Debug, Clone, Default)]
pub struct BackChannels {
    /// Set once a remote forward is allowed.
    pub remote_forwards: ClientSlot,
    /// Set once agent forwarding is allowed.
    pub agent: ClientSlot,
    /// Set once X11 forwarding is allowed.
    pub x11: ClientSlot,
    /// The session's byte totals, which these channels count in too.
    pub traffic: Traffic,
}

fn client_in(slot: &ClientSlot) -> Option<russh::server::Handle> {
    lock(slot).clone()
}

/// Serves the channels one target connection opens, until it closes.
pub async fn serve_opened(
    mut opened: tokio::sync::mpsc::Receiver<Opened>,
    back: BackChannels,
    host: String,
    port: u16,
) {
    while let Some(o) = opened.recv().await {
        let slot = match &o {
            Opened::ForwardedTcpip { .. } => &back.remote_forwards,
            Opened::Agent { .. } => &back.agent,
            Opened::X11 { .. } => &back.x11,
        };
        let Some(client) = client_in(slot) else {
            o.refuse(&host, port).await;
            continue;
        };
        let traffic = back.traffic.clone();
        match o {
            Opened::ForwardedTcpip {
                channel,
                reply,
                connected_address,
                connected_port,
                originator_address,
                originator_port,
            } => join_with_client(channel, reply, traffic, async move {
                client
                    .channel_open_forwarded_tcpip(
                        connected_address,
                        connected_port,
                        originator_address,
                        originator_port,
                    )
                    .await
            }),
            Opened::Agent { channel, reply } => {
                join_with_client(channel, reply, traffic, async move {
                    client.channel_open_agent().await
                })
            }
            Opened::X11 {
                channel,
                reply,
                originator_address,
                originator_port,
            } => join_with_client(channel, reply, traffic, async move {
                client
                    .channel_open_x11(originator_address, originator_port)
                    .await
            }),
        }
    }
}

/// Accepts a channel the target opened once its counterpart towards the client is open
/// (`to_client`), then joins the two; refuses it if the client declines. Runs on a
/// task of its own: the client's answer takes a round trip.
fn join_with_client(
    channel: russh::Channel<client::Msg>,
    reply: client::ChannelOpenHandle,
    traffic: Traffic,
    to_client: impl Future<Output = Result<russh::Channel<russh::server::Msg>, russh::Error>>
    + Send
    + 'static,
) {
    tokio::spawn(async move {
        match to_client.await {
            Ok(to_client) => {
                reply.accept().await;
                join_forwarded(to_client.into_stream(), channel.into_stream(), &traffic).await;
            }
            Err(_) => reply.reject(russh::ChannelOpenFailure::ConnectFailed).await,
        }
    });
}
