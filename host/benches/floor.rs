//! The floor under any proxy that ends SSH connections, measured on this machine: what
//! the bare work of one costs per GiB, without SSH, tasks or channels. A relay thread
//! reads 32 KiB AES-GCM records from one loopback TCP socket, opens each as many times
//! as the model says (the layers it takes off), seals it as many times (the layers it
//! puts on), and writes it to another socket; a producer and a consumer thread feed
//! and drain it. The models:
//!
//! - `copy`: neither; the two sockets and the copies in and out of user space.
//! - `user-name form`: one open, one seal (the client's connection, the target's).
//! - `-J down`: one open (the target's), two seals (the inner connection, then the
//!   outer one around it). `-J up`: two opens, one seal.
//!
//! Each model runs three times over 1 GiB (or as many times as the first numeric
//! argument says); the least CPU of the relay thread is its floor. `scripts/bench`
//! runs it once per round of its bulk transfers and prints the floors next to what the
//! throughput goals leave the proxy (docs/benchmarks.md, session 17). Run alone with
//! `cargo bench -p portcullis --bench floor`.

// A lab: a failure is a panic, and the buffers' sizes are fixed where they are made.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// A record's plaintext: a channel packet's data.
const RECORD: usize = 32 * 1024;
const TAG: usize = 16;
const GIB: usize = 1 << 30;

/// CPU seconds (user + system) the calling thread has used: the first field of its
/// `schedstat`, the scheduler's count of its time on a CPU in nanoseconds (`stat`'s
/// tick counts would also need the tick rate, which only `sysconf` tells).
fn thread_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    let ns = stat.split_whitespace().next().unwrap();
    ns.parse::<u64>().unwrap() as f64 / 1e9
}

fn key(byte: u8) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[byte; 16]).unwrap())
}

/// The nonce does not change the work; one for all keeps the lab simple (a real
/// connection counts them).
fn nonce() -> Nonce {
    Nonce::assume_unique_for_key([0; 12])
}

/// Moves 1 GiB through the relay; returns the relay thread's CPU seconds.
fn run(opens: usize, seals: usize) -> f64 {
    let n = GIB / RECORD;
    // The record as it arrives: the data sealed `opens` times, innermost first, each
    // layer by its own key (the relay takes them off outermost first).
    let mut record = vec![0u8; RECORD];
    for layer in 0..opens {
        let tag = key(layer as u8)
            .seal_in_place_separate_tag(nonce(), Aad::empty(), &mut record)
            .unwrap();
        record.extend_from_slice(tag.as_ref());
    }
    let arriving = record.len();
    let leaving = RECORD + seals * TAG;

    let from_producer = TcpListener::bind("127.0.0.1:0").unwrap();
    let to_consumer = TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (
        from_producer.local_addr().unwrap(),
        to_consumer.local_addr().unwrap(),
    );
    let producer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(a).unwrap();
        for _ in 0..n {
            s.write_all(&record).unwrap();
        }
    });
    let consumer = std::thread::spawn(move || {
        let (mut s, _) = to_consumer.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        while s.read(&mut buf).unwrap() > 0 {}
    });
    let relay = std::thread::spawn(move || {
        let (mut from, _) = from_producer.accept().unwrap();
        let mut to = TcpStream::connect(b).unwrap();
        let opening: Vec<LessSafeKey> = (0..opens).rev().map(|l| key(l as u8)).collect();
        let sealing = key(0xee);
        let mut buf = vec![0u8; arriving.max(leaving)];
        let start = thread_cpu();
        for _ in 0..n {
            from.read_exact(&mut buf[..arriving]).unwrap();
            let mut len = arriving;
            for k in &opening {
                len = k
                    .open_in_place(nonce(), Aad::empty(), &mut buf[..len])
                    .unwrap()
                    .len();
            }
            for layer in 0..seals {
                let end = RECORD + layer * TAG;
                let tag = sealing
                    .seal_in_place_separate_tag(nonce(), Aad::empty(), &mut buf[..end])
                    .unwrap();
                buf[end..end + TAG].copy_from_slice(tag.as_ref());
            }
            to.write_all(&buf[..leaving]).unwrap();
        }
        thread_cpu() - start
    });
    producer.join().unwrap();
    let cpu = relay.join().unwrap();
    consumer.join().unwrap();
    cpu
}

fn main() {
    // `cargo bench` passes `--bench` first; the runs are the first number.
    let runs = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(3)
        .max(1);
    for (name, opens, seals) in [
        ("copy", 0, 0),
        ("user-name form", 1, 1),
        ("-J down", 1, 2),
        ("-J up", 2, 1),
    ] {
        let cpu: Vec<f64> = (0..runs).map(|_| run(opens, seals)).collect();
        let floor = cpu.iter().copied().fold(f64::INFINITY, f64::min);
        let all: Vec<String> = cpu.iter().map(|c| format!("{c:.2}")).collect();
        println!(
            "floor {name}: {floor:.2} s per GiB (runs {})",
            all.join(" ")
        );
    }
}
