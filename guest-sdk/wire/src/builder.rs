//! A connection request built by hand, for tests: a policy's logic runs natively under
//! `cargo test`, with no wasm and no host.
//!
//! ```
//! use portcullis_wire::ConnectionRequest;
//! let request = ConnectionRequest::builder()
//!     .user("jdoe@example.com")
//!     .group("sre")
//!     .target("10.0.0.5:22")
//!     .login("jdoe")
//!     .at("2026-11-23T09:30:00Z")
//!     .build();
//! assert_eq!(request.target.ip, Some("10.0.0.5"));
//! assert_eq!(request.now.seconds, 1_795_426_200);
//! ```
//!
//! The request borrows its text, as the one the host sends does; [`RequestBuilder::build`]
//! leaks the few strings it holds to give a `ConnectionRequest<'static>`, which is
//! fine in a test and not meant for anything else.

use crate::{Authentication, ConnectionRequest, Datetime, Endpoint, Identity, Target};

/// Builds a [`ConnectionRequest`]; every field has a plain default (see
/// [`ConnectionRequest::builder`]).
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    email: String,
    groups: Vec<String>,
    authentication: AuthenticationSpec,
    source_ip: String,
    source_port: u16,
    host: String,
    ip: Option<String>,
    port: u16,
    canonical_name: Option<String>,
    login: Option<String>,
    now: Datetime,
    client_version: String,
    session_id: String,
}

#[derive(Debug, Clone)]
enum AuthenticationSpec {
    PublicKey(String),
    Certificate(String),
    SingleSignOn {
        issuer: String,
        amr: Vec<String>,
        acr: Option<String>,
    },
}

impl<'a> ConnectionRequest<'a> {
    /// A request to build: `jdoe@example.com` (no groups, a public key) from
    /// `192.0.2.10` to `10.0.0.5:22` as the email's local part, at
    /// 2026-01-05T09:00:00Z (a Monday), unless told otherwise.
    pub fn builder() -> RequestBuilder {
        RequestBuilder {
            email: "jdoe@example.com".into(),
            groups: Vec::new(),
            authentication: AuthenticationSpec::PublicKey("SHA256:test".into()),
            source_ip: "192.0.2.10".into(),
            source_port: 50_000,
            host: "10.0.0.5".into(),
            ip: Some("10.0.0.5".into()),
            port: 22,
            canonical_name: None,
            login: None,
            now: Datetime {
                seconds: 1_767_603_600,
                nanoseconds: 0,
            },
            client_version: "SSH-2.0-OpenSSH_9.2p1".into(),
            session_id: "test-session".into(),
        }
    }
}

impl RequestBuilder {
    /// The user's email address.
    pub fn user(mut self, email: &str) -> Self {
        self.email = email.into();
        self
    }

    /// Adds a group of the user.
    pub fn group(mut self, group: &str) -> Self {
        self.groups.push(group.into());
        self
    }

