//! One loaded module: its compiled component, its warm instances, and the guarded
//! call into a guest.
//!
//! Invariants:
//! - An instance is reused only after a call that returned normally; one that trapped,
//!   timed out or hit the memory cap is dropped (its state cannot be trusted).
//! - Nothing here holds a lock while a guest runs.

use std::sync::{Arc, Mutex};

use wasmtime::{Engine, Store, Trap};

use super::bindings as wit;
use super::guest::GuestState;
use super::limits::Limits;
use super::loader::{ConfigKind, ConfigSource, ModuleInfo, ModuleSource};
use super::stats::Outcome;
use super::ticker::Running;
use crate::sync::lock;
use crate::text::sanitize;

/// One configured instance of a module, ready for a call.
pub(super) struct Instance {
    store: Store<GuestState>,
    bindings: wit::Policy,
}

/// A loaded, configured module.
pub(super) struct LoadedModule {
    pub(super) name: Arc<str>,
    pub(super) info: ModuleInfo,
    pub(super) digest: [u8; 32],
    pub(super) config: Option<ConfigSource>,
    pub(super) engine: Engine,
    pub(super) ticker: Arc<super::ticker::Ticker>,
    pub(super) limits: Limits,
    pub(super) pre: wit::PolicyPre<GuestState>,
    pub(super) idle: Mutex<Vec<Instance>>,
    /// This module's figures (kept by name across reloads).
    pub(super) stats: Arc<super::stats::ModuleStats>,
}

impl LoadedModule {
    pub(super) fn is_same(&self, source: &ModuleSource) -> bool {
        self.info.name == source.name
            && self.digest == source.digest
            && self.config == source.config
    }

    pub(super) fn instantiate(&self) -> Result<Instance, String> {
        // Instantiation runs guest code (start functions, `configure`): bounded too.
        let _running = self.ticker.running();
        let mut store = Store::new(
            &self.engine,
            GuestState::new(Arc::clone(&self.name), &self.limits),
        );
        store.limiter(|state| state);
        store.set_epoch_deadline(self.limits.deadline_ticks());
        store.set_hostcall_fuel(self.limits.output_bytes);
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| describe_failure("instantiation", &e, &store, &self.limits))?;
        let (format, text) = match &self.config {
            None => (wit::ConfigFormat::None, ""),
            Some(c) => match c.format {
                ConfigKind::Toml => (wit::ConfigFormat::Toml, c.text.as_str()),
                ConfigKind::Json => (wit::ConfigFormat::Json, c.text.as_str()),
            },
        };
        match bindings.call_configure(&mut store, format, text) {
            Ok(Ok(())) => Ok(Instance { store, bindings }),
            Ok(Err(msg)) => Err(format!("configuration rejected: {}", sanitize(&msg, 2000))),
            Err(e) => Err(describe_failure("configure", &e, &store, &self.limits)),
        }
    }

    /// Runs `f` on a warm instance (or a new one), returning the instance to the pool
    /// only if the call returned normally.
    /// `classify` says what a normal return counts as in the module's figures.
    /// `running` is the caller's guard on this module's ticker: a decision holds one
    /// for all its calls, since each guard takes the ticker's lock twice.
    pub(super) fn call<R>(
        &self,
        running: &Running,
        what: &str,
        classify: impl FnOnce(&R) -> Outcome,
        f: impl FnOnce(&wit::Policy, &mut Store<GuestState>) -> wasmtime::Result<R>,
    ) -> Result<R, String> {
        let pooled = lock(&self.idle).pop();
        let mut instance = match pooled {
            Some(i) => i,
            None => self.instantiate()?,
        };
        instance
            .store
            .set_epoch_deadline(self.limits.deadline_ticks());
        instance.store.data_mut().start_call();
        debug_assert!(
            running.ticks(&self.ticker),
            "a call under another engine's ticker"
        );
        let started = std::time::Instant::now();
        let outcome = f(&instance.bindings, &mut instance.store);
        let took = started.elapsed();
        self.stats.note_memory(instance.store.data().memory_total);
        match outcome {
            Ok(r) => {
                self.stats.record(classify(&r), took);
                let mut idle = lock(&self.idle);
                if idle.len() < self.limits.idle_instances {
                    idle.push(instance);
                }
                Ok(r)
            }
            Err(e) => {
                let kind = if instance.store.data().memory_refused {
                    Outcome::Memory
                } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    Outcome::Timeout
                } else {
                    Outcome::Trap
                };
                self.stats.record(kind, took);
                Err(describe_failure(what, &e, &instance.store, &self.limits))
            }
        }
    }
}

/// Says what went wrong in a guest call, in words an operator can act on.
fn describe_failure(
    what: &str,
    e: &wasmtime::Error,
    store: &Store<GuestState>,
    limits: &Limits,
) -> String {
    if store.data().memory_refused {
        return format!(
            "{what} exceeded the memory limit of {} MiB",
            limits.memory_bytes / (1024 * 1024)
        );
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return format!("{what} ran past the time limit of {:?}", limits.timeout);
    }
    if let Some(logged) = &store.data().last_error {
        return format!("{what} failed: {logged}");
    }
    let text = format!("{e:#}");
    if text.contains("fuel allocated for hostcalls has been exhausted") {
        return format!(
            "{what} handed the host more than {} KiB at once (a reason, logins or a log \
             message); nothing of it was copied",
            limits.output_bytes / 1024
        );
    }
    if let Some(rest) = text.split("unknown import: `").nth(1) {
        let name = rest.split('`').next().unwrap_or(rest);
        return format!(
            "{what} called {name}, which policies may not use (modules get no WASI capabilities)"
        );
    }
    format!(
        "{what} trapped: {}",
        sanitize(text.lines().next().unwrap_or_default(), 500)
    )
}
