//! Sealed command logs, in the file format of the hosted product's decryption tool
//! (see DESIGN.md): HPKE base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
//! ChaCha20-Poly1305, empty info and aad, one sender context per file.
//!
//! File: `u32 M` + base64(JSON metadata) (M bytes), then blocks `u32 N` + N bytes of
//! ciphertext until EOF. Plaintext: packets `u32 T` (T >= 13), `u8 source`, `u32 code`,
//! `u64 elapsed µs`, T-13 bytes of data. Whole packets per block, never an empty block,
//! elapsed never decreasing.
//!
//! Invariants of the writer: the metadata header must come first but holds the exit
//! data, so blocks stream to `NAME.partial` (after room left for the header) while the
//! channel lives, beside `NAME.meta` (everything but the exit data). Finishing writes
//! the header into that room (or, if it does not fit, header + blocks to `NAME.tmp`),
//! syncs the file, renames it to `NAME`, then removes the side files. A proxy that dies
//! leaves `.meta` + `.partial`; [`recover`] finalises them (header without exit data,
//! every complete block kept).
//!
//! Reading streams: [`LogReader`] holds one block at a time, and the exports
//! ([`write_zip`], [`write_asciicast`]) write as they read.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::aead::{AeadCtxR, AeadCtxS, ChaCha20Poly1305};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

type Kem = X25519HkdfSha256;
type PublicKey = <Kem as hpke::Kem>::PublicKey;
type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

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

fn file_err(path: &Path, e: impl std::fmt::Display) -> CmdLogError {
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

// ---------------------------------------------------------------------------- keys

/// Generates a key pair: (private, public), each 32 bytes in standard base64.
pub fn generate_keypair() -> (String, String) {
    let (private, public) = Kem::gen_keypair();
    (
        B64.encode(private.to_bytes()),
        B64.encode(public.to_bytes()),
    )
}

fn decode_key(text: &str, path: &Path, what: &str) -> Result<Vec<u8>, CmdLogError> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| file_err(path, format!("not a base64 {what} ({e})")))?;
    if bytes.len() != 32 {
        return Err(file_err(
            path,
            format!("a {what} is 32 bytes, this is {}", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// The auditor's public key, from `sshkey.pub`.
#[derive(Clone)]
pub struct SealingKey(PublicKey);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(")?;
        f.write_str(&B64.encode(self.0.to_bytes()))?;
        f.write_str(")")
    }
}

impl SealingKey {
    pub fn read(path: &Path) -> Result<SealingKey, CmdLogError> {
        let text = fs::read_to_string(path).map_err(|e| file_err(path, e))?;
        let bytes = decode_key(&text, path, "public key")?;
        PublicKey::from_bytes(&bytes)
            .map(SealingKey)
            .map_err(|e| file_err(path, format!("{e:?}")))
    }
}

/// The auditor's private key, from `sshkey`. Never printed.
pub struct OpeningKey(PrivateKey);

impl std::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpeningKey(..)")
    }
}

impl OpeningKey {
    pub fn read(path: &Path) -> Result<OpeningKey, CmdLogError> {
        let text = fs::read_to_string(path).map_err(|e| file_err(path, e))?;
        let bytes = decode_key(&text, path, "private key")?;
        PrivateKey::from_bytes(&bytes)
            .map(OpeningKey)
            .map_err(|e| file_err(path, format!("{e:?}")))
    }
}

/// Writes `sshkey` (0600) and `sshkey.pub`, without trailing newlines.
pub fn keygen(out: &Path) -> Result<PathBuf, CmdLogError> {
    use std::os::unix::fs::OpenOptionsExt;
    let public_path = PathBuf::from(format!("{}.pub", out.display()));
    for p in [out, public_path.as_path()] {
        if p.exists() {
            return Err(file_err(p, "exists; refusing to overwrite a key"));
        }
    }
    let (private, public) = generate_keypair();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| file_err(out, e))?;
    f.write_all(private.as_bytes())
        .map_err(|e| file_err(out, e))?;
    fs::write(&public_path, public).map_err(|e| file_err(&public_path, e))?;
    Ok(public_path)
}

// -------------------------------------------------------------------------- writer

#[derive(Serialize, Deserialize)]
struct SideMeta {
    started_at: u64,
    encapsulated_key: String,
    pty: Option<PtyMeta>,
    /// Bytes reserved for the header at the start of the `.partial` file (0 in side
    /// files written before the reservation existed).
    #[serde(default)]
    header_reserve: u64,
}

/// The room left for the header at the start of a log being written: its 4-byte length
/// and 4,092 base64 characters, i.e. 3,069 bytes of JSON (a header is usually under
/// 1 KiB). Finishing the log then writes the header in place and renames the file,
/// instead of copying a log that may be gigabytes; a header that does not fit falls
/// back to the copy.
const HEADER_RESERVE: u64 = 4096;

fn side_paths(path: &Path) -> (PathBuf, PathBuf) {
    let s = path.display().to_string();
    (
        PathBuf::from(format!("{s}.partial")),
        PathBuf::from(format!("{s}.meta")),
    )
}

/// Encodes one plaintext packet.
pub fn encode_packet(source: u8, code: u32, elapsed_us: u64, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(17 + data.len());
    encode_packet_into(&mut p, source, code, elapsed_us, data);
    p
}

