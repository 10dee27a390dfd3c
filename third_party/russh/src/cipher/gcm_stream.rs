//! AES-GCM through aws-lc's streaming cipher interface (`EVP_CIPHER`).
//!
//! The one-shot AEAD interface seals and opens one contiguous buffer in place, so channel
//! data had to be copied into the packet before it was sealed, and a packet had to be
//! read into a buffer of its own before it was opened. The streaming interface works
//! piece by piece and from one buffer into another: the packet's header is sealed in
//! place and the data straight from where it lies into the packet, and a packet is
//! opened from the buffer it was read into (with the packets after it) into one of its
//! own: one pass over the data instead of a copy and a pass. Same algorithm, key and
//! nonce sequence as [`super::gcm::SealingKey`] and [`super::gcm::OpeningKey`]; the
//! packets are the same (the tests open them with the one-shot opening key, and open
//! the one-shot key's packets).

use std::num::Wrapping;
use std::ptr::{NonNull, null, null_mut};

use aws_lc_rs::aead::NONCE_LEN;
use aws_lc_sys::{
    EVP_CIPHER, EVP_CIPHER_CTX, EVP_CIPHER_CTX_ctrl, EVP_CIPHER_CTX_free, EVP_CIPHER_CTX_new,
    EVP_CTRL_GCM_GET_TAG, EVP_CTRL_GCM_SET_TAG, EVP_DecryptFinal_ex, EVP_DecryptInit_ex,
    EVP_DecryptUpdate, EVP_EncryptFinal_ex, EVP_EncryptInit_ex, EVP_EncryptUpdate,
    EVP_aes_128_gcm, EVP_aes_256_gcm,
};
use byteorder::{BigEndian, ByteOrder};

use super::{PACKET_LENGTH_LEN, PADDING_LENGTH_LEN};
use crate::Error;
use crate::sshbuffer::SSHBuffer;

const TAG_LEN: usize = 16;

/// The largest padding [`super::gcm::padding_length`] asks for.
const MAX_PADDING: usize = 16 + PACKET_LENGTH_LEN;

pub(crate) struct StreamingSealingKey {
    /// Owned by this value alone; keyed once, given a nonce per packet.
    ctx: NonNull<EVP_CIPHER_CTX>,
    /// The next packet's nonce (RFC 5647: incremented after each packet).
    nonce: [u8; NONCE_LEN],
}

// SAFETY: the cipher context is owned by this value and used through `&mut self` only;
// aws-lc contexts may move between threads.
unsafe impl Send for StreamingSealingKey {}

impl Drop for StreamingSealingKey {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from `EVP_CIPHER_CTX_new` and is freed once, here (which
        // also wipes the key schedule).
        unsafe { EVP_CIPHER_CTX_free(self.ctx.as_ptr()) }
    }
}

/// One piece of a packet's plaintext: where it is read from and where its ciphertext
/// goes (the same place for what is sealed in place).
struct Piece {
    from: *const u8,
    to: *mut u8,
    len: usize,
}

/// AES-128-GCM or AES-256-GCM, by the key's length.
fn cipher_for(key: &[u8]) -> Option<*const EVP_CIPHER> {
    // SAFETY: these return static cipher descriptions.
    match key.len() {
        16 => Some(unsafe { EVP_aes_128_gcm() }),
        32 => Some(unsafe { EVP_aes_256_gcm() }),
        _ => None,
    }
}

/// The nonce after `nonce`: its last 8 bytes count packets (RFC 5647 section 7.1), as
/// in OpenSSH. (The one-shot keys carry into the first 4 bytes too, which differs only
/// after 2^64 packets.)
fn advance(nonce: &mut [u8; NONCE_LEN]) {
    let counter = Wrapping(BigEndian::read_u64(&nonce[4..])) + Wrapping(1);
    BigEndian::write_u64(&mut nonce[4..], counter.0);
}

