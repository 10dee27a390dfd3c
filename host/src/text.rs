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

/// Escapes one formatted log line: every control character in it is written as an
/// escape (`\n`, `\r`, `\t`, `\u{1b}`...) but the line's own final newline, so that
/// no field, whoever chose its text, can forge a line or drive the reader's terminal.
/// With `keep_colours` (a terminal), the formatter's own colour codes (`ESC [ digits
/// and semicolons m`) stay; any other escape sequence is escaped.
pub(crate) fn escape_log_line(line: &[u8], keep_colours: bool) -> std::borrow::Cow<'_, [u8]> {
    let is_c1 = |i: usize| {
        line.get(i) == Some(&0xc2) && line.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b))
    };
    let last = line.len().saturating_sub(1);
    let needs = line
        .iter()
        .enumerate()
        .any(|(i, &b)| (b < 0x20 && !(b == b'\n' && i == last)) || b == 0x7f || is_c1(i));
    if !needs {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    let mut i = 0;
    while let Some(&b) = line.get(i) {
        if keep_colours && b == 0x1b && line.get(i + 1) == Some(&b'[') {
            let params = line
                .get(i + 2..)
                .unwrap_or_default()
                .iter()
                .take_while(|c| c.is_ascii_digit() || **c == b';')
                .count();
            if line.get(i + 2 + params) == Some(&b'm') {
                out.extend_from_slice(line.get(i..i + 3 + params).unwrap_or_default());
                i += 3 + params;
                continue;
            }
        }
        match b {
            b'\n' if i == last => out.push(b),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x00..=0x1f | 0x7f => out.extend_from_slice(format!("\\u{{{b:x}}}").as_bytes()),
            0xc2 if is_c1(i) => {
                let c1 = line.get(i + 1).copied().unwrap_or_default();
                out.extend_from_slice(format!("\\u{{{c1:x}}}").as_bytes());
                i += 1;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// A log writer that escapes each line (see [`escape_log_line`]).
#[derive(Debug)]
pub(crate) struct EscapingWriter<W> {
    pub inner: W,
    pub keep_colours: bool,
}

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner
            .write_all(&escape_log_line(buf, self.keep_colours))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An error and its causes on one line, each cause once (many errors already name
/// theirs).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
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
    fn a_log_line_keeps_only_its_own_newline_and_the_formatter_colours() {
        let forged = b"INFO unknown key user=x\n2026-11-30T00:00:00Z INFO admin logged in\n";
        let out = escape_log_line(forged, false);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(out.ends_with(b"\\n2026-11-30T00:00:00Z INFO admin logged in\n"));
        let coloured = b"\x1b[32mINFO\x1b[0m user=\x1b]52;c;aGk=\x07 \xc2\x9b2J\n";
        let out = escape_log_line(coloured, true);
        assert!(out.starts_with(b"\x1b[32mINFO\x1b[0m user=\\u{1b}]52;c;aGk=\\u{7} \\u{9b}2J"));
        assert_eq!(
            escape_log_line(b"plain line\n", false).as_ref(),
            b"plain line\n"
        );
        // Without colours, even the formatter's codes are escaped.
        assert!(!escape_log_line(coloured, false).contains(&0x1b));
    }

    #[test]
    fn escaped_text_keeps_no_control_character() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\nb\x1b]52;c;x\x07"), "a\\nb\\u{1b}]52;c;x\\u{7}");
        assert!(!escape("\r\x1b[2J").chars().any(char::is_control));
    }
}