/// Appends one plaintext packet to `out`.
fn encode_packet_into(out: &mut Vec<u8>, source: u8, code: u32, elapsed_us: u64, data: &[u8]) {
    out.extend_from_slice(&((13 + data.len()) as u32).to_be_bytes());
    out.push(source);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&elapsed_us.to_be_bytes());
    out.extend_from_slice(data);
}

/// A command log being written.
pub struct Writer {
    path: PathBuf,
    blocks: File,
    ctx: AeadCtxS<ChaCha20Poly1305, HkdfSha256, Kem>,
    meta: SideMeta,
    start: Instant,
    last_elapsed: u64,
    data_size: u64,
    /// The frame being sealed, kept between packets.
    frame: Vec<u8>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .field("data_size", &self.data_size)
            .finish()
    }
}

impl Writer {
    /// Starts a log that will be `path` once finished.
    pub fn create(path: &Path, key: &SealingKey) -> Result<Writer, CmdLogError> {
        let (enc, ctx) =
            hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, Kem>(&OpModeS::Base, &key.0, &[])
                .map_err(|e| CmdLogError::Crypto(format!("{e:?}")))?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        }
        let (partial, _) = side_paths(path);
        let meta = SideMeta {
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            encapsulated_key: hex::encode(enc.to_bytes()),
            pty: None,
            header_reserve: HEADER_RESERVE,
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| file_err(&partial, e))?;
        (&file)
            .write_all(&[0; HEADER_RESERVE as usize])
            .map_err(|e| file_err(&partial, e))?;
        let w = Writer {
            path: path.to_path_buf(),
            blocks: file,
            ctx,
            meta,
            start: Instant::now(),
            last_elapsed: 0,
            data_size: 0,
            frame: Vec::new(),
        };
        w.write_side_meta()?;
        Ok(w)
    }

    fn write_side_meta(&self) -> Result<(), CmdLogError> {
        let (_, meta_path) = side_paths(&self.path);
        let json =
            serde_json::to_vec(&self.meta).map_err(|e| CmdLogError::Format(e.to_string()))?;
        let tmp = PathBuf::from(format!("{}.tmp", meta_path.display()));
        fs::write(&tmp, json)
            .and_then(|()| fs::rename(&tmp, &meta_path))
            .map_err(|e| file_err(&meta_path, e))
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the pty of the session.
    pub fn set_pty(&mut self, pty: PtyMeta) -> Result<(), CmdLogError> {
        self.meta.pty = Some(pty);
        self.write_side_meta()
    }

    /// Seals and writes one packet. Empty data writes nothing.
    ///
    /// The frame (length, sealed packet, tag) is built in one buffer the writer keeps,
    /// and the packet is sealed in place: one copy of the data, no allocation once the
    /// buffer has grown to the channel's packet size.
    pub fn packet(&mut self, source: u8, code: u32, data: &[u8]) -> Result<(), CmdLogError> {
        if data.is_empty() {
            return Ok(());
        }
        let elapsed = (self.start.elapsed().as_micros() as u64).max(self.last_elapsed);
        self.last_elapsed = elapsed;
        let frame = &mut self.frame;
        frame.clear();
        frame.extend_from_slice(&[0; 4]); // the sealed length, filled in below
        encode_packet_into(frame, source, code, elapsed, data);
        let plain_len = frame.len() - 4;
        let tag = self
            .ctx
            .seal_inout_detached(
                hpke::inout::InOutBuf::from(frame.get_mut(4..).unwrap_or_default()),
                &[],
            )
            .map_err(|e| CmdLogError::Crypto(format!("{e:?}")))?;
        frame.extend_from_slice(&tag.to_bytes());
        let sealed_len = (frame.len() - 4) as u32;
        if let Some(len) = frame.get_mut(..4) {
            len.copy_from_slice(&sealed_len.to_be_bytes());
        }
        // One write per block, straight to the operating system: a block the client
        // has been sent data for survives the proxy being killed.
        let path = &self.path;
        self.blocks
            .write_all(frame)
            .map_err(|e| file_err(&side_paths(path).0, e))?;
        self.data_size += plain_len as u64;
        Ok(())
    }

    /// Syncs the blocks written so far to disk.
    pub fn flush(&mut self) -> Result<(), CmdLogError> {
        let (partial, _) = side_paths(&self.path);
        self.blocks.sync_data().map_err(|e| file_err(&partial, e))
    }

    /// Writes the final file with the exit data and removes the side files.
    pub fn finish(mut self, exit: Option<ExitData>) -> Result<PathBuf, CmdLogError> {
        self.flush()?;
        let (partial, meta_path) = side_paths(&self.path);
        let meta = Metadata {
            started_at: self.meta.started_at,
            data_size: self.data_size,
            encapsulated_key: self.meta.encapsulated_key.clone(),
            pty: self.meta.pty.clone(),
            exit_data: exit,
        };
        finalise(
            &self.path,
            &partial,
            &meta_path,
            &meta,
            self.meta.header_reserve,
        )?;
        Ok(self.path)
    }
}

