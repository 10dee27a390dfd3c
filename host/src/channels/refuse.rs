//! Telling the user why the proxy refused on a channel.

use russh::ChannelId;
use russh::server::Handle;

/// Tells the user on stderr: `portcullis: MESSAGE`.
pub async fn tell(handle: &Handle, id: ChannelId, message: &str) {
    let text = format!("portcullis: {message}\r\n");
    let _ = handle.extended_data(id, 1, text.into_bytes()).await;
}

/// Tells the user why on stderr (`portcullis: MESSAGE`) and ends the channel with exit
/// status 1, so that the client prints it and exits non-zero.
pub async fn refuse(handle: &Handle, id: ChannelId, message: &str) {
    tell(handle, id, message).await;
    let _ = handle.exit_status_request(id, 1).await;
    let _ = handle.eof(id).await;
    let _ = handle.close(id).await;
}
