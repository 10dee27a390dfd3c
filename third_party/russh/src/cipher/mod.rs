// Copyright 2016 Pierre-Étienne Meunier
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//!
//! This module exports cipher names for use with [Preferred].
use std::borrow::Borrow;
use std::collections::HashMap;
use std::convert::TryFrom;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::num::Wrapping;
use std::sync::LazyLock;

use aes::{Aes128, Aes192, Aes256};
#[cfg(feature = "aws-lc-rs")]
use aws_lc_rs::aead::{AES_128_GCM as ALGORITHM_AES_128_GCM, AES_256_GCM as ALGORITHM_AES_256_GCM};
use byteorder::{BigEndian, ByteOrder};
use bytes::BufMut;
use block::CtrWrapper;
use ctr::Ctr128BE;
use delegate::delegate;
use log::trace;
#[cfg(all(not(feature = "aws-lc-rs"), feature = "ring"))]
use ring::aead::{AES_128_GCM as ALGORITHM_AES_128_GCM, AES_256_GCM as ALGORITHM_AES_256_GCM};
use ssh_encoding::Encode;
use tokio::io::{AsyncRead, AsyncReadExt};

use self::cbc::CbcWrapper;
use crate::Error;
use crate::mac::MacAlgorithm;
use crate::sshbuffer::SSHBuffer;

pub(crate) mod block;
pub(crate) mod cbc;
pub(crate) mod chacha20poly1305;
pub(crate) mod clear;
pub(crate) mod gcm;
#[cfg(feature = "aws-lc-rs")]
pub(crate) mod gcm_stream;

use block::SshBlockCipher;
use chacha20poly1305::SshChacha20Poly1305Cipher;
use clear::Clear;
use gcm::GcmCipher;

pub(crate) trait Cipher {
    fn needs_mac(&self) -> bool {
        false
    }
    fn key_len(&self) -> usize;
    fn nonce_len(&self) -> usize {
        0
    }
    fn make_opening_key(
        &self,
        key: &[u8],
        nonce: &[u8],
        mac_key: &[u8],
        mac: &dyn MacAlgorithm,
    ) -> Box<dyn OpeningKey + Send>;
    fn make_sealing_key(
        &self,
        key: &[u8],
        nonce: &[u8],
        mac_key: &[u8],
        mac: &dyn MacAlgorithm,
    ) -> Box<dyn SealingKey + Send>;
}

/// `clear`
pub const CLEAR: Name = Name("clear");
/// `3des-cbc`
#[cfg(feature = "des")]
pub const TRIPLE_DES_CBC: Name = Name("3des-cbc");
/// `aes128-ctr`
pub const AES_128_CTR: Name = Name("aes128-ctr");
/// `aes192-ctr`
pub const AES_192_CTR: Name = Name("aes192-ctr");
/// `aes128-cbc`
pub const AES_128_CBC: Name = Name("aes128-cbc");
/// `aes192-cbc`
pub const AES_192_CBC: Name = Name("aes192-cbc");
/// `aes256-cbc`
pub const AES_256_CBC: Name = Name("aes256-cbc");
/// `aes256-ctr`
pub const AES_256_CTR: Name = Name("aes256-ctr");
/// `aes128-gcm@openssh.com`
pub const AES_128_GCM: Name = Name("aes128-gcm@openssh.com");
/// `aes256-gcm@openssh.com`
pub const AES_256_GCM: Name = Name("aes256-gcm@openssh.com");
/// `chacha20-poly1305@openssh.com`
pub const CHACHA20_POLY1305: Name = Name("chacha20-poly1305@openssh.com");
/// `none`
pub const NONE: Name = Name("none");

