//! `*` and `?` patterns in linear time.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
