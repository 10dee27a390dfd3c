//! The channel bridge: one client session channel joined to one target session
//! channel, requests and data in both directions.
//!
//! Two tasks, one per direction, so a slow reader on one side never stalls the other.
//! Backpressure: each side is written with window-aware sends that wait, and the
//! channels' own buffers are bounded, so a slow target slows the client and vice versa.
//! Requests that want a reply are forwarded with a reply requested; the target's
//! replies come back in order (RFC 4254 5.4), matched against a queue of whether the
//! client wanted each one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use russh::server::{self, Handle};
use russh::{Channel, ChannelId, ChannelMsg};

use crate::policy::{ChannelRequest, DecisionRequest, Evaluation, PolicySet};
use crate::recording::ChannelRecord;

/// What a channel needs from its session.
#[derive(Debug, Clone)]
pub struct ChannelContext {
    pub policy: Arc<PolicySet>,
    pub request: Arc<DecisionRequest>,
    pub decision: Arc<Evaluation>,
    pub bytes_from_client: Arc<AtomicU64>,
    pub bytes_to_client: Arc<AtomicU64>,
    pub channels: Arc<Mutex<Vec<ChannelRecord>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ChannelContext {
    async fn check(&self, request: ChannelRequest) -> crate::policy::ChannelDecision {
        let (policy, req, decision) = (
            Arc::clone(&self.policy),
            Arc::clone(&self.request),
            Arc::clone(&self.decision),
        );
        tokio::task::spawn_blocking(move || policy.check_channel(&req, &decision, &request))
            .await
            .unwrap_or_else(|e| crate::policy::ChannelDecision {
                allowed: false,
                module: None,
                reason: format!("policy check failed: {e}"),
            })
    }

    fn record(&self, index: usize, f: impl FnOnce(&mut ChannelRecord)) {
        if let Some(r) = lock(&self.channels).get_mut(index) {
            f(r);
        }
    }
}

/// Bridges one client session channel to a new session channel on the target.
pub async fn bridge_session(
    client: Channel<server::Msg>,
    client_handle: Handle,
    target: Channel<russh::client::Msg>,
    ctx: ChannelContext,
) {
    let index = {
        let mut channels = lock(&ctx.channels);
        channels.push(ChannelRecord {
            kind: "session".into(),
            allowed: true,
            ..Default::default()
        });
        channels.len() - 1
    };
    let cid = client.id();
    let (mut c_rx, c_tx) = client.split();
    let (mut t_rx, t_tx) = target.split();
    let pending: Arc<Mutex<VecDeque<bool>>> = Arc::new(Mutex::new(VecDeque::new()));
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);

