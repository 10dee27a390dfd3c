//! Reading a policy directory: which files are modules, which are their configurations,
//! and what is wrong with the rest.
//!
//! `NN-name.wasm` is a module; `NN-name.toml` or `NN-name.json` beside it is its
//! configuration. Hidden files and editor or download leftovers (`.name`, `name~`,
//! `*.tmp`, `*.part`, `*.swp`) are ignored, so that writing `.x.wasm.tmp` and renaming
//! it into place is atomic. Anything else is an error, so a misnamed configuration
//! never goes unnoticed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::PolicyError;

/// A module file and its configuration, read from the directory.
#[derive(Debug, Clone)]
pub(crate) struct ModuleSource {
    /// The file name, e.g. `20-network-audit.wasm`: the module's name in decisions.
    pub name: String,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub digest: [u8; 32],
    pub config: Option<ConfigSource>,
}

/// A module's configuration document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigSource {
    pub path: PathBuf,
    pub format: ConfigKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigKind {
    Toml,
    Json,
}

/// What went wrong with one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadError {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// Every file that failed to load, each with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} policy file{} failed to load",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// What `policy check` reports of a module that loaded.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleInfo {
    pub name: String,
    pub path: PathBuf,
    pub config: Option<PathBuf>,
    pub sha256: String,
    /// Imports outside the policy world (typically WASI interfaces pulled in by the
    /// language's standard library). They are linked to functions that trap: a module
    /// that calls one blocks the connection.
    pub denied_imports: Vec<String>,
}

fn is_ignored(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || [".tmp", ".part", ".swp", ".bak", ".md", ".txt", ".sig"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Reads the directory. Returns the modules that could be read, in precedence
/// (file-name) order, and every problem found with the other files.
pub(crate) fn read_dir(dir: &Path) -> Result<(Vec<ModuleSource>, Vec<LoadError>), PolicyError> {
    let read_err = |source| PolicyError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(raw) => errors.push(LoadError {
                path: dir.join(raw),
                reason: "file name is not valid UTF-8".into(),
            }),
        }
    }
    names.sort();

    let mut modules = Vec::new();
    let mut configs_used = Vec::new();
    for name in &names {
        let path = dir.join(name);
        if is_ignored(name) || path.is_dir() {
            continue;
        }
        let Some(stem) = name.strip_suffix(".wasm") else {
            continue;
        };
        match read_module(dir, name, stem) {
            Ok(m) => {
                if let Some(c) = &m.config {
                    configs_used.push(c.path.clone());
                }
                modules.push(m);
            }
            Err(e) => {
                // The configuration belongs to this module even if it failed.
                configs_used.push(dir.join(format!("{stem}.toml")));
                configs_used.push(dir.join(format!("{stem}.json")));
                errors.push(e);
            }
        }
    }
    for name in &names {
        let path = dir.join(name);
        if is_ignored(name) || path.is_dir() || name.ends_with(".wasm") {
            continue;
        }
        if name.ends_with(".toml") || name.ends_with(".json") {
            if !configs_used.contains(&path) {
                let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
                errors.push(LoadError {
                    path,
                    reason: format!("configuration without a module: there is no {stem}.wasm"),
                });
            }
        } else {
            errors.push(LoadError {
                path,
                reason: "not a policy file: expected NAME.wasm, or its NAME.toml / NAME.json"
                    .into(),
            });
        }
    }
    Ok((modules, errors))
}

fn read_module(dir: &Path, name: &str, stem: &str) -> Result<ModuleSource, LoadError> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| LoadError {
        path: path.clone(),
        reason: format!("cannot read: {e}"),
    })?;
    let config = read_config(dir, stem)?;
    let digest = Sha256::digest(&bytes).into();
    Ok(ModuleSource {
        name: name.to_string(),
        path,
        bytes,
        digest,
        config,
    })
}

fn read_config(dir: &Path, stem: &str) -> Result<Option<ConfigSource>, LoadError> {
    let toml = dir.join(format!("{stem}.toml"));
    let json = dir.join(format!("{stem}.json"));
    let found: Vec<(PathBuf, ConfigKind)> = [(toml, ConfigKind::Toml), (json, ConfigKind::Json)]
        .into_iter()
        .filter(|(p, _)| p.exists())
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [(path, format)] => {
            let text = std::fs::read_to_string(path).map_err(|e| LoadError {
                path: path.clone(),
                reason: format!("cannot read configuration: {e}"),
            })?;
            Ok(Some(ConfigSource {
                path: path.clone(),
                format: *format,
                text,
            }))
        }
        _ => Err(LoadError {
            path: dir.join(format!("{stem}.toml")),
            reason: format!("both {stem}.toml and {stem}.json exist; keep one"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str, body: &[u8]) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    #[test]
    fn modules_come_in_file_name_order_with_their_configs() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "20-b.wasm", b"b");
        touch(d.path(), "10-a.wasm", b"a");
        touch(d.path(), "10-a.toml", b"x = 1");
        touch(d.path(), "20-b.json", b"{}");
        touch(d.path(), ".20-b.wasm.tmp", b"partial");
        touch(d.path(), "README.md", b"notes");
        let (mods, errors) = read_dir(d.path()).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<_> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["10-a.wasm", "20-b.wasm"]);
        assert_eq!(mods[0].config.as_ref().unwrap().format, ConfigKind::Toml);
        assert_eq!(mods[1].config.as_ref().unwrap().format, ConfigKind::Json);
    }

    #[test]
    fn orphan_configs_and_stray_files_are_errors_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "10-a.wasm", b"a");
        touch(d.path(), "10-typo.toml", b"");
        touch(d.path(), "notes.yaml", b"");
        let err = LoadErrors(read_dir(d.path()).unwrap().1).to_string();
        assert!(
            err.contains("10-typo.toml") && err.contains("no 10-typo.wasm"),
            "{err}"
        );
        assert!(
            err.contains("notes.yaml") && err.contains("not a policy file"),
            "{err}"
        );
    }

    #[test]
    fn two_configs_for_one_module_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), "10-a.wasm", b"a");
        touch(d.path(), "10-a.toml", b"");
        touch(d.path(), "10-a.json", b"{}");
        let err = LoadErrors(read_dir(d.path()).unwrap().1).to_string();
        assert!(err.contains("keep one"), "{err}");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let err = read_dir(Path::new("/nonexistent/policies"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/policies"), "{err}");
    }
}
