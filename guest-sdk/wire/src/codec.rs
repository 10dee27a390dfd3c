//! The request's encoding: postcard 1.x's layout (documented in `wit/policy.wit`),
//! written out by hand (see the crate's documentation for why), and single sign-on's
//! `other` payload.

use crate::{Authentication, ConnectionRequest, Datetime, Endpoint, Identity, Target};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Datetime, Endpoint, Identity, Target};

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
