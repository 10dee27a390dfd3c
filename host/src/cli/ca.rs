//! `portcullis ca`: create, show, rotate and retire the gateway CA.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::ca::KeyKind;

/// The CA's key type on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum KeyType {
    /// ECDSA on NIST P-256 (the default: every OpenSSH since 5.7 takes it).
    Ecdsa,
    /// Ed25519.
    Ed25519,
}

impl From<KeyType> for KeyKind {
    fn from(k: KeyType) -> Self {
        match k {
            KeyType::Ecdsa => KeyKind::Ecdsa,
            KeyType::Ed25519 => KeyKind::Ed25519,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum CaCommand {
    /// Create the gateway user CA and host CA (fails if a CA exists).
    Init {
        #[arg(long, value_enum, default_value = "ecdsa")]
        key_type: KeyType,
    },
    /// Print the user CA public keys for the targets' TrustedUserCAKeys file.
    Show {
        /// Print the @cert-authority line for users' known_hosts instead.
        #[arg(long)]
        known_hosts: bool,
    },
    /// Add a new user CA key that signs from now on; old keys stay trusted.
    Rotate {
        #[arg(long, value_enum, default_value = "ecdsa")]
        key_type: KeyType,
    },
    /// Remove every user CA key but the newest (after targets trust the new one).
    Retire,
}

pub(super) fn run(path: &Path, command: CaCommand) -> anyhow::Result<ExitCode> {
    let config = crate::config::Config::load(path)?;
    let dir = &config.ca_dir;
    let print_user = |ca: &crate::ca::Ca| {
        for line in ca.user_ca_lines() {
            println!("{line}");
        }
    };
    match command {
        CaCommand::Init { key_type } => {
            let ca = crate::ca::init(dir, key_type.into())?;
            eprintln!(
                "created the gateway CA in {}; targets trust it with TrustedUserCAKeys:",
                dir.display()
            );
            print_user(&ca);
        }
        CaCommand::Show { known_hosts } => {
            let ca = crate::ca::Ca::open(dir)?;
            if known_hosts {
                println!("{}", ca.known_hosts_line());
            } else {
                print_user(&ca);
            }
        }
        CaCommand::Rotate { key_type } => {
            let ca = crate::ca::rotate(dir, key_type.into())?;
            eprintln!("added a user CA key; it signs from now on. Targets should trust all of:");
            print_user(&ca);
        }
        CaCommand::Retire => {
            for key in crate::ca::retire_old(dir)? {
                eprintln!(
                    "retired {}",
                    key.fingerprint(russh::keys::ssh_key::HashAlg::Sha256)
                );
            }
            print_user(&crate::ca::Ca::open(dir)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
