//! Property: however the byte stream is split into chunks, the parsers read the same frames
//! with the same absolute byte spans as when they get it in one piece, and they read what
//! was written (including nats-server's lenient forms).

use natsguard::protocol::{ClientToServer, Direction, Item, Limits, Parser, ServerToClient};
use proptest::prelude::*;

/// One frame as read, with absolute spans (payload pieces merged).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Frame {
    Line {
        op: String,
        start: usize,
        end: usize,
        canonical: bool,
    },
    Payload {
        data: Vec<u8>,
        start: usize,
        end: usize,
    },
}

/// Reads the stream split at `cuts`, item by item and again taking whole frames first wherever
/// possible (as the engine does); both readings must be the same.
fn read<D: Direction>(stream: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let by_items = read_with::<D>(stream, cuts, false);
    assert_eq!(read_with::<D>(stream, cuts, true), by_items);
    by_items
}

fn read_with<D: Direction>(stream: &[u8], cuts: &[usize], whole_frames: bool) -> Vec<Frame> {
    let mut parser = Parser::<D>::new(Limits::default());
    let mut frames = Vec::new();
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().copied().filter(|&c| c <= stream.len()));
    bounds.push(stream.len());
    bounds.sort_unstable();
    for window in bounds.windows(2) {
        let (offset, chunk) = (window[0], &stream[window[0]..window[1]]);
        let mut items = parser.feed(chunk);
        let mut covered = 0;
        loop {
            while let Some(frame) = whole_frames.then(|| items.whole_frame()).flatten() {
                assert_eq!(frame.span.start, covered);
                covered = frame.span.end;
                frames.push(Frame::Line {
                    op: format!("{:?}", frame.op),
                    start: offset + frame.span.start,
                    end: offset + frame.payload.start,
                    canonical: true,
                });
                frames.push(Frame::Payload {
                    data: chunk[frame.payload.clone()].to_vec(),
                    start: offset + frame.payload.start,
                    end: offset + frame.span.end,
                });
            }
            let Some(item) = items.next() else { break };
            assert_eq!(item.span().start, covered);
            covered = item.span().end;
            match item {
                Item::ControlLine(line) => frames.push(Frame::Line {
                    op: format!("{:?}", line.op),
                    start: offset + line.span.start - line.carried,
                    end: offset + line.span.end,
                    canonical: line.canonical,
                }),
                Item::Payload(piece) => {
                    let (start, end) = (offset + piece.span.start, offset + piece.span.end);
                    match frames.last_mut() {
                        Some(Frame::Payload {
                            data,
                            end: last_end,
                            ..
                        }) if *last_end == start => {
                            data.extend_from_slice(&chunk[piece.data]);
                            *last_end = end;
                        }
                        _ => frames.push(Frame::Payload {
                            data: chunk[piece.data].to_vec(),
                            start,
                            end,
                        }),
                    }
                }
                Item::Partial { .. } => {}
                Item::Error { error, .. } => panic!("valid stream refused: {error}"),
            }
        }
        assert_eq!(covered, chunk.len());
    }
    frames
}

/// How an op is written: canonically, or in one of the forms nats-server also accepts.
#[derive(Clone, Copy, Debug)]
struct Style {
    lower_case: bool,
    extra_separators: bool,
    bare_lf: bool,
    leading_zeros: bool,
}

fn style() -> impl Strategy<Value = Style> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c, d)| Style {
        lower_case: a,
        extra_separators: b,
        bare_lf: c,
        leading_zeros: d,
    })
}

impl Style {
    fn canonical(self) -> bool {
        !(self.lower_case || self.extra_separators || self.bare_lf || self.leading_zeros)
    }

    fn line(self, name: &str, fields: &[String], sizes: &[usize]) -> Vec<u8> {
        let mut line = if self.lower_case {
            name.to_lowercase()
        } else {
            name.to_owned()
        };
        let separator = if self.extra_separators { " \t " } else { " " };
        for field in fields {
            line.push_str(separator);
            line.push_str(field);
        }
        for size in sizes {
            line.push_str(separator);
            line.push_str(&if self.leading_zeros {
                format!("00{size}")
            } else {
                size.to_string()
            });
        }
        line.push_str(if self.bare_lf { "\n" } else { "\r\n" });
        line.into_bytes()
    }
}

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_\\-]{1,8}(\\.[a-zA-Z0-9_\\-*>]{1,8}){0,3}"
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), any::<u8>()], 0..40)
}

