//! Reading a log one block at a time.

use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::aead::AeadCtxR;
use hpke::kdf::HkdfSha256;
use hpke::{Deserializable, OpModeR};

use super::format::*;
use super::keys::*;

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
    pub(super) input: R,
    pub(super) meta: Metadata,
    pub(super) ctx: AeadCtxR<LogAead, HkdfSha256, Kem>,
    /// Bytes of the file read so far.
    pub(super) consumed: u64,
    pub(super) blocks: usize,
    pub(super) sealed: Vec<u8>,
    /// Plaintext not yet handed out starts at `pos`; `plain[0]` is at `plain_offset`
    /// in the whole log's plaintext.
    pub(super) plain: Vec<u8>,
    pub(super) pos: usize,
    pub(super) plain_offset: u64,
    pub(super) warning: Option<String>,
    pub(super) ended: bool,
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

/// Reads a log's header (which is not sealed): its metadata and the header's length
/// after its 4-byte length prefix.
pub fn read_metadata(mut input: impl Read) -> Result<(Metadata, u32), CmdLogError> {
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
    let meta: Metadata =
        serde_json::from_slice(&json).map_err(|e| not_a_log(&format!("bad header JSON ({e})")))?;
    Ok((meta, m))
}

impl<R: Read> LogReader<R> {
    /// Reads the header and opens the first block.
    pub fn new(mut input: R, key: &OpeningKey) -> Result<LogReader<R>, CmdLogError> {
        let (meta, m) = read_metadata(&mut input)?;
        let not_a_log = |why: &str| CmdLogError::Format(format!("not a command log: {why}"));
        let enc =
            hex::decode(&meta.encapsulated_key).map_err(|_| not_a_log("bad encapsulated_key"))?;
        let enc = EncappedKey::from_bytes(&enc).map_err(|_| not_a_log("bad encapsulated_key"))?;
        let ctx =
            hpke::setup_receiver::<LogAead, HkdfSha256, Kem>(&OpModeR::Base, &key.0, &enc, &[])
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
