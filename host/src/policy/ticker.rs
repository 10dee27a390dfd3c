//! The epoch ticker that bounds guest calls in time (epoch interruption): it advances
//! the engine's epoch every `EPOCH_TICK`, but only while a guest call runs. At rest it
//! sleeps on a condition variable, so an idle proxy spends no CPU on it; a call wakes
//! it through its [`Running`] guard. Only a call that finds it waiting on the condition
//! variable wakes it (a system call); a call that starts while it sleeps between ticks
//! is seen when the tick ends. Calls in a row so cost at most one wake-up per tick, not
//! one per call; a decision, which calls its modules in turn, holds one guard for all
//! of them (`PolicySet::decide`).

use std::sync::{Arc, Condvar, Mutex};

use wasmtime::Engine;

use super::limits::EPOCH_TICK;
use crate::sync::lock;

#[derive(Debug, Default)]
struct State {
    /// Guest calls running now.
    running: usize,
    /// Set when the engine is dropped: the thread ends.
    stopped: bool,
    /// The thread waits on `wake` and must be woken for the next call (set by the
    /// thread before it waits, taken by the call that wakes it).
    waiting: bool,
}

/// The ticker shared by the engine and its modules.
#[derive(Debug, Default)]
pub(crate) struct Ticker {
    state: Mutex<State>,
    wake: Condvar,
}

/// Held while guest calls run: the epoch advances meanwhile.
#[derive(Debug)]
pub(crate) struct Running(Arc<Ticker>);

impl Running {
    /// Whether this guard keeps `ticker` running.
    pub(crate) fn ticks(&self, ticker: &Arc<Ticker>) -> bool {
        Arc::ptr_eq(&self.0, ticker)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.0.state).running -= 1;
    }
}

/// Stops the ticker's thread when dropped (held by the engine).
#[derive(Debug)]
pub(crate) struct Stopper(Arc<Ticker>);

impl Drop for Stopper {
    fn drop(&mut self) {
        lock(&self.0.state).stopped = true;
        self.0.wake.notify_all();
    }
}

impl Ticker {
    /// Starts the thread that ticks `engine`'s epoch while calls run.
    pub(crate) fn start(engine: &Engine) -> std::io::Result<(Arc<Ticker>, Stopper)> {
        let ticker = Arc::new(Ticker::default());
        let weak = engine.weak();
        let shared = Arc::clone(&ticker);
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                loop {
                    {
                        let mut state = lock(&shared.state);
                        while state.running == 0 && !state.stopped {
                            state.waiting = true;
                            state = shared
                                .wake
                                .wait(state)
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                        if state.stopped {
                            return;
                        }
                    }
                    let Some(engine) = weak.upgrade() else { return };
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        let stopper = Stopper(Arc::clone(&ticker));
        Ok((ticker, stopper))
    }

    /// Marks a guest call running until the guard drops.
    pub(crate) fn running(self: &Arc<Self>) -> Running {
        let mut state = lock(&self.state);
        state.running += 1;
        if std::mem::take(&mut state.waiting) {
            self.wake.notify_one();
        }
        Running(Arc::clone(self))
    }
}