    let upstream = {
        let pending = Arc::clone(&pending);
        let handle = client_handle.clone();
        let ctx = ctx.clone();
        async move {
            let forward = |want_reply: bool| lock(&pending).push_back(want_reply);
            loop {
                let msg = tokio::select! {
                    m = c_rx.wait() => m,
                    _ = done_rx.changed() => None,
                };
                let Some(msg) = msg else { break };
                let sent = match msg {
                    ChannelMsg::Data { data } => {
                        ctx.bytes_from_client
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        t_tx.data_bytes(data).await
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        ctx.bytes_from_client
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        t_tx.extended_data_bytes(ext, data).await
                    }
                    ChannelMsg::Eof => t_tx.eof().await,
                    ChannelMsg::Close => {
                        let _ = t_tx.close().await;
                        break;
                    }
                    ChannelMsg::RequestPty {
                        want_reply,
                        term,
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                        terminal_modes,
                    } => {
                        forward(want_reply);
                        t_tx.request_pty(
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
                        want_reply,
                        variable_name,
                        variable_value,
                    } => {
                        forward(want_reply);
                        t_tx.set_env(true, variable_name, variable_value).await
                    }
                    ChannelMsg::WindowChange {
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                    } => {
                        t_tx.window_change(col_width, row_height, pix_width, pix_height)
                            .await
                    }
                    ChannelMsg::Signal { signal } => t_tx.signal(signal).await,
                    ChannelMsg::RequestShell { want_reply } => {
                        match start(&ctx, index, ChannelRequest::Shell, "shell", &handle, cid).await
                        {
                            true => {
                                forward(want_reply);
                                t_tx.request_shell(true).await
                            }
                            false => Ok(()),
                        }
                    }
                    ChannelMsg::Exec {
                        want_reply,
                        command,
                    } => {
                        let command = String::from_utf8_lossy(&command).into_owned();
                        match start(
                            &ctx,
                            index,
                            ChannelRequest::Exec {
                                command: command.clone(),
                            },
                            "exec",
                            &handle,
                            cid,
                        )
                        .await
                        {
                            true => {
                                forward(want_reply);
                                t_tx.exec(true, command).await
                            }
                            false => Ok(()),
                        }
                    }
                    ChannelMsg::RequestSubsystem { want_reply, name } => {
                        let kind = format!("subsystem:{name}");
                        match start(
                            &ctx,
                            index,
                            ChannelRequest::Subsystem { name: name.clone() },
                            &kind,
                            &handle,
                            cid,
                        )
                        .await
                        {
                            true => {
                                forward(want_reply);
                                t_tx.request_subsystem(true, name).await
                            }
                            false => Ok(()),
                        }
                    }
                    ChannelMsg::AgentForward { want_reply }
                    | ChannelMsg::RequestX11 { want_reply, .. } => {
                        // Forwarding back to the client is not bridged (yet): refuse.
                        if want_reply {
                            let _ = handle.channel_failure(cid).await;
                        }
                        Ok(())
                    }
                    _ => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
            }
        }
    };

    let downstream = {
        let ctx = ctx.clone();
        async move {
            while let Some(msg) = t_rx.wait().await {
                let sent = match msg {
                    ChannelMsg::Data { data } => {
                        ctx.bytes_to_client
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        c_tx.data_bytes(data).await.map_err(|_| ())
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        ctx.bytes_to_client
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        c_tx.extended_data_bytes(ext, data).await.map_err(|_| ())
                    }
                    ChannelMsg::Eof => c_tx.eof().await.map_err(|_| ()),
                    ChannelMsg::ExitStatus { exit_status } => {
                        ctx.record(index, |r| r.exit_status = Some(exit_status));
                        client_handle.exit_status_request(cid, exit_status).await
                    }
                    ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    } => {
                        ctx.record(index, |r| r.exit_signal = Some(format!("{signal_name:?}")));
                        client_handle
                            .exit_signal_request(
                                cid,
                                signal_name,
                                core_dumped,
                                error_message,
                                lang_tag,
                            )
                            .await
                    }
                    ChannelMsg::Success | ChannelMsg::Failure => {
                        let wanted = lock(&pending).pop_front().unwrap_or(false);
                        match (wanted, matches!(msg, ChannelMsg::Success)) {
                            (false, _) => Ok(()),
                            (true, true) => client_handle.channel_success(cid).await,
                            (true, false) => client_handle.channel_failure(cid).await,
                        }
                    }
                    ChannelMsg::Close => break,
                    _ => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
            }
            let _ = c_tx.eof().await;
            let _ = c_tx.close().await;
            let _ = done_tx.send(true);
        }
    };
    tokio::join!(upstream, downstream);
}

/// Asks the policy about a channel request; on refusal tells the user why on stderr,
/// answers failure, and records it.
async fn start(
    ctx: &ChannelContext,
    index: usize,
    request: ChannelRequest,
    kind: &str,
    handle: &Handle,
    cid: ChannelId,
) -> bool {
    let verdict = ctx.check(request).await;
    ctx.record(index, |r| {
        r.kind = kind.to_string();
        r.allowed = verdict.allowed;
        if !verdict.allowed {
            r.denied_reason = Some(verdict.reason.clone());
        }
    });
    if !verdict.allowed {
        let by = verdict
            .module
            .as_deref()
            .map(|m| format!(" by {m}"))
            .unwrap_or_default();
        let msg = format!("portcullis: {kind} refused{by}: {}\r\n", verdict.reason);
        tracing::warn!(%kind, module = ?verdict.module, reason = %verdict.reason, "channel request refused");
        let _ = handle.extended_data(cid, 1, msg.into_bytes()).await;
        let _ = handle.channel_failure(cid).await;
        let _ = handle.exit_status_request(cid, 1).await;
        let _ = handle.close(cid).await;
    }
    verdict.allowed
}
