//! The names a target may be given, checked and made canonical before anything else
//! happens: a host name (letters, digits, `-` and `.`, at most 253 bytes, labels of at
//! most 63) or an IP address literal. A name is lower-cased; an address is written in
//! its canonical form (an IPv4-mapped IPv6 address as IPv4).
//!
//! Why so strict: the name goes into `known_targets`, into policies, into host
//! certificates and logs. A comma, a space or a newline could plant a pin or a marker
//! line; `10.5` or `167772165` (which the system resolver reads as 10.0.0.5) would be a
//! new spelling of an address that policies and pins know under another; `DB1` another
//! spelling of `db1`.

use std::net::IpAddr;

/// Why a target name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    #[error("the target name is empty")]
    Empty,
    #[error("the target name is longer than 253 bytes")]
    TooLong,
    #[error(
        "{0:?} is not a host name or an IP address (a host name has only letters, digits, `-` and `.`)"
    )]
    Characters(String),
    #[error("{0:?}: a label of a host name has 1 to 63 characters and no `-` at either end")]
    Label(String),
    #[error("{0:?} is not an IP address: write it in full, e.g. 10.0.0.5")]
    NumericName(String),
}

/// The canonical form of a target name, or why it is refused.
pub fn canonical_host(name: &str) -> Result<String, BadName> {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(portcullis_wire::canonical(ip).to_string());
    }
    if name.is_empty() {
        return Err(BadName::Empty);
    }
    // One trailing dot names the same host (a fully qualified name).
    let host = name.strip_suffix('.').unwrap_or(name);
    if host.len() > 253 {
        return Err(BadName::TooLong);
    }
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(BadName::Characters(crate::text::escape(name).into_owned()));
    }
    let mut labels = host.split('.').peekable();
    while let Some(label) = labels.next() {
        if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
            return Err(BadName::Label(name.to_string()));
        }
        // A last label that reads as a number is no DNS name: it is a shorthand for an
        // address (`10.5`, `167772165`, `0x0a000005`) that the resolver would accept.
        if labels.peek().is_none() && is_number(label) {
            return Err(BadName::NumericName(name.to_string()));
        }
    }
    Ok(host.to_ascii_lowercase())
}

/// Whether `label` is a number as `inet_aton` reads one: decimal, octal or `0x` hex.
fn is_number(label: &str) -> bool {
    match label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
    {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => label.bytes().all(|b| b.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_are_made_canonical() {
        for (typed, canonical) in [
            ("db1", "db1"),
            ("DB1.Example.COM", "db1.example.com"),
            ("db1.example.com.", "db1.example.com"),
            ("10.0.0.5", "10.0.0.5"),
            ("::ffff:10.0.0.5", "10.0.0.5"),
            ("[::ffff:10.0.0.5]", "10.0.0.5"),
            ("2001:DB8::0:1", "2001:db8::1"),
            ("1password.example", "1password.example"),
        ] {
            assert_eq!(canonical_host(typed).as_deref(), Ok(canonical), "{typed}");
        }
    }

    #[test]
    fn other_spellings_of_addresses_are_refused() {
        for typed in [
            "10.5",
            "167772165",
            "10.0.5",
            "0x0a000005",
            "10.0.0.0x5",
            "0X1",
        ] {
            assert!(
                matches!(canonical_host(typed), Err(BadName::NumericName(_))),
                "{typed}"
            );
        }
        assert_eq!(
            canonical_host("0xdb").as_deref(),
            Err(&BadName::NumericName("0xdb".into()))
        );
        assert_eq!(canonical_host("db.0xz").as_deref(), Ok("db.0xz"));
    }

    #[test]
    fn names_that_could_plant_lines_are_refused() {
        for typed in [
            "10.0.0.5,x.evil",
            "db1 ssh-ed25519",
            "db1\n@cert-authority",
            "db1\r",
            "db*",
            "[db1]:22",
            "db_1",
            "",
            ".",
            "a..b",
            "-db1",
            "db1-",
        ] {
            assert!(canonical_host(typed).is_err(), "{typed:?}");
        }
        assert!(canonical_host(&"a".repeat(64)).is_err());
        assert!(canonical_host(&format!("{}.b", "a".repeat(63))).is_ok());
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(long.len() > 253);
        assert_eq!(canonical_host(&long), Err(BadName::TooLong));
    }
}
