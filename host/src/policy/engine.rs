//! The engine: loads the policy directory, compiles each module once, checks it, and
//! swaps the new set in atomically.
//!
//! Invariants:
//! - A compiled component is cached by the SHA-256 of its bytes, so a reload compiles
//!   only what changed; an unchanged module (same bytes, same configuration) keeps its
//!   warm instances across reloads.
//! - A reload that fails in any module swaps nothing: the previous set stays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use super::PolicyError;
use super::bindings as wit;
use super::guest::GuestState;
use super::limits::Limits;
use super::loader::{self, LoadError, LoadErrors, ModuleInfo, ModuleSource};
use super::module::LoadedModule;
use super::set::PolicySet;
use crate::sync::lock;

/// The policy engine: a WebAssembly engine, the policy directory, and the current set.
pub struct PolicyEngine {
    engine: Engine,
    /// Advances the epoch while guest calls run (see `ticker`).
    ticker: Arc<super::ticker::Ticker>,
    _ticker_stop: super::ticker::Stopper,
    limits: Limits,
    dir: PathBuf,
    current: ArcSwap<PolicySet>,
    compiled: Mutex<HashMap<[u8; 32], Component>>,
    generation: AtomicU64,
    reloading: Mutex<()>,
    /// The generation of the set in force, for those who act on a swap.
    swapped: tokio::sync::watch::Sender<u64>,
    failed_reloads: AtomicU64,
    /// Signatures every module (and configuration) must carry, if required.
    signatures: Option<super::signatures::SignaturePolicy>,
    /// Every module's figures, by name.
    stats: super::stats::StatsRegistry,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("dir", &self.dir)
            .field("limits", &self.limits)
            .field("modules", &self.current.load().names())
            .finish()
    }
}

impl PolicyEngine {
    /// Creates the engine and loads the directory. Any module that fails to load is an
    /// error: the proxy does not start with a policy set other than the one on disk.
    pub fn new(dir: impl Into<PathBuf>, limits: Limits) -> Result<Self, PolicyError> {
        Self::with_signatures(dir, limits, None)
    }

    /// As [`new`](Self::new), requiring every module and configuration to be signed
    /// by a signer of `allowed_signers` (OpenSSH format).
    pub fn new_signed(
        dir: impl Into<PathBuf>,
        limits: Limits,
        allowed_signers: &Path,
    ) -> Result<Self, PolicyError> {
        Self::with_signatures(
            dir,
            limits,
            Some(super::signatures::SignaturePolicy {
                allowed_signers: allowed_signers.to_path_buf(),
                configs: true,
            }),
        )
    }

    /// As [`new`](Self::new), with the signatures required, if any.
    pub fn with_signatures(
        dir: impl Into<PathBuf>,
        limits: Limits,
        signatures: Option<super::signatures::SignaturePolicy>,
    ) -> Result<Self, PolicyError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        config.parallel_compilation(true);
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
        let engine = Engine::new(&config).map_err(|e| PolicyError::Engine(format!("{e:#}")))?;
        let (ticker, ticker_stop) = super::ticker::Ticker::start(&engine)
            .map_err(|e| PolicyError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        let this = PolicyEngine {
            engine,
            ticker,
            _ticker_stop: ticker_stop,
            limits,
            dir: dir.into(),
            current: ArcSwap::from_pointee(PolicySet::empty()),
            compiled: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            reloading: Mutex::new(()),
            swapped: tokio::sync::watch::Sender::new(0),
            failed_reloads: AtomicU64::new(0),
            signatures,
            stats: super::stats::StatsRegistry::default(),
        };
        this.reload()?;
        Ok(this)
    }

    /// The modules' figures.
    pub fn stats(&self) -> &super::stats::StatsRegistry {
        &self.stats
    }