pub(crate) static _CLEAR: Clear = Clear {};
#[cfg(feature = "des")]
static _3DES_CBC: SshBlockCipher<CbcWrapper<des::TdesEde3>> = SshBlockCipher(PhantomData);
static _AES_128_CTR: SshBlockCipher<CtrWrapper<Ctr128BE<Aes128>>> = SshBlockCipher(PhantomData);
static _AES_192_CTR: SshBlockCipher<CtrWrapper<Ctr128BE<Aes192>>> = SshBlockCipher(PhantomData);
static _AES_256_CTR: SshBlockCipher<CtrWrapper<Ctr128BE<Aes256>>> = SshBlockCipher(PhantomData);
static _AES_128_GCM: GcmCipher = GcmCipher(&ALGORITHM_AES_128_GCM);
static _AES_256_GCM: GcmCipher = GcmCipher(&ALGORITHM_AES_256_GCM);
static _AES_128_CBC: SshBlockCipher<CbcWrapper<Aes128>> = SshBlockCipher(PhantomData);
static _AES_192_CBC: SshBlockCipher<CbcWrapper<Aes192>> = SshBlockCipher(PhantomData);
static _AES_256_CBC: SshBlockCipher<CbcWrapper<Aes256>> = SshBlockCipher(PhantomData);
static _CHACHA20_POLY1305: SshChacha20Poly1305Cipher = SshChacha20Poly1305Cipher {};

pub static ALL_CIPHERS: &[&Name] = &[
    &CLEAR,
    &NONE,
    #[cfg(feature = "des")]
    &TRIPLE_DES_CBC,
    &AES_128_CTR,
    &AES_192_CTR,
    &AES_256_CTR,
    &AES_128_GCM,
    &AES_256_GCM,
    &AES_128_CBC,
    &AES_192_CBC,
    &AES_256_CBC,
    &CHACHA20_POLY1305,
];

pub(crate) static CIPHERS: LazyLock<HashMap<&'static Name, &(dyn Cipher + Send + Sync)>> =
    LazyLock::new(|| {
        let mut h: HashMap<&'static Name, &(dyn Cipher + Send + Sync)> = HashMap::new();
        h.insert(&CLEAR, &_CLEAR);
        h.insert(&NONE, &_CLEAR);
        #[cfg(feature = "des")]
        h.insert(&TRIPLE_DES_CBC, &_3DES_CBC);
        h.insert(&AES_128_CTR, &_AES_128_CTR);
        h.insert(&AES_192_CTR, &_AES_192_CTR);
        h.insert(&AES_256_CTR, &_AES_256_CTR);
        h.insert(&AES_128_GCM, &_AES_128_GCM);
        h.insert(&AES_256_GCM, &_AES_256_GCM);
        h.insert(&AES_128_CBC, &_AES_128_CBC);
        h.insert(&AES_192_CBC, &_AES_192_CBC);
        h.insert(&AES_256_CBC, &_AES_256_CBC);
        h.insert(&CHACHA20_POLY1305, &_CHACHA20_POLY1305);
        assert_eq!(h.len(), ALL_CIPHERS.len());
        h
    });

