//! The sandbox's bounds on a policy call.

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
    /// Bytes a guest may hand the host in one crossing: the strings and lists of a
    /// call's result (a reason, the principals), or of one `log` call. Checked by the
    /// runtime from the lengths in guest memory before anything is copied, so a module
    /// cannot make the host allocate more than this however large its memory.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(100),
            memory_bytes: 64 * 1024 * 1024,
            idle_instances: 16,
            output_bytes: 64 * 1024,
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
