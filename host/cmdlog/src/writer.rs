//! Writing a log while the channel lives, finishing it, and recovering what a proxy
//! that died left behind.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::aead::{AeadCtxS, ChaCha20Poly1305};
use hpke::kdf::HkdfSha256;
use hpke::{OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use super::format::*;
use super::keys::*;
use super::ring::{self, Ring};

#[derive(Serialize, Deserialize)]
pub(super) struct SideMeta {
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
pub const HEADER_RESERVE: u64 = 4096;

pub(super) fn side_paths(path: &Path) -> (PathBuf, PathBuf) {
    let s = path.display().to_string();
    (
        PathBuf::from(format!("{s}.partial")),
        PathBuf::from(format!("{s}.meta")),
    )
}

/// A log moves its blocks to a ring ([`super::ring`]) once it is this long: a bulk
/// transfer's, not an interactive session's, which stays one file written block by block.
pub const RING_AFTER: u64 = 1024 * 1024;

/// How much of a spool file is written, for a reader that ships it elsewhere while it
/// grows (the object-store upload): the writer stores the length after each block and
/// wakes the reader when it passes the next `every` bytes. A block is counted once it
/// is whole in the file, so the counted bytes never change afterwards.
#[derive(Debug)]
pub struct SpoolLength {
    pub len: std::sync::atomic::AtomicU64,
    pub every: u64,
    pub grew: tokio::sync::Notify,
}

/// A command log being written.
pub struct Writer {
    pub(super) path: PathBuf,
    pub(super) blocks: File,
    pub(super) ctx: AeadCtxS<LogAead, HkdfSha256, Kem>,
    pub(super) meta: SideMeta,
    pub(super) start: Instant,
    pub(super) last_elapsed: u64,
    pub(super) data_size: u64,
    /// The frame being sealed, kept between packets.
    pub(super) frame: Vec<u8>,
    /// The spool file's length (the header room and the blocks written), counting
    /// the blocks still in the ring.
    pub(super) spooled: u64,
    pub(super) watcher: Option<std::sync::Arc<SpoolLength>>,
    /// The ring the blocks go to once the log is [`RING_AFTER`] long.
    pub(super) ring: Option<Ring>,
    /// A ring was tried (and is in use, failed to start, or was left).
    pub(super) ring_tried: bool,
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
            hpke::setup_sender::<LogAead, HkdfSha256, Kem>(&OpModeS::Base, &key.0, &[])
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
            .read(true)
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
            spooled: HEADER_RESERVE,
            watcher: None,
            ring: None,
            ring_tried: false,
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

    /// Reports the spool file's length to `watcher` from now on.
    pub fn watch(&mut self, watcher: std::sync::Arc<SpoolLength>) {
        watcher
            .len
            .store(self.in_file(), std::sync::atomic::Ordering::Release);
        self.watcher = Some(watcher);
    }

    /// The spool file being written (`NAME.partial`).
    pub fn spool_path(&self) -> PathBuf {
        side_paths(&self.path).0
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
    /// The frame (length, sealed packet, tag) is built in the ring when the log has one,
    /// else in one buffer the writer keeps, and the packet is sealed in place: one copy
    /// of the data, no allocation once the buffer has grown to the channel's packet size.
    pub fn packet(&mut self, source: u8, code: u32, data: &[u8]) -> Result<(), CmdLogError> {
        if data.is_empty() {
            return Ok(());
        }
        let elapsed = (self.start.elapsed().as_micros() as u64).max(self.last_elapsed);
        self.last_elapsed = elapsed;
        let plain_len = PACKET_HEADER + data.len();
        let frame_len = 4 + plain_len + TAG;
        let before = self.in_file();
        if !self.seal_in_ring(frame_len, source, code, elapsed, data)? {
            self.frame.clear();
            self.frame.resize(frame_len, 0);
            seal_frame(&mut self.ctx, &mut self.frame, source, code, elapsed, data)?;
            self.append_frame()
                .map_err(|e| file_err(&self.spool_path(), e))?;
        }
        // The block has reached the operating system: a block the client has been
        // sent data for survives the proxy being killed.
        self.data_size += plain_len as u64;
        self.spooled += frame_len as u64;
        let now = self.in_file();
        if let Some(w) = &self.watcher {
            w.len.store(now, std::sync::atomic::Ordering::Release);
            if now / w.every.max(1) != before / w.every.max(1) {
                w.grew.notify_one();
            }
        }
        Ok(())
    }

    /// Seals the block straight into the ring when there is one with a contiguous place
    /// for it (the data is then copied once, into the page it reaches the disk from).
    /// False when the block is to be built aside.
    fn seal_in_ring(
        &mut self,
        frame_len: usize,
        source: u8,
        code: u32,
        elapsed: u64,
        data: &[u8],
    ) -> Result<bool, CmdLogError> {
        let Some(ring) = self.ring.as_mut() else {
            return Ok(false);
        };
        let path = &self.path;
        let spool_err = |e| file_err(&side_paths(path).0, e);
        let Some(slot) = ring.slot(frame_len).map_err(spool_err)? else {
            return Ok(false);
        };
        seal_frame(&mut self.ctx, slot, source, code, elapsed, data)?;
        ring.commit(frame_len as u64).map_err(spool_err)?;
        Ok(true)
    }

    /// Where the bytes the spool file itself holds end (an uploader reads up to there;
    /// those bytes never change afterwards).
    pub(super) fn in_file(&self) -> u64 {
        self.ring.as_ref().map_or(self.spooled, Ring::durable)
    }

    /// Writes the frame: into the ring when there is one, else with one `write`,
    /// starting the ring once the log is long enough.
    fn append_frame(&mut self) -> std::io::Result<()> {
        if let Some(ring) = &mut self.ring {
            if ring.append(&self.frame)? {
                return Ok(());
            }
            // A block larger than a half (the channel's packets are far smaller):
            // the log goes on without the ring.
            let end = ring.drain(&self.blocks)?;
            self.blocks.seek(SeekFrom::Start(end))?;
            if let Some(ring) = self.ring.take() {
                ring.remove()?;
            }
        }
        self.blocks.write_all(&self.frame)?;
        // Not for a log followed by its upload: the upload reads each block from the
        // page cache as soon as it is written, where the ring would hold up to 1 MiB
        // back until a half is full, and have it read the rest from the disk.
        if !self.ring_tried
            && self.watcher.is_none()
            && self.spooled + self.frame.len() as u64 >= RING_AFTER
        {
            self.ring_tried = true;
            let end = self.spooled + self.frame.len() as u64;
            match Ring::start(&self.spool_path(), &self.blocks, end) {
                Ok(ring) => self.ring = Some(ring),
                Err(e) => tracing::warn!(
                    log = %self.spool_path().display(),
                    "command log written through the page cache: {e}"
                ),
            }
        }
        Ok(())
    }

    /// Syncs the blocks written so far to disk (those in the ring too).
    pub fn flush(&mut self) -> Result<(), CmdLogError> {
        let (partial, _) = side_paths(&self.path);
        if let Some(ring) = &mut self.ring {
            ring.sync().map_err(|e| file_err(&partial, e))?;
        }
        self.blocks.sync_data().map_err(|e| file_err(&partial, e))
    }

    /// Writes the final file with the exit data and removes the side files.
    pub fn finish(mut self, exit: Option<ExitData>) -> Result<PathBuf, CmdLogError> {
        let (partial, meta_path) = side_paths(&self.path);
        if let Some(mut ring) = self.ring.take() {
            ring.drain(&self.blocks)
                .map_err(|e| file_err(&partial, e))?;
            self.blocks.sync_data().map_err(|e| file_err(&partial, e))?;
            ring.remove().map_err(|e| file_err(&partial, e))?;
        }
        self.flush()?;
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
            Some(self.spooled),
        )?;
        Ok(self.path)
    }
}

/// The bytes of a block's authentication tag.
const TAG: usize = 16;

/// Builds one block in `out`, which is exactly its size (`4 + 17 + data.len() + 16`):
/// the sealed length, then the packet sealed in place, then the tag.
fn seal_frame(
    ctx: &mut AeadCtxS<LogAead, HkdfSha256, Kem>,
    out: &mut [u8],
    source: u8,
    code: u32,
    elapsed: u64,
    data: &[u8],
) -> Result<(), CmdLogError> {
    if out.len() != 4 + PACKET_HEADER + data.len() + TAG {
        return Err(CmdLogError::Format(format!(
            "a block of {} bytes for {} bytes of data",
            out.len(),
            data.len()
        )));
    }
    let (len, rest) = out.split_at_mut(4);
    let (plain, tag) = rest.split_at_mut(PACKET_HEADER + data.len());
    len.copy_from_slice(&((plain.len() + TAG) as u32).to_be_bytes());
    let (head, body) = plain.split_at_mut(PACKET_HEADER);
    head.copy_from_slice(&packet_header(source, code, elapsed, data.len()));
    body.copy_from_slice(data);
    let sealed = ctx
        .seal_inout_detached(hpke::inout::InOutBuf::from(plain), &[])
        .map_err(|e| CmdLogError::Crypto(format!("{e:?}")))?;
    tag.copy_from_slice(&sealed.to_bytes());
    Ok(())
}

/// Turns `partial` into the finished log at `path`: header, then the complete blocks
/// (a block torn by a kill is dropped), synced to disk; then removes the side files.
/// Returns how many bytes of a torn last block were dropped. `known`: where the
/// complete blocks end, when the writer knows (else they are walked).
///
/// With a reserved header region the header is written in place and the file renamed;
/// otherwise (or if the header does not fit) the blocks are streamed into a new file.
fn finalise(
    path: &Path,
    partial: &Path,
    meta_path: &Path,
    meta: &Metadata,
    reserve: u64,
    known: Option<u64>,
) -> Result<u64, CmdLogError> {
    let mut blocks = OpenOptions::new()
        .read(true)
        .write(true)
        .open(partial)
        .map_err(|e| file_err(partial, e))?;
    let (complete, total) = match known {
        Some(len) => blocks.metadata().map(|m| (len.min(m.len()), m.len())),
        None => complete_blocks_len(&mut blocks, reserve),
    }
    .map_err(|e| file_err(partial, e))?;
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
        if let Err(e) = ring::apply(&partial) {
            tracing::error!(path = %partial.display(), "the command log's ring is damaged; both left in place: {e}");
            continue;
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
        let torn = finalise(
            &path,
            &partial,
            &meta_path,
            &meta,
            side.header_reserve,
            None,
        )?;
        // The ring, applied or killed before it was set up, is no longer needed.
        let _ = fs::remove_file(ring::ring_path(&partial));
        tracing::warn!(path = %path.display(), torn_bytes = torn, "finalised a command log left by an interrupted proxy");
        done.push(path);
    }
    Ok(done)
}

/// A whole log in memory: the header, then each of `blocks` sealed as one block, in
/// order, to `key`. For tests and fuzzing: it can seal plaintext that is not a valid
/// packet stream, which the writer never does. It seals with the portable
/// ChaCha20-Poly1305 (the writer uses libcrypto's), so the tests that read these logs also
/// check that the two agree.
pub fn sealed_in_memory(key: &SealingKey, blocks: &[&[u8]]) -> Result<Vec<u8>, CmdLogError> {
    let (enc, mut ctx) =
        hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, Kem>(&OpModeS::Base, &key.0, &[])
            .map_err(|e| CmdLogError::Crypto(format!("{e:?}")))?;
    let mut body = Vec::new();
    for block in blocks {
        let sealed = ctx
            .seal(block, &[])
            .map_err(|e| CmdLogError::Crypto(format!("{e:?}")))?;
        body.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        body.extend_from_slice(&sealed);
    }
    let meta = Metadata {
        started_at: 1_700_000_000,
        data_size: blocks.iter().map(|b| b.len() as u64).sum(),
        encapsulated_key: hex::encode(enc.to_bytes()),
        pty: None,
        exit_data: None,
    };
    let json = serde_json::to_vec(&meta).map_err(|e| CmdLogError::Format(e.to_string()))?;
    let header = B64.encode(&json);
    let mut file = (header.len() as u32).to_be_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&body);
    Ok(file)
}