impl StreamingSealingKey {
    /// A key for AES-128-GCM or AES-256-GCM (by the key's length); `None` when aws-lc
    /// refuses it, and the caller keeps the one-shot key.
    pub(crate) fn new(key: &[u8], nonce: &[u8]) -> Option<Self> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let cipher = cipher_for(key)?;
        // SAFETY: a fresh context, freed by `Drop` from here on.
        let ctx = NonNull::new(unsafe { EVP_CIPHER_CTX_new() })?;
        let this = StreamingSealingKey { ctx, nonce };
        // SAFETY: `key` has the cipher's key length; no IV yet (set per packet).
        let keyed =
            unsafe { EVP_EncryptInit_ex(ctx.as_ptr(), cipher, null_mut(), key.as_ptr(), null()) };
        (keyed == 1).then_some(this)
    }

    /// Seals `pieces` as one message with the 4-byte packet length as associated data,
    /// and writes the tag to `tag`; advances the nonce.
    ///
    /// # Safety
    /// Each piece's `from` must be readable and its `to` writable for `len` bytes, and
    /// `tag` writable for [`TAG_LEN`] bytes; a piece's source and destination are the
    /// same or do not overlap, and no two destinations overlap.
    unsafe fn seal_pieces(
        &mut self,
        aad: &[u8; PACKET_LENGTH_LEN],
        pieces: &[Piece],
        tag: *mut u8,
    ) {
        let ctx = self.ctx.as_ptr();
        let mut out_len: std::os::raw::c_int = 0;
        // SAFETY: the context was keyed in `new`; the nonce has the GCM default length
        // of 12 bytes; the pieces hold what the caller promised.
        let sealed = unsafe {
            EVP_EncryptInit_ex(ctx, null(), null_mut(), null(), self.nonce.as_ptr()) == 1
                && EVP_EncryptUpdate(ctx, null_mut(), &mut out_len, aad.as_ptr(), aad.len() as _)
                    == 1
                && pieces.iter().all(|p| {
                    p.len == 0
                        || (i32::try_from(p.len).is_ok()
                            && EVP_EncryptUpdate(ctx, p.to, &mut out_len, p.from, p.len as _) == 1
                            && out_len as usize == p.len)
                })
                && EVP_EncryptFinal_ex(ctx, tag, &mut out_len) == 1
                && out_len == 0
                && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG as _, TAG_LEN as _, tag.cast())
                    == 1
        };
        // Encrypting with a keyed GCM context does not fail for packets of SSH's sizes;
        // sending a packet that was not sealed is not an option.
        #[allow(clippy::panic)]
        if !sealed {
            panic!("aws-lc failed to seal an AES-GCM packet");
        }
        advance(&mut self.nonce);
    }
}

impl super::SealingKey for StreamingSealingKey {
    fn padding_length(&self, payload: &[u8]) -> usize {
        super::gcm::padding_length(payload.len())
    }

    fn fill_padding(&self, padding_out: &mut [u8]) {
        super::gcm::fill_padding(padding_out)
    }

    fn tag_len(&self) -> usize {
        TAG_LEN
    }

    #[allow(clippy::indexing_slicing)] // the caller sizes both
    fn seal(&mut self, _seqn: u32, plaintext_in_ciphertext_out: &mut [u8], tag_out: &mut [u8]) {
        assert!(plaintext_in_ciphertext_out.len() >= PACKET_LENGTH_LEN && tag_out.len() == TAG_LEN);
        let mut aad = [0; PACKET_LENGTH_LEN];
        aad.copy_from_slice(&plaintext_in_ciphertext_out[..PACKET_LENGTH_LEN]);
        let body = &mut plaintext_in_ciphertext_out[PACKET_LENGTH_LEN..];
        let piece = Piece {
            from: body.as_ptr(),
            to: body.as_mut_ptr(),
            len: body.len(),
        };
        // SAFETY: one piece sealed in place within a live slice; the tag slice is
        // TAG_LEN bytes (asserted).
        unsafe { self.seal_pieces(&aad, &[piece], tag_out.as_mut_ptr()) }
    }

