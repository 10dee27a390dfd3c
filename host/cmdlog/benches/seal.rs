//! The log's AEAD, ChaCha20-Poly1305, sealing one 32 KiB packet (a channel's packet
//! size) by each implementation at hand: OpenSSL's libcrypto (what the writer uses,
//! through an HPKE context as the writer seals), aws-lc (which russh links; the writer
//! used it before), and RustCrypto's portable code in the same HPKE context (what the
//! console's page uses). Figures in docs/benchmarks.md. Run with
//! `cargo bench -p portcullis-cmdlog --bench seal`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PACKET: usize = 32 * 1024;
const KEY: [u8; 32] = [7; 32];

/// Seals `data` again and again through an HPKE sender context with `A` as its AEAD.
fn through_hpke<A: hpke::aead::Aead>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    data: &mut [u8],
) {
    use hpke::kdf::HkdfSha256;
    use hpke::kem::X25519HkdfSha256;
    use hpke::{Kem, OpModeS};
    let (_, public) = X25519HkdfSha256::gen_keypair();
    let (_, mut ctx) =
        hpke::setup_sender::<A, HkdfSha256, X25519HkdfSha256>(&OpModeS::Base, &public, &[])
            .unwrap();
    group.bench_function(name, |b| {
        b.iter(|| {
            ctx.seal_inout_detached(hpke::inout::InOutBuf::from(&mut data[..]), &[])
                .unwrap()
        })
    });
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal 32 KiB");
    group.throughput(Throughput::Bytes(PACKET as u64));
    let mut data = vec![1u8; PACKET];

    through_hpke::<portcullis_cmdlog::ChaCha20Poly1305Ossl>(&mut group, "libcrypto", &mut data);

    use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &KEY).unwrap());
    let mut i = 0u64;
    group.bench_function("aws-lc", |b| {
        b.iter(|| {
            i += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&i.to_be_bytes());
            key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut data,
            )
            .unwrap()
        })
    });

    through_hpke::<hpke::aead::ChaCha20Poly1305>(&mut group, "portable", &mut data);
    group.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