    /// The policy directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sandbox limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The current policy set. A session keeps the snapshot that decided it.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Changes whenever a new set is swapped in (its value is the set's generation).
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swapped.subscribe()
    }

    /// Loads the directory again and, if every module loads and configures, swaps the
    /// new set in atomically. On error the previous set stays in force. Compilation and
    /// checks run on the calling thread, never on a decision's path.
    pub fn reload(&self) -> Result<Arc<PolicySet>, PolicyError> {
        let reloaded = self.load_and_swap();
        if reloaded.is_err() {
            self.failed_reloads.fetch_add(1, Ordering::Relaxed);
        }
        reloaded
    }

    /// How many reloads were refused since the start.
    pub fn failed_reloads(&self) -> u64 {
        self.failed_reloads.load(Ordering::Relaxed)
    }

    fn load_and_swap(&self) -> Result<Arc<PolicySet>, PolicyError> {
        let _one_at_a_time = lock(&self.reloading);
        let (sources, mut errors) = loader::read_dir(&self.dir)?;
        let sources = match &self.signatures {
            None => sources,
            Some(required) => sources
                .into_iter()
                .filter(|s| match check_signatures(required, s) {
                    Ok(()) => true,
                    Err(e) => {
                        errors.push(e);
                        false
                    }
                })
                .collect(),
        };
        let previous = self.current.load_full();
        let mut modules = Vec::with_capacity(sources.len());
        for source in sources {
            if let Some(same) = previous.modules.iter().find(|m| m.is_same(&source)) {
                modules.push(Arc::clone(same));
                continue;
            }
            match self.load_module(source) {
                Ok(m) => modules.push(Arc::new(m)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            errors.sort_by(|a, b| a.path.cmp(&b.path));
            return Err(LoadErrors(errors).into());
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let set = Arc::new(PolicySet {
            modules,
            generation,
        });
        self.current.store(Arc::clone(&set));
        self.swapped.send_replace(generation);
        // Forget compiled components no module uses any more.
        let digests: Vec<[u8; 32]> = set.modules.iter().map(|m| m.digest).collect();
        lock(&self.compiled).retain(|d, _| digests.contains(d));
        Ok(set)
    }

    fn compile(&self, source: &ModuleSource) -> Result<Component, String> {
        if let Some(c) = lock(&self.compiled).get(&source.digest) {
            return Ok(c.clone());
        }
        let bytes = &source.bytes;
        if bytes.get(0..4) != Some(b"\0asm".as_slice()) {
            return Err("not a WebAssembly file".into());
        }
        if bytes.get(4..8) == Some([1, 0, 0, 0].as_slice()) {
            return Err(
                "a core WebAssembly module, not a component: build the policy with \
                 `cargo build --target wasm32-wasip2 --release`"
                    .into(),
            );
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| format!("not a valid component: {}", first_line(&e)))?;
        lock(&self.compiled).insert(source.digest, component.clone());
        Ok(component)
    }

    fn load_module(&self, source: ModuleSource) -> Result<LoadedModule, LoadError> {
        let fail = |reason: String| LoadError {
            path: source.path.clone(),
            reason,
        };
        let component = self.compile(&source).map_err(fail)?;
        let denied_imports = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .filter(|name| name != "log")
            .collect::<Vec<_>>();
        let mut linker: Linker<GuestState> = Linker::new(&self.engine);
        wit::Policy::add_to_linker::<_, HasSelf<GuestState>>(&mut linker, |state| state)
            .map_err(|e| fail(format!("cannot link: {}", first_line(&e))))?;
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| fail(format!("cannot link: {}", first_line(&e))))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(wit::PolicyPre::new)
            .map_err(|e| {
                fail(format!(
                    "does not implement the portcullis:policy@0.3.0 world (a module built \
                     with an older portcullis-policy SDK must be rebuilt): {}",
                    first_line(&e)
                ))
            })?;
        let module = LoadedModule {
            name: Arc::from(source.name.as_str()),
            info: ModuleInfo {
                name: source.name.clone(),
                path: source.path.clone(),
                config: source.config.as_ref().map(|c| c.path.clone()),
                sha256: hex::encode(source.digest),
                denied_imports,
            },
            digest: source.digest,
            stats: self.stats.of(&source.name),
            config: source.config.clone(),
            engine: self.engine.clone(),
            ticker: Arc::clone(&self.ticker),
            limits: self.limits,
            pre,
            idle: Mutex::new(Vec::new()),
        };
        // Instantiate and configure once now, so that a bad module or configuration is
        // refused at load time; the instance is kept warm for the first decision.
        let instance = module.instantiate().map_err(|reason| {
            let path = match (&module.config, reason.starts_with("configuration")) {
                (Some(c), true) => c.path.clone(),
                _ => source.path.clone(),
            };
            LoadError { path, reason }
        })?;
        lock(&module.idle).push(instance);
        Ok(module)
    }
}

fn first_line(e: &wasmtime::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A module's signature and, when required, its configuration's.
fn check_signatures(
    required: &super::signatures::SignaturePolicy,
    source: &loader::ModuleSource,
) -> Result<(), LoadError> {
    let signer = required
        .verify(&source.path, &source.bytes)
        .map_err(|reason| LoadError {
            path: source.path.clone(),
            reason: format!("refused: {reason}"),
        })?;
    if required.configs
        && let Some(c) = &source.config
    {
        required
            .verify(&c.path, c.text.as_bytes())
            .map_err(|reason| LoadError {
                path: c.path.clone(),
                reason: format!("refused: {reason}"),
            })?;
    }
    tracing::debug!(module = %source.name, %signer, "module signature verified");
    Ok(())
}
