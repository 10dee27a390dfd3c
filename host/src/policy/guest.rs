//! A guest's store state: the resource limiter, the `log` import, and what the last
//! call left behind for error reports.

use super::limits::Limits;

/// Log messages a guest may write per call; the rest are dropped.
const LOG_MESSAGES_PER_CALL: u32 = 64;

/// The state of one store: its limiter, whether it refused a memory growth, and the
/// last error the guest logged (so a trap that follows can be reported as what it is).
#[derive(Debug)]
pub(crate) struct GuestState {
    module: std::sync::Arc<str>,
    memory_cap: usize,
    pub(crate) memory_refused: bool,
    pub(crate) last_error: Option<String>,
    logged: u32,
}

impl GuestState {
    pub(crate) fn new(module: std::sync::Arc<str>, limits: &Limits) -> Self {
        GuestState {
            module,
            memory_cap: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            memory_refused: false,
            last_error: None,
            logged: 0,
        }
    }

    /// Called before each call into the guest.
    pub(crate) fn start_call(&mut self) {
        self.last_error = None;
        self.logged = 0;
    }
}

impl super::bindings::PolicyImports for GuestState {
    fn log(&mut self, level: super::bindings::LogLevel, message: String) {
        use super::bindings::LogLevel;
        self.logged = self.logged.saturating_add(1);
        if self.logged > LOG_MESSAGES_PER_CALL {
            return;
        }
        let message = crate::text::sanitize(&message, 1000);
        let module = &*self.module;
        match level {
            LogLevel::Debug => tracing::debug!(module, "{message}"),
            LogLevel::Info => tracing::info!(module, "{message}"),
            LogLevel::Warn => tracing::warn!(module, "{message}"),
            LogLevel::Error => {
                tracing::error!(module, "{message}");
                self.last_error = Some(message);
            }
        }
    }
}

impl wasmtime::ResourceLimiter for GuestState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
