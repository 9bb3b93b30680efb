//! Parse throughput: a stream of PUB (client → server) or MSG (server → client) frames
//! with payloads of 16 B to 64 KB, fed in 64 KB chunks as a proxy receives them.
//!
//! cargo bench --bench protocol            (or add `-- --quick` for a short run)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use natsguard::protocol::{ClientToServer, ServerToClient};
use natsguard::protocol::{Direction, Item, Limits, Parser};
use std::hint::black_box;

const PAYLOAD_SIZES: [usize; 4] = [16, 128, 1024, 64 * 1024];
const CHUNK: usize = 64 * 1024;
/// About this many bytes per stream, at least 16 frames.
const STREAM_BYTES: usize = 4 << 20;

fn stream(control_line: impl Fn(usize) -> String, payload_size: usize) -> (Vec<u8>, u64) {
    let frame_len = control_line(payload_size).len() + payload_size + 2;
    let frames = (STREAM_BYTES / frame_len).max(16);
    let mut bytes = Vec::with_capacity(frames * frame_len);
    for _ in 0..frames {
        bytes.extend_from_slice(control_line(payload_size).as_bytes());
        bytes.extend(std::iter::repeat_n(b'x', payload_size));
        bytes.extend_from_slice(b"\r\n");
    }
    (bytes, frames as u64)
}

/// Parses the whole stream and returns the number of control lines (so nothing is
/// optimised away).
fn parse_all<D: Direction>(bytes: &[u8]) -> usize {
    let mut parser = Parser::<D>::new(Limits {
        max_payload: 1 << 20,
        ..Limits::default()
    });
    let mut lines = 0;
    for chunk in bytes.chunks(CHUNK) {
        let mut items = parser.feed(chunk);
        while let Some(item) = items.next() {
            match item {
                Item::ControlLine(line) => {
                    black_box(&line.op);
                    lines += 1;
                }
                Item::Error { error, .. } => panic!("{error}"),
                other => {
                    black_box(other);
                }
            }
        }
    }
    lines
}

fn bench_direction<D: Direction>(
    c: &mut Criterion,
    name: &str,
    control_line: impl Fn(usize) -> String + Copy,
) {
    for payload_size in PAYLOAD_SIZES {
        let (bytes, frames) = stream(control_line, payload_size);
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("bytes", payload_size),
            &bytes,
            |b, bytes| b.iter(|| assert_eq!(parse_all::<D>(bytes) as u64, frames)),
        );
        group.throughput(Throughput::Elements(frames));
        group.bench_with_input(
            BenchmarkId::new("frames", payload_size),
            &bytes,
            |b, bytes| b.iter(|| parse_all::<D>(bytes)),
        );
        group.finish();
    }
}

fn protocol(c: &mut Criterion) {
    bench_direction::<ClientToServer>(c, "client_pub", |size| {
        format!("PUB orders.eu.created _INBOX.abc123 {size}\r\n")
    });
    bench_direction::<ServerToClient>(c, "server_msg", |size| {
        format!("MSG orders.eu.created 42 _INBOX.abc123 {size}\r\n")
    });
}

criterion_group!(benches, protocol);
criterion_main!(benches);
