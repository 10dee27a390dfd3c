//! Matching destinations and sources: IP networks (CIDR), address ranges, host-name
//! globs and port sets. Every type parses from the string an operator writes in a
//! configuration file, and deserializes from it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::Target;

use portcullis_wire::canonical;
pub use portcullis_wire::parse_ip;

fn to_bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this network. IPv4 and IPv6 never match each other (except
    /// IPv4-mapped IPv6 addresses, which count as IPv4).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let (v6a, a) = to_bits(self.addr);
        let (v6b, b) = to_bits(canonical(*ip));
        if v6a != v6b {
            return false;
        }
        let width: u32 = if v6a { 128 } else { 32 };
        let host_bits = width - u32::from(self.prefix);
        if host_bits >= 128 {
            return true;
        }
        (a >> host_bits) == (b >> host_bits)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = parse_ip(addr).ok_or_else(|| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0 to {max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An inclusive range of addresses of one family: `10.0.0.10-10.0.0.20`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    first: IpAddr,
    last: IpAddr,
}

impl IpRange {
    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let (fam, x) = to_bits(canonical(*ip));
        let (ffam, first) = to_bits(self.first);
        let (_, last) = to_bits(self.last);
        fam == ffam && first <= x && x <= last
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not an address range (FIRST-LAST)"))?;
        let bad = || format!("`{s}` is not an address range (FIRST-LAST)");
        let first = parse_ip(a).ok_or_else(bad)?;
        let last = parse_ip(b).ok_or_else(bad)?;
        let ((fa, x), (fb, y)) = (to_bits(first), to_bits(last));
        if fa != fb {
            return Err(format!(
                "`{s}`: both ends of a range must be the same IP version"
            ));
        }
        if x > y {
            return Err(format!("`{s}`: the first address is after the last"));
        }
        Ok(IpRange { first, last })
    }
}

/// A host-name pattern: `*` matches any run of characters (including dots), `?` one
/// character; case-insensitive; a trailing dot is ignored. `*.example.com` matches
/// `db1.example.com` but not `example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    /// Whether `host` matches the pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        glob(self.0.as_bytes(), host.as_bytes())
    }
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let p = s.trim().trim_end_matches('.').to_ascii_lowercase();
        if p.is_empty() {
            return Err("an empty host pattern matches nothing".into());
        }
        if let Some(c) = p
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*' | '?')))
        {
            return Err(format!("`{s}`: `{c}` cannot appear in a host name pattern"));
        }
        Ok(HostPattern(p))
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters and `?`
/// one, case-sensitively: `"rsync *"` matches `rsync -av /srv`. Linear in the lengths
/// (no backtracking blow-up, whatever the pattern).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    glob(pattern.as_bytes(), text.as_bytes())
}

pub(crate) use portcullis_wire::glob;

/// A set of TCP ports: `22`, `22,2222`, `8000-8100`, or any mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }
}

impl FromStr for PortSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |part: &str| format!("`{part}` is not a port or port range (1-65535)");
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u16 = lo
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(part))?;
            let hi: u16 = hi
                .parse()
                .ok()
                .filter(|p| *p >= lo)
                .ok_or_else(|| bad(part))?;
            ranges.push((lo, hi));
        }
        Ok(PortSet(ranges))
    }
}

/// Which hosts a destination names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostSpec {
    Any,
    Net(IpNet),
    Range(IpRange),
    Name(HostPattern),
}

/// A destination as operators write it in network policies: an address, CIDR, range or
/// host-name glob, optionally followed by `:PORTS`.
///
/// `10.0.0.5`, `10.0.0.0/8`, `10.0.0.10-10.0.0.20`, `*.prod.example.com`,
/// `db1.internal:22`, `10.0.0.0/8:22,2222`, `[2001:db8::/32]:22`, `*:2222`.
///
/// Addresses, networks and ranges match the target's resolved address (or the host
/// itself when the user typed an address). Name patterns match only names the proxy
/// resolved: the host as typed if it is a name that resolved, and the resolver's
/// canonical name for it (see [`Target::resolved_names`]). A user who types the
/// address, or a name that does not resolve, matches no name pattern: rules that must
/// hold however the target is spelled (audit, block) are written by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    host: HostSpec,
    ports: Option<PortSet>,
}

