//! Decrypts a sealed command log in the auditor's browser: the console's page
//! (host/console-web/replay.js) loads this module, built for wasm32-unknown-unknown,
//! hands it the private key file the auditor picked and the sealed bytes it fetched,
//! and plays the asciicast it returns. Neither the key nor the plaintext ever leaves
//! the page.
//!
//! The interface is a few plain functions over one input and one output buffer, so the
//! page needs no generated glue:
//!
//! 1. `input(n)` makes room for `n` bytes and returns where they go; the page writes
//!    the key file's text followed by the log's bytes there.
//! 2. `open_log(key_len)` decrypts; 0 means success, anything else an error.
//! 3. `output_ptr()`/`output_len()` locate the result: on success a JSON line about
//!    the log (`packets`, `warning`, `pty`, `started_at`, `exit`), a newline, then the
//!    asciicast v2 text; on error, the message.
//!
//! The input (with the key) is zeroed as soon as the log is read.

use std::cell::RefCell;
use std::path::Path;

use portcullis_cmdlog::{LogReader, OpeningKey, asciicast};

thread_local! {
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decrypts `log` with the private key whose file text is `key`: the JSON line about
/// the log, a newline, and the asciicast; or the error's message.
pub fn replay(key: &[u8], log: &[u8]) -> Result<Vec<u8>, String> {
    let key = std::str::from_utf8(key).map_err(|_| {
        "the key file is not text: pick the auditor's private key (sshkey)".to_string()
    })?;
    let key = OpeningKey::parse(key, Path::new("the key file")).map_err(|e| e.to_string())?;
    let reader = LogReader::new(log, &key).map_err(|e| e.to_string())?;
    let meta = reader.meta().clone();
    let mut cast = Vec::new();
    let exported = asciicast(reader, &mut cast).map_err(|e| e.to_string())?;
    let about = serde_json::json!({
        "packets": exported.packets,
        "warning": exported.warning,
        "pty": meta.pty.is_some(),
        "started_at": meta.started_at,
        "exit": meta.exit_data,
    });
    let mut out = about.to_string().into_bytes();
    out.push(b'\n');
    out.extend_from_slice(&cast);
    Ok(out)
}

/// Room for `n` bytes of input (the key's text, then the log); where to write them.
#[unsafe(no_mangle)]
#[expect(unsafe_code, reason = "an export the page calls by name")]
pub extern "C" fn input(n: usize) -> *mut u8 {
    INPUT.with_borrow_mut(|input| {
        input.fill(0);
        input.clear();
        input.resize(n, 0);
        input.as_mut_ptr()
    })
}

/// Decrypts the input: its first `key_len` bytes are the key file's text, the rest the
/// log. Returns 0 on success; the output holds the result or the error's message.
#[unsafe(no_mangle)]
#[expect(unsafe_code, reason = "an export the page calls by name")]
pub extern "C" fn open_log(key_len: usize) -> u32 {
    let result = INPUT.with_borrow_mut(|input| {
        let result = match (input.get(..key_len), input.get(key_len..)) {
            (Some(key), Some(log)) => replay(key, log),
            _ => Err("the key is longer than the input".to_string()),
        };
        input.fill(0);
        input.clear();
        input.shrink_to_fit();
        result
    });
    let (status, bytes) = match result {
        Ok(bytes) => (0, bytes),
        Err(message) => (1, message.into_bytes()),
    };
    OUTPUT.set(bytes);
    status
}

/// Where the output starts.
#[unsafe(no_mangle)]
#[expect(unsafe_code, reason = "an export the page calls by name")]
pub extern "C" fn output_ptr() -> *const u8 {
    OUTPUT.with_borrow(|o| o.as_ptr())
}

/// How long the output is.
#[unsafe(no_mangle)]
#[expect(unsafe_code, reason = "an export the page calls by name")]
pub extern "C" fn output_len() -> usize {
    OUTPUT.with_borrow(|o| o.len())
}

/// Frees the output once the page has copied it.
#[unsafe(no_mangle)]
#[expect(unsafe_code, reason = "an export the page calls by name")]
pub extern "C" fn release() {
    OUTPUT.set(Vec::new());
}

#[cfg(test)]
mod tests;
