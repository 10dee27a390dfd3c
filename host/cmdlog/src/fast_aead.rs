//! The logs' AEAD, ChaCha20-Poly1305, computed by OpenSSL's libcrypto instead of
//! RustCrypto's portable code. Same algorithm, same key schedule, same bytes: only the
//! speed differs. Sealing is the largest single cost of a logged transfer
//! (docs/benchmarks.md): the portable code ran at about a third of libcrypto's speed,
//! aws-lc's (which russh links for the SSH ciphers) has only an AVX2 path, and
//! libcrypto's AVX-512 code seals a 32 KiB packet about 1.5 times as fast as aws-lc's on
//! a CPU that has it (and as fast without it). HPKE (the `hpke` crate) still does the key
//! exchange and the nonces; this type only plugs in as its AEAD.
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
pub(crate) struct ChaCha20Poly1305Ossl;

impl hpke::aead::Aead for ChaCha20Poly1305Ossl {
    type AeadImpl = Cipher;
    const AEAD_ID: u16 = <hpke::aead::ChaCha20Poly1305 as hpke::aead::Aead>::AEAD_ID;
}

/// One key, ready to seal and open: a libcrypto context holding it, given a fresh
/// nonce for each message. libcrypto frees (and cleanses) it on drop. The lock is only
/// ever taken by the one task that writes or reads the log; HPKE's context needs the
/// type to be `Clone`, hence the `Arc`.
#[derive(Clone)]
pub(crate) struct Cipher(Arc<Mutex<CipherCtx>>);

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
        let mut run = || -> Result<(), openssl::error::ErrorStack> {
            ctx.encrypt_init(None, None, Some(n))?;
            if !associated_data.is_empty() {
                ctx.cipher_update(associated_data, None)?;
            }
            let len = data.len();
            ctx.cipher_update_inplace(data, len)?;
            ctx.cipher_final(&mut [])?;
            ctx.tag(&mut tag)
        };
        run().map_err(|_| aead::Error)?;
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
        let mut run = || -> Result<(), openssl::error::ErrorStack> {
            ctx.decrypt_init(None, None, Some(n))?;
            if !associated_data.is_empty() {
                ctx.cipher_update(associated_data, None)?;
            }
            let len = data.len();
            ctx.cipher_update_inplace(data, len)?;
            ctx.set_tag(tag)?;
            // Fails when the tag does not match; the plaintext is then not returned.
            ctx.cipher_final(&mut []).map(drop)
        };
        run().map_err(|_| aead::Error)
    }
}
