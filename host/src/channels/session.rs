//! The session channel bridge: one client session channel joined to one target session
//! channel, requests and data in both directions.
//!
//! One function per direction, run together, so a slow reader on one side never
//! stalls the other. Backpressure: each side is written with window-aware sends that
//! wait, and the channels' own buffers are bounded, so a slow target slows the client
//! and vice versa.
//!
//! Channel requests (pty, env, shell, exec, subsystem) are forwarded with a reply
//! requested, and the target's answers go back, in order (RFC 4254 5.4), to the
//! connection's handler through [`RequestReplies`]: russh knows whether the client
//! wanted a reply only while its handler runs for that request, so the handler waits
//! for the target's answer and replies there (see `server::handler`).
//!
//! Recorded sessions: what the client sends is sealed before it is forwarded to the
//! target, and what the target sends before it is forwarded to the client.

use std::sync::{Arc, Mutex};

use russh::server::{self, Handle};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};

use super::ChannelContext;
use super::recorder::{Recorder, record_client};
use super::refuse::refuse;
use super::requests::RecordAt;
use crate::policy::ChannelRequest;
use crate::recording::ChannelRecord;
use crate::recording::cmdlog;
use crate::sync::lock;

/// The target's answers to a channel's requests, in order: true for success.
pub type RequestReplies = tokio::sync::mpsc::UnboundedSender<bool>;

/// How long the target's EOF may wait for its exit status. A client whose own input is
/// closed may close the channel as soon as it sees EOF (OpenSSH's multiplexing master
/// does), and once it has, the exit status can no longer be delivered: the client then
/// reports 255. sshd sends EOF and the exit status moments apart, so the EOF is held
/// until the status has been forwarded, or this long for a program that closed its
/// output and kept running.
const EOF_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

/// What both directions of one bridged channel share.
struct Bridge {
    ctx: ChannelContext,
    /// This channel's record in the session's channel records.
    index: usize,
    cid: ChannelId,
    client: Handle,
    recorder: Recorder,
    replies: RequestReplies,
    exit: Mutex<cmdlog::ExitData>,
}

/// Bridges one client session channel to a new session channel on the target.
pub async fn bridge_session(
    client: Channel<server::Msg>,
    client_handle: Handle,
    target: Channel<russh::client::Msg>,
    ctx: ChannelContext,
    replies: RequestReplies,
) {
    // Past the record limit the channel still runs; its record is not kept (an
    // index past the end updates nothing).
    let index = ctx
        .push_record(ChannelRecord {
            kind: "session".into(),
            allowed: true,
            ..Default::default()
        })
        .unwrap_or(usize::MAX);
    let cid = client.id();
    let recorder = match Recorder::start(ctx.command_log.as_ref(), index) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the command log; refusing the channel: {e}");
            refuse(
                &client_handle,
                cid,
                "this session must be recorded, and recording failed",
            )
            .await;
            return;
        }
    };
    let bridge = Arc::new(Bridge {
        ctx,
        index,
        cid,
        client: client_handle,
        recorder,
        replies,
        exit: Mutex::new(cmdlog::ExitData::default()),
    });
    let (c_rx, c_tx) = client.split();
    let (t_rx, t_tx) = target.split();
    // Either direction ending ends the other: the target closing closes the client's
    // channel, and the client closing (or a refusal) stops reading the target.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::join!(
        client_to_target(&bridge, c_rx, t_tx, done_rx, stop_tx),
        target_to_client(&bridge, t_rx, c_tx, stop_rx, done_tx),
    );
    let mut exit = lock(&bridge.exit).clone();
    exit.timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if let Some(path) = bridge.recorder.finish(exit).await {
        lock(&bridge.ctx.command_logs).push(path);
    }
}

