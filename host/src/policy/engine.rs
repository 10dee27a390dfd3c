//! The engine: compiles modules once, keeps configured instances warm for reuse, and
//! evaluates a request against the current snapshot of the policy set.
//!
//! Invariants:
//! - A compiled component is cached by the SHA-256 of its bytes, so a reload compiles
//!   only what changed; an unchanged module (same bytes, same configuration) keeps its
//!   warm instances across reloads.
//! - An instance is reused only after a call that returned normally; one that trapped,
//!   timed out or hit the memory cap is dropped (its state cannot be trusted).
//! - Nothing here holds a lock while a guest runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::UNIX_EPOCH;

use arc_swap::ArcSwap;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, Trap};

use super::PolicyError;
use super::bindings as wit;
use super::limits::{EPOCH_TICK, GuestState, Limits};
use super::loader::{
    self, ConfigKind, ConfigSource, LoadError, LoadErrors, ModuleInfo, ModuleSource,
};
use super::types::{
    Action, Authentication, ChannelDecision, ChannelRequest, DecisionRequest, Evaluation,
    Permissions,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The policy engine: a WebAssembly engine, the policy directory, and the current set.
pub struct PolicyEngine {
    engine: Engine,
    limits: Limits,
    dir: PathBuf,
    current: ArcSwap<PolicySet>,
    compiled: Mutex<HashMap<[u8; 32], Component>>,
    generation: AtomicU64,
    reloading: Mutex<()>,
    /// The generation of the set in force, for those who act on a swap.
    swapped: tokio::sync::watch::Sender<u64>,
    failed_reloads: AtomicU64,
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
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        config.parallel_compilation(true);
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
        let engine = Engine::new(&config).map_err(|e| PolicyError::Engine(format!("{e:#}")))?;
        start_epoch_ticker(&engine)?;
        let this = PolicyEngine {
            engine,
            limits,
            dir: dir.into(),
            current: ArcSwap::from_pointee(PolicySet::empty()),
            compiled: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            reloading: Mutex::new(()),
            swapped: tokio::sync::watch::Sender::new(0),
            failed_reloads: AtomicU64::new(0),
        };
        this.reload()?;
        Ok(this)
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
                    "does not implement the portcullis:policy@0.2.0 world (a module built \
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
            config: source.config.clone(),
            engine: self.engine.clone(),
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

fn start_epoch_ticker(engine: &Engine) -> Result<(), PolicyError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("policy-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(|_| ())
        .map_err(|e| PolicyError::Engine(format!("cannot start the epoch ticker: {e}")))
}

fn first_line(e: &wasmtime::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// One configured instance of a module, ready for a call.
struct Instance {
    store: Store<GuestState>,
    bindings: wit::Policy,
}

/// A loaded, configured module.
struct LoadedModule {
    name: Arc<str>,
    info: ModuleInfo,
    digest: [u8; 32],
    config: Option<ConfigSource>,
    engine: Engine,
    limits: Limits,
    pre: wit::PolicyPre<GuestState>,
    idle: Mutex<Vec<Instance>>,
}

impl LoadedModule {
    fn is_same(&self, source: &ModuleSource) -> bool {
        self.info.name == source.name
            && self.digest == source.digest
            && self.config == source.config
    }

    fn instantiate(&self) -> Result<Instance, String> {
        let mut store = Store::new(
            &self.engine,
            GuestState::new(Arc::clone(&self.name), &self.limits),
        );
        store.limiter(|state| state);
        store.set_epoch_deadline(self.limits.deadline_ticks());
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
    fn call<R>(
        &self,
        what: &str,
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
        match f(&instance.bindings, &mut instance.store) {
            Ok(r) => {
                let mut idle = lock(&self.idle);
                if idle.len() < self.limits.idle_instances {
                    idle.push(instance);
                }
                Ok(r)
            }
            Err(e) => Err(describe_failure(what, &e, &instance.store, &self.limits)),
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

/// Makes guest-supplied text safe to log and to show on a user's terminal: no control
/// characters (no escape sequences), bounded length.
pub(crate) fn sanitize(text: &str, max_chars: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max_chars)
        .collect();
    if text.chars().count() > max_chars {
        out.push('…');
    }
    out
}

/// Whether a principal is a plausible Unix login that OpenSSH can carry in a
/// certificate: 1 to 64 characters of letters, digits, `.`, `_`, `-`, `@`, a trailing
/// `$` allowed, not starting with `-`.
fn valid_principal(p: &str) -> bool {
    let body = p.strip_suffix('$').unwrap_or(p);
    !body.is_empty()
        && p.len() <= 64
        && !body.starts_with('-')
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// An immutable snapshot of the loaded modules, in precedence order.
pub struct PolicySet {
    modules: Vec<Arc<LoadedModule>>,
    generation: u64,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("generation", &self.generation)
            .field("modules", &self.names())
            .finish()
    }
}

impl PolicySet {
    fn empty() -> Self {
        PolicySet {
            modules: Vec::new(),
            generation: 0,
        }
    }

    /// The module names, in precedence order.
    pub fn names(&self) -> Vec<&str> {
        self.modules.iter().map(|m| m.info.name.as_str()).collect()
    }

    /// What was loaded, for `policy check` and the logs.
    pub fn modules(&self) -> Vec<ModuleInfo> {
        self.modules.iter().map(|m| m.info.clone()).collect()
    }

    /// Counts reloads: 1 for the first set loaded.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Decides a connection: the first module whose answer is not no-match decides;
    /// a failing module blocks; when none matches, the connection is blocked.
    pub fn decide(&self, request: &DecisionRequest) -> Evaluation {
        let wire = to_wire(request);
        for module in &self.modules {
            let name = &module.info.name;
            let span = tracing::debug_span!("policy", module = %name);
            let _enter = span.enter();
            // A verdict other than no-match is explained on the same instance, before
            // it goes back to the pool.
            let answer = module.call("decide", |b, s| match b.call_decide(&mut *s, &wire)? {
                wit::Verdict::NoMatch => Ok(None),
                verdict => Ok(Some((verdict, b.call_explain(s)?))),
            });
            match answer {
                Ok(None) => continue,
                Ok(Some((verdict, explanation))) => {
                    return evaluation_from(name, verdict, explanation);
                }
                Err(failure) => {
                    tracing::warn!(module = %name, %failure, "policy module failed; blocking");
                    return Evaluation::blocked(
                        Some(name.clone()),
                        format!("policy module {name} failed: {failure}"),
                    );
                }
            }
        }
        Evaluation::blocked(None, "no policy matched")
    }

    /// Decides a channel request on a connection the set allowed with `decision`.
    /// Modules are asked in order; the first opinion wins; a failing module denies.
    /// With no opinion, the request is allowed if the decision's permissions allow it.
    pub fn check_channel(
        &self,
        request: &DecisionRequest,
        decision: &Evaluation,
        channel: &ChannelRequest,
    ) -> ChannelDecision {
        let deny = |module: Option<String>, reason: String| ChannelDecision {
            allowed: false,
            module,
            reason,
        };
        if !decision.is_allowed() {
            return deny(None, "the connection is not allowed".into());
        }
        if let Some((false, what)) = channel.required_permission(&decision.permissions) {
            return deny(
                decision.module.clone(),
                format!("{what} is not permitted by policy"),
            );
        }
        let wire = to_wire(request);
        let wire_channel = channel_to_wire(channel);
        for module in &self.modules {
            let name = &module.info.name;
            match module.call("check-channel", |b, s| {
                b.call_check_channel(s, &wire, &wire_channel)
            }) {
                Ok(wit::ChannelVerdict::NoOpinion) => continue,
                Ok(wit::ChannelVerdict::Allow) => {
                    return ChannelDecision {
                        allowed: true,
                        module: Some(name.clone()),
                        reason: String::new(),
                    };
                }
                Ok(wit::ChannelVerdict::Deny(reason)) => {
                    return deny(Some(name.clone()), sanitize(&reason, 500));
                }
                Err(failure) => {
                    tracing::warn!(module = %name, %failure, "policy module failed; denying");
                    return deny(
                        Some(name.clone()),
                        format!("policy module {name} failed: {failure}"),
                    );
                }
            }
        }
        ChannelDecision {
            allowed: true,
            module: None,
            reason: String::new(),
        }
    }
}

/// Runs [`PolicySet::check_channel`] on the blocking pool, so that a slow module holds
/// a pool thread, never the session's task. A check that cannot run denies.
pub async fn check_channel_off_thread(
    policy: Arc<PolicySet>,
    request: Arc<DecisionRequest>,
    decision: Arc<Evaluation>,
    channel: ChannelRequest,
) -> ChannelDecision {
    tokio::task::spawn_blocking(move || policy.check_channel(&request, &decision, &channel))
        .await
        .unwrap_or_else(|e| ChannelDecision {
            allowed: false,
            module: None,
            reason: format!("policy check failed: {e}"),
        })
}

/// Encodes the request once for every module (the layout is the guest SDK's, documented
/// in `wit/policy.wit`).
fn to_wire(r: &DecisionRequest) -> Vec<u8> {
    use portcullis_policy as sdk;
    let now = r.now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let source_ip = r.source.ip().to_string();
    let target_ip = r.target_ip.map(|ip| ip.to_string());
    sdk::ConnectionRequest {
        session_id: &r.session_id,
        identity: sdk::Identity {
            email: &r.email,
            groups: r.groups.iter().map(String::as_str).collect(),
            authentication: match &r.authentication {
                Authentication::PublicKey(f) => sdk::Authentication::PublicKey(f),
                Authentication::Certificate(f) => sdk::Authentication::Certificate(f),
                Authentication::Other(n) => sdk::Authentication::Other(n),
            },
        },
        source: sdk::Endpoint {
            ip: &source_ip,
            port: r.source.port(),
        },
        target: sdk::Target {
            host: &r.target_host,
            ip: target_ip.as_deref(),
            port: r.target_port,
        },
        login: &r.login,
        now: sdk::Datetime {
            seconds: now.as_secs(),
            nanoseconds: now.subsec_nanos(),
        },
        client_version: &r.client_version,
    }
    .encode()
}

fn channel_to_wire(c: &ChannelRequest) -> wit::ChannelRequest {
    match c {
        ChannelRequest::Shell => wit::ChannelRequest::Shell,
        ChannelRequest::Exec { command } => wit::ChannelRequest::Exec(command.clone()),
        ChannelRequest::Subsystem { name } => wit::ChannelRequest::Subsystem(name.clone()),
        ChannelRequest::DirectTcpip { host, port } => {
            wit::ChannelRequest::DirectTcpip((host.clone(), *port))
        }
        ChannelRequest::TcpipForward { address, port } => {
            wit::ChannelRequest::TcpipForward((address.clone(), *port))
        }
        ChannelRequest::AgentForwarding => wit::ChannelRequest::AgentForwarding,
        ChannelRequest::X11Forwarding => wit::ChannelRequest::X11Forwarding,
    }
}

/// Checks a module's answer and turns it into the host's evaluation. A malformed
/// answer blocks, naming the module.
fn evaluation_from(module: &str, verdict: wit::Verdict, e: wit::Explanation) -> Evaluation {
    let reason = sanitize(&e.reason, 500);
    let (action, command_logging) = match verdict {
        wit::Verdict::NoMatch | wit::Verdict::Allow => (Action::Allow, false),
        wit::Verdict::Audit => (Action::Audit, false),
        wit::Verdict::AuditRecorded => (Action::Audit, true),
        wit::Verdict::Block => {
            let why = if reason.trim().is_empty() {
                format!("blocked by policy module {module}")
            } else {
                reason
            };
            return Evaluation::blocked(Some(module.to_string()), why);
        }
    };
    if e.principals.is_empty() {
        return Evaluation::blocked(
            Some(module.to_string()),
            format!("policy module {module} allowed the connection but granted no login"),
        );
    }
    if let Some(bad) = e.principals.iter().find(|p| !valid_principal(p)) {
        return Evaluation::blocked(
            Some(module.to_string()),
            format!(
                "policy module {module} returned an invalid login {:?}",
                sanitize(bad, 64)
            ),
        );
    }
    let p = e.permissions;
    Evaluation {
        module: Some(module.to_string()),
        action,
        principals: e.principals,
        permissions: Permissions {
            pty: p.contains(wit::Permissions::PTY),
            port_forwarding: p.contains(wit::Permissions::PORT_FORWARDING),
            agent_forwarding: p.contains(wit::Permissions::AGENT_FORWARDING),
            x11_forwarding: p.contains(wit::Permissions::X11_FORWARDING),
            user_rc: p.contains(wit::Permissions::USER_RC),
        },
        command_logging,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_must_be_plain_logins() {
        for ok in ["jdoe", "john.doe", "svc_deploy", "host$", "a-b", "j@corp"] {
            assert!(valid_principal(ok), "{ok}");
        }
        for bad in [
            "",
            "-oProxyCommand",
            "a,b",
            "a b",
            "root\n",
            "$",
            &"x".repeat(65),
        ] {
            assert!(!valid_principal(bad), "{bad:?}");
        }
    }

    #[test]
    fn guest_text_loses_control_characters_and_length() {
        assert_eq!(sanitize("a\x1b[2Jb\nc", 100), "a [2Jb c");
        assert_eq!(sanitize("abcdef", 3), "abc…");
    }

    fn explanation(principals: &[&str]) -> wit::Explanation {
        wit::Explanation {
            principals: principals.iter().map(|s| s.to_string()).collect(),
            permissions: wit::Permissions::PTY,
            reason: "r".into(),
        }
    }

    #[test]
    fn an_allow_without_principals_blocks_naming_the_module() {
        let e = evaluation_from("10-x.wasm", wit::Verdict::Allow, explanation(&[]));
        assert_eq!(e.action, Action::Block);
        assert!(
            e.reason.contains("10-x.wasm") && e.reason.contains("no login"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn an_invalid_principal_blocks() {
        let e = evaluation_from(
            "10-x.wasm",
            wit::Verdict::Allow,
            explanation(&["ok", "bad,login"]),
        );
        assert_eq!(e.action, Action::Block);
        assert!(e.reason.contains("invalid login"), "{}", e.reason);
    }

    #[test]
    fn audit_keeps_logging_and_permissions() {
        let e = evaluation_from(
            "20-a.wasm",
            wit::Verdict::AuditRecorded,
            explanation(&["jdoe"]),
        );
        assert_eq!(e.action, Action::Audit);
        assert!(e.command_logging && e.permissions.pty && !e.permissions.port_forwarding);
        assert!(e.permits_login("jdoe") && !e.permits_login("root"));
    }
}
