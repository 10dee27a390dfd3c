//! The connection request a policy decides, and its encoding on the wire: the one
//! definition both sides share. The host encodes the request once per decision with
//! [`ConnectionRequest::encode`] and hands every module the same bytes
//! (`connection-request` in `wit/policy.wit`, which documents the layout); the guest
//! SDK (`portcullis-policy`) decodes them before calling the author's code. This crate
//! has no dependencies, so the host does not link the guest SDK and the SDK does not
//! link anything of the host.
//!
//! The text fields borrow from those bytes (`&str`, not `String`): decoding then
//! allocates nothing but the list of groups, which matters because every module
//! decodes the request on every decision. Call `.to_string()` on a field to keep it.
//!
//! The codec is written out here rather than derived with serde and postcard: in a
//! guest, the generic serde path cost about twice as much per decision (measured with
//! `cargo bench -p portcullis --bench decision`). The bytes are postcard's all the
//! same, pinned by the tests below.

use std::net::IpAddr;

/// A point in time: seconds and nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datetime {
    /// Whole seconds since the epoch.
    pub seconds: u64,
    /// Nanoseconds past `seconds`, below 1,000,000,000.
    pub nanoseconds: u32,
}

/// How the user proved their identity to the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// An OpenSSH public key listed for the user; the payload is its SHA-256
    /// fingerprint as OpenSSH prints it (`SHA256:...`).
    PublicKey(&'a str),
    /// An OpenSSH user certificate; the payload is the fingerprint of the certificate's
    /// signing CA.
    Certificate(&'a str),
    /// Any other identity source; the payload names it.
    Other(&'a str),
    /// Single sign-on at an OpenID provider.
    ///
    /// On the wire this is the `other` case (so that modules built before it existed
    /// read it as `Other`), its payload `oidc`, the issuer, the `amr` values joined by
    /// commas, and the `acr`, separated by tabs:
    /// `"oidc\thttps://idp.example.com\tpwd,otp\t"`. None of the parts holds a tab or a
    /// comma (the host strips control characters and drops such `amr` values).
    SingleSignOn {
        /// The provider that vouched for the user (the ID token's `iss`).
        issuer: &'a str,
        /// How the user authenticated there (`amr`, RFC 8176: `pwd`, `otp`, `mfa`,
        /// `hwk`...), as the provider reports it; empty when it does not.
        amr: Vec<&'a str>,
        /// The authentication context class (`acr`), when the provider reports one.
        acr: Option<&'a str>,
    },
}

/// The `other` payload that marks single sign-on (see [`Authentication::SingleSignOn`]).
const SSO_TAG: &str = "oidc";

impl<'a> Authentication<'a> {
    /// Reads an `other` payload: single sign-on, or another source.
    fn from_other(payload: &'a str) -> Self {
        let mut parts = payload.split('\t');
        if let (Some(SSO_TAG), Some(issuer), Some(amr), Some(acr), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            return Authentication::SingleSignOn {
                issuer,
                amr: amr.split(',').filter(|a| !a.is_empty()).collect(),
                acr: (!acr.is_empty()).then_some(acr),
            };
        }
        Authentication::Other(payload)
    }
}

/// Who is connecting, as the proxy's identity source established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity<'a> {
    /// The user's email address, e.g. `jdoe@example.com`.
    pub email: &'a str,
    /// The groups the identity source lists for the user, e.g. `["sre", "db-admins"]`.
    pub groups: Vec<&'a str>,
    /// How the user authenticated.
    pub authentication: Authentication<'a>,
}

/// A TCP endpoint: an IP address in its textual form and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint<'a> {
    /// `203.0.113.7` or `2001:db8::7`.
    pub ip: &'a str,
    /// The port.
    pub port: u16,
}

/// The server the user wants to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The host as the user typed it, checked and made canonical by the proxy: a name
    /// in lower case (`db1.internal`) or an address in its canonical form.
    pub host: &'a str,
    /// The address the proxy resolved `host` to and will connect to; `None` when the
    /// name did not resolve (a policy matching on addresses then does not match).
    pub ip: Option<&'a str>,
    /// The target's SSH port (22 unless the user asked for another).
    pub port: u16,
    /// The name the resolver found for `host` (the end of a CNAME chain, or a short
    /// name completed by the search domain), in lower case; `None` when the user typed
    /// an address or the name did not resolve.
    pub canonical_name: Option<&'a str>,
}

