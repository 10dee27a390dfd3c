//! The file format's parts: packet codes, the metadata header, the HPKE suite, and
//! the plaintext packet framing (docs/log-format.md describes them).

use std::path::{Path, PathBuf};

use hpke::kem::X25519HkdfSha256;
use serde::{Deserialize, Serialize};

pub(super) type Kem = X25519HkdfSha256;
pub(super) type PublicKey = <Kem as hpke::Kem>::PublicKey;
pub(super) type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
pub(super) type EncappedKey = <Kem as hpke::Kem>::EncappedKey;
/// The suite's AEAD, ChaCha20-Poly1305: by OpenSSL's libcrypto where the crate has files
/// (the proxy, the CLI), by RustCrypto's portable code otherwise (the console's page).
#[cfg(feature = "files")]
pub(super) type LogAead = super::fast_aead::ChaCha20Poly1305Ossl;
#[cfg(not(feature = "files"))]
pub(super) type LogAead = hpke::aead::ChaCha20Poly1305;

/// Data from the client.
pub const SOURCE_CLIENT: u8 = 0;
/// Data from the server (the target).
pub const SOURCE_SERVER: u8 = 1;
/// Packet code of channel data (SSH_MSG_CHANNEL_DATA).
pub const CODE_DATA: u32 = 94;
/// Packet code of extended data such as stderr (SSH_MSG_CHANNEL_EXTENDED_DATA).
pub const CODE_EXTENDED_DATA: u32 = 95;
/// Packet code of a channel request (SSH_MSG_CHANNEL_REQUEST): `exec\0COMMAND`,
/// `subsystem\0NAME`, `shell\0`, `window-change\0COLSxROWS`. Sent with the client as
/// source, which the reference tool leaves out of pty replays.
pub const CODE_REQUEST: u32 = 98;

/// Errors of command logs.
#[derive(Debug, thiserror::Error)]
pub enum CmdLogError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Format(String),
    #[error("cannot decrypt: {0}")]
    Crypto(String),
}

pub(super) fn file_err(path: &Path, e: impl std::fmt::Display) -> CmdLogError {
    CmdLogError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The terminal of a pty session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyMeta {
    pub term: Option<String>,
    pub width: u32,
    pub height: u32,
    pub modes: Vec<(String, u32)>,
}

/// How the channel ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitData {
    pub timestamp: u64,
    pub status: Option<u32>,
    pub signal: Option<String>,
    #[serde(default)]
    pub core_dumped: bool,
    pub error_msg: Option<String>,
}

/// The metadata header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub started_at: u64,
    pub data_size: u64,
    pub encapsulated_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtyMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_data: Option<ExitData>,
}

/// Encodes one plaintext packet.
pub fn encode_packet(source: u8, code: u32, elapsed_us: u64, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(17 + data.len());
    encode_packet_into(&mut p, source, code, elapsed_us, data);
    p
}

/// The bytes of a packet's header: its length, source, code and elapsed time.
pub(super) const PACKET_HEADER: usize = 17;

/// The header of a packet of `data_len` bytes of data.
pub(super) fn packet_header(
    source: u8,
    code: u32,
    elapsed_us: u64,
    data_len: usize,
) -> [u8; PACKET_HEADER] {
    let mut h = [0; PACKET_HEADER];
    let (len, rest) = h.split_at_mut(4);
    len.copy_from_slice(&((13 + data_len) as u32).to_be_bytes());
    let (src, rest) = rest.split_at_mut(1);
    src.copy_from_slice(&[source]);
    let (c, e) = rest.split_at_mut(4);
    c.copy_from_slice(&code.to_be_bytes());
    e.copy_from_slice(&elapsed_us.to_be_bytes());
    h
}

/// Appends one plaintext packet to `out`.
pub(super) fn encode_packet_into(
    out: &mut Vec<u8>,
    source: u8,
    code: u32,
    elapsed_us: u64,
    data: &[u8],
) {
    out.extend_from_slice(&packet_header(source, code, elapsed_us, data.len()));
    out.extend_from_slice(data);
}

pub(super) fn be_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b) as usize)
}

pub(super) fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}
