//! A session channel's command log, shared by the channel's two directions. A write
//! error ends the channel (fail closed); nothing is dropped silently.

use std::sync::{Arc, Mutex};

use russh::ChannelMsg;

use crate::recording::cmdlog::{
    self, CODE_DATA, CODE_EXTENDED_DATA, CODE_REQUEST, SOURCE_CLIENT, SOURCE_SERVER,
};
use crate::recording::store::{LiveUpload, Uploads};
use crate::sync::lock;

/// Where a channel's command log goes, when the decision asks for one.
#[derive(Debug, Clone)]
pub struct CommandLogTarget {
    pub dir: std::path::PathBuf,
    pub key: cmdlog::SealingKey,
    pub session_id: String,
    /// Object storage the log is shipped to, and the session's day (`YYYY/MM/DD`) that
    /// names the object; `None` keeps it in `dir`.
    pub upload: Option<(Arc<Uploads>, String)>,
}

/// A channel's command log, or none when the session is not recorded.
#[derive(Debug, Clone)]
pub(super) struct Recorder(Option<Arc<Mutex<Option<Recording>>>>);

/// The log being written, and its upload when there is object storage.
#[derive(Debug)]
pub(super) struct Recording {
    writer: cmdlog::Writer,
    upload: Option<LiveUpload>,
}

impl Recorder {
    /// Records; returns false when recording failed and the channel must end.
    pub(super) fn record(
        &self,
        f: impl FnOnce(&mut cmdlog::Writer) -> Result<(), cmdlog::CmdLogError>,
    ) -> bool {
        let Some(slot) = &self.0 else { return true };
        let mut guard = lock(slot);
        let Some(recording) = guard.as_mut() else {
            return false;
        };
        match f(&mut recording.writer) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("command log write failed; ending the channel: {e}");
                false
            }
        }
    }

    /// Finishes the log (header, sync, rename) on the blocking pool: syncing a long
    /// session's log takes as long as the disk needs, and must not hold a runtime worker.
    /// Returns where the log is: its path, or its object's URL when it is shipped to
    /// object storage (the upload completes on its own).
    pub(super) async fn finish(&self, exit: cmdlog::ExitData) -> Option<String> {
        let Recording { writer, upload } = self.0.as_ref().and_then(|slot| lock(slot).take())?;
        let finished = tokio::task::spawn_blocking(move || writer.finish(Some(exit)))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match finished {
            Ok(path) => Some(match upload {
                Some(u) => u.finished(Some(path)),
                None => path.display().to_string(),
            }),
            Err(e) => {
                tracing::error!("cannot finish the command log: {e}");
                if let Some(u) = upload {
                    u.finished(None);
                }
                None
            }
        }
    }
}

/// What the command log keeps of a message from the client: data, the pty, window
/// changes and the requests (sealed; never in plaintext anywhere).
pub(super) fn record_client(
    w: &mut cmdlog::Writer,
    msg: &ChannelMsg,
) -> Result<(), cmdlog::CmdLogError> {
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

impl Recorder {
    /// Starts the command log of session channel `index`, when the decision asks for one.
    pub(super) fn start(
        target: Option<&CommandLogTarget>,
        index: usize,
    ) -> Result<Self, cmdlog::CmdLogError> {
        let Some(t) = target else {
            return Ok(Recorder(None));
        };
        let path = t.dir.join(format!("{}-{index}.sshlog", t.session_id));
        let mut writer = cmdlog::Writer::create(&path, &t.key)?;
        let upload =
            match &t.upload {
                Some((uploads, day)) => Some(uploads.begin(&mut writer, day).map_err(|e| {
                    cmdlog::CmdLogError::File {
                        path: path.clone(),
                        message: format!("cannot start its upload: {e}"),
                    }
                })?),
                None => None,
            };
        Ok(Recorder(Some(Arc::new(Mutex::new(Some(Recording {
            writer,
            upload,
        }))))))
    }

    /// Records what the target sent; false when recording failed.
    pub(super) fn record_server(&self, msg: &ChannelMsg) -> bool {
        match msg {
            ChannelMsg::Data { data } => self.record(|w| w.packet(SOURCE_SERVER, CODE_DATA, data)),
            ChannelMsg::ExtendedData { data, .. } => {
                self.record(|w| w.packet(SOURCE_SERVER, CODE_EXTENDED_DATA, data))
            }
            _ => true,
        }
    }
}