/// Everything a policy may base a connection decision on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRequest<'a> {
    /// A unique id of this session, as it appears in the session log.
    pub session_id: &'a str,
    /// Who is connecting.
    pub identity: Identity<'a>,
    /// Where the client connects from.
    pub source: Endpoint<'a>,
    /// The server the user wants to reach.
    pub target: Target<'a>,
    /// The Unix username the user asked to log in as on the target.
    pub login: &'a str,
    /// The current time, passed in by the host (modules have no clock).
    pub now: Datetime,
    /// The client's SSH software version string, e.g. `SSH-2.0-OpenSSH_9.2p1`.
    pub client_version: &'a str,
}

impl<'a> ConnectionRequest<'a> {
    /// The bytes the host passes to `decide` and `check-channel`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(256);
        put_str(&mut w, self.session_id);
        let id = &self.identity;
        put_str(&mut w, id.email);
        put_varint(&mut w, id.groups.len() as u64);
        for g in &id.groups {
            put_str(&mut w, g);
        }
        let sso;
        let (case, payload) = match &id.authentication {
            Authentication::PublicKey(f) => (0, *f),
            Authentication::Certificate(f) => (1, *f),
            Authentication::Other(n) => (2, *n),
            Authentication::SingleSignOn { issuer, amr, acr } => {
                sso = format!(
                    "{SSO_TAG}\t{issuer}\t{}\t{}",
                    amr.join(","),
                    acr.unwrap_or_default()
                );
                (2, sso.as_str())
            }
        };
        put_varint(&mut w, case);
        put_str(&mut w, payload);
        put_str(&mut w, self.source.ip);
        put_varint(&mut w, u64::from(self.source.port));
        put_str(&mut w, self.target.host);
        put_option(&mut w, self.target.ip);
        put_varint(&mut w, u64::from(self.target.port));
        put_option(&mut w, self.target.canonical_name);
        put_str(&mut w, self.login);
        put_varint(&mut w, self.now.seconds);
        put_varint(&mut w, u64::from(self.now.nanoseconds));
        put_str(&mut w, self.client_version);
        w
    }

    /// Decodes the host's bytes. Trailing bytes are an error: a host that sends more
    /// than this SDK understands speaks a different version of the interface.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, String> {
        let mut r = Reader { rest: bytes };
        let request = r
            .request()
            .map_err(|what| format!("malformed connection request: {what}"))?;
        match r.rest.len() {
            0 => Ok(request),
            n => Err(format!("{n} unexpected bytes after the connection request")),
        }
    }
}

fn put_varint(w: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        w.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    w.push(v as u8);
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    put_varint(w, s.len() as u64);
    w.extend_from_slice(s.as_bytes());
}

fn put_option(w: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => w.push(0),
        Some(s) => {
            w.push(1);
            put_str(w, s);
        }
    }
}

