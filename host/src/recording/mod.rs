//! Recording: the session log (always), and sealed command logs (Audit SSH).

pub mod cmdlog;
mod session_log;
pub mod store;

pub use session_log::{
    ChannelRecord, INTERRUPTED, RecordMirror, SessionFilter, SessionLog, SessionRecord,
    filter_sessions, list_sessions, running_sessions, timestamp,
};
