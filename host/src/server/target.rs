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
    let (host, port) = crate::cli::split_host_port(target).map_err(|e| format!("{user:?}: {e}"))?;
    if host.is_empty() || host.contains(SEPARATOR) {
        return Err(format!("{user:?}: expected LOGIN{SEPARATOR}HOST[:PORT]"));
    }
    Ok(UserTarget {
        login: login.to_string(),
        target: Some((host, port)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
