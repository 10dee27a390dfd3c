//! The username form for clients that cannot ProxyJump: `LOGIN%HOST[:PORT]`.
//!
//! `%` cannot occur in Unix user names nor (unquoted) in email addresses, and OpenSSH
//! passes it through in a user name given on the command line: `ssh -p 2222
//! 'jdoe%10.0.0.5@proxy'`, `'jdoe%db1.internal:2200@proxy'`, `'jdoe%[2001:db8::5]:22@proxy'`.

/// The separator between the login and the target.
pub const SEPARATOR: char = '%';

/// What the SSH user name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTarget {
    pub login: String,
    pub target: Option<(String, u16)>,
}

/// Splits an SSH user name; errors say what is wrong.
pub fn parse_user(user: &str) -> Result<UserTarget, String> {
    let Some((login, target)) = user.split_once(SEPARATOR) else {
        return Ok(UserTarget {
            login: user.to_string(),
            target: None,
        });
    };
    if login.is_empty() {
        return Err(format!("{user:?}: the login before `{SEPARATOR}` is empty"));
    }
    let (host, port) = split_host_port(target).map_err(|e| format!("{user:?}: {e}"))?;
    if host.is_empty() || host.contains(SEPARATOR) {
        return Err(format!("{user:?}: expected LOGIN{SEPARATOR}HOST[:PORT]"));
    }
    Ok(UserTarget {
        login: login.to_string(),
        target: Some((host, port)),
    })
}

/// Splits `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address; the port defaults to 22.
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let bad_port = |p: &str| format!("{s:?}: {p:?} is not a port number");
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing `]`"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad_port(p))?,
            None if tail.is_empty() => 22,
            None => return Err(format!("{s:?}: unexpected {tail:?} after `]`")),
        };
        return Ok((host.to_string(), port));
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Ok((s.to_string(), 22));
    }
    match s.rsplit_once(':') {
        Some((host, p)) => Ok((host.to_string(), p.parse().map_err(|_| bad_port(p))?)),
        None if s.is_empty() => Err("the target is empty".to_string()),
        None => Ok((s.to_string(), 22)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_host_and_port() {
        assert_eq!(split_host_port("db1").unwrap(), ("db1".into(), 22));
        assert_eq!(split_host_port("db1:2222").unwrap(), ("db1".into(), 2222));
        assert_eq!(
            split_host_port("10.0.0.5").unwrap(),
            ("10.0.0.5".into(), 22)
        );
        assert_eq!(
            split_host_port("[2001:db8::1]:2200").unwrap(),
            ("2001:db8::1".into(), 2200)
        );
        assert_eq!(
            split_host_port("2001:db8::1").unwrap(),
            ("2001:db8::1".into(), 22)
        );
        assert!(split_host_port("db1:ssh").unwrap_err().contains("ssh"));
    }

    #[test]
    fn user_names_carry_login_host_and_port() {
        let t = parse_user("jdoe%10.0.0.5").unwrap();
        assert_eq!(
            t,
            UserTarget {
                login: "jdoe".into(),
                target: Some(("10.0.0.5".into(), 22))
            }
        );
        let t = parse_user("jdoe%db1.internal:2200").unwrap();
        assert_eq!(t.target, Some(("db1.internal".into(), 2200)));
        let t = parse_user("jdoe%[2001:db8::5]:22").unwrap();
        assert_eq!(t.target, Some(("2001:db8::5".into(), 22)));
        assert_eq!(parse_user("jdoe").unwrap().target, None);
        assert!(parse_user("%10.0.0.5").is_err());
        assert!(parse_user("jdoe%").is_err());
        assert!(parse_user("jdoe%h:port").is_err());
    }
}