#[derive(Debug, PartialEq, Eq, Copy, Clone, Hash)]
pub struct Name(&'static str);
impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl Encode for Name {
    delegate! { to self.as_ref() {
        fn encoded_len(&self) -> Result<usize, ssh_encoding::Error>;
        fn encode(&self, writer: &mut impl ssh_encoding::Writer) -> Result<(), ssh_encoding::Error>;
    }}
}

impl Borrow<str> for &Name {
    fn borrow(&self) -> &str {
        self.0
    }
}

impl TryFrom<&str> for Name {
    type Error = ();
    fn try_from(s: &str) -> Result<Name, ()> {
        CIPHERS.keys().find(|x| x.0 == s).map(|x| **x).ok_or(())
    }
}

pub(crate) struct CipherPair {
    pub local_to_remote: Box<dyn SealingKey + Send>,
    pub remote_to_local: Box<dyn OpeningKey + Send>,
}

impl Debug for CipherPair {
    fn fmt(&self, _: &mut std::fmt::Formatter) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

pub(crate) trait OpeningKey {
    fn packet_length_to_read_for_block_length(&self) -> usize {
        4
    }

    fn decrypt_packet_length(&self, seqn: u32, encrypted_packet_length: &[u8]) -> [u8; 4];

    fn tag_len(&self) -> usize;

    fn open<'a>(&mut self, seqn: u32, ciphertext_and_tag: &'a mut [u8]) -> Result<&'a [u8], Error>;

    /// Whether [`OpeningKey::open_into`] opens a packet without copying it first;
    /// `read` then reads several packets at once.
    fn opens_into(&self) -> bool {
        false
    }

    /// Opens `packet` (what [`OpeningKey::open`] takes) into `out`, which it leaves
    /// holding what `open` leaves in place up to the plaintext's end: the 4-byte length,
    /// then the plaintext. Returns the plaintext's length.
    fn open_into(&mut self, seqn: u32, packet: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        out.clear();
        out.extend_from_slice(packet);
        let n = self.open(seqn, out)?.len();
        out.truncate(PACKET_LENGTH_LEN + n);
        Ok(n)
    }
}

pub(crate) trait SealingKey {
    fn padding_length(&self, plaintext: &[u8]) -> usize;

    fn fill_padding(&self, padding_out: &mut [u8]);

    fn tag_len(&self) -> usize;

    fn seal(&mut self, seqn: u32, plaintext_in_ciphertext_out: &mut [u8], tag_out: &mut [u8]);

    #[allow(clippy::indexing_slicing)] // PacketWriter reserves and sizes the packet buffer first
    fn finish_packet(&mut self, offset: usize, payload_len: usize, buffer: &mut SSHBuffer) {
        let payload_start = offset + PACKET_LENGTH_LEN + PADDING_LENGTH_LEN;
        let payload_end = payload_start + payload_len;

        trace!("writing, seqn = {:?}", buffer.seqn.0);
        let padding_length = self.padding_length(&buffer.buffer[payload_start..payload_end]);
        trace!("padding length {padding_length:?}");
        let packet_length = PADDING_LENGTH_LEN + payload_len + padding_length;
        trace!("packet_length {packet_length:?}");

        // Maximum packet length:
        // https://tools.ietf.org/html/rfc4253#section-6.1
        assert!(packet_length <= u32::MAX as usize);
        BigEndian::write_u32(
            &mut buffer.buffer[offset..offset + PACKET_LENGTH_LEN],
            packet_length as u32,
        );

        assert!(padding_length <= u8::MAX as usize);
        buffer.buffer[offset + PACKET_LENGTH_LEN] = padding_length as u8;
        buffer.buffer.resize(payload_end + padding_length, 0);
        #[allow(clippy::indexing_slicing)] // length checked
        self.fill_padding(&mut buffer.buffer[payload_end..]);
        let tag_offset = buffer.buffer.len();
        buffer.buffer.resize(tag_offset + self.tag_len(), 0);

        #[allow(clippy::indexing_slicing)] // length checked
        let (plaintext, tag) =
            buffer.buffer[offset..].split_at_mut(PACKET_LENGTH_LEN + packet_length);

        self.seal(buffer.seqn.0, plaintext, tag);

        buffer.bytes += payload_len;
        // Sequence numbers are on 32 bits and wrap.
        // https://tools.ietf.org/html/rfc4253#section-6.4
        buffer.seqn += Wrapping(1);
    }

    /// [`SealingKey::finish_packet`] for a packet whose payload is the `head_len` bytes
    /// already in `buffer` followed by `tail`, which is not: channel data, sealed from
    /// where it lies. A cipher that can encrypt from one buffer into another
    /// overrides this to skip copying `tail` in before sealing it.
    fn finish_packet_with_tail(
        &mut self,
        offset: usize,
        head_len: usize,
        tail: &[u8],
        buffer: &mut SSHBuffer,
    ) {
        buffer.buffer.extend_from_slice(tail);
        self.finish_packet(offset, head_len + tail.len(), buffer);
    }

    fn write(&mut self, payload: &[u8], buffer: &mut SSHBuffer) {
        // https://tools.ietf.org/html/rfc4253#section-6
        //
        // The variables `payload`, `packet_length` and `padding_length` refer
        // to the protocol fields of the same names.
        trace!("writing, seqn = {:?}", buffer.seqn.0);

        let padding_length = self.padding_length(payload);
        trace!("padding length {padding_length:?}");
        let packet_length = PADDING_LENGTH_LEN + payload.len() + padding_length;
        trace!("packet_length {packet_length:?}");
        let offset = buffer.buffer.len();

        // Maximum packet length:
        // https://tools.ietf.org/html/rfc4253#section-6.1
        assert!(packet_length <= u32::MAX as usize);
        buffer
            .buffer
            .extend_from_slice(&(packet_length as u32).to_be_bytes());

        assert!(padding_length <= u8::MAX as usize);
        buffer.buffer.push(padding_length as u8);
        buffer.buffer.extend_from_slice(payload);
        let pad_offset = buffer.buffer.len();
        buffer.buffer.resize(pad_offset + padding_length, 0);
        #[allow(clippy::indexing_slicing)] // length checked
        self.fill_padding(&mut buffer.buffer[pad_offset..]);
        let tag_offset = buffer.buffer.len();
        buffer.buffer.resize(tag_offset + self.tag_len(), 0);

        #[allow(clippy::indexing_slicing)] // length checked
        let (plaintext, tag) =
            buffer.buffer[offset..].split_at_mut(PACKET_LENGTH_LEN + packet_length);

        self.seal(buffer.seqn.0, plaintext, tag);

        buffer.bytes += payload.len();
        // Sequence numbers are on 32 bits and wrap.
        // https://tools.ietf.org/html/rfc4253#section-6.4
        buffer.seqn += Wrapping(1);
    }
}

pub(crate) async fn read<R: AsyncRead + Unpin>(
    stream: &mut R,
    buffer: &mut SSHBuffer,
    cipher: &mut (dyn OpeningKey + Send),
) -> Result<usize, Error> {
    // What is read from the stream goes into `buffer.ahead` first, still encrypted, and
    // stays there until its packet is whole (so a read cancelled half-way loses nothing).
    let batch = cipher.opens_into();
    if buffer.len == 0 {
        let l = cipher.packet_length_to_read_for_block_length();
        fill(stream, buffer, l, batch).await?;
        let at = buffer.ahead_at;
        let len_block = buffer
            .ahead
            .get(at..at + l)
            .ok_or(Error::IndexOutOfBounds)?;
        trace!("reading, len = {len_block:?}");
        let seqn = buffer.seqn.0;
        trace!("reading, seqn = {seqn:?}");
        let len = cipher.decrypt_packet_length(seqn, len_block);
        let len = BigEndian::read_u32(&len) as usize;

        if len > MAXIMUM_PACKET_LEN {
            return Err(Error::PacketSize(len));
        }

        // A valid packet (with its MAC tag) can never be shorter than the
        // block we already read to probe it; a smaller value would make the
        // packet end before the probe. Reject it as a protocol error instead.
        // The tag counts: with an EtM MAC and 8-byte blocks (3des-cbc),
        // packet_length can be 8, and the probe also reads the start of the tag.
        if len + PACKET_LENGTH_LEN + cipher.tag_len() < l {
            return Err(Error::PacketSize(len));
        }

        buffer.len = len + cipher.tag_len();
        trace!("reading, clear len = {:?}", buffer.len);
    }

    let total = buffer.len + PACKET_LENGTH_LEN;
    trace!("read_exact {total:?}");
    fill(stream, buffer, total, batch).await?;
    trace!("read_exact done");

    let seqn = buffer.seqn.0;
    let at = buffer.ahead_at;
    let plaintext_len = if !batch && at == 0 && buffer.ahead.len() <= total + READ_AHEAD {
        // A cipher that opens in place: the packet starts the read buffer, which becomes
        // the packet's (what follows, at most READ_AHEAD bytes, moves to a new one): no
        // copy.
        let rest = buffer.ahead.split_off(total);
        buffer.buffer = std::mem::replace(&mut buffer.ahead, rest);
        cipher.open(seqn, &mut buffer.buffer)?.len()
    } else {
        // Opened from where it was read into a buffer of its own, which becomes the
        // packet's payload: no copy where the cipher can (`opens_into`). One that opens
        // in place gets here only after a key exchange changed to it with more read
        // ahead than it reads, and copies the packet first.
        let packet = buffer
            .ahead
            .get(at..at + total)
            .ok_or(Error::IndexOutOfBounds)?;
        let n = cipher.open_into(seqn, packet, &mut buffer.buffer)?;
        buffer.ahead_at += total;
        n
    };
    if buffer.ahead_at == buffer.ahead.len() {
        buffer.ahead_at = 0;
        if buffer.reading_on {
            // More is coming: keep the room.
            buffer.ahead.clear();
        } else {
            // An idle connection holds no read buffer.
            buffer.ahead = Vec::new();
        }
    }

    let padding_length = *buffer.buffer.get(PACKET_LENGTH_LEN).unwrap_or(&0) as usize;
    trace!("reading, padding_length {padding_length:?}");
    let plaintext_end = plaintext_len
        .checked_sub(padding_length)
        .ok_or(Error::IndexOutOfBounds)?;
    let payload_len = plaintext_end.saturating_sub(PADDING_LENGTH_LEN);

    // Sequence numbers are on 32 bits and wrap.
    // https://tools.ietf.org/html/rfc4253#section-6.4
    buffer.seqn += Wrapping(1);
    buffer.bytes = buffer.bytes.saturating_add(payload_len);
    buffer.len = 0;

    // Remove the padding (and the tag, where it was opened in place)
    buffer.buffer.resize(plaintext_end + 4, 0);

    Ok(plaintext_end + 4)
}

/// Reads until `buffer.ahead` holds `need` bytes from `buffer.ahead_at`. With nothing
/// there, the wait is on a few bytes in a local array (an idle connection holds no
/// read buffer), unless the last read returned all it asked for. Then it asks for the
/// rest of what is needed and READ_AHEAD bytes more: the start of the next packet,
/// when packets follow each other, comes with no read of its own. Where the cipher
/// opens packets from where they lie (`batch`) and the last read returned all it
/// asked for, it asks for READ_BATCH bytes (or what is needed, if more): several
/// packets per read, instead of one.
async fn fill<R: AsyncRead + Unpin>(
    stream: &mut R,
    buffer: &mut SSHBuffer,
    need: usize,
    batch: bool,
) -> Result<(), Error> {
    loop {
        let unread = buffer.ahead.len() - buffer.ahead_at;
        if unread >= need {
            return Ok(());
        }
        let n = if unread == 0 && !(batch && buffer.reading_on) {
            let mut probe = [0; READ_AHEAD];
            let want = probe
                .get_mut(..need.min(READ_AHEAD))
                .ok_or(Error::IndexOutOfBounds)?;
            let n = stream.read(want).await?;
            buffer.ahead.clear();
            buffer.ahead_at = 0;
            buffer
                .ahead
                .extend_from_slice(want.get(..n).ok_or(Error::IndexOutOfBounds)?);
            n
        } else {
            let want = if batch && buffer.reading_on {
                (need - unread).max(READ_BATCH)
            } else {
                need - unread + READ_AHEAD
            };
            let room = unread + want;
            if buffer.ahead.capacity() - buffer.ahead_at < room {
                // What is left of the last read (part of a packet) moves to the front.
                buffer.ahead.drain(..buffer.ahead_at);
                buffer.ahead_at = 0;
                buffer.ahead.reserve_exact(room - buffer.ahead.len());
            }
            let n = stream
                .read_buf(&mut (&mut buffer.ahead).limit(want))
                .await?;
            buffer.reading_on = n == want;
            n
        };
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

pub(crate) const PACKET_LENGTH_LEN: usize = 4;

/// How many bytes past the end of a packet `read` asks the stream for: at least every
/// cipher's length probe (`OpeningKey::packet_length_to_read_for_block_length`).
pub(crate) const READ_AHEAD: usize = 16;

/// How many bytes `read` asks the stream for at once when it keeps having more than was
/// asked for, and the cipher opens packets from where they lie: four full channel data
/// packets of OpenSSH's.
pub(crate) const READ_BATCH: usize = 128 * 1024;

const MINIMUM_PACKET_LEN: usize = 16;
// Keep the transport limit aligned with the 256 KiB channel packet baseline.
const MAXIMUM_PACKET_LEN_BASELINE: usize = 256 * 1024;
const CHANNEL_DATA_PACKET_OVERHEAD: usize = 1 + 4 + 4;
const CHANNEL_EXTENDED_DATA_PACKET_OVERHEAD: usize = CHANNEL_DATA_PACKET_OVERHEAD + 4;
const PADDING_LENGTH_LEN: usize = 1;
// SSH requires at least four bytes of padding; with 16-byte blocks, that means
// a full-size channel packet can need up to 19 bytes of transport padding.
const MAXIMUM_PADDING_LEN: usize = 19;
const MAXIMUM_PACKET_LEN_HEADROOM: usize =
    PADDING_LENGTH_LEN + CHANNEL_EXTENDED_DATA_PACKET_OVERHEAD + MAXIMUM_PADDING_LEN;
const MAXIMUM_PACKET_LEN: usize = MAXIMUM_PACKET_LEN_BASELINE + MAXIMUM_PACKET_LEN_HEADROOM;
// Keep post-decompression growth within the same packet-acceptance model as
// the transport read path.
pub(crate) const MAXIMUM_DECOMPRESSED_PACKET_LEN: usize = MAXIMUM_PACKET_LEN;

#[cfg(feature = "_bench")]
pub mod benchmark;

#[cfg(test)]
mod read_ahead_tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;
    use crate::mac::MacAlgorithm;

    /// A stream over `data` that hands out at most `chunk` bytes per read, and counts
    /// the reads.
    struct Chunked {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
        reads: usize,
    }

    impl Chunked {
        fn over(data: Vec<u8>, chunk: usize) -> Chunked {
            Chunked {
                data,
                at: 0,
                chunk,
                reads: 0,
            }
        }
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let (at, len) = (self.at, self.data.len());
            let n = buf.remaining().min(self.chunk).min(len - at);
            #[allow(clippy::indexing_slicing)]
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            self.reads += 1;
            Poll::Ready(Ok(()))
        }
    }

    /// `payloads` sealed one after the other, and the key that opens them.
    #[allow(clippy::unwrap_used)]
    fn sealed(
        cipher: &Name,
        mac: &dyn MacAlgorithm,
        payloads: &[Vec<u8>],
    ) -> (Vec<u8>, Box<dyn OpeningKey + Send>) {
        let c = CIPHERS.get(cipher).unwrap();
        let (key, nonce, mac_key) = (
            vec![7; c.key_len()],
            vec![9; c.nonce_len()],
            vec![5; mac.key_len()],
        );
        let mut sealing = c.make_sealing_key(&key, &nonce, &mac_key, mac);
        let mut out = SSHBuffer::new();
        for p in payloads {
            sealing.write(p, &mut out);
        }
        (out.buffer, c.make_opening_key(&key, &nonce, &mac_key, mac))
    }

    fn payloads() -> Vec<Vec<u8>> {
        [1, 100, 5000, 1, 32768, 17, 3]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b + i) as u8).collect())
            .collect()
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used, clippy::indexing_slicing)]
    async fn packets_read_ahead_come_out_whole_whatever_the_reads_return() {
        let ciphers: [(&Name, &dyn MacAlgorithm); 4] = [
            (&AES_128_GCM, &crate::mac::_NONE),
            (&CHACHA20_POLY1305, &crate::mac::_NONE),
            (&AES_128_CTR, &crate::mac::_HMAC_SHA256),
            (&AES_256_CBC, &crate::mac::_HMAC_SHA256),
        ];
        for (cipher, mac) in ciphers {
            for chunk in [1, 3, 16, 21, 4096, usize::MAX] {
                let (data, mut opening) = sealed(cipher, mac, &payloads());
                let mut stream = Chunked::over(data, chunk);
                let mut buffer = SSHBuffer::new();
                for p in payloads() {
                    buffer.buffer.clear();
                    let n = read(&mut stream, &mut buffer, &mut *opening).await.unwrap();
                    assert_eq!(&buffer.buffer[5..n], &p[..], "{cipher:?}, reads of {chunk}");
                }
                assert_eq!(buffer.ahead_at, buffer.ahead.len(), "{cipher:?}, reads of {chunk}");
                if chunk == usize::MAX {
                    // The last read had less than it asked for: nothing kept.
                    assert_eq!(buffer.ahead.capacity(), 0, "{cipher:?}");
                }
                buffer.buffer.clear();
                assert!(read(&mut stream, &mut buffer, &mut *opening).await.is_err());
            }
        }
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn packets_that_follow_each_other_take_one_read_each() {
        // A cipher that opens in place: each packet is read into a buffer of its own.
        let (data, mut opening) = sealed(&CHACHA20_POLY1305, &crate::mac::_NONE, &payloads());
        assert!(!opening.opens_into());
        let mut stream = Chunked::over(data, usize::MAX);
        let mut buffer = SSHBuffer::new();
        for _ in payloads() {
            buffer.buffer.clear();
            read(&mut stream, &mut buffer, &mut *opening).await.unwrap();
        }
        // The first packet's length, then each packet's rest with the next's length
        // (it was two reads per packet).
        assert_eq!(stream.reads, payloads().len() + 1);
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used, clippy::indexing_slicing)]
    async fn packets_waiting_in_the_stream_are_read_together() {
        // AES-GCM opens a packet from where it was read: the packets the stream already
        // holds come in one read.
        let (data, mut opening) = sealed(&AES_128_GCM, &crate::mac::_NONE, &payloads());
        assert!(opening.opens_into());
        let mut stream = Chunked::over(data, usize::MAX);
        let mut buffer = SSHBuffer::new();
        for p in payloads() {
            buffer.buffer.clear();
            let n = read(&mut stream, &mut buffer, &mut *opening).await.unwrap();
            assert_eq!(&buffer.buffer[5..n], &p[..]);
        }
        // The first packet's length (4 bytes, into a local array), its rest with 16
        // bytes more (all there were asked for: more may be waiting), then the rest of
        // the stream, 38 KiB, in one read of up to READ_BATCH.
        assert_eq!(stream.reads, 3);
        // That read had less than it asked for: the buffer went with the last packet.
        assert_eq!(buffer.ahead.capacity(), 0);

        // A stream that keeps more than a batch: each read brings READ_BATCH bytes
        // while the stream has them.
        let many: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 32768]).collect();
        let (data, mut opening) = sealed(&AES_128_GCM, &crate::mac::_NONE, &many);
        let size = data.len();
        let mut stream = Chunked::over(data, usize::MAX);
        let mut buffer = SSHBuffer::new();
        for p in &many {
            buffer.buffer.clear();
            let n = read(&mut stream, &mut buffer, &mut *opening).await.unwrap();
            assert_eq!(&buffer.buffer[5..n], &p[..]);
        }
        assert!(stream.reads <= 2 + size.div_ceil(READ_BATCH), "{} reads", stream.reads);
    }
}