impl Destination {
    /// Whether the target is this destination.
    pub fn matches(&self, target: &Target<'_>) -> bool {
        if let Some(ports) = &self.ports
            && !ports.contains(target.port)
        {
            return false;
        }
        match &self.host {
            HostSpec::Any => true,
            HostSpec::Net(net) => target.ip_addr().is_some_and(|ip| net.contains(&ip)),
            HostSpec::Range(range) => target.ip_addr().is_some_and(|ip| range.contains(&ip)),
            HostSpec::Name(pattern) => target.resolved_names().any(|n| pattern.matches(n)),
        }
    }
}

fn split_ports(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        // [v6 address or network]:ports
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        // More than one colon without brackets: an IPv6 address, no port.
        Some((host, ports)) if !host.contains(':') => (host, Some(ports)),
        _ => (s, None),
    }
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (host, ports) = split_ports(s);
        let ports = ports
            .map(|p| {
                p.parse::<PortSet>()
                    .map_err(|e| format!("in destination `{s}`: {e}"))
            })
            .transpose()?;
        let host = if host == "*" {
            HostSpec::Any
        } else if host.contains('-') && parse_ip(host.split('-').next().unwrap_or("")).is_some() {
            HostSpec::Range(host.parse()?)
        } else if host.contains('/') || parse_ip(host).is_some() {
            HostSpec::Net(host.parse()?)
        } else {
            HostSpec::Name(
                host.parse()
                    .map_err(|e| format!("in destination `{s}`: {e}"))?,
            )
        };
        Ok(Destination { host, ports })
    }
}

macro_rules! deserialize_from_str {
    ($($ty:ty, $what:literal;)*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(V)
            }
        }
    )*};
}

