//! The channel bridge: one client session channel joined to one target session
//! channel, requests and data in both directions.
//!
//! Two tasks, one per direction, so a slow reader on one side never stalls the other.
//! Backpressure: each side is written with window-aware sends that wait, and the
//! channels' own buffers are bounded, so a slow target slows the client and vice versa.
//!
//! Channel requests (pty, env, shell, exec, subsystem) are forwarded with a reply
//! requested, and the target's answers go back, in order (RFC 4254 5.4), to the
//! connection's handler through [`RequestReplies`]: russh knows whether the client
//! wanted a reply only while its handler runs for that request, so the handler waits
//! for the target's answer and replies there (see `server::handler`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use russh::server::{self, Handle};
use russh::{Channel, ChannelId, ChannelMsg};

use crate::policy::{ChannelRequest, DecisionRequest, Evaluation, PolicySet};
use crate::recording::ChannelRecord;
use crate::recording::cmdlog::{
    self, CODE_DATA, CODE_EXTENDED_DATA, CODE_REQUEST, SOURCE_CLIENT, SOURCE_SERVER,
};

/// The target's answers to a channel's requests, in order: true for success.
pub type RequestReplies = tokio::sync::mpsc::UnboundedSender<bool>;

/// Where a channel's command log goes, when the decision asks for one.
#[derive(Debug, Clone)]
pub struct CommandLogTarget {
    pub dir: std::path::PathBuf,
    pub key: cmdlog::SealingKey,
    pub session_id: String,
}

/// A channel's command log, shared by the two directions. A write error ends the
/// channel (fail closed); nothing is dropped silently.
#[derive(Debug, Clone)]
struct Recorder(Option<Arc<Mutex<Option<cmdlog::Writer>>>>);

impl Recorder {
    /// Records; returns false when recording failed and the channel must end.
    fn record(
        &self,
        f: impl FnOnce(&mut cmdlog::Writer) -> Result<(), cmdlog::CmdLogError>,
    ) -> bool {
        let Some(slot) = &self.0 else { return true };
        let mut guard = lock(slot);
        let Some(writer) = guard.as_mut() else {
            return false;
        };
        match f(writer) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("command log write failed; ending the channel: {e}");
                false
            }
        }
    }

    /// Finishes the log (header, sync, rename) on the blocking pool: syncing a long
    /// session's log takes as long as the disk needs, and must not hold a runtime worker.
    async fn finish(&self, exit: cmdlog::ExitData) -> Option<String> {
        let writer = self.0.as_ref().and_then(|slot| lock(slot).take())?;
        let finished = tokio::task::spawn_blocking(move || writer.finish(Some(exit)))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match finished {
            Ok(path) => Some(path.display().to_string()),
            Err(e) => {
                tracing::error!("cannot finish the command log: {e}");
                None
            }
        }
    }
}