/// Turns `partial` into the finished log at `path`: header, then the complete blocks
/// (a block torn by a kill is dropped), synced to disk; then removes the side files.
/// Returns how many bytes of a torn last block were dropped.
///
/// With a reserved header region the header is written in place and the file renamed;
/// otherwise (or if the header does not fit) the blocks are streamed into a new file.
fn finalise(
    path: &Path,
    partial: &Path,
    meta_path: &Path,
    meta: &Metadata,
    reserve: u64,
) -> Result<u64, CmdLogError> {
    let mut blocks = OpenOptions::new()
        .read(true)
        .write(true)
        .open(partial)
        .map_err(|e| file_err(partial, e))?;
    let (complete, total) =
        complete_blocks_len(&mut blocks, reserve).map_err(|e| file_err(partial, e))?;
    let mut json = serde_json::to_vec(meta).map_err(|e| CmdLogError::Format(e.to_string()))?;
    let room = (reserve.saturating_sub(4) / 4 * 3) as usize;
    if reserve > 0 && json.len() <= room {
        // JSON allows trailing whitespace: pad so that the base64 fills the room exactly.
        json.resize(room, b' ');
        let header = B64.encode(&json);
        let mut in_place = || -> std::io::Result<()> {
            blocks.set_len(complete)?;
            blocks.seek(SeekFrom::Start(0))?;
            blocks.write_all(&(header.len() as u32).to_be_bytes())?;
            blocks.write_all(header.as_bytes())?;
            blocks.sync_all()?;
            fs::rename(partial, path)
        };
        in_place().map_err(|e| file_err(path, e))?;
    } else {
        // Streamed, not read into memory: a long session's log can be gigabytes.
        let header = B64.encode(&json);
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let mut copy = || -> std::io::Result<()> {
            let mut f = BufWriter::new(File::create(&tmp)?);
            f.write_all(&(header.len() as u32).to_be_bytes())?;
            f.write_all(header.as_bytes())?;
            blocks.seek(SeekFrom::Start(reserve))?;
            let want = complete - reserve.min(complete);
            let copied = std::io::copy(&mut (&mut blocks).take(want), &mut f)?;
            if copied != want {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{partial:?} shrank while being finalised"),
                ));
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, path)
        };
        copy().map_err(|e| file_err(path, e))?;
        let _ = fs::remove_file(partial);
    }
    let _ = fs::remove_file(meta_path);
    Ok(total - complete)
}

/// The big-endian u32 at `at`, if the bytes are there.
fn be_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b) as usize)
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Walks the length prefixes of a blocks file from `start`: returns where its complete
/// blocks end (a block torn by a kill is left out) and the file's length.
fn complete_blocks_len(file: &mut File, start: u64) -> std::io::Result<(u64, u64)> {
    let total = file.seek(SeekFrom::End(0))?;
    let mut at = start.min(total);
    let mut len = [0u8; 4];
    while at + 4 <= total {
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut len)?;
        let end = at + 4 + u64::from(u32::from_be_bytes(len));
        if end > total {
            break;
        }
        at = end;
    }
    Ok((at, total))
}

/// Finalises the logs a killed proxy left in `dir` (header without exit data). Returns
/// the finished paths.
pub fn recover(dir: &Path) -> Result<Vec<PathBuf>, CmdLogError> {
    let mut done = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(done);
    };
    for entry in entries.filter_map(Result::ok) {
        let meta_path = entry.path();
        let Some(name) = meta_path.to_str().and_then(|s| s.strip_suffix(".meta")) else {
            continue;
        };
        let path = PathBuf::from(name);
        let (partial, _) = side_paths(&path);
        let side: SideMeta = match fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(m) => m,
            None => {
                tracing::error!(path = %meta_path.display(), "unreadable command log metadata; left in place");
                continue;
            }
        };
        if !partial.exists() {
            File::create(&partial).map_err(|e| file_err(&partial, e))?;
        }
        let size = fs::metadata(&partial)
            .map(|m| m.len())
            .unwrap_or(0)
            .saturating_sub(side.header_reserve);
        let meta = Metadata {
            started_at: side.started_at,
            data_size: size,
            encapsulated_key: side.encapsulated_key,
            pty: side.pty,
            exit_data: None,
        };
        let torn = finalise(&path, &partial, &meta_path, &meta, side.header_reserve)?;
        tracing::warn!(path = %path.display(), torn_bytes = torn, "finalised a command log left by an interrupted proxy");
        done.push(path);
    }
    Ok(done)
}

// -------------------------------------------------------------------------- reader

/// One decrypted packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub source: u8,
    pub code: u32,
    pub elapsed_us: u64,
    pub data: Vec<u8>,
}

/// Reads into `buf` until it is full or the input ends; returns how much it read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(buf.get_mut(got..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads a log packet by packet with one block in memory at a time, however long the
/// log. A file that is not a log, or a wrong key (the first block does not open), is an
/// error from [`LogReader::new`]; damage further on ends the packets and leaves a
/// [`warning`](LogReader::warning). Read errors of the input are errors.
pub struct LogReader<R> {
    input: R,
    meta: Metadata,
    ctx: AeadCtxR<ChaCha20Poly1305, HkdfSha256, Kem>,
    /// Bytes of the file read so far.
    consumed: u64,
    blocks: usize,
    sealed: Vec<u8>,
    /// Plaintext not yet handed out starts at `pos`; `plain[0]` is at `plain_offset`
    /// in the whole log's plaintext.
    plain: Vec<u8>,
    pos: usize,
    plain_offset: u64,
    warning: Option<String>,
    ended: bool,
}