    #[allow(clippy::indexing_slicing)] // offsets within the packet just reserved
    fn finish_packet_with_tail(
        &mut self,
        offset: usize,
        head_len: usize,
        tail: &[u8],
        buffer: &mut SSHBuffer,
    ) {
        let payload_len = head_len + tail.len();
        let padding_len = super::gcm::padding_length(payload_len);
        let packet_len = PADDING_LENGTH_LEN + payload_len + padding_len;
        // aws-lc takes at most 2 GiB per update: a packet that size is none SSH sends,
        // and takes the general path (which asserts on it as before).
        let (Ok(packet_len31), true) = (i32::try_from(packet_len), padding_len <= MAX_PADDING)
        else {
            buffer.buffer.extend_from_slice(tail);
            return self.finish_packet(offset, payload_len, buffer);
        };
        let head_end = offset + PACKET_LENGTH_LEN + PADDING_LENGTH_LEN + head_len;
        assert_eq!(buffer.buffer.len(), head_end);
        BigEndian::write_u32(&mut buffer.buffer[offset..], packet_len31 as u32);
        buffer.buffer[offset + PACKET_LENGTH_LEN] = padding_len as u8;
        let mut padding = [0; MAX_PADDING];
        super::gcm::fill_padding(&mut padding[..padding_len]);
        let mut aad = [0; PACKET_LENGTH_LEN];
        aad.copy_from_slice(&buffer.buffer[offset..offset + PACKET_LENGTH_LEN]);

        // The rest of the packet (data, padding, tag) is written into the buffer's spare
        // room, which is not initialised first: the encryption writes every byte of it.
        let rest = tail.len() + padding_len + TAG_LEN;
        buffer.buffer.reserve(rest);
        let base = buffer.buffer.as_mut_ptr();
        // SAFETY: the header ends at the buffer's length, `head_end`, and the capacity
        // holds `rest` bytes past it.
        let (in_place, spare) =
            unsafe { (base.add(offset + PACKET_LENGTH_LEN), base.add(head_end)) };
        let pieces = [
            Piece {
                from: in_place,
                to: in_place,
                len: PADDING_LENGTH_LEN + head_len,
            },
            Piece {
                from: tail.as_ptr(),
                to: spare,
                len: tail.len(),
            },
            Piece {
                from: padding.as_ptr(),
                // SAFETY: within the `rest` bytes of spare room.
                to: unsafe { spare.add(tail.len()) },
                len: padding_len,
            },
        ];
        // SAFETY: the header is sealed in place inside the buffer; the data and the
        // padding go to disjoint parts of the spare room (`tail` is not in this buffer:
        // it is borrowed while the buffer is borrowed mutably), the tag after them.
        unsafe {
            self.seal_pieces(&aad, &pieces, spare.add(tail.len() + padding_len));
            // Every byte up to `head_end + rest` is now written.
            buffer.buffer.set_len(head_end + rest);
        }

        buffer.bytes += payload_len;
        buffer.seqn += Wrapping(1);
    }
}

pub(crate) struct StreamingOpeningKey {
    /// Owned by this value alone; keyed once, given a nonce per packet.
    ctx: NonNull<EVP_CIPHER_CTX>,
    /// The next packet's nonce.
    nonce: [u8; NONCE_LEN],
}

// SAFETY: as for `StreamingSealingKey`.
unsafe impl Send for StreamingOpeningKey {}

impl Drop for StreamingOpeningKey {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from `EVP_CIPHER_CTX_new` and is freed once, here.
        unsafe { EVP_CIPHER_CTX_free(self.ctx.as_ptr()) }
    }
}

