//! Locks shared by sessions and their tasks.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, even if a task panicked while holding it: every value kept behind these
/// locks (records, slots, caches) stays valid after any single update, so a poisoned
/// lock is no reason to stop recording or serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