impl<R> std::fmt::Debug for LogReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("consumed", &self.consumed)
            .field("blocks", &self.blocks)
            .field("warning", &self.warning)
            .finish()
    }
}

impl<R: Read> LogReader<R> {
    /// Reads the header and opens the first block.
    pub fn new(mut input: R, key: &OpeningKey) -> Result<LogReader<R>, CmdLogError> {
        let not_a_log = |why: &str| CmdLogError::Format(format!("not a command log: {why}"));
        let io = |e: std::io::Error| CmdLogError::Format(format!("cannot read the log: {e}"));
        let mut len = [0u8; 4];
        if read_up_to(&mut input, &mut len).map_err(io)? < 4 {
            return Err(not_a_log("shorter than its header length"));
        }
        let m = u32::from_be_bytes(len);
        let mut header = Vec::new();
        (&mut input)
            .take(u64::from(m))
            .read_to_end(&mut header)
            .map_err(io)?;
        if header.len() < m as usize {
            return Err(not_a_log("the header is cut short"));
        }
        let json = B64
            .decode(&header)
            .map_err(|_| not_a_log("the header is not base64"))?;
        let meta: Metadata = serde_json::from_slice(&json)
            .map_err(|e| not_a_log(&format!("bad header JSON ({e})")))?;
        let enc =
            hex::decode(&meta.encapsulated_key).map_err(|_| not_a_log("bad encapsulated_key"))?;
        let enc = EncappedKey::from_bytes(&enc).map_err(|_| not_a_log("bad encapsulated_key"))?;
        let ctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &key.0,
            &enc,
            &[],
        )
        .map_err(|e| CmdLogError::Crypto(format!("{e:?}")))?;
        let mut r = LogReader {
            input,
            meta,
            ctx,
            consumed: 4 + u64::from(m),
            blocks: 0,
            sealed: Vec::new(),
            plain: Vec::new(),
            pos: 0,
            plain_offset: 0,
            warning: None,
            ended: false,
        };
        r.read_block()?;
        Ok(r)
    }

    /// The header.
    pub fn meta(&self) -> &Metadata {
        &self.meta
    }

    /// What ended the log early (damage or truncation), once the packets have run out.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// Bytes of the file read so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Reads, opens and appends the next block; false at the end of the log or at the
    /// damage that ends it.
    fn read_block(&mut self) -> Result<bool, CmdLogError> {
        if self.ended {
            return Ok(false);
        }
        let io = |e: std::io::Error| CmdLogError::Format(format!("cannot read the log: {e}"));
        let block = self.blocks;
        let mut len = [0u8; 4];
        let got = read_up_to(&mut self.input, &mut len).map_err(io)?;
        if got < 4 {
            if got > 0 {
                self.warning = Some(format!("truncated: {got} stray bytes after block {block}"));
            }
            self.ended = true;
            return Ok(false);
        }
        let n = u32::from_be_bytes(len);
        self.sealed.clear();
        (&mut self.input)
            .take(u64::from(n))
            .read_to_end(&mut self.sealed)
            .map_err(io)?;
        if self.sealed.len() < n as usize {
            self.warning = Some(format!(
                "truncated in block {}: {} of {n} bytes present",
                block + 1,
                self.sealed.len()
            ));
            self.ended = true;
            return Ok(false);
        }
        match self.ctx.open(&self.sealed, &[]) {
            Ok(p) => {
                self.plain.drain(..self.pos);
                self.plain_offset += self.pos as u64;
                self.pos = 0;
                self.plain.extend_from_slice(&p);
            }
            Err(_) if block == 0 => {
                return Err(CmdLogError::Crypto(
                    "the first block does not open: wrong key, or a corrupt file".into(),
                ));
            }
            Err(_) => {
                self.warning = Some(format!(
                    "block {} is corrupt; the {block} blocks before it are intact",
                    block + 1
                ));
                self.ended = true;
                return Ok(false);
            }
        }
        self.blocks += 1;
        self.consumed += 4 + u64::from(n);
        Ok(true)
    }

    /// The next packet, or None at the end (see [`warning`](LogReader::warning)).
    pub fn next_packet(&mut self) -> Result<Option<Packet>, CmdLogError> {
        loop {
            let rest = self.plain.get(self.pos..).unwrap_or_default();
            match be_u32(rest, 0) {
                Some(t) if t >= 13 => {
                    if let Some(body) = rest.get(4..4 + t) {
                        let packet = Packet {
                            source: body.first().copied().unwrap_or_default(),
                            code: be_u32(body, 1).unwrap_or_default() as u32,
                            elapsed_us: be_u64(body, 5).unwrap_or_default(),
                            data: body.get(13..).unwrap_or_default().to_vec(),
                        };
                        self.pos += 4 + t;
                        return Ok(Some(packet));
                    }
                }
                Some(_) => {
                    self.malformed();
                    return Ok(None);
                }
                None => {}
            }
            // Nothing left, or a packet continued in the next block.
            if !self.read_block()? {
                if self.pos < self.plain.len() {
                    self.malformed();
                }
                return Ok(None);
            }
        }
    }

    fn malformed(&mut self) {
        let at = self.plain_offset + self.pos as u64;
        self.warning
            .get_or_insert_with(|| format!("malformed packet at plaintext offset {at}"));
        self.ended = true;
        self.pos = self.plain.len();
    }
}

