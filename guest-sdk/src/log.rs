//! Writing to the proxy's log. Messages are attributed to the module by the host,
//! truncated to 1000 characters, and capped at 64 per call.

use crate::bindings::LogLevel;

/// In a module, the host's `log` import; in a native test (`cargo test`), standard
/// error, so that a policy's logging works under test too.
fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Logs a debug message.
pub fn debug(message: &str) {
    log(LogLevel::Debug, message);
}

/// Logs an informational message.
pub fn info(message: &str) {
    log(LogLevel::Info, message);
}

/// Logs a warning.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message);
}

/// Logs an error. When the call then traps, the host's block reason quotes the last
/// error logged.
pub fn error(message: &str) {
    log(LogLevel::Error, message);
}

/// Reports panics through the host's log instead of the standard library's default
/// hook (which would reach for WASI stderr and environment, which modules do not get).
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        error(&format!("panicked{location}: {message}"));
    }));
}
