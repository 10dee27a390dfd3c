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
//! same, pinned by the tests in `codec.rs`.

use std::net::IpAddr;

mod builder;
mod channel;
mod codec;
mod glob;

pub use builder::RequestBuilder;

pub use channel::ChannelRequest;
pub use glob::glob;

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