/// Reads the encoding front to back; each error names the field it stopped at.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn request(&mut self) -> Result<ConnectionRequest<'a>, String> {
        let session_id = self.str("session-id")?;
        let email = self.str("identity.email")?;
        let count = self.varint("identity.groups")?;
        // Each group takes at least one byte: a count above that is a lie.
        if count > self.rest.len() as u64 {
            return Err("identity.groups: more groups than bytes".into());
        }
        let mut groups = Vec::with_capacity(count as usize);
        for _ in 0..count {
            groups.push(self.str("identity.groups")?);
        }
        let authentication = match self.varint("identity.authentication")? {
            0 => Authentication::PublicKey(self.str("identity.authentication")?),
            1 => Authentication::Certificate(self.str("identity.authentication")?),
            2 => Authentication::from_other(self.str("identity.authentication")?),
            n => return Err(format!("identity.authentication: unknown case {n}")),
        };
        let source = Endpoint {
            ip: self.str("source.ip")?,
            port: self.small("source.port")?,
        };
        let host = self.str("target.host")?;
        let ip = self.option("target.ip")?;
        let port = self.small("target.port")?;
        let target = Target {
            host,
            ip,
            port,
            canonical_name: self.option("target.canonical-name")?,
        };
        Ok(ConnectionRequest {
            session_id,
            identity: Identity {
                email,
                groups,
                authentication,
            },
            source,
            target,
            login: self.str("login")?,
            now: Datetime {
                seconds: self.varint("now.seconds")?,
                nanoseconds: self.small("now.nanoseconds")?,
            },
            client_version: self.str("client-version")?,
        })
    }

    /// An unsigned LEB128 varint of at most ten bytes that fits in a u64. Lengths and
    /// tags are almost always one byte, which takes the short way.
    #[inline]
    fn varint(&mut self, field: &str) -> Result<u64, String> {
        match self.rest.split_first() {
            Some((&byte, rest)) if byte < 0x80 => {
                self.rest = rest;
                Ok(u64::from(byte))
            }
            _ => self.long_varint(field),
        }
    }

    fn long_varint(&mut self, field: &str) -> Result<u64, String> {
        let mut value = 0u64;
        for (i, &byte) in self.rest.iter().enumerate().take(10) {
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(format!("{field}: number too large"));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                self.rest = self.rest.get(i + 1..).unwrap_or_default();
                return Ok(value);
            }
        }
        Err(format!("{field}: truncated or overlong number"))
    }

    fn option(&mut self, field: &str) -> Result<Option<&'a str>, String> {
        match self.varint(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.str(field)?)),
            n => Err(format!("{field}: option tag {n}")),
        }
    }

    fn small<T: TryFrom<u64>>(&mut self, field: &str) -> Result<T, String> {
        T::try_from(self.varint(field)?).map_err(|_| format!("{field}: number out of range"))
    }

    #[inline]
    fn str(&mut self, field: &str) -> Result<&'a str, String> {
        let len = usize::try_from(self.varint(field)?).unwrap_or(usize::MAX);
        let (text, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or_else(|| format!("{field}: truncated text"))?;
        self.rest = rest;
        std::str::from_utf8(text).map_err(|_| format!("{field}: not UTF-8"))
    }
}

// ------------------------------------------------------------- channel requests

/// A request made on an allowed connection: what the user wants to run or forward.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case", tag = "kind"))]
pub enum ChannelRequest {
    /// An interactive shell.
    Shell,
    /// A command (`ssh host COMMAND`; also how `scp -O` and rsync run).
    Exec {
        /// The command line as the client sent it.
        command: String,
    },
    /// A subsystem such as `sftp` (which `scp` uses by default).
    Subsystem {
        /// The subsystem's name.
        name: String,
    },
    /// Local port forwarding (`ssh -L`): a connection from the target's side to
    /// `host:port`.
    DirectTcpip {
        /// The host to connect to, as the client named it.
        host: String,
        /// The port to connect to.
        port: u16,
    },
    /// Remote port forwarding (`ssh -R`): the target listens on `address:port`.
    TcpipForward {
        /// The address to listen on, as the client named it.
        address: String,
        /// The port (0: the target picks one).
        port: u16,
    },
    /// Agent forwarding (`ssh -A`).
    AgentForwarding,
    /// X11 forwarding (`ssh -X`, `ssh -Y`).
    X11Forwarding,
    /// An environment variable the client sends (`SendEnv`, `SetEnv`). Without an
    /// opinion from any module it goes on to the target, whose `AcceptEnv` applies.
    Env {
        /// The variable's name, e.g. `LANG`.
        name: String,
        /// Its value.
        value: String,
    },
}

// ------------------------------------------------------------------------ globs

/// Glob matching of bytes with `*` (any run) and `?` (any one byte), as OpenSSH's host
/// patterns and policies' patterns use it. Iterative with a single backtracking point:
/// O(pattern x text) at worst, never exponential, whatever the pattern (a recursive
/// matcher takes exponential time on `*a*a*a*...b`, which the fuzzer found).
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

// ---------------------------------------------------------- helpers on the request

/// The local part of an email address: `jdoe` for `jdoe@example.com`. An address
/// without `@` is returned whole. A `+tag` suffix is kept (`jdoe+ops` stays distinct).
pub fn local_part(email: &str) -> &str {
    match email.rsplit_once('@') {
        Some((local, _domain)) => local,
        None => email,
    }
}

/// Parses an IP address; an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) becomes IPv4,
/// so that IPv4 rules match clients seen through a dual-stack socket.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_start_matches('[').trim_end_matches(']');
    text.parse::<IpAddr>().ok().map(canonical)
}