impl StreamingOpeningKey {
    /// A key for AES-128-GCM or AES-256-GCM (by the key's length); `None` when aws-lc
    /// refuses it, and the caller keeps the one-shot key.
    pub(crate) fn new(key: &[u8], nonce: &[u8]) -> Option<Self> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let cipher = cipher_for(key)?;
        // SAFETY: a fresh context, freed by `Drop` from here on.
        let ctx = NonNull::new(unsafe { EVP_CIPHER_CTX_new() })?;
        let this = StreamingOpeningKey { ctx, nonce };
        // SAFETY: `key` has the cipher's key length; no IV yet (set per packet).
        let keyed =
            unsafe { EVP_DecryptInit_ex(ctx.as_ptr(), cipher, null_mut(), key.as_ptr(), null()) };
        (keyed == 1).then_some(this)
    }

    /// Opens the `len`-byte packet at `packet` (the 4-byte length, the encrypted rest,
    /// the tag), writing the rest's plaintext to `to`; returns the plaintext's length.
    /// Advances the nonce whether or not the tag matched (a packet that does not open
    /// ends the connection).
    ///
    /// # Safety
    /// `packet` must be readable for `len` bytes, and `to` writable for
    /// `len - PACKET_LENGTH_LEN - TAG_LEN` bytes; `to` is the start of the encrypted
    /// rest (opened in place) or does not overlap the packet.
    unsafe fn open_from(
        &mut self,
        packet: *const u8,
        len: usize,
        to: *mut u8,
    ) -> Result<usize, Error> {
        let body_len = len
            .checked_sub(PACKET_LENGTH_LEN + TAG_LEN)
            .filter(|n| i32::try_from(*n).is_ok())
            .ok_or(Error::DecryptionError)?;
        let ctx = self.ctx.as_ptr();
        // The length and the tag are read before the body is decrypted (in place, it is
        // written over; they are not), and the tag is passed by a mutable pointer.
        let mut aad = [0u8; PACKET_LENGTH_LEN];
        let mut tag = [0u8; TAG_LEN];
        let mut out_len: std::os::raw::c_int = 0;
        // SAFETY: the caller's promises; the length is the packet's first 4 bytes, the
        // body the `body_len` after them, the tag the last TAG_LEN. The context was keyed
        // in `new`; the nonce has GCM's 12 bytes; the final call writes nothing (GCM
        // keeps no block back), which `out_len` confirms.
        let opened = unsafe {
            let body = packet.add(PACKET_LENGTH_LEN);
            std::ptr::copy_nonoverlapping(packet, aad.as_mut_ptr(), PACKET_LENGTH_LEN);
            std::ptr::copy_nonoverlapping(body.add(body_len), tag.as_mut_ptr(), TAG_LEN);
            EVP_DecryptInit_ex(ctx, null(), null_mut(), null(), self.nonce.as_ptr()) == 1
                && EVP_DecryptUpdate(ctx, null_mut(), &mut out_len, aad.as_ptr(), aad.len() as _)
                    == 1
                && (body_len == 0
                    || (EVP_DecryptUpdate(ctx, to, &mut out_len, body, body_len as _) == 1
                        && out_len as usize == body_len))
                && EVP_CIPHER_CTX_ctrl(
                    ctx,
                    EVP_CTRL_GCM_SET_TAG as _,
                    TAG_LEN as _,
                    tag.as_mut_ptr().cast(),
                ) == 1
                && EVP_DecryptFinal_ex(ctx, to.add(body_len), &mut out_len) == 1
                && out_len == 0
        };
        advance(&mut self.nonce);
        if opened {
            Ok(body_len)
        } else {
            Err(Error::DecryptionError)
        }
    }
}

impl super::OpeningKey for StreamingOpeningKey {
    fn decrypt_packet_length(&self, _seqn: u32, encrypted_packet_length: &[u8]) -> [u8; 4] {
        // The length is sent in the clear; `read` passes exactly its 4 bytes
        // (`packet_length_to_read_for_block_length`).
        #[allow(clippy::unwrap_used)]
        encrypted_packet_length.try_into().unwrap()
    }

    fn tag_len(&self) -> usize {
        TAG_LEN
    }