/// A client op as written, with the op the parser must read and its payload.
fn client_op() -> impl Strategy<Value = (Vec<u8>, String, Option<Vec<u8>>, bool)> {
    let pub_op =
        (token(), prop::option::of(token()), payload(), style()).prop_map(|(s, r, p, st)| {
            let mut fields = vec![s.clone()];
            fields.extend(r.clone());
            let op = format!(
                "Pub {{ subject: {s:?}, reply: {:?}, payload_len: {} }}",
                r,
                p.len()
            );
            (
                st.line("PUB", &fields, &[p.len()]),
                op,
                Some(p),
                st.canonical(),
            )
        });
    let hpub_op = (
        token(),
        prop::option::of(token()),
        payload(),
        payload(),
        style(),
    )
        .prop_map(|(s, r, h, p, st)| {
            let mut fields = vec![s.clone()];
            fields.extend(r.clone());
            let total = h.len() + p.len();
            let op = format!(
                "HPub {{ subject: {s:?}, reply: {r:?}, header_len: {}, total_len: {total} }}",
                h.len()
            );
            (
                st.line("HPUB", &fields, &[h.len(), total]),
                op,
                Some([h, p].concat()),
                st.canonical(),
            )
        });
    let sub_op =
        (token(), prop::option::of(token()), "[0-9]{1,4}", style()).prop_map(|(s, q, sid, st)| {
            let mut fields = vec![s.clone()];
            fields.extend(q.clone());
            fields.push(sid.clone());
            let op = format!("Sub {{ subject: {s:?}, queue: {q:?}, sid: {sid:?} }}");
            let st = Style {
                leading_zeros: false,
                ..st
            };
            (st.line("SUB", &fields, &[]), op, None, st.canonical())
        });
    let unsub_op =
        ("[0-9]{1,4}", prop::option::of(0u32..1000), style()).prop_map(|(sid, max, st)| {
            let op = format!("Unsub {{ sid: {sid:?}, max_msgs: {max:?} }}");
            let sizes: Vec<usize> = max.iter().map(|m| *m as usize).collect();
            let st = Style {
                leading_zeros: st.leading_zeros && max.is_some(),
                ..st
            };
            (st.line("UNSUB", &[sid], &sizes), op, None, st.canonical())
        });
    let ping_pong = (prop::bool::ANY, style()).prop_map(|(ping, st)| {
        let st = Style {
            extra_separators: false,
            leading_zeros: false,
            ..st
        };
        let name = if ping { "PING" } else { "PONG" };
        (
            st.line(name, &[], &[]),
            if ping { "Ping" } else { "Pong" }.to_owned(),
            None,
            st.canonical(),
        )
    });
    let connect = ("[a-z]{0,12}", style()).prop_map(|(name, st)| {
        let json = format!("{{\"verbose\":false,\"name\":\"{name}\"}}");
        let st = Style {
            leading_zeros: false,
            ..st
        };
        let op = format!("Connect {{ json: {json:?} }}");
        (st.line("CONNECT", &[json], &[]), op, None, st.canonical())
    });
    prop_oneof![pub_op, hpub_op, sub_op, unsub_op, ping_pong, connect]
}

/// A server op as nats-server writes it (always canonical).
fn server_op() -> impl Strategy<Value = (Vec<u8>, String, Option<Vec<u8>>, bool)> {
    let canonical = Style {
        lower_case: false,
        extra_separators: false,
        bare_lf: false,
        leading_zeros: false,
    };
    let msg = (token(), "[0-9]{1,3}", prop::option::of(token()), payload()).prop_map(
        move |(s, sid, r, p)| {
            let mut fields = vec![s.clone(), sid.clone()];
            fields.extend(r.clone());
            let op = format!(
                "Msg {{ subject: {s:?}, sid: {sid:?}, reply: {r:?}, payload_len: {} }}",
                p.len()
            );
            (
                canonical.line("MSG", &fields, &[p.len()]),
                op,
                Some(p),
                true,
            )
        },
    );
    let hmsg = (token(), "[0-9]{1,3}", prop::option::of(token()), payload(), payload()).prop_map(
        move |(s, sid, r, h, p)| {
            let mut fields = vec![s.clone(), sid.clone()];
            fields.extend(r.clone());
            let total = h.len() + p.len();
            let op = format!(
                "HMsg {{ subject: {s:?}, sid: {sid:?}, reply: {r:?}, header_len: {}, total_len: {total} }}",
                h.len()
            );
            (canonical.line("HMSG", &fields, &[h.len(), total]), op, Some([h, p].concat()), true)
        },
    );
    let info = (0u32..2_000_000).prop_map(|max| {
        let json = format!("{{\"server_id\":\"S\",\"max_payload\":{max}}}");
        (
            format!("INFO {json} \r\n").into_bytes(),
            format!("Info {{ json: {json:?} }}"),
            None,
            true,
        )
    });
    let simple = prop_oneof![
        Just((b"+OK\r\n".to_vec(), "Ok".to_owned(), None, true)),
        Just((b"PING\r\n".to_vec(), "Ping".to_owned(), None, true)),
        Just((b"PONG\r\n".to_vec(), "Pong".to_owned(), None, true)),
        Just((
            b"-ERR 'Stale Connection'\r\n".to_vec(),
            "Err { text: \"'Stale Connection'\" }".to_owned(),
            None,
            true
        )),
    ];
    prop_oneof![msg, hmsg, info, simple]
}

