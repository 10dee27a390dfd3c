//! Recording: the session log (always). Sealed command logs come with the next stage.

mod session_log;

pub use session_log::{ChannelRecord, SessionLog, SessionRecord, print_sessions, timestamp};