/// What a channel needs from its session.
#[derive(Debug, Clone)]
pub struct ChannelContext {
    pub policy: Arc<PolicySet>,
    pub request: Arc<DecisionRequest>,
    pub decision: Arc<Evaluation>,
    pub bytes_from_client: Arc<AtomicU64>,
    pub bytes_to_client: Arc<AtomicU64>,
    pub channels: Arc<Mutex<Vec<ChannelRecord>>>,
    /// Set when the decision turned command logging on.
    pub command_log: Option<CommandLogTarget>,
    /// The command logs written, for the session log.
    pub command_logs: Arc<Mutex<Vec<String>>>,
    /// Where the client's connection is set when agent or X11 forwarding is allowed,
    /// for the channels the target then opens back.
    pub back: super::BackChannels,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ChannelContext {
    async fn check(&self, request: ChannelRequest) -> crate::policy::ChannelDecision {
        crate::policy::check_channel_off_thread(
            Arc::clone(&self.policy),
            Arc::clone(&self.request),
            Arc::clone(&self.decision),
            request,
        )
        .await
    }

    /// Asks the policies about a request that lets the target open channels back to the
    /// client (agent, X11) and records the answer in the session log; if allowed, `slot`
    /// gets the client's connection for those channels.
    async fn check_back_channels(
        &self,
        request: ChannelRequest,
        kind: &str,
        slot: &super::ClientSlot,
        client: &Handle,
    ) -> bool {
        let verdict = self.check(request).await;
        lock(&self.channels).push(ChannelRecord {
            kind: kind.into(),
            allowed: verdict.allowed,
            denied_reason: (!verdict.allowed).then(|| verdict.reason.clone()),
            ..Default::default()
        });
        if verdict.allowed {
            *lock(slot) = Some(client.clone());
        } else {
            tracing::warn!(%kind, reason = %verdict.reason, "forwarding refused");
        }
        verdict.allowed
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
    replies: RequestReplies,
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
    let recorder = match &ctx.command_log {
        None => Recorder(None),
        Some(t) => {
            let path = t.dir.join(format!("{}-{index}.sshlog", t.session_id));
            match cmdlog::Writer::create(&path, &t.key) {
                Ok(w) => Recorder(Some(Arc::new(Mutex::new(Some(w))))),
                Err(e) => {
                    tracing::error!("cannot start the command log; refusing the channel: {e}");
                    let msg = "portcullis: this session must be recorded, and recording failed\r\n";
                    let _ = client_handle
                        .extended_data(cid, 1, msg.as_bytes().to_vec())
                        .await;
                    let _ = client_handle.exit_status_request(cid, 1).await;
                    let _ = client_handle.close(cid).await;
                    return;
                }
            }
        }
    };
    let exit: Arc<Mutex<cmdlog::ExitData>> = Arc::new(Mutex::new(cmdlog::ExitData::default()));
    let (mut c_rx, c_tx) = client.split();
    let (mut t_rx, t_tx) = target.split();
    // Either direction ending ends the other: the target closing closes the client's
    // channel, and the client closing (or a refusal) stops reading the target.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);

    let upstream = {
        let replies = replies.clone();
        let handle = client_handle.clone();
        let ctx = ctx.clone();
        let rec = recorder.clone();
        async move {
            let _stop_on_exit = StopOnDrop(stop_tx);
            loop {
                let msg = tokio::select! {
                    m = c_rx.wait() => m,
                    _ = done_rx.changed() => None,
                };
                let Some(msg) = msg else { break };
                if !rec.record(|w| record_client(w, &msg)) {
                    let _ = t_tx.close().await;
                    break;
                }
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
                        term,
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                        terminal_modes,
                        ..
                    } => {
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
                        variable_name,
                        variable_value,
                        ..
                    } => t_tx.set_env(true, variable_name, variable_value).await,
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
                    ChannelMsg::RequestShell { .. } => {
                        match start(&ctx, index, ChannelRequest::Shell, "shell", &handle, cid).await
                        {
                            true => t_tx.request_shell(true).await,
                            false => {
                                // Refused here: told on the channel (message, exit
                                // status 1), so the request itself is answered yes.
                                let _ = replies.send(true);
                                let _ = t_tx.close().await;
                                break;
                            }
                        }
                    }
                    ChannelMsg::Exec { command, .. } => {
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
                            true => t_tx.exec(true, command).await,
                            false => {
                                // Refused here: told on the channel (message, exit
                                // status 1), so the request itself is answered yes.
                                let _ = replies.send(true);
                                let _ = t_tx.close().await;
                                break;
                            }
                        }
                    }
                    ChannelMsg::RequestSubsystem { name, .. } => {
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
                            true => t_tx.request_subsystem(true, name).await,
                            false => {
                                // Refused here: told on the channel (message, exit
                                // status 1), so the request itself is answered yes.
                                let _ = replies.send(true);
                                let _ = t_tx.close().await;
                                break;
                            }
                        }
                    }
                    ChannelMsg::AgentForward { .. } => {
                        // Asked of the policies like any other request; if they consent,
                        // the target is asked too and its answer goes back.
                        let allowed = ctx
                            .check_back_channels(
                                ChannelRequest::AgentForwarding,
                                "auth-agent",
                                &ctx.back.agent,
                                &handle,
                            )
                            .await;
                        if allowed {
                            t_tx.agent_forward(true).await
                        } else {
                            let _ = replies.send(false);
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
                        // Like agent forwarding: the policies, then the target. The
                        // target's sshd hands out its own display and opens an x11
                        // channel per X client, joined to one opened to the client.
                        let allowed = ctx
                            .check_back_channels(
                                ChannelRequest::X11Forwarding,
                                "x11",
                                &ctx.back.x11,
                                &handle,
                            )
                            .await;
                        if allowed {
                            t_tx.request_x11(
                                true,
                                single_connection,
                                x11_authentication_protocol,
                                x11_authentication_cookie,
                                x11_screen_number,
                            )
                            .await
                        } else {
                            let _ = replies.send(false);
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
    };

    let downstream = {
        let ctx = ctx.clone();
        let rec = recorder.clone();
        let exit = Arc::clone(&exit);
        async move {
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
                    m = t_rx.wait() => m,
                    _ = stop_rx.changed() => None,
                    () = held => {
                        eof_held_until = None;
                        if c_tx.eof().await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let Some(msg) = msg else { break };
                let recorded = match &msg {
                    ChannelMsg::Data { data } => {
                        rec.record(|w| w.packet(SOURCE_SERVER, CODE_DATA, data))
                    }
                    ChannelMsg::ExtendedData { data, .. } => {
                        rec.record(|w| w.packet(SOURCE_SERVER, CODE_EXTENDED_DATA, data))
                    }
                    _ => true,
                };
                if !recorded {
                    let msg = "\r\nportcullis: recording failed; ending the session\r\n";
                    let _ = client_handle
                        .extended_data(cid, 1, msg.as_bytes().to_vec())
                        .await;
                    break;
                }
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
                    ChannelMsg::Eof => {
                        eof_held_until = Some(tokio::time::Instant::now() + EOF_HOLD);
                        Ok(())
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        ctx.record(index, |r| r.exit_status = Some(exit_status));
                        lock(&exit).status = Some(exit_status);
                        let sent = client_handle.exit_status_request(cid, exit_status).await;
                        if eof_held_until.take().is_some() && c_tx.eof().await.is_err() {
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
                        ctx.record(index, |r| r.exit_signal = Some(format!("{signal_name:?}")));
                        {
                            let mut e = lock(&exit);
                            e.signal = Some(format!("{signal_name:?}"));
                            e.core_dumped = core_dumped;
                            e.error_msg =
                                (!error_message.is_empty()).then(|| error_message.clone());
                        }
                        let sent = client_handle
                            .exit_signal_request(
                                cid,
                                signal_name,
                                core_dumped,
                                error_message,
                                lang_tag,
                            )
                            .await;
                        if eof_held_until.take().is_some() && c_tx.eof().await.is_err() {
                            break;
                        }
                        sent
                    }
                    ChannelMsg::Success | ChannelMsg::Failure => {
                        let _ = replies.send(matches!(msg, ChannelMsg::Success));
                        Ok(())
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
    let mut exit = lock(&exit).clone();
    exit.timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if let Some(path) = recorder.finish(exit).await {
        lock(&ctx.command_logs).push(path);
    }
}

/// How long the target's EOF may wait for its exit status. A client whose own input is
/// closed may close the channel as soon as it sees EOF (OpenSSH's multiplexing master
/// does), and once it has, the exit status can no longer be delivered: the client then
/// reports 255. sshd sends EOF and the exit status moments apart, so the EOF is held
/// until the status has been forwarded, or this long for a program that closed its
/// output and kept running.
const EOF_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

/// Signals the other direction when this one ends, however it ends.
struct StopOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// What the command log keeps of a message from the client: data, the pty, window
/// changes and the requests (sealed; never in plaintext anywhere).
fn record_client(w: &mut cmdlog::Writer, msg: &ChannelMsg) -> Result<(), cmdlog::CmdLogError> {
    match msg {
        ChannelMsg::Data { data } => w.packet(SOURCE_CLIENT, CODE_DATA, data),
        ChannelMsg::ExtendedData { data, .. } => w.packet(SOURCE_CLIENT, CODE_EXTENDED_DATA, data),
        ChannelMsg::RequestPty {
            term,
            col_width,
            row_height,
            terminal_modes,
            ..
        } => w.set_pty(cmdlog::PtyMeta {
            term: Some(term.clone()),
            width: *col_width,
            height: *row_height,
            modes: terminal_modes
                .iter()
                .map(|(m, v)| (format!("{m:?}"), *v))
                .collect(),
        }),
        ChannelMsg::WindowChange {
            col_width,
            row_height,
            ..
        } => w.packet(
            SOURCE_CLIENT,
            CODE_REQUEST,
            format!("window-change\0{col_width}x{row_height}").as_bytes(),
        ),
        ChannelMsg::RequestShell { .. } => w.packet(SOURCE_CLIENT, CODE_REQUEST, b"shell\0"),
        ChannelMsg::Exec { command, .. } => {
            let mut d = b"exec\0".to_vec();
            d.extend_from_slice(command);
            w.packet(SOURCE_CLIENT, CODE_REQUEST, &d)
        }
        ChannelMsg::RequestSubsystem { name, .. } => w.packet(
            SOURCE_CLIENT,
            CODE_REQUEST,
            format!("subsystem\0{name}").as_bytes(),
        ),
        // No sync here: the log is synced once, when it is finished off the session's
        // task; a sync on EOF would hold the session for the whole log's write-back.
        _ => Ok(()),
    }
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
        let _ = handle.exit_status_request(cid, 1).await;
        let _ = handle.close(cid).await;
    }
    verdict.allowed
}
