//! A guest's store state: the resource limiter, the `log` import, and what the last
//! call left behind for error reports.

use super::limits::Limits;

/// Log messages a guest may write per call; the rest are dropped.
const LOG_MESSAGES_PER_CALL: u32 = 64;

/// Core instances, tables and linear memories one store may hold. wasmtime's defaults
/// (10,000 each) would let a component multiply its memory cap; a policy component
/// built from Rust uses a handful of each.
const MAX_INSTANCES: usize = 32;
const MAX_TABLES: usize = 16;
const MAX_MEMORIES: usize = 8;
/// Elements one table may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The state of one store: its limiter, whether it refused a memory growth, and the
/// last error the guest logged (so a trap that follows can be reported as what it is).
#[derive(Debug)]
pub(crate) struct GuestState {
    module: std::sync::Arc<str>,
    /// The memory cap of the whole store, all its linear memories together.
    memory_cap: usize,
    /// Bytes of linear memory the store holds now.
    pub(crate) memory_total: usize,
    pub(crate) memory_refused: bool,
    pub(crate) last_error: Option<String>,
    logged: u32,
}

impl GuestState {
    pub(crate) fn new(module: std::sync::Arc<str>, limits: &Limits) -> Self {
        GuestState {
            module,
            memory_cap: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            memory_total: 0,
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
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_total
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.memory_cap {
            self.memory_refused = true;
            return Ok(false);
        }
        self.memory_total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn the_memory_cap_holds_for_all_memories_of_a_store_together() {
        let limits = Limits {
            memory_bytes: 10 << 20,
            ..Limits::default()
        };
        let mut state = GuestState::new("m".into(), &limits);
        // Two memories of 4 MiB fit; a third does not, although each is under the cap.
        assert!(state.memory_growing(0, 4 << 20, None).unwrap());
        assert!(state.memory_growing(0, 4 << 20, None).unwrap());
        assert!(!state.memory_growing(0, 4 << 20, None).unwrap());
        assert!(state.memory_refused);
        // Growing one of them counts only the growth.
        assert!(state.memory_growing(4 << 20, 6 << 20, None).unwrap());
        assert!(!state.memory_growing(6 << 20, 7 << 20, None).unwrap());
        assert!(state.memories() <= MAX_MEMORIES && state.instances() <= MAX_INSTANCES);
    }
}