/// The request that starts a channel's program, as the policies see it, and its name
/// in the session log.
fn program_request(msg: &ChannelMsg) -> Option<(ChannelRequest, String)> {
    match msg {
        ChannelMsg::RequestShell { .. } => Some((ChannelRequest::Shell, "shell".into())),
        ChannelMsg::Exec { command, .. } => Some((
            ChannelRequest::Exec {
                command: String::from_utf8_lossy(command).into_owned(),
            },
            "exec".into(),
        )),
        ChannelMsg::RequestSubsystem { name, .. } => Some((
            ChannelRequest::Subsystem { name: name.clone() },
            format!("subsystem:{name}"),
        )),
        _ => None,
    }
}

/// The client's side: data, EOF and requests, to the target.
async fn client_to_target(
    b: &Bridge,
    mut from: ChannelReadHalf,
    to: ChannelWriteHalf<russh::client::Msg>,
    mut done: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::watch::Sender<bool>,
) {
    let _stop_on_exit = StopOnDrop(stop);
    let traffic = &b.ctx.traffic.from_client;
    loop {
        let msg = tokio::select! {
            m = from.wait() => m,
            _ = done.changed() => None,
        };
        let Some(msg) = msg else { break };
        if !b.recorder.record(|w| record_client(w, &msg)) {
            let _ = to.close().await;
            break;
        }
        if let Some((request, kind)) = program_request(&msg) {
            let verdict = b
                .ctx
                .check(request, &kind, RecordAt::Channel(b.index))
                .await;
            if !verdict.allowed {
                let by = verdict
                    .module
                    .as_deref()
                    .map(|m| format!(" by {m}"))
                    .unwrap_or_default();
                refuse(
                    &b.client,
                    b.cid,
                    &format!("{kind} refused{by}: {}", verdict.reason),
                )
                .await;
                // Told on the channel (message, exit status 1), so the request itself
                // is answered yes.
                let _ = b.replies.send(true);
                let _ = to.close().await;
                break;
            }
        }
        let sent = match msg {
            ChannelMsg::Data { data } => {
                traffic.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                to.data_bytes(data).await
            }
            ChannelMsg::ExtendedData { data, ext } => {
                traffic.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                to.extended_data_bytes(ext, data).await
            }
            ChannelMsg::Eof => to.eof().await,
            ChannelMsg::Close => {
                let _ = to.close().await;
                break;
            }
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                to.request_pty(
                    true,
                    &term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    &terminal_modes,
                )
                .await
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                // Asked of the policies; refused ones never reach the target.
                let request = ChannelRequest::Env {
                    name: variable_name.clone(),
                    value: variable_value.clone(),
                };
                let kind = format!("env:{}", crate::text::sanitize(&variable_name, 64));
                if b.ctx
                    .check(request, &kind, RecordAt::IfRefused)
                    .await
                    .allowed
                {
                    to.set_env(true, variable_name, variable_value).await
                } else {
                    let _ = b.replies.send(false);
                    Ok(())
                }
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                to.window_change(col_width, row_height, pix_width, pix_height)
                    .await
            }
            ChannelMsg::Signal { signal } => to.signal(signal).await,
            ChannelMsg::RequestShell { .. } => to.request_shell(true).await,
            ChannelMsg::Exec { command, .. } => to.exec(true, command).await,
            ChannelMsg::RequestSubsystem { name, .. } => to.request_subsystem(true, name).await,
            ChannelMsg::AgentForward { .. } => {
                // Asked of the policies like any other request; if they consent, the
                // target is asked too and its answer goes back.
                if b.allow_back_channels(ChannelRequest::AgentForwarding, "auth-agent")
                    .await
                {
                    to.agent_forward(true).await
                } else {
                    let _ = b.replies.send(false);
                    Ok(())
                }
            }
            ChannelMsg::RequestX11 {
                single_connection,
                x11_authentication_protocol,
                x11_authentication_cookie,
                x11_screen_number,
                ..
            } => {
                // Like agent forwarding: the policies, then the target. The target's
                // sshd hands out its own display and opens an x11 channel per X
                // client, joined to one opened to the client.
                if b.allow_back_channels(ChannelRequest::X11Forwarding, "x11")
                    .await
                {
                    to.request_x11(
                        true,
                        single_connection,
                        x11_authentication_protocol,
                        x11_authentication_cookie,
                        x11_screen_number,
                    )
                    .await
                } else {
                    let _ = b.replies.send(false);
                    Ok(())
                }
            }
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
}

/// The target's side: data, EOF, exit status and answers to requests, to the client.
async fn target_to_client(
    b: &Bridge,
    mut from: ChannelReadHalf,
    to: ChannelWriteHalf<server::Msg>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    done: tokio::sync::watch::Sender<bool>,
) {
    let traffic = &b.ctx.traffic.to_client;
    // The target's EOF is held until its exit status (see EOF_HOLD).
    let mut eof_held_until: Option<tokio::time::Instant> = None;
    loop {
        let held = async {
            match eof_held_until {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let msg = tokio::select! {
            m = from.wait() => m,
            _ = stop.changed() => None,
            () = held => {
                eof_held_until = None;
                if to.eof().await.is_err() {
                    break;
                }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        if !b.recorder.record_server(&msg) {
            let msg = "\r\nportcullis: recording failed; ending the session\r\n";
            let _ = b
                .client
                .extended_data(b.cid, 1, msg.as_bytes().to_vec())
                .await;
            break;
        }
        let sent = match msg {
            ChannelMsg::Data { data } => {
                traffic.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                to.data_bytes(data).await.map_err(|_| ())
            }
            ChannelMsg::ExtendedData { data, ext } => {
                traffic.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                to.extended_data_bytes(ext, data).await.map_err(|_| ())
            }
            ChannelMsg::Eof => {
                eof_held_until = Some(tokio::time::Instant::now() + EOF_HOLD);
                Ok(())
            }
            ChannelMsg::ExitStatus { exit_status } => {
                b.ctx.record(b.index, |r| r.exit_status = Some(exit_status));
                lock(&b.exit).status = Some(exit_status);
                let sent = b.client.exit_status_request(b.cid, exit_status).await;
                if eof_held_until.take().is_some() && to.eof().await.is_err() {
                    break;
                }
                sent
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                let signal = format!("{signal_name:?}");
                b.ctx
                    .record(b.index, |r| r.exit_signal = Some(signal.clone()));
                {
                    let mut e = lock(&b.exit);
                    e.signal = Some(signal);
                    e.core_dumped = core_dumped;
                    e.error_msg = (!error_message.is_empty()).then(|| error_message.clone());
                }
                let sent = b
                    .client
                    .exit_signal_request(b.cid, signal_name, core_dumped, error_message, lang_tag)
                    .await;
                if eof_held_until.take().is_some() && to.eof().await.is_err() {
                    break;
                }
                sent
            }
            ChannelMsg::Success | ChannelMsg::Failure => {
                let _ = b.replies.send(matches!(msg, ChannelMsg::Success));
                Ok(())
            }
            ChannelMsg::Close => break,
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = to.eof().await;
    let _ = to.close().await;
    let _ = done.send(true);
}

impl Bridge {
    /// Asks the policies about a request that lets the target open channels back to the
    /// client (agent, X11) and records the answer; if allowed, the session's slot for
    /// those channels gets the client's connection.
    async fn allow_back_channels(&self, request: ChannelRequest, kind: &str) -> bool {
        let slot = match request {
            ChannelRequest::AgentForwarding => &self.ctx.back.agent,
            _ => &self.ctx.back.x11,
        };
        let verdict = self.ctx.check(request, kind, RecordAt::New).await;
        if verdict.allowed {
            *lock(slot) = Some(self.client.clone());
        }
        verdict.allowed
    }
}

/// Signals the other direction when this one ends, however it ends.
struct StopOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}