// -------------------------------------------------------------------------- export

fn format_date(secs: u64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let s = humantime::format_rfc3339_seconds(t).to_string(); // 2026-11-23T21:37:37Z
    format!("{}+00", s.trim_end_matches('Z').replace('T', " "))
}

/// What an export read: the packets, and the damage that ended the log early, if any.
#[derive(Debug)]
pub struct Exported {
    pub packets: usize,
    pub warning: Option<String>,
}

fn session_started(meta: &Metadata, pty: &PtyMeta) -> String {
    format!(
        "Session started on {} [TERM=\"{}\" COLUMNS=\"{}\" LINES=\"{}\"]\n",
        format_date(meta.started_at),
        pty.term.as_deref().unwrap_or("unknown"),
        pty.width,
        pty.height
    )
}

fn session_done(meta: &Metadata) -> String {
    match &meta.exit_data {
        Some(e) => match (&e.error_msg, e.core_dumped) {
            (Some(msg), _) => format!(
                "\nScript done on {} [ERROR=\"{msg}\"]\n",
                format_date(e.timestamp)
            ),
            (None, true) => format!(
                "\nScript done on {} [CORE DUMPED]\n",
                format_date(e.timestamp)
            ),
            (None, false) => format!(
                "\nScript done on {} [COMMAND_EXIT_CODE=\"{}\"]\n",
                format_date(e.timestamp),
                e.status.unwrap_or(0)
            ),
        },
        None => "\nSession has no termination data\n".to_string(),
    }
}

/// Creates (or truncates) an export readable by its owner only: it is the plaintext of
/// a sealed recording.
fn create_private(out: &Path) -> Result<File, CmdLogError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| file_err(out, e))
}

/// Writes the decrypted zip: `term_data.txt` + `term_times.txt` for a pty session,
/// `data_from_client.txt` + `data_from_server.txt` otherwise, and `requests.txt`.
/// Each file is streamed, reading the log twice through `open` (a fresh reader per
/// pass), so memory stays at one block plus the requests however long the log.
pub fn write_zip<R: Read>(
    mut open: impl FnMut() -> Result<LogReader<R>, CmdLogError>,
    out: &Path,
) -> Result<Exported, CmdLogError> {
    let mut first = open()?;
    let file = create_private(out)?;
    let mut zip = zip::ZipWriter::new(BufWriter::new(file));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let err = |e: &dyn std::fmt::Display| file_err(out, e);
    let is_data = |p: &Packet| p.code != CODE_REQUEST;
    let meta = first.meta().clone();
    let mut packets = 0;
    let mut requests = String::new();
    // The first file comes from the first pass, which also gathers the requests.
    let (first_name, first_source, second_name) = match &meta.pty {
        Some(_) => ("term_data.txt", SOURCE_SERVER, "term_times.txt"),
        None => (
            "data_from_client.txt",
            SOURCE_CLIENT,
            "data_from_server.txt",
        ),
    };
    zip.start_file(first_name, options).map_err(|e| err(&e))?;
    if let Some(pty) = &meta.pty {
        zip.write_all(session_started(&meta, pty).as_bytes())
            .map_err(|e| err(&e))?;
    }
    while let Some(p) = first.next_packet()? {
        packets += 1;
        if !is_data(&p) {
            requests.push_str(&format!(
                "{:.6} {}\n",
                p.elapsed_us as f64 / 1e6,
                String::from_utf8_lossy(&p.data).replacen('\0', " ", 1)
            ));
        } else if p.source == first_source {
            zip.write_all(&p.data).map_err(|e| err(&e))?;
        }
    }
    if meta.pty.is_some() {
        zip.write_all(session_done(&meta).as_bytes())
            .map_err(|e| err(&e))?;
    }
    zip.start_file(second_name, options).map_err(|e| err(&e))?;
    let mut second = open()?;
    let mut last = 0u64;
    while let Some(p) = second.next_packet()? {
        if !is_data(&p) || p.source != SOURCE_SERVER {
            continue;
        }
        if meta.pty.is_some() {
            let line = format!(
                "{:.6} {}\n",
                (p.elapsed_us - last.min(p.elapsed_us)) as f64 / 1e6,
                p.data.len()
            );
            zip.write_all(line.as_bytes()).map_err(|e| err(&e))?;
            last = p.elapsed_us;
        } else {
            zip.write_all(&p.data).map_err(|e| err(&e))?;
        }
    }
    if !requests.is_empty() {
        zip.start_file("requests.txt", options)
            .map_err(|e| err(&e))?;
        zip.write_all(requests.as_bytes()).map_err(|e| err(&e))?;
    }
    zip.finish()
        .and_then(|mut w| w.flush().map_err(Into::into))
        .map_err(|e| err(&e))?;
    Ok(Exported {
        packets,
        warning: first.warning,
    })
}

