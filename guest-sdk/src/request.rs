//! The connection request a policy decides, and its encoding on the wire.
//!
//! The host encodes the request once per decision and hands every module the same
//! bytes (`connection-request` in `wit/policy.wit`, which documents the layout); the
//! SDK decodes them before calling the author's code. These types are the one
//! definition of that layout: the host encodes with [`ConnectionRequest::encode`].

use serde::{Deserialize, Serialize};

/// A point in time: seconds and nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datetime {
    /// Whole seconds since the epoch.
    pub seconds: u64,
    /// Nanoseconds past `seconds`, below 1,000,000,000.
    pub nanoseconds: u32,
}

/// How the user proved their identity to the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Authentication {
    /// An OpenSSH public key listed for the user; the payload is its SHA-256
    /// fingerprint as OpenSSH prints it (`SHA256:...`).
    PublicKey(String),
    /// An OpenSSH user certificate; the payload is the fingerprint of the certificate's
    /// signing CA.
    Certificate(String),
    /// Any other identity source (for example single sign-on); the payload names it.
    Other(String),
}

/// Who is connecting, as the proxy's identity source established it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user's email address, e.g. `jdoe@example.com`.
    pub email: String,
    /// The groups the identity source lists for the user, e.g. `["sre", "db-admins"]`.
    pub groups: Vec<String>,
    /// How the user authenticated.
    pub authentication: Authentication,
}

/// A TCP endpoint: an IP address in its textual form and a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `203.0.113.7` or `2001:db8::7`.
    pub ip: String,
    /// The port.
    pub port: u16,
}

/// The server the user wants to reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The host as the user typed it: a name (`db1.internal`) or an address.
    pub host: String,
    /// The address the proxy resolved `host` to and will connect to; `None` when the
    /// name did not resolve (a policy matching on addresses then does not match).
    pub ip: Option<String>,
    /// The target's SSH port (22 unless the user asked for another).
    pub port: u16,
}

/// Everything a policy may base a connection decision on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRequest {
    /// A unique id of this session, as it appears in the session log.
    pub session_id: String,
    /// Who is connecting.
    pub identity: Identity,
    /// Where the client connects from.
    pub source: Endpoint,
    /// The server the user wants to reach.
    pub target: Target,
    /// The Unix username the user asked to log in as on the target.
    pub login: String,
    /// The current time, passed in by the host (modules have no clock).
    pub now: Datetime,
    /// The client's SSH software version string, e.g. `SSH-2.0-OpenSSH_9.2p1`.
    pub client_version: String,
}

impl ConnectionRequest {
    /// The bytes the host passes to `decide` and `check-channel`.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing owned strings, integers and options into a Vec cannot fail. Sized
        // up front: a typical request is 100-200 bytes.
        postcard::to_extend(self, Vec::with_capacity(256)).unwrap_or_default()
    }

    /// Decodes the host's bytes. Trailing bytes are an error: a host that sends more
    /// than this SDK understands speaks a different version of the interface.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match postcard::take_from_bytes::<Self>(bytes) {
            Ok((request, [])) => Ok(request),
            Ok((_, rest)) => Err(format!(
                "{} unexpected bytes after the connection request",
                rest.len()
            )),
            Err(e) => Err(format!("malformed connection request: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConnectionRequest {
        ConnectionRequest {
            session_id: "s1".into(),
            identity: Identity {
                email: "jdoe@example.com".into(),
                groups: vec!["sre".into(), "db-admins".into()],
                authentication: Authentication::Certificate("SHA256:ca".into()),
            },
            source: Endpoint {
                ip: "2001:db8::7".into(),
                port: 50000,
            },
            target: Target {
                host: "db1.internal".into(),
                ip: Some("10.0.0.5".into()),
                port: 2222,
            },
            login: "jdoe".into(),
            now: Datetime {
                seconds: 1_700_000_000,
                nanoseconds: 5,
            },
            client_version: "SSH-2.0-OpenSSH_9.2p1".into(),
        }
    }

    #[test]
    fn a_request_survives_the_wire() {
        let r = sample();
        assert_eq!(ConnectionRequest::decode(&r.encode()), Ok(r));
    }

    /// The layout documented in `wit/policy.wit`, byte for byte, so that a change to
    /// these types that would break guests in other languages fails here.
    #[test]
    fn the_encoding_is_the_documented_one() {
        let mut r = sample();
        r.identity.groups = vec!["g".into()];
        r.target.ip = None;
        r.client_version = "v".into();
        let mut want = vec![2, b's', b'1', 16];
        want.extend_from_slice(b"jdoe@example.com");
        want.extend_from_slice(&[1, 1, b'g', 1, 9]);
        want.extend_from_slice(b"SHA256:ca");
        want.push(11);
        want.extend_from_slice(b"2001:db8::7");
        want.extend_from_slice(&[0xd0, 0x86, 0x03]); // 50000 as a varint
        want.push(12);
        want.extend_from_slice(b"db1.internal");
        want.extend_from_slice(&[0, 0xae, 0x11, 4]); // no ip; 2222; "jdoe"
        want.extend_from_slice(b"jdoe");
        want.extend_from_slice(&[0x80, 0xe2, 0xcf, 0xaa, 0x06, 5, 1, b'v']);
        assert_eq!(r.encode(), want);
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
