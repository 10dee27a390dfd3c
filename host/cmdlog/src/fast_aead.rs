//! The logs' AEAD, ChaCha20-Poly1305, computed by aws-lc (the assembly russh already
//! links for the SSH ciphers) instead of RustCrypto's portable code. Same algorithm,
//! same key schedule, same bytes: only the speed differs (sealing was a third of the
//! proxy's CPU on a logged transfer; docs/benchmarks.md). HPKE (the `hpke` crate) still
//! does the key exchange and the nonces; this type only plugs in as its AEAD.
//!
//! The reader without the `files` feature (the console's page, wasm32) keeps the
//! portable implementation, so every log the proxy writes is also opened by the other
//! implementation in the tests (`tests.rs`: `both_chacha20_implementations_agree`).

use std::sync::Arc;

use aead::consts::{U12, U16, U32};
use aead::inout::InOutBuf;
use aead::{AeadCore, AeadInOut, Key, KeyInit, KeySizeUser, Nonce, Tag, TagPosition};
use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce as LcNonce, UnboundKey};

/// ChaCha20-Poly1305 as HPKE's AEAD (identifier 0x0003), by aws-lc.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChaCha20Poly1305Lc;

impl hpke::aead::Aead for ChaCha20Poly1305Lc {
    type AeadImpl = Cipher;
    const AEAD_ID: u16 = <hpke::aead::ChaCha20Poly1305 as hpke::aead::Aead>::AEAD_ID;
}

/// One key, ready to seal and open. aws-lc frees (and cleanses) it on drop.
#[derive(Clone)]
pub(crate) struct Cipher(Arc<LessSafeKey>);

impl KeySizeUser for Cipher {
    type KeySize = U32;
}

impl KeyInit for Cipher {
    fn new(key: &Key<Self>) -> Self {
        // A 32-byte key is always valid for ChaCha20-Poly1305.
        #[allow(clippy::expect_used)]
        let key = UnboundKey::new(&CHACHA20_POLY1305, key.as_slice())
            .expect("ChaCha20-Poly1305 takes a 32-byte key");
        Cipher(Arc::new(LessSafeKey::new(key)))
    }
}

impl AeadCore for Cipher {
    type NonceSize = U12;
    type TagSize = U16;
    const TAG_POSITION: TagPosition = TagPosition::Postfix;
}

fn nonce(n: &Nonce<Cipher>) -> LcNonce {
    let mut bytes = [0u8; 12];
    bytes.copy_from_slice(n.as_slice());
    LcNonce::assume_unique_for_key(bytes)
}

impl AeadInOut for Cipher {
    fn encrypt_inout_detached(
        &self,
        n: &Nonce<Self>,
        associated_data: &[u8],
        buffer: InOutBuf<'_, '_, u8>,
    ) -> aead::Result<Tag<Self>> {
        let data = buffer.into_out_with_copied_in();
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce(n), Aad::from(associated_data), data)
            .map_err(|_| aead::Error)?;
        Tag::<Self>::try_from(tag.as_ref()).map_err(|_| aead::Error)
    }

    fn decrypt_inout_detached(
        &self,
        n: &Nonce<Self>,
        associated_data: &[u8],
        buffer: InOutBuf<'_, '_, u8>,
        tag: &Tag<Self>,
    ) -> aead::Result<()> {
        let data = buffer.into_out_with_copied_in();
        self.0
            .open_in_place_separate_tag(nonce(n), Aad::from(associated_data), tag, data)
            .map(|_| ())
            .map_err(|_| aead::Error)
    }
}
