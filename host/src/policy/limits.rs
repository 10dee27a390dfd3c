//! The sandbox's bounds on a policy call, and the per-store resource limiter.

use std::time::Duration;

/// Bounds on every module instance and call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock bound of one call (enforced by epoch interruption).
    pub timeout: Duration,
    /// Linear memory an instance may grow to, in bytes.
    pub memory_bytes: u64,
    /// Idle instances kept per module for reuse.
    pub idle_instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(100),
            memory_bytes: 64 * 1024 * 1024,
            idle_instances: 16,
        }
    }
}

/// How often the engine's epoch advances; a call's deadline is counted in these ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(2);

impl Limits {
    /// The epoch deadline for one call: at least the timeout, at most one tick more.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let ticks = self
            .timeout
            .as_micros()
            .div_ceil(EPOCH_TICK.as_micros().max(1));
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }
}

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
        let message = super::engine::sanitize(&message, 1000);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_covers_the_timeout_with_one_spare_tick() {
        let l = Limits {
            timeout: Duration::from_millis(100),
            ..Limits::default()
        };
        assert_eq!(l.deadline_ticks(), 51);
        let l = Limits {
            timeout: Duration::from_micros(1),
            ..Limits::default()
        };
        assert_eq!(l.deadline_ticks(), 2);
    }
}
