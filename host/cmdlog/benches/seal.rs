//! The log's AEAD, ChaCha20-Poly1305, sealing one 32 KiB packet (a channel's packet
//! size) by each implementation at hand: OpenSSL's libcrypto (what the writer uses,
//! driven as `src/fast_aead.rs` drives it), aws-lc (which russh links; the writer used
//! it before), and RustCrypto's portable code inside hpke (what the console's page
//! uses). Figures in docs/benchmarks.md. Run with
//! `cargo bench -p portcullis-cmdlog --bench seal`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PACKET: usize = 32 * 1024;
const KEY: [u8; 32] = [7; 32];

fn nonce(i: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    n
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal 32 KiB");
    group.throughput(Throughput::Bytes(PACKET as u64));
    let mut data = vec![1u8; PACKET];

    let mut ctx = openssl::cipher_ctx::CipherCtx::new().unwrap();
    ctx.encrypt_init(
        Some(openssl::cipher::Cipher::chacha20_poly1305()),
        Some(&KEY),
        None,
    )
    .unwrap();
    let mut i = 0u64;
    group.bench_function("libcrypto", |b| {
        b.iter(|| {
            i += 1;
            ctx.encrypt_init(None, None, Some(&nonce(i))).unwrap();
            ctx.cipher_update_inplace(&mut data, PACKET).unwrap();
            ctx.cipher_final(&mut []).unwrap();
            let mut tag = [0u8; 16];
            ctx.tag(&mut tag).unwrap();
            tag
        })
    });

    use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &KEY).unwrap());
    group.bench_function("aws-lc", |b| {
        b.iter(|| {
            i += 1;
            key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(i)),
                Aad::empty(),
                &mut data,
            )
            .unwrap()
        })
    });

    use hpke::kdf::HkdfSha256;
    use hpke::kem::X25519HkdfSha256;
    use hpke::{Kem, OpModeS};
    let (_, public) = X25519HkdfSha256::gen_keypair();
    let (_, mut portable) = hpke::setup_sender::<
        hpke::aead::ChaCha20Poly1305,
        HkdfSha256,
        X25519HkdfSha256,
    >(&OpModeS::Base, &public, &[])
    .unwrap();
    group.bench_function("portable", |b| {
        b.iter(|| {
            portable
                .seal_inout_detached(hpke::inout::InOutBuf::from(&mut data[..]), &[])
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
