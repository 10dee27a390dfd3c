//! AES-GCM sealing through aws-lc's streaming cipher interface (`EVP_CIPHER`).
//!
//! The one-shot AEAD interface seals one contiguous buffer in place, so channel data
//! had to be copied into the packet before it was sealed. The streaming interface
//! encrypts piece by piece and from one buffer into another: the packet's header is
//! sealed in place and the data straight from where it lies into the packet, one pass
//! over the data instead of a copy and a pass. Same algorithm, key and nonce sequence as
//! [`super::gcm::SealingKey`]; the packets are the same (the tests open them with the
//! one-shot opening key).

use std::num::Wrapping;
use std::ptr::{NonNull, null, null_mut};

use aws_lc_rs::aead::NONCE_LEN;
use aws_lc_sys::{
    EVP_CIPHER_CTX, EVP_CIPHER_CTX_ctrl, EVP_CIPHER_CTX_free, EVP_CIPHER_CTX_new,
    EVP_CTRL_GCM_GET_TAG, EVP_EncryptFinal_ex, EVP_EncryptInit_ex, EVP_EncryptUpdate,
    EVP_aes_128_gcm, EVP_aes_256_gcm,
};
use byteorder::{BigEndian, ByteOrder};

use super::{PACKET_LENGTH_LEN, PADDING_LENGTH_LEN};
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

impl StreamingSealingKey {
    /// A key for AES-128-GCM or AES-256-GCM (by the key's length); `None` when aws-lc
    /// refuses it, and the caller keeps the one-shot key.
    pub(crate) fn new(key: &[u8], nonce: &[u8]) -> Option<Self> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        // SAFETY: these return static cipher descriptions.
        let cipher = match key.len() {
            16 => unsafe { EVP_aes_128_gcm() },
            32 => unsafe { EVP_aes_256_gcm() },
            _ => return None,
        };
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
        // The nonce's last 8 bytes count packets (RFC 5647 section 7.1), as in OpenSSH.
        // (The one-shot key carries into the first 4 bytes too, which differs only after
        // 2^64 packets.)
        let counter = Wrapping(BigEndian::read_u64(&self.nonce[4..])) + Wrapping(1);
        BigEndian::write_u64(&mut self.nonce[4..], counter.0);
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