#[cfg(all(test, feature = "des"))]
mod tests {
    use super::*;
    use crate::mac::_HMAC_SHA512_ETM;

    #[tokio::test]
    async fn read_accepts_shortest_3des_etm_packet() {
        let key = [1; 24];
        let iv = [2; 8];
        let mac_key = [3; 64];
        let mut sealing_key = _3DES_CBC.make_sealing_key(&key, &iv, &mac_key, &_HMAC_SHA512_ETM);
        let mut opening_key = _3DES_CBC.make_opening_key(&key, &iv, &mac_key, &_HMAC_SHA512_ETM);

        // With EtM the packet_length is not encrypted, so with 8-byte blocks
        // OpenSSH sends packet_length 8 for a one-byte payload: the padding
        // length, the payload and six bytes of padding.
        let mut packet = vec![0, 0, 0, 8, 6, 52, 0, 0, 0, 0, 0, 0];
        let mut tag = vec![0; sealing_key.tag_len()];
        sealing_key.seal(0, &mut packet, &mut tag);
        packet.extend_from_slice(&tag);

        let mut buffer = SSHBuffer::new();
        let n = read(&mut &packet[..], &mut buffer, opening_key.as_mut())
            .await
            .unwrap();

        #[allow(clippy::indexing_slicing)]
        let payload = &buffer.buffer[5..n];
        assert_eq!(payload, [52]);
    }
}