/// An address as policies compare it: IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl<'a> Identity<'a> {
    /// The local part of the user's email: the default Unix login.
    pub fn local_part(&self) -> &'a str {
        local_part(self.email)
    }

    /// Whether the user's email equals `email`, ignoring ASCII case.
    pub fn is(&self, email: &str) -> bool {
        self.email.eq_ignore_ascii_case(email)
    }

    /// Whether the user belongs to `group` (exact, case-sensitive as the identity
    /// source spells it).
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.contains(&group)
    }

    /// Whether the user belongs to at least one of `groups`. An empty list matches
    /// nobody; callers that mean "no group condition" should test for emptiness first.
    pub fn in_any_group<S: AsRef<str>>(&self, groups: &[S]) -> bool {
        groups.iter().any(|g| self.in_group(g.as_ref()))
    }

    /// Whether the user came through single sign-on and the provider reports one of
    /// `methods` among how they authenticated (`amr`), e.g. `["mfa", "otp", "hwk"]`.
    /// False for every other kind of authentication, and when the provider reports no
    /// `amr`: a rule that requires MFA then blocks.
    pub fn authenticated_with_any<S: AsRef<str>>(&self, methods: &[S]) -> bool {
        match &self.authentication {
            Authentication::SingleSignOn { amr, .. } => methods
                .iter()
                .any(|m| amr.iter().any(|a| a.eq_ignore_ascii_case(m.as_ref()))),
            _ => false,
        }
    }
}

impl Endpoint<'_> {
    /// The address, parsed. IPv4-mapped IPv6 addresses are returned as IPv4.
    pub fn ip_addr(&self) -> Option<IpAddr> {
        parse_ip(self.ip)
    }
}

impl<'a> Target<'a> {
    /// The resolved address of the target, parsed; or the host itself when the user
    /// typed an address.
    pub fn ip_addr(&self) -> Option<IpAddr> {
        self.ip.and_then(parse_ip).or_else(|| parse_ip(self.host))
    }

    /// The names the proxy resolved for this target: the host as typed, if it is a
    /// name that resolved, and the resolver's canonical name. An address typed by the
    /// user has no name: a policy that matches names does not match it, so rules that
    /// must hold whatever the user types (audit, block) are written by address.
    pub fn resolved_names(&self) -> impl Iterator<Item = &'a str> {
        let typed = (self.ip.is_some() && parse_ip(self.host).is_none()).then_some(self.host);
        typed.into_iter().chain(self.canonical_name)
    }
}

