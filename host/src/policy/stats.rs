//! Per-module figures: decisions by verdict, time per call, failures by kind and the
//! memory high-water mark. Kept by module name across reloads, served as Prometheus
//! metrics, and read by `policy bench`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::lock;

/// Upper bounds of the call-time histogram, in seconds.
const BUCKETS: [f64; 11] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// What a call ended with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    NoMatch,
    Allow,
    Audit,
    Block,
    ChannelCheck,
    Trap,
    Timeout,
    Memory,
}

/// One module's counters.
#[derive(Debug, Default)]
pub struct ModuleStats {
    no_match: AtomicU64,
    allow: AtomicU64,
    audit: AtomicU64,
    block: AtomicU64,
    channel_checks: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    memory: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
    memory_high_water: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl ModuleStats {
    pub(crate) fn record(&self, outcome: Outcome, took: Duration) {
        bump(match outcome {
            Outcome::NoMatch => &self.no_match,
            Outcome::Allow => &self.allow,
            Outcome::Audit => &self.audit,
            Outcome::Block => &self.block,
            Outcome::ChannelCheck => &self.channel_checks,
            Outcome::Trap => &self.traps,
            Outcome::Timeout => &self.timeouts,
            Outcome::Memory => &self.memory,
        });
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b)
            && let Some(b) = self.buckets.get(i)
        {
            bump(b);
        }
        bump(&self.count);
        self.sum_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn note_memory(&self, bytes: usize) {
        self.memory_high_water
            .fetch_max(bytes as u64, Ordering::Relaxed);
    }

    /// Calls made and their mean time.
    pub fn calls(&self) -> (u64, Duration) {
        let n = self.count.load(Ordering::Relaxed);
        let sum = self.sum_nanos.load(Ordering::Relaxed);
        (n, Duration::from_nanos(sum.checked_div(n).unwrap_or(0)))
    }

    /// The most linear memory any instance of the module held.
    pub fn memory_high_water(&self) -> u64 {
        self.memory_high_water.load(Ordering::Relaxed)
    }
}

/// Every module's counters, by name.
#[derive(Debug, Default)]
pub struct StatsRegistry(Mutex<BTreeMap<String, Arc<ModuleStats>>>);

impl StatsRegistry {
    /// The counters of `module` (created on first use; a reloaded module keeps them).
    pub fn of(&self, module: &str) -> Arc<ModuleStats> {
        Arc::clone(lock(&self.0).entry(module.to_string()).or_default())
    }

    /// The metrics of the modules in `current` (a removed module's figures stop being
    /// served), in the Prometheus text format.
    pub fn render(&self, current: &[&str], out: &mut String) {
        let all = lock(&self.0);
        let modules: Vec<(&String, &Arc<ModuleStats>)> = all
            .iter()
            .filter(|(name, _)| current.contains(&name.as_str()))
            .collect();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "# HELP portcullis_policy_module_calls_total Calls into each policy module, by outcome \
             (its verdict, a channel check, or how it failed).\n\
             # TYPE portcullis_policy_module_calls_total counter"
        );
        for (name, s) in &modules {
            for (outcome, c) in [
                ("no_match", &s.no_match),
                ("allow", &s.allow),
                ("audit", &s.audit),
                ("block", &s.block),
                ("channel_check", &s.channel_checks),
                ("trap", &s.traps),
                ("timeout", &s.timeouts),
                ("memory_limit", &s.memory),
            ] {
                let _ = writeln!(
                    out,
                    "portcullis_policy_module_calls_total{{module=\"{}\",outcome=\"{outcome}\"}} {}",
                    esc(name),
                    get(c)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_policy_module_call_seconds Time of each call into a policy module.\n\
             # TYPE portcullis_policy_module_call_seconds histogram"
        );
        for (name, s) in &modules {
            let name = esc(name);
            let mut cumulative = 0;
            for (bound, c) in BUCKETS.iter().zip(&s.buckets) {
                cumulative += get(c);
                let _ = writeln!(
                    out,
                    "portcullis_policy_module_call_seconds_bucket{{module=\"{name}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = get(&s.count);
            let _ = writeln!(
                out,
                "portcullis_policy_module_call_seconds_bucket{{module=\"{name}\",le=\"+Inf\"}} {count}\n\
                 portcullis_policy_module_call_seconds_sum{{module=\"{name}\"}} {}\n\
                 portcullis_policy_module_call_seconds_count{{module=\"{name}\"}} {count}",
                get(&s.sum_nanos) as f64 / 1e9
            );
        }
        let _ = writeln!(
            out,
            "# HELP portcullis_policy_module_memory_high_water_bytes The most linear memory an instance of the module held.\n\
             # TYPE portcullis_policy_module_memory_high_water_bytes gauge"
        );
        for (name, s) in &modules {
            let _ = writeln!(
                out,
                "portcullis_policy_module_memory_high_water_bytes{{module=\"{}\"}} {}",
                esc(name),
                s.memory_high_water()
            );
        }
    }
}