deserialize_from_str! {
    IpNet, "an IP address or CIDR such as \"10.0.0.0/8\"";
    IpRange, "an address range such as \"10.0.0.10-10.0.0.20\"";
    HostPattern, "a host name pattern such as \"*.example.com\"";
    PortSet, "ports such as \"22\" or \"22,2200-2299\"";
    Destination, "a destination such as \"10.0.0.0/8:22\" or \"*.prod.example.com\"";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn target<'a>(host: &'a str, ip: Option<&'a str>, port: u16) -> Target<'a> {
        Target {
            host,
            ip,
            port,
            canonical_name: None,
        }
    }

    #[test]
    fn cidr_contains_addresses_of_its_network_only() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(&ip("10.255.0.1")));
        assert!(!net.contains(&ip("11.0.0.1")));
        assert!(
            net.contains(&ip("::ffff:10.1.1.1")),
            "mapped IPv4 counts as IPv4"
        );
        assert!(!net.contains(&ip("::1")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&ip("203.0.113.9")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(&ip("2001:db8:1::7")));
        assert!(!v6.contains(&ip("2001:db9::1")));
        let all6: IpNet = "::/0".parse().unwrap();
        assert!(all6.contains(&ip("2001:db9::1")));
        let one: IpNet = "192.0.2.7".parse().unwrap();
        assert!(one.contains(&ip("192.0.2.7")) && !one.contains(&ip("192.0.2.8")));
    }

    #[test]
    fn bad_cidrs_are_refused_with_the_text() {
        assert!(
            "10.0.0.0/33"
                .parse::<IpNet>()
                .unwrap_err()
                .contains("0 to 32")
        );
        assert!(
            "10.0.0/8"
                .parse::<IpNet>()
                .unwrap_err()
                .contains("10.0.0/8")
        );
        assert!("::/129".parse::<IpNet>().is_err());
    }

    #[test]
    fn ranges_are_inclusive_and_checked() {
        let r: IpRange = "10.0.0.10-10.0.0.20".parse().unwrap();
        assert!(r.contains(&ip("10.0.0.10")) && r.contains(&ip("10.0.0.20")));
        assert!(!r.contains(&ip("10.0.0.21")) && !r.contains(&ip("10.0.0.9")));
        assert!(
            "10.0.0.20-10.0.0.10"
                .parse::<IpRange>()
                .unwrap_err()
                .contains("after")
        );
        assert!(
            "10.0.0.1-::1"
                .parse::<IpRange>()
                .unwrap_err()
                .contains("IP version")
        );
    }

    #[test]
    fn host_globs_match_case_insensitively() {
        let p: HostPattern = "*.Prod.example.com".parse().unwrap();
        assert!(p.matches("db1.prod.example.com"));
        assert!(p.matches("a.b.PROD.example.com."));
        assert!(!p.matches("prod.example.com"));
        assert!(!p.matches("db1.prod.example.org"));
        let q: HostPattern = "web-??".parse().unwrap();
        assert!(q.matches("web-01") && !q.matches("web-1") && !q.matches("web-001"));
        assert!("bad host".parse::<HostPattern>().is_err());
        assert!(glob(b"*a*b*c", b"xxaxxbxxc") && !glob(b"*a*b*c", b"xxaxxcxxb"));
    }

    #[test]
    fn port_sets_hold_lists_and_ranges() {
        let p: PortSet = "22, 2200-2299".parse().unwrap();
        assert!(p.contains(22) && p.contains(2250) && !p.contains(23));
        assert!("0".parse::<PortSet>().is_err());
        assert!("30-20".parse::<PortSet>().is_err());
        assert!("ssh".parse::<PortSet>().unwrap_err().contains("ssh"));
    }

    #[test]
    fn destinations_match_address_name_and_port() {
        let d: Destination = "10.0.0.0/8:22".parse().unwrap();
        assert!(d.matches(&target("db1", Some("10.0.0.5"), 22)));
        assert!(!d.matches(&target("db1", Some("10.0.0.5"), 2222)));
        assert!(
            !d.matches(&target("db1", None, 22)),
            "an unresolved name has no address"
        );
        assert!(
            d.matches(&target("10.9.9.9", None, 22)),
            "a literal address is its own"
        );

        let d: Destination = "*.prod.example.com".parse().unwrap();
        assert!(d.matches(&target("db1.prod.example.com", Some("192.0.2.1"), 2222)));
        assert!(!d.matches(&target("192.0.2.1", Some("192.0.2.1"), 22)));

        let d: Destination = "[2001:db8::/32]:22".parse().unwrap();
        assert!(d.matches(&target("h", Some("2001:db8::1"), 22)));
        let d: Destination = "2001:db8::1".parse().unwrap();
        assert!(d.matches(&target("h", Some("2001:db8::1"), 2222)));

        let d: Destination = "10.0.0.10-10.0.0.20".parse().unwrap();
        assert!(d.matches(&target("h", Some("10.0.0.15"), 22)));
        let d: Destination = "*:2222".parse().unwrap();
        assert!(d.matches(&target("anything", None, 2222)) && !d.matches(&target("a", None, 22)));
    }

    #[test]
    fn name_patterns_match_only_names_the_proxy_resolved() {
        let d: Destination = "*.prod.example.com".parse().unwrap();
        // A short name the search domain completed: matched by its canonical name.
        let short = Target {
            canonical_name: Some("db1.prod.example.com"),
            ..target("db1", Some("192.0.2.1"), 22)
        };
        assert!(d.matches(&short));
        // A name that did not resolve is not taken at its word.
        assert!(!d.matches(&target("db1.prod.example.com", None, 22)));
        // The address typed by the user has no name: only an address rule covers it.
        assert!(!d.matches(&target("192.0.2.1", Some("192.0.2.1"), 22)));
    }

    #[test]
    fn destinations_deserialize_from_configuration_strings() {
        #[derive(Deserialize)]
        struct C {
            to: Vec<Destination>,
        }
        let c: C = toml::from_str(r#"to = ["10.0.0.0/8", "db-*.internal:22"]"#).unwrap();
        assert_eq!(c.to.len(), 2);
        let err = toml::from_str::<C>(r#"to = ["10.0.0.0/99"]"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("10.0.0.0/99"), "{err}");
    }
}
