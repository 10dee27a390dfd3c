//! Sealed command logs, in the file format of the hosted product's decryption tool
//! (docs/log-format.md describes it): HPKE base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
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
//! (`write_zip`, [`asciicast`]) write as they read.
//!
//! The reader builds without the `files` feature, for wasm32-unknown-unknown too: the
//! console's page decrypts with it in the auditor's browser (host/console-web).

mod export;
#[cfg(feature = "files")]
mod fast_aead;
mod format;
mod keys;
mod reader;
#[cfg(feature = "files")]
mod ring;
#[cfg(feature = "files")]
mod writer;

pub use export::{Exported, TerminalOutput, asciicast};
#[cfg(feature = "files")]
pub use export::{write_asciicast, write_zip};
/// The writer's AEAD, for `benches/seal.rs` to measure through HPKE as the writer uses it.
#[cfg(feature = "files")]
#[doc(hidden)]
pub use fast_aead::ChaCha20Poly1305Ossl;
pub use format::{
    CODE_DATA, CODE_EXTENDED_DATA, CODE_REQUEST, CmdLogError, ExitData, Metadata, PtyMeta,
    SOURCE_CLIENT, SOURCE_SERVER, encode_packet,
};
pub use keys::{OpeningKey, SealingKey, public_key_of};
#[cfg(feature = "files")]
pub use keys::{generate_keypair, keygen};
pub use reader::{LogReader, Packet, read_metadata};
#[cfg(feature = "files")]
pub use writer::{HEADER_RESERVE, RING_AFTER, SpoolLength, Writer, recover, sealed_in_memory};

#[cfg(test)]
#[cfg(feature = "files")]
mod tests;