type Written = (Vec<u8>, String, Option<Vec<u8>>, bool);

/// The stream, and what reading it must give (ops and payloads, without spans).
/// The ops expected (with their canonical flag) and the payloads expected, in order.
type Expected = (Vec<(String, bool)>, Vec<Vec<u8>>);

fn assemble(ops: &[Written]) -> (Vec<u8>, Expected) {
    let mut stream = Vec::new();
    let mut expected_ops = Vec::new();
    let mut payloads = Vec::new();
    for (line, op, payload, canonical) in ops {
        stream.extend_from_slice(line);
        expected_ops.push((op.clone(), *canonical));
        if let Some(payload) = payload {
            stream.extend_from_slice(payload);
            stream.extend_from_slice(b"\r\n");
            payloads.push(payload.clone());
        }
    }
    (stream, (expected_ops, payloads))
}

fn check_whole_reads_what_was_written<D: Direction>(ops: &[Written]) -> Vec<Frame> {
    let (stream, (expected_ops, expected_payloads)) = assemble(ops);
    let whole = read::<D>(&stream, &[]);
    let read_ops: Vec<(String, bool)> = whole
        .iter()
        .filter_map(|f| match f {
            Frame::Line { op, canonical, .. } => Some((op.clone(), *canonical)),
            Frame::Payload { .. } => None,
        })
        .collect();
    assert_eq!(read_ops, expected_ops);
    let read_payloads: Vec<Vec<u8>> = whole
        .iter()
        .filter_map(|f| match f {
            Frame::Payload { data, .. } => Some(data.clone()),
            Frame::Line { .. } => None,
        })
        .collect();
    // A zero-length payload still yields a piece (its CRLF).
    assert_eq!(read_payloads, expected_payloads);
    whole
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn client_stream_random_splits(ops in prop::collection::vec(client_op(), 1..12),
                                   cuts in prop::collection::vec(0usize..2000, 0..20)) {
        let whole = check_whole_reads_what_was_written::<ClientToServer>(&ops);
        let (stream, _) = assemble(&ops);
        prop_assert_eq!(read::<ClientToServer>(&stream, &cuts), whole);
        let every_byte: Vec<usize> = (0..stream.len()).collect();
        prop_assert_eq!(read::<ClientToServer>(&stream, &every_byte), read::<ClientToServer>(&stream, &[]));
    }

    #[test]
    fn server_stream_random_splits(ops in prop::collection::vec(server_op(), 1..12),
                                   cuts in prop::collection::vec(0usize..2000, 0..20)) {
        let whole = check_whole_reads_what_was_written::<ServerToClient>(&ops);
        let (stream, _) = assemble(&ops);
        prop_assert_eq!(read::<ServerToClient>(&stream, &cuts), whole);
        let every_byte: Vec<usize> = (0..stream.len()).collect();
        prop_assert_eq!(read::<ServerToClient>(&stream, &every_byte), read::<ServerToClient>(&stream, &[]));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn short_streams_every_single_and_double_split(client in prop::collection::vec(client_op(), 1..4),
                                                   server in prop::collection::vec(server_op(), 1..4)) {
        let whole = check_whole_reads_what_was_written::<ClientToServer>(&client);
        let (stream, _) = assemble(&client);
        let stream = &stream[..];
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                prop_assert_eq!(&read::<ClientToServer>(stream, &[i, j]), &whole, "splits {} {}", i, j);
            }
        }
        let whole = check_whole_reads_what_was_written::<ServerToClient>(&server);
        let (stream, _) = assemble(&server);
        let stream = &stream[..];
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                prop_assert_eq!(&read::<ServerToClient>(stream, &[i, j]), &whole, "splits {} {}", i, j);
            }
        }
    }
}