    fn open<'a>(
        &mut self,
        _seqn: u32,
        ciphertext_and_tag: &'a mut [u8],
    ) -> Result<&'a [u8], Error> {
        let len = ciphertext_and_tag.len();
        let packet = ciphertext_and_tag.as_mut_ptr();
        // SAFETY: in place, within the slice: the packet is its `len` bytes, `to` the
        // start of the encrypted rest.
        let body_len =
            unsafe { self.open_from(packet, len, packet.wrapping_add(PACKET_LENGTH_LEN))? };
        ciphertext_and_tag
            .get(PACKET_LENGTH_LEN..PACKET_LENGTH_LEN + body_len)
            .ok_or(Error::DecryptionError)
    }

    fn opens_into(&self) -> bool {
        true
    }

    fn open_into(&mut self, _seqn: u32, packet: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        let body_len = packet
            .len()
            .checked_sub(PACKET_LENGTH_LEN + TAG_LEN)
            .ok_or(Error::DecryptionError)?;
        out.clear();
        out.reserve(PACKET_LENGTH_LEN + body_len);
        out.extend_from_slice(packet.get(..PACKET_LENGTH_LEN).unwrap_or_default());
        // SAFETY: `out` has room for the body past the length, and is not `packet`
        // (borrowed mutably while `packet` is borrowed); every byte of the body is
        // written when the packet opens, and `out` keeps only the length otherwise.
        unsafe {
            self.open_from(
                packet.as_ptr(),
                packet.len(),
                out.as_mut_ptr().add(PACKET_LENGTH_LEN),
            )?;
            out.set_len(PACKET_LENGTH_LEN + body_len);
        }
        Ok(body_len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::super::gcm::GcmCipher;
    use super::super::{_AES_128_GCM, _AES_256_GCM, OpeningKey, SealingKey};
    use super::*;

    fn payloads() -> Vec<Vec<u8>> {
        [0, 1, 15, 16, 17, 4096, 32768]
            .iter()
            .map(|&n| (0..n).map(|b| (b * 3 + n) as u8).collect())
            .collect()
    }

    /// Each payload sealed by `key` into a packet of its own.
    fn seal_all(key: &mut dyn SealingKey) -> Vec<Vec<u8>> {
        payloads()
            .iter()
            .map(|p| {
                let mut b = SSHBuffer::new();
                key.write(p, &mut b);
                b.buffer
            })
            .collect()
    }

    /// The payload of an opened packet's plaintext (padding length, payload, padding).
    fn payload(plaintext: &[u8], len: usize) -> &[u8] {
        assert_eq!(plaintext.len(), 1 + len + plaintext[0] as usize);
        &plaintext[1..1 + len]
    }

    fn keys(c: &GcmCipher) -> (Vec<u8>, Vec<u8>) {
        (vec![3; c.0.key_len()], vec![4; NONCE_LEN])
    }

    #[test]
    fn the_streaming_keys_open_what_the_one_shot_keys_seal_and_back() {
        for c in [&_AES_128_GCM, &_AES_256_GCM] {
            let (k, n) = keys(c);
            let sealed = seal_all(&mut c.one_shot_sealing_key(&k, &n));
            let mut in_place = StreamingOpeningKey::new(&k, &n).unwrap();
            let mut into = StreamingOpeningKey::new(&k, &n).unwrap();
            for (packet, p) in sealed.iter().zip(payloads()) {
                let mut copy = packet.clone();
                assert_eq!(payload(in_place.open(0, &mut copy).unwrap(), p.len()), &p[..]);
                let mut out = vec![1, 2, 3];
                let len = into.open_into(0, packet, &mut out).unwrap();
                assert_eq!(out.len(), PACKET_LENGTH_LEN + len);
                assert_eq!(out[..PACKET_LENGTH_LEN], packet[..PACKET_LENGTH_LEN]);
                assert_eq!(payload(&out[PACKET_LENGTH_LEN..], p.len()), &p[..]);
            }

            let sealed = seal_all(&mut StreamingSealingKey::new(&k, &n).unwrap());
            let mut one_shot = c.one_shot_opening_key(&k, &n);
            for (mut packet, p) in sealed.into_iter().zip(payloads()) {
                assert_eq!(payload(one_shot.open(0, &mut packet).unwrap(), p.len()), &p[..]);
            }
        }
    }

    #[test]
    fn a_packet_changed_anywhere_does_not_open() {
        let c = &_AES_128_GCM;
        let (k, n) = keys(c);
        let sealed = seal_all(&mut c.one_shot_sealing_key(&k, &n));
        let packet = &sealed[5];
        // The length (associated data), the padding length, the payload, the padding,
        // the tag.
        for at in [0, 3, 4, 5, 2000, packet.len() - 17, packet.len() - 16, packet.len() - 1] {
            let mut changed = packet.clone();
            changed[at] ^= 0x20;
            // Each key at the packet's place in the sequence (nonce), as the others
            // opened.
            let mut in_place = StreamingOpeningKey::new(&k, &n).unwrap();
            let mut into = StreamingOpeningKey::new(&k, &n).unwrap();
            for p in &sealed[..5] {
                into.open_into(0, p, &mut Vec::new()).unwrap();
                in_place.open(0, &mut p.clone()).unwrap();
            }
            assert!(in_place.open(0, &mut changed.clone()).is_err(), "byte {at}");
            assert!(into.open_into(0, &changed, &mut Vec::new()).is_err(), "byte {at}");
        }
        // Out of sequence (another nonce) does not open either.
        let mut first = StreamingOpeningKey::new(&k, &n).unwrap();
        assert!(first.open_into(0, packet, &mut Vec::new()).is_err());
        // Nor what is too short to hold a tag.
        assert!(first.open_into(0, &packet[..19], &mut Vec::new()).is_err());
    }
}
