//! Entry points for the fuzz targets in `fuzz/` (`scripts/fuzz`): each feeds untrusted
//! input to one parser the way the proxy does, and panics only if the parser does
//! (a panic, an overflow, an index out of bounds). Not a stable API.

use std::path::Path;

/// A user name as a client sends it: the username form, then the target's name check.
pub fn user_name(input: &str) {
    if let Ok(user) = crate::server::username_form::parse_user(input)
        && let Some((host, _port)) = user.target
        && let Ok(canonical) = crate::server::target_name::canonical_host(&host)
    {
        // A canonical name is its own canonical form, and safe in known_targets.
        assert_eq!(
            crate::server::target_name::canonical_host(&canonical).as_deref(),
            Ok(canonical.as_str())
        );
        assert!(!canonical.contains([',', ' ', '\n', '\r', '\t', '#', '*', '?', '!', '|']));
    }
}

/// A `known_targets` file, looked up for a target called `db1` / `10.0.0.5`.
pub fn known_targets(input: &str) {
    let names = ["db1".to_string(), "10.0.0.5".to_string()];
    if let Ok(known) =
        crate::upstream::known_targets::KnownTarget::parse(input, "fuzz", &names, 2222)
    {
        let _ = known.has_ca();
    }
}

/// A configuration file.
pub fn config(input: &str) {
    let _ = crate::config::Config::parse(input, Path::new("/fuzz/portcullis.toml"));
}

/// A users file.
pub fn users(input: &str) {
    let _ = crate::identity::UsersFile::parse(input, Path::new("/fuzz/users.toml"));
}

/// The private key the command-log target opens logs with (a fixed test key).
pub const COMMAND_LOG_PRIVATE_KEY: &str = "yMsWJhSsxQSh6JGhqIKNDVcrLPIA/Yl5GCSmbO0ny28=";

/// A command log: the input is read whole as a file (first byte 0), or (first byte 1)
/// split at `0xff` bytes into blocks that are sealed with the matching public key, so
/// that the reader's packet parsing sees any plaintext an attacker with the public key
/// could seal.
pub fn command_log(input: &[u8]) {
    use crate::recording::cmdlog;
    let path = Path::new("fuzz");
    let Ok(key) = cmdlog::OpeningKey::parse(COMMAND_LOG_PRIVATE_KEY, path) else {
        return;
    };
    let file = match input.split_first() {
        Some((1, rest)) => {
            let Ok(public) = cmdlog::SealingKey::parse(&public_key_of_fuzz_key(), path) else {
                return;
            };
            let blocks: Vec<&[u8]> = rest.split(|b| *b == 0xff).collect();
            match cmdlog::sealed_in_memory(&public, &blocks) {
                Ok(file) => file,
                Err(_) => return,
            }
        }
        Some((_, rest)) => rest.to_vec(),
        None => return,
    };
    if let Ok(reader) = cmdlog::LogReader::new(file.as_slice(), &key) {
        let mut output = cmdlog::TerminalOutput::new(reader);
        while let Ok(Some(_)) = output.next_output() {}
    }
}

/// The public half of [`COMMAND_LOG_PRIVATE_KEY`].
pub fn public_key_of_fuzz_key() -> String {
    crate::recording::cmdlog::public_key_of(COMMAND_LOG_PRIVATE_KEY).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::cmdlog;

    #[test]
    fn the_fuzz_key_pair_seals_logs_the_reader_opens() {
        let public = cmdlog::SealingKey::parse(&public_key_of_fuzz_key(), Path::new("k"))
            .expect("the fuzz key has a public half");
        let packet = cmdlog::encode_packet(cmdlog::SOURCE_SERVER, cmdlog::CODE_DATA, 0, b"hi");
        let file = cmdlog::sealed_in_memory(&public, &[&packet]).unwrap();
        let key = cmdlog::OpeningKey::parse(COMMAND_LOG_PRIVATE_KEY, Path::new("k")).unwrap();
        let mut output =
            cmdlog::TerminalOutput::new(cmdlog::LogReader::new(file.as_slice(), &key).unwrap());
        assert_eq!(
            output.next_output().unwrap().map(|(_, d)| d),
            Some(b"hi".to_vec())
        );
        // And the fuzz entry points take such input without complaint.
        let mut input = vec![1u8];
        input.extend_from_slice(&packet);
        command_log(&input);
        user_name("jdoe%DB1.example:22");
        known_targets("db1 ssh-ed25519 AAAA\n@cert-authority * x");
        config("[server]\nmax_startups = \"1:2\"\n");
        users("[[user]]\nemail = \"x\"\n");
    }
}
