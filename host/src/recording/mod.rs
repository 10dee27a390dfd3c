//! Recording: the session log (always), and sealed command logs (Audit SSH).

mod session_log;
pub mod store;

/// Sealed command logs: the crate in host/cmdlog (the reader also runs in the console's
/// page, built for WebAssembly).
pub use portcullis_cmdlog as cmdlog;

pub use session_log::{
    ChannelRecord, INTERRUPTED, RecordMirror, SessionFilter, SessionLog, SessionRecord,
    filter_sessions, list_sessions, running_sessions, timestamp,
};