    /// The target as a user types it: `HOST`, `HOST:PORT` or `[IPV6]:PORT`. An address
    /// is also the resolved address; a name resolves to nothing unless
    /// [`resolves_to`](Self::resolves_to) says where.
    pub fn target(mut self, target: &str) -> Self {
        let (host, port) = split_host_port(target);
        self.port = port.unwrap_or(22);
        self.ip = host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| ip.to_string());
        self.host = match &self.ip {
            Some(ip) => ip.clone(),
            None => host.to_ascii_lowercase(),
        };
        self.canonical_name = None;
        self
    }

    /// The address the target's name resolved to.
    pub fn resolves_to(mut self, ip: &str) -> Self {
        self.ip = Some(ip.into());
        self
    }

    /// The canonical name the resolver found for the target.
    pub fn canonical_name(mut self, name: &str) -> Self {
        self.canonical_name = Some(name.into());
        self
    }

    /// The Unix username asked for (default: the email's local part).
    pub fn login(mut self, login: &str) -> Self {
        self.login = Some(login.into());
        self
    }

    /// The client's address: `IP` or `IP:PORT`.
    pub fn source(mut self, source: &str) -> Self {
        let (ip, port) = split_host_port(source);
        self.source_ip = ip.to_string();
        if let Some(p) = port {
            self.source_port = p;
        }
        self
    }

    /// The time of the connection, in RFC 3339 (`2026-11-23T09:30:00Z`,
    /// `2026-11-23T10:30:00+01:00`).
    ///
    /// # Panics
    /// If `time` is not such a time: a mistake in the test.
    #[allow(
        clippy::panic,
        reason = "a test helper: a bad time is a mistake in the test"
    )]
    pub fn at(mut self, time: &str) -> Self {
        match parse_rfc3339(time) {
            Some(t) => self.now = t,
            None => panic!("{time:?} is not an RFC 3339 time like 2026-11-23T09:30:00Z"),
        }
        self
    }

    /// The time of the connection, in seconds since the epoch.
    pub fn at_unix(mut self, seconds: u64) -> Self {
        self.now = Datetime {
            seconds,
            nanoseconds: 0,
        };
        self
    }

    /// Authenticated with a listed public key of this fingerprint.
    pub fn public_key(mut self, fingerprint: &str) -> Self {
        self.authentication = AuthenticationSpec::PublicKey(fingerprint.into());
        self
    }

    /// Authenticated with a user certificate signed by this CA.
    pub fn certificate(mut self, ca_fingerprint: &str) -> Self {
        self.authentication = AuthenticationSpec::Certificate(ca_fingerprint.into());
        self
    }

    /// Authenticated by single sign-on at `issuer`, with these `amr` values.
    pub fn single_sign_on(mut self, issuer: &str, amr: &[&str]) -> Self {
        self.authentication = AuthenticationSpec::SingleSignOn {
            issuer: issuer.into(),
            amr: amr.iter().map(|s| s.to_string()).collect(),
            acr: None,
        };
        self
    }

    /// The client's SSH version string.
    pub fn client_version(mut self, version: &str) -> Self {
        self.client_version = version.into();
        self
    }

    /// The request (its strings leaked: for tests).
    pub fn build(self) -> ConnectionRequest<'static> {
        fn leak(s: String) -> &'static str {
            Box::leak(s.into_boxed_str())
        }
        let login = self
            .login
            .unwrap_or_else(|| crate::local_part(&self.email).to_string());
        ConnectionRequest {
            session_id: leak(self.session_id),
            identity: Identity {
                email: leak(self.email),
                groups: self.groups.into_iter().map(leak).collect(),
                authentication: match self.authentication {
                    AuthenticationSpec::PublicKey(f) => Authentication::PublicKey(leak(f)),
                    AuthenticationSpec::Certificate(f) => Authentication::Certificate(leak(f)),
                    AuthenticationSpec::SingleSignOn { issuer, amr, acr } => {
                        Authentication::SingleSignOn {
                            issuer: leak(issuer),
                            amr: amr.into_iter().map(leak).collect(),
                            acr: acr.map(leak),
                        }
                    }
                },
            },
            source: Endpoint {
                ip: leak(self.source_ip),
                port: self.source_port,
            },
            target: Target {
                host: leak(self.host),
                ip: self.ip.map(leak),
                port: self.port,
                canonical_name: self.canonical_name.map(leak),
            },
            login: leak(login),
            now: self.now,
            client_version: leak(self.client_version),
        }
    }
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((host, after)) = rest.split_once(']')
    {
        return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (s, None),
    }
}

/// Seconds since the epoch of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
pub(crate) fn parse_rfc3339(s: &str) -> Option<Datetime> {
    let num = |a: usize, b: usize| -> Option<i64> {
        let part = s.get(a..b)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let sep = |i: usize, c: u8| s.as_bytes().get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && (sep(10, b'T') || sep(10, b't') || sep(10, b' ')))
        || !(sep(13, b':') && sep(16, b':'))
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut nanos: u32 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let f = frac.get(..digits.min(9))?;
        nanos = f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32);
        rest = frac.get(digits..)?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes().get(3) != Some(&b':') {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(Datetime {
        seconds: u64::try_from(secs).ok()?,
        nanoseconds: nanos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_with_offsets_and_fractions() {
        let t = |s| parse_rfc3339(s).map(|d| (d.seconds, d.nanoseconds));
        assert_eq!(t("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(t("2026-11-23T09:30:00Z"), Some((1_795_426_200, 0)));
        assert_eq!(t("2026-11-23T10:30:00+01:00"), Some((1_795_426_200, 0)));
        assert_eq!(
            t("2026-11-23T09:30:00.25Z"),
            Some((1_795_426_200, 250_000_000))
        );
        assert_eq!(t("2026-11-23"), None);
        assert_eq!(t("2026-13-01T00:00:00Z"), None);
        assert_eq!(t("2026-11-23T09:30:00"), None);
    }

    #[test]
    fn the_builder_fills_in_what_it_is_not_told() {
        let r = ConnectionRequest::builder().build();
        assert_eq!(r.login, "jdoe");
        assert_eq!(
            (r.target.host, r.target.ip, r.target.port),
            ("10.0.0.5", Some("10.0.0.5"), 22)
        );
        let r = ConnectionRequest::builder()
            .user("ann@example.com")
            .group("sre")
            .group("dba")
            .target("DB1.internal:2222")
            .source("[2001:db8::1]:40000")
            .build();
        assert_eq!(r.login, "ann");
        assert_eq!(r.identity.groups, ["sre", "dba"]);
        assert_eq!(
            (r.target.host, r.target.ip, r.target.port),
            ("db1.internal", None, 2222)
        );
        assert_eq!((r.source.ip, r.source.port), ("2001:db8::1", 40000));
        let r = ConnectionRequest::builder()
            .target("[2001:db8::5]:22")
            .build();
        assert_eq!(r.target.ip, Some("2001:db8::5"));
    }
}