/// Writes asciicast v2, streamed: a header line, then `[seconds, "o", text]` for
/// output and `[seconds, "r", "COLSxROWS"]` for window changes.
pub fn write_asciicast<R: Read>(mut r: LogReader<R>, out: &Path) -> Result<Exported, CmdLogError> {
    let file = create_private(out)?;
    let mut w = BufWriter::new(file);
    let pty = r.meta().pty.clone().unwrap_or(PtyMeta {
        term: None,
        width: 80,
        height: 24,
        modes: vec![],
    });
    let header = serde_json::json!({
        "version": 2,
        "width": pty.width,
        "height": pty.height,
        "timestamp": r.meta().started_at,
        "env": {"TERM": pty.term.unwrap_or_else(|| "xterm".into())},
    });
    writeln!(w, "{header}").map_err(|e| file_err(out, e))?;
    let mut packets = 0;
    while let Some(p) = r.next_packet()? {
        packets += 1;
        let t = p.elapsed_us as f64 / 1e6;
        let event = if p.code == CODE_REQUEST {
            let text = String::from_utf8_lossy(&p.data);
            match text.strip_prefix("window-change\0") {
                Some(size) => serde_json::json!([t, "r", size]),
                None => continue,
            }
        } else if p.source == SOURCE_SERVER {
            serde_json::json!([t, "o", String::from_utf8_lossy(&p.data)])
        } else {
            continue;
        };
        writeln!(w, "{event}").map_err(|e| file_err(out, e))?;
    }
    w.flush().map_err(|e| file_err(out, e))?;
    Ok(Exported {
        packets,
        warning: r.warning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decrypted log held in memory: its header, its packets, and what was wrong
    /// past them, if anything.
    #[derive(Debug)]
    struct Decrypted {
        meta: Metadata,
        packets: Vec<Packet>,
        warning: Option<String>,
    }

    /// The whole log through [`LogReader`], in memory.
    fn decrypt(bytes: &[u8], key: &OpeningKey) -> Result<Decrypted, CmdLogError> {
        let mut r = LogReader::new(bytes, key)?;
        let mut packets = Vec::new();
        while let Some(p) = r.next_packet()? {
            packets.push(p);
        }
        Ok(Decrypted {
            meta: r.meta.clone(),
            packets,
            warning: r.warning,
        })
    }

    fn unzip(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut zip = zip::ZipArchive::new(File::open(path).unwrap()).unwrap();
        (0..zip.len())
            .map(|i| {
                let mut f = zip.by_index(i).unwrap();
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).unwrap();
                (f.name().to_string(), bytes)
            })
            .collect()
    }

    fn keys(dir: &Path) -> (SealingKey, OpeningKey) {
        let public = keygen(&dir.join("sshkey")).unwrap();
        (
            SealingKey::read(&public).unwrap(),
            OpeningKey::read(&dir.join("sshkey")).unwrap(),
        )
    }

    /// A fresh directory with keys, and a log named `name` being written in it.
    fn started(name: &str) -> (tempfile::TempDir, OpeningKey, PathBuf, Writer) {
        let d = tempfile::tempdir().unwrap();
        let (seal, open) = keys(d.path());
        let path = d.path().join(name);
        let w = Writer::create(&path, &seal).unwrap();
        (d, open, path, w)
    }

    #[test]
    fn key_files_are_44_base64_characters_without_newline() {
        let d = tempfile::tempdir().unwrap();
        keygen(&d.path().join("sshkey")).unwrap();
        for name in ["sshkey", "sshkey.pub"] {
            let text = fs::read_to_string(d.path().join(name)).unwrap();
            assert_eq!(text.len(), 44, "{name}");
            assert!(!text.ends_with('\n'));
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(d.path().join("sshkey"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert!(
            keygen(&d.path().join("sshkey")).is_err(),
            "never overwrites"
        );
    }

    #[test]
    fn a_log_round_trips_with_pty_and_exit_data() {
        let (d, open, path, mut w) = started("logs/s1-c0.sshlog");
        w.set_pty(PtyMeta {
            term: Some("xterm".into()),
            width: 80,
            height: 24,
            modes: vec![("ECHO".into(), 1)],
        })
        .unwrap();
        w.packet(SOURCE_CLIENT, CODE_REQUEST, b"shell\0").unwrap();
        w.packet(SOURCE_CLIENT, CODE_DATA, b"ls\r").unwrap();
        w.packet(SOURCE_SERVER, CODE_DATA, b"file1\r\n").unwrap();
        w.packet(SOURCE_SERVER, CODE_DATA, b"").unwrap();
        let exit = ExitData {
            timestamp: 1,
            status: Some(0),
            ..Default::default()
        };
        w.finish(Some(exit.clone())).unwrap();
        assert!(!side_paths(&path).0.exists() && !side_paths(&path).1.exists());
        let got = decrypt(&fs::read(&path).unwrap(), &open).unwrap();
        assert!(got.warning.is_none());
        assert_eq!(got.packets.len(), 3, "empty data is never sealed");
        assert_eq!(got.meta.exit_data, Some(exit));
        let zip = d.path().join("out.zip");
        let bytes = fs::read(&path).unwrap();
        let done = write_zip(|| LogReader::new(&bytes[..], &open), &zip).unwrap();
        assert_eq!(done.packets, 3);
        let files = unzip(&zip);
        let term = String::from_utf8(files["term_data.txt"].clone()).unwrap();
        let requests = String::from_utf8(files["requests.txt"].clone()).unwrap();
        let (secs, rest) = requests.split_once(' ').unwrap();
        assert!(
            secs.parse::<f64>().is_ok() && rest == "shell \n",
            "{requests}"
        );
        let times = String::from_utf8(files["term_times.txt"].clone()).unwrap();
        assert!(
            times.ends_with(" 7\n") && times.lines().count() == 1,
            "{times}"
        );
        assert!(
            term.starts_with("Session started on ")
                && term.contains("TERM=\"xterm\" COLUMNS=\"80\""),
            "{term}"
        );
        assert!(term.contains("file1") && !term.contains("ls\r"), "{term}");
        assert!(term.contains("COMMAND_EXIT_CODE=\"0\""));
        // The header was written in place, in the room reserved for it.
        let bytes = fs::read(&path).unwrap();
        assert_eq!(be_u32(&bytes, 0), Some(HEADER_RESERVE as usize - 4));
    }

    #[test]
    fn a_header_too_big_for_its_room_is_copied_into_a_new_file() {
        let (_d, open, path, mut w) = started("big.sshlog");
        w.packet(SOURCE_SERVER, CODE_DATA, b"payload").unwrap();
        let exit = ExitData {
            error_msg: Some("x".repeat(5000)),
            ..Default::default()
        };
        w.finish(Some(exit.clone())).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert!(be_u32(&bytes, 0).unwrap() > HEADER_RESERVE as usize);
        let got = decrypt(&bytes, &open).unwrap();
        assert!(got.warning.is_none());
        assert_eq!(got.packets[0].data, b"payload");
        assert_eq!(got.meta.exit_data, Some(exit));
        assert!(!side_paths(&path).0.exists() && !side_paths(&path).1.exists());
    }

    #[test]
    fn leftovers_from_before_the_header_room_are_recovered_too() {
        let (d, open, path, mut w) = started("old.sshlog");
        w.packet(SOURCE_SERVER, CODE_DATA, b"old layout").unwrap();
        std::mem::forget(w);
        // Rewrite the side files as a proxy without the header room left them.
        let (partial, meta_path) = side_paths(&path);
        let blocks = fs::read(&partial).unwrap()[HEADER_RESERVE as usize..].to_vec();
        fs::write(&partial, blocks).unwrap();
        let mut side: serde_json::Value =
            serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
        side.as_object_mut().unwrap().remove("header_reserve");
        fs::write(&meta_path, side.to_string()).unwrap();
        assert_eq!(recover(d.path()).unwrap(), vec![path.clone()]);
        let got = decrypt(&fs::read(&path).unwrap(), &open).unwrap();
        assert_eq!(got.packets[0].data, b"old layout");
    }

    #[test]
    fn a_wrong_key_and_a_non_log_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let (seal, _) = keys(d.path());
        let other = tempfile::tempdir().unwrap();
        let (_, wrong) = keys(other.path());
        let path = d.path().join("x.sshlog");
        let mut w = Writer::create(&path, &seal).unwrap();
        w.packet(SOURCE_SERVER, CODE_DATA, b"secret").unwrap();
        w.finish(None).unwrap();
        let err = decrypt(&fs::read(&path).unwrap(), &wrong)
            .unwrap_err()
            .to_string();
        assert!(err.contains("wrong key"), "{err}");
        let err = decrypt(b"hello world, not a log", &wrong)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a command log"), "{err}");
    }

    fn three_block_log(dir: &Path) -> (Vec<u8>, OpeningKey, Vec<usize>) {
        let (seal, open) = keys(dir);
        let path = dir.join("t.sshlog");
        let mut w = Writer::create(&path, &seal).unwrap();
        for chunk in [&b"one"[..], b"two", b"three"] {
            w.packet(SOURCE_SERVER, CODE_DATA, chunk).unwrap();
        }
        w.finish(None).unwrap();
        let bytes = fs::read(&path).unwrap();
        // Block boundaries, found by walking the framing.
        let m = u32::from_be_bytes(bytes[0..4].try_into().unwrap()) as usize;
        let mut at = 4 + m;
        let mut ends = vec![];
        while at < bytes.len() {
            at += 4 + u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            ends.push(at);
        }
        (bytes, open, ends)
    }

    #[test]
    fn truncation_at_a_block_boundary_and_mid_block_keeps_what_came_before() {
        let d = tempfile::tempdir().unwrap();
        let (bytes, open, ends) = three_block_log(d.path());
        assert_eq!(ends.len(), 3);
        let at_boundary = decrypt(&bytes[..ends[1]], &open).unwrap();
        assert_eq!(at_boundary.packets.len(), 2);
        assert!(
            at_boundary.warning.is_none(),
            "a boundary cut looks like a shorter log"
        );
        let mid = decrypt(&bytes[..ends[1] + 7], &open).unwrap();
        assert_eq!(mid.packets.len(), 2);
        assert!(
            mid.warning.as_deref().unwrap().contains("truncated"),
            "{:?}",
            mid.warning
        );
    }

    #[test]
    fn a_corrupt_block_keeps_the_blocks_before_it() {
        let d = tempfile::tempdir().unwrap();
        let (mut bytes, open, ends) = three_block_log(d.path());
        bytes[ends[1] + 6] ^= 0xff;
        let got = decrypt(&bytes, &open).unwrap();
        assert_eq!(got.packets.len(), 2);
        assert!(
            got.warning
                .as_deref()
                .unwrap()
                .contains("block 3 is corrupt"),
            "{:?}",
            got.warning
        );
    }

    #[test]
    fn recovery_finalises_leftovers_and_keeps_complete_blocks() {
        let (d, open, path, mut w) = started("crash.sshlog");
        w.packet(SOURCE_SERVER, CODE_DATA, b"before the crash")
            .unwrap();
        w.flush().unwrap();
        std::mem::forget(w); // the proxy dies here
        // A torn block at the end.
        let mut f = OpenOptions::new()
            .append(true)
            .open(side_paths(&path).0)
            .unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2, 3]).unwrap();
        let done = recover(d.path()).unwrap();
        assert_eq!(done, vec![path.clone()]);
        let got = decrypt(&fs::read(&path).unwrap(), &open).unwrap();
        assert_eq!(got.packets[0].data, b"before the crash");
        assert!(got.meta.exit_data.is_none());
    }

    #[test]
    fn a_packet_split_across_blocks_reads_whole() {
        // Our writer seals whole packets, but a reader must not depend on it.
        let (_d, open, path, mut w) = started("split.sshlog");
        w.packet(SOURCE_SERVER, CODE_DATA, b"first").unwrap();
        let mut packet = Vec::new();
        encode_packet_into(&mut packet, SOURCE_SERVER, CODE_DATA, 7, b"split in two");
        for half in [&packet[..9], &packet[9..]] {
            let sealed = w.ctx.seal(half, &[]).unwrap();
            w.blocks
                .write_all(&(sealed.len() as u32).to_be_bytes())
                .unwrap();
            w.blocks.write_all(&sealed).unwrap();
        }
        w.finish(None).unwrap();
        let got = decrypt(&fs::read(&path).unwrap(), &open).unwrap();
        assert!(got.warning.is_none(), "{:?}", got.warning);
        let data: Vec<&[u8]> = got.packets.iter().map(|p| &p.data[..]).collect();
        assert_eq!(data, [&b"first"[..], b"split in two"]);
    }

    #[test]
    fn a_long_log_is_read_with_one_block_in_memory() {
        let (d, open, path, mut w) = started("long.sshlog");
        for i in 0..2000u32 {
            let source = if i % 2 == 0 {
                SOURCE_CLIENT
            } else {
                SOURCE_SERVER
            };
            w.packet(source, CODE_DATA, &[i as u8; 1000]).unwrap();
        }
        w.finish(None).unwrap();
        let file = File::open(&path).unwrap();
        let mut r = LogReader::new(std::io::BufReader::new(file), &open).unwrap();
        let mut n = 0;
        while let Some(p) = r.next_packet().unwrap() {
            assert_eq!(p.data, vec![n as u8; 1000]);
            n += 1;
            assert!(
                r.plain.capacity() < 4096 && r.sealed.capacity() < 4096,
                "buffers grow to a block, not to the log"
            );
        }
        assert_eq!(n, 2000);
        assert_eq!(r.consumed(), fs::metadata(&path).unwrap().len());
        // Both zip files stream from their own pass.
        let zip = d.path().join("long.zip");
        let open_file = || LogReader::new(File::open(&path).unwrap(), &open);
        let done = write_zip(open_file, &zip).unwrap();
        assert_eq!(done.packets, 2000);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&zip).unwrap().permissions().mode() & 0o777,
            0o600,
            "the plaintext is its owner's only"
        );
        let files = unzip(&zip);
        assert_eq!(files["data_from_client.txt"].len(), 1000 * 1000);
        assert_eq!(files["data_from_server.txt"][..1000], [1u8; 1000]);
        assert!(!files.contains_key("requests.txt"));
    }

    #[test]
    fn an_export_with_the_wrong_key_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (bytes, _, _) = three_block_log(d.path());
        let other = tempfile::tempdir().unwrap();
        let (_, wrong) = keys(other.path());
        let zip = d.path().join("never.zip");
        let err = write_zip(|| LogReader::new(&bytes[..], &wrong), &zip).unwrap_err();
        assert!(err.to_string().contains("wrong key"), "{err}");
        assert!(!zip.exists());
    }

    #[test]
    fn asciicast_has_output_and_window_changes_only() {
        let (d, open, path, mut w) = started("cast.sshlog");
        w.packet(SOURCE_CLIENT, CODE_DATA, b"typed").unwrap();
        w.packet(SOURCE_SERVER, CODE_DATA, b"shown").unwrap();
        w.packet(SOURCE_CLIENT, CODE_REQUEST, b"window-change\x00100x30")
            .unwrap();
        w.finish(None).unwrap();
        let cast = d.path().join("out.cast");
        let bytes = fs::read(&path).unwrap();
        let done = write_asciicast(LogReader::new(&bytes[..], &open).unwrap(), &cast).unwrap();
        assert_eq!(done.packets, 3);
        let text = fs::read_to_string(&cast).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(
            (lines[1][1].clone(), lines[1][2].clone()),
            ("o".into(), "shown".into())
        );
        assert_eq!(
            (lines[2][1].clone(), lines[2][2].clone()),
            ("r".into(), "100x30".into())
        );
    }
}
