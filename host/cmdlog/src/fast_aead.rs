//! The logs' AEAD, ChaCha20-Poly1305, computed by OpenSSL's libcrypto instead of
//! RustCrypto's portable code. Same algorithm, same key schedule, same bytes: only the
//! speed differs. Sealing is the largest single cost of a logged transfer
//! (docs/benchmarks.md): the portable code ran at about a third of libcrypto's speed,
//! aws-lc's (which russh links for the SSH ciphers) has only an AVX2 path, and
//! libcrypto's AVX-512 code seals a 32 KiB packet about 1.75 times as fast as aws-lc's
//! (1.2 times with AVX-512 masked; `benches/seal.rs`). HPKE (the `hpke` crate) still
//! does the key exchange and the nonces; this type only plugs in as its AEAD.
//!
//! The reader without the `files` feature (the console's page, wasm32) keeps the
//! portable implementation, so every log the proxy writes is also opened by the other
//! implementation in the tests (`tests.rs`: `both_chacha20_implementations_agree`).

use std::sync::{Arc, Mutex};

use aead::consts::{U12, U16, U32};
use aead::inout::InOutBuf;
use aead::{AeadCore, AeadInOut, Key, KeyInit, KeySizeUser, Nonce, Tag, TagPosition};
use openssl::cipher::Cipher as OsslCipher;
use openssl::cipher_ctx::CipherCtx;

/// ChaCha20-Poly1305 as HPKE's AEAD (identifier 0x0003), by OpenSSL's libcrypto.
#[derive(Debug, Clone, Copy)]
pub struct ChaCha20Poly1305Ossl;

impl hpke::aead::Aead for ChaCha20Poly1305Ossl {
    type AeadImpl = Cipher;
    const AEAD_ID: u16 = <hpke::aead::ChaCha20Poly1305 as hpke::aead::Aead>::AEAD_ID;
}

/// One key, ready to seal and open: a libcrypto context holding it, given a fresh
/// nonce for each message. libcrypto frees (and cleanses) it on drop. The lock is only
/// ever taken by the one task that writes or reads the log; HPKE's context needs the
/// type to be `Clone`, hence the `Arc`.
#[derive(Clone)]
pub struct Cipher(Arc<Mutex<CipherCtx>>);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher { .. }")
    }
}

impl KeySizeUser for Cipher {
    type KeySize = U32;
}

impl KeyInit for Cipher {
    fn new(key: &Key<Self>) -> Self {
        // Allocating a context and setting a 32-byte key fail only when memory runs out.
        #[allow(clippy::expect_used)]
        let ctx = CipherCtx::new()
            .and_then(|mut ctx| {
                ctx.encrypt_init(Some(OsslCipher::chacha20_poly1305()), Some(key), None)?;
                Ok(ctx)
            })
            .expect("libcrypto sets up a ChaCha20-Poly1305 key");
        Cipher(Arc::new(Mutex::new(ctx)))
    }
}

impl AeadCore for Cipher {
    type NonceSize = U12;
    type TagSize = U16;
    const TAG_POSITION: TagPosition = TagPosition::Postfix;
}

/// Sets the nonce, takes in the associated data and runs the cipher over `data` in
/// place: the part sealing and opening share, before the tag.
fn start(
    ctx: &mut CipherCtx,
    seal: bool,
    n: &[u8],
    associated_data: &[u8],
    data: &mut [u8],
) -> Result<(), openssl::error::ErrorStack> {
    if seal {
        ctx.encrypt_init(None, None, Some(n))?;
    } else {
        ctx.decrypt_init(None, None, Some(n))?;
    }
    if !associated_data.is_empty() {
        ctx.cipher_update(associated_data, None)?;
    }
    let len = data.len();
    ctx.cipher_update_inplace(data, len).map(drop)
}

impl AeadInOut for Cipher {
    fn encrypt_inout_detached(
        &self,
        n: &Nonce<Self>,
        associated_data: &[u8],
        buffer: InOutBuf<'_, '_, u8>,
    ) -> aead::Result<Tag<Self>> {
        let data = buffer.into_out_with_copied_in();
        let mut ctx = self.0.lock().map_err(|_| aead::Error)?;
        let mut tag = Tag::<Self>::default();
        start(&mut ctx, true, n, associated_data, data)
            .and_then(|()| ctx.cipher_final(&mut []))
            .and_then(|_| ctx.tag(&mut tag))
            .map_err(|_| aead::Error)?;
        Ok(tag)
    }

    fn decrypt_inout_detached(
        &self,
        n: &Nonce<Self>,
        associated_data: &[u8],
        buffer: InOutBuf<'_, '_, u8>,
        tag: &Tag<Self>,
    ) -> aead::Result<()> {
        let data = buffer.into_out_with_copied_in();
        let mut ctx = self.0.lock().map_err(|_| aead::Error)?;
        // The data is deciphered before the tag is checked (`cipher_final` fails when
        // it does not match): a block that fails is wiped, so that nothing unverified
        // is left in the caller's buffer.
        let opened = start(&mut ctx, false, n, associated_data, data)
            .and_then(|()| ctx.set_tag(tag))
            .and_then(|()| ctx.cipher_final(&mut []));
        if opened.is_err() {
            data.fill(0);
            return Err(aead::Error);
        }
        Ok(())
    }
}
