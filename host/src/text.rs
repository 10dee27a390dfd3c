//! Text from outside (guests, clients, targets) made safe to log and to show on a
//! terminal.

/// Makes guest-supplied text safe to log and to show on a user's terminal: no control
/// characters (no escape sequences), bounded length.
pub(crate) fn sanitize(text: &str, max_chars: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max_chars)
        .collect();
    if text.chars().count() > max_chars {
        out.push('…');
    }
    out
}

/// Escapes control characters for a terminal or a one-line log field: `\n`, `\r`,
/// `\t`, `\\` and `\u{..}` for the rest, so that nothing a client or target chose can
/// move the cursor, start an escape sequence (OSC 52 and the like) or forge a line.
pub(crate) fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_loses_control_characters_and_length() {
        assert_eq!(sanitize("a\x1b[2Jb\nc", 100), "a [2Jb c");
        assert_eq!(sanitize("abcdef", 3), "abc…");
    }

    #[test]
    fn escaped_text_keeps_no_control_character() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\nb\x1b]52;c;x\x07"), "a\\nb\\u{1b}]52;c;x\\u{7}");
        assert!(!escape("\r\x1b[2J").chars().any(char::is_control));
    }
}
