//! The property both fuzz targets check: parsing an input split into chunks chosen by the
//! input itself never panics, keeps memory bounded, covers every chunk with its items, and
//! reads exactly what parsing the input in one piece reads, also when whole frames are taken
//! first. Every control line's canonical encoding reads back as the same op.

use natsguard::protocol::{Direction, Item, Limits, Operation, Parser};

/// Small limits, so that fuzzing reaches them.
pub const LIMITS: Limits = Limits {
    max_control_line: 64,
    max_connect_line: 256,
    max_payload: 512,
};

/// What a parser read, with spans made absolute: comparable across chunkings.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Line {
        op: String,
        start: usize,
        end: usize,
        canonical: bool,
    },
    Data {
        start: usize,
        end: usize,
        complete: bool,
    },
    Error {
        reason: &'static str,
        start: usize,
    },
}

/// Reads the input split at `cuts`, item by item, or taking whole frames first wherever possible
/// (as the engine does).
fn read_all<D: Direction>(input: &[u8], cuts: &[usize], whole_frames: bool) -> Vec<Read> {
    let mut parser = Parser::<D>::new(LIMITS);
    let bound = LIMITS.max_connect_line.max(LIMITS.max_control_line) + 128;
    let mut reads = Vec::new();
    let mut offset = 0;
    let mut error_start = None;
    for window in cuts.windows(2) {
        let chunk = &input[window[0]..window[1]];
        let failed_before = parser.has_failed();
        let mut items = parser.feed(chunk);
        let mut covered = 0;
        loop {
            while let Some(frame) = whole_frames.then(|| items.whole_frame()).flatten() {
                assert_eq!(frame.span.start, covered);
                covered = frame.span.end;
                let mut canonical = Vec::new();
                frame.op.write_canonical(&mut canonical);
                assert_eq!(&chunk[frame.span.start..frame.payload.start], &canonical[..]);
                assert_eq!(&chunk[frame.payload.end..frame.span.end], b"\r\n");
                reads.push(Read::Line {
                    op: format!("{:?}", frame.op),
                    start: offset + frame.span.start,
                    end: offset + frame.payload.start,
                    canonical: true,
                });
                reads.push(Read::Data {
                    start: offset + frame.payload.start,
                    end: offset + frame.payload.end,
                    complete: true,
                });
            }
            let Some(item) = items.next() else { break };
            let span = item.span();
            assert_eq!(span.start, covered);
            covered = span.end;
            match item {
                Item::ControlLine(line) => {
                    let mut canonical = Vec::new();
                    line.op.write_canonical(&mut canonical);
                    if line.canonical && line.carried == 0 {
                        assert_eq!(&chunk[line.span.clone()], &canonical[..]);
                    }
                    assert_reads_back::<D>(&canonical, &format!("{:?}", line.op));
                    reads.push(Read::Line {
                        op: format!("{:?}", line.op),
                        start: offset + line.span.start - line.carried,
                        end: offset + line.span.end,
                        canonical: line.canonical,
                    });
                }
                Item::Payload(piece) => {
                    assert!(
                        piece.data.start == piece.span.start && piece.data.end <= piece.span.end
                    );
                    let (start, end) = (offset + piece.data.start, offset + piece.data.end);
                    // Pieces of one payload merge into one read; a piece holding only
                    // terminator bytes has an empty data range, which ends nothing.
                    match reads.last_mut() {
                        Some(Read::Data {
                            end: last_end,
                            complete,
                            ..
                        }) if !*complete => {
                            if !piece.data.is_empty() {
                                *last_end = end;
                            }
                            *complete = piece.complete;
                        }
                        _ => reads.push(Read::Data {
                            start,
                            end,
                            complete: piece.complete,
                        }),
                    }
                }
                Item::Partial { .. } => {}
                Item::Error { error, span } => {
                    assert!(error_start.is_none());
                    error_start = Some(offset + span.start);
                    reads.push(Read::Error {
                        reason: error.reason(),
                        start: 0,
                    });
                }
            }
        }
        if !failed_before {
            assert_eq!(covered, chunk.len());
        }
        assert!(
            parser.held_bytes() <= bound,
            "held {} bytes",
            parser.held_bytes()
        );
        offset += chunk.len();
    }
    reads
}

fn assert_reads_back<D: Direction>(canonical: &[u8], expected: &str) {
    let mut parser = Parser::<D>::new(Limits {
        max_payload: u32::MAX,
        ..LIMITS
    });
    let mut items = parser.feed(canonical);
    match items.next() {
        Some(Item::ControlLine(line)) => {
            assert_eq!(format!("{:?}", line.op), expected);
            assert!(line.canonical);
        }
        other => panic!("canonical {canonical:?} reads as {other:?}"),
    }
}

/// The first byte seeds the chunk sizes; the rest is the stream.
pub fn check<D: Direction>(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let mut cuts = vec![0];
    let mut state = u32::from(seed) | 1;
    while let Some(&last) = cuts.last() {
        if last >= input.len() {
            break;
        }
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = 1 + (state as usize % 24);
        cuts.push((last + size).min(input.len()));
    }
    if cuts.len() == 1 {
        cuts.push(0);
    }
    let whole = read_all::<D>(input, &[0, input.len()], false);
    let chunked = read_all::<D>(input, &cuts, false);
    assert_eq!(whole, chunked);
    assert_eq!(read_all::<D>(input, &cuts, true), chunked);
}