impl ConnectionRequest<'_> {
    /// The source address of the client, parsed.
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.source.ip_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConnectionRequest<'static> {
        ConnectionRequest {
            session_id: "s1",
            identity: Identity {
                email: "jdoe@example.com",
                groups: vec!["sre", "db-admins"],
                authentication: Authentication::Certificate("SHA256:ca"),
            },
            source: Endpoint {
                ip: "2001:db8::7",
                port: 50000,
            },
            target: Target {
                host: "db1.internal",
                ip: Some("10.0.0.5"),
                port: 2222,
                canonical_name: Some("db1.corp.example"),
            },
            login: "jdoe",
            now: Datetime {
                seconds: 1_700_000_000,
                nanoseconds: 5,
            },
            client_version: "SSH-2.0-OpenSSH_9.2p1",
        }
    }

    #[test]
    fn globs_match_and_take_linear_time_on_hostile_patterns() {
        assert!(glob(b"*.example.com", b"db1.example.com"));
        assert!(glob(b"db?", b"db1") && !glob(b"db?", b"db12"));
        assert!(glob(b"*", b"") && glob(b"a*", b"a") && !glob(b"a*b", b"ab-c"));
        // Exponential for a recursive matcher; instant here.
        let pattern = "*a".repeat(40) + "b";
        let text = "a".repeat(200);
        assert!(!glob(pattern.as_bytes(), text.as_bytes()));
    }

    #[test]
    fn a_request_survives_the_wire() {
        let r = sample();
        let bytes = r.encode();
        assert_eq!(ConnectionRequest::decode(&bytes), Ok(r));
    }

    /// The layout documented in `wit/policy.wit`, byte for byte, so that a change to
    /// these types that would break guests in other languages fails here.
    #[test]
    fn the_encoding_is_the_documented_one() {
        let mut r = sample();
        r.identity.groups = vec!["g"];
        r.target.ip = None;
        r.target.canonical_name = None;
        r.client_version = "v";
        let mut want = vec![2, b's', b'1', 16];
        want.extend_from_slice(b"jdoe@example.com");
        want.extend_from_slice(&[1, 1, b'g', 1, 9]);
        want.extend_from_slice(b"SHA256:ca");
        want.push(11);
        want.extend_from_slice(b"2001:db8::7");
        want.extend_from_slice(&[0xd0, 0x86, 0x03]); // 50000 as a varint
        want.push(12);
        want.extend_from_slice(b"db1.internal");
        want.extend_from_slice(&[0, 0xae, 0x11, 0, 4]); // no ip; 2222; no name; "jdoe"
        want.extend_from_slice(b"jdoe");
        want.extend_from_slice(&[0x80, 0xe2, 0xcf, 0xaa, 0x06, 5, 1, b'v']);
        assert_eq!(r.encode(), want);
    }

    #[test]
    fn single_sign_on_travels_as_other_and_reads_back() {
        let mut r = sample();
        r.identity.authentication = Authentication::SingleSignOn {
            issuer: "https://idp.example.com",
            amr: vec!["pwd", "otp"],
            acr: None,
        };
        let bytes = r.encode();
        assert_eq!(ConnectionRequest::decode(&bytes), Ok(r.clone()));
        // What an SDK from before single sign-on reads: the `other` case.
        let at = 1 + r.session_id.len() + 1 + r.identity.email.len() + 1;
        let at = at + r.identity.groups.iter().map(|g| 1 + g.len()).sum::<usize>();
        assert_eq!(bytes.get(at), Some(&2));
        let payload = "oidc\thttps://idp.example.com\tpwd,otp\t";
        assert_eq!(bytes.get(at + 1), Some(&(payload.len() as u8)));
        assert_eq!(
            bytes.get(at + 2..at + 2 + payload.len()),
            Some(payload.as_bytes())
        );
        // Another source named `oidc` alone, or with other parts, stays `Other`.
        for other in ["oidc", "oidc\tx", "sso", "oidc\ta\tb\tc\td"] {
            assert_eq!(
                Authentication::from_other(other),
                Authentication::Other(other)
            );
        }
        assert_eq!(
            Authentication::from_other("oidc\thttps://i\t\turn:acr:mfa"),
            Authentication::SingleSignOn {
                issuer: "https://i",
                amr: vec![],
                acr: Some("urn:acr:mfa")
            }
        );
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            let prefix = bytes.get(..cut).unwrap_or_default();
            assert!(ConnectionRequest::decode(prefix).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn out_of_range_numbers_and_cases_name_the_field() {
        let mut r = sample();
        r.identity.groups.clear();
        let bytes = r.encode();
        // The authentication case follows session-id, email and an empty group list.
        let at = 1 + r.session_id.len() + 1 + r.identity.email.len() + 1;
        let mut bad = bytes.clone();
        if let Some(b) = bad.get_mut(at) {
            *b = 7;
        }
        let e = ConnectionRequest::decode(&bad).unwrap_err();
        assert!(e.contains("identity.authentication: unknown case 7"), "{e}");
        // A port of 70000 does not fit a u16.
        let mut huge = r.clone();
        huge.source.ip = "";
        let mut bytes = huge.encode();
        // After the case: the fingerprint (length + "SHA256:ca"), then an empty source ip.
        let port_at = at + 1 + (1 + "SHA256:ca".len()) + 1;
        bytes.splice(port_at..port_at + 3, [0xf0, 0xa2, 0x04]);
        let e = ConnectionRequest::decode(&bytes).unwrap_err();
        assert!(e.contains("source.port: number out of range"), "{e}");
    }

    #[test]
    fn bad_bytes_are_refused_with_a_reason() {
        let bytes = sample().encode();
        let cut = bytes.get(..bytes.len() - 3).unwrap_or_default();
        assert!(ConnectionRequest::decode(cut).is_err());
        let mut long = bytes.clone();
        long.push(0);
        let e = ConnectionRequest::decode(&long).unwrap_err();
        assert!(e.contains("1 unexpected bytes"), "{e}");
        assert!(ConnectionRequest::decode(&[0xff; 4]).is_err());
    }
}
